//! taskiq's `TaskiqMessage` as the Redis brokers carry it: the `data` field of a stream entry
//! (`RedisStreamBroker`), a list item (`ListQueueBroker`) or a published payload
//! (`PubSubBroker`). The default `ProxyFormatter` serialises the message with the broker's
//! serializer: JSON by default, msgpack (`MSGPackSerializer`) as often; both are recognised from
//! the bytes, no setting needed.
//!
//! Shape: `{"task_id", "task_name", "labels", "labels_types", "args", "kwargs"}`. Label values
//! are stringified (`"_retries": "1"`); `labels_types` says what they were (2 = int).

use crate::codec;
use serde_json::{Map, Value};

/// The field of a stream entry that holds the message (`XADD <queue> * data <message>`).
pub const STREAM_DATA_FIELD: &[u8] = b"data";

/// What taskscope needs from one message.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskiqMessage {
    /// Stable across retries (the retry middleware re-sends the same id).
    pub task_id: String,
    pub task_name: String,
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    /// `labels._retries`: how many failed attempts came before this copy.
    pub retries: u32,
    /// `labels.queue_name`, when the sender routed the message to another queue.
    pub queue_label: Option<String>,
    /// `labels.delay` (SmartRetryMiddleware without a schedule source), in seconds.
    pub delay_s: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is neither JSON nor msgpack: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("message has no {0}")]
    Missing(&'static str),
}

impl MessageError {
    /// A stable short name for the decode-error counters and the once-per-kind log.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageError::Codec(_) => "message-encoding",
            MessageError::Missing(_) => "message-shape",
        }
    }
}

/// A label as an integer, whether stored as `"2"`, `2` or `2.0`.
pub(crate) fn label_u32(labels: Option<&Map<String, Value>>, name: &str) -> Option<u32> {
    let v = labels?.get(name)?;
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn label_f64(labels: Option<&Map<String, Value>>, name: &str) -> Option<f64> {
    match labels?.get(name)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Decodes a message (JSON or msgpack, told apart by the bytes).
pub fn decode(bytes: &[u8]) -> Result<TaskiqMessage, MessageError> {
    let value = codec::sniff_decode(bytes)?;
    from_value(&value)
}

fn from_value(value: &Value) -> Result<TaskiqMessage, MessageError> {
    let obj = value.as_object().ok_or(MessageError::Missing("map"))?;
    let text = |key: &'static str| -> Result<String, MessageError> {
        obj.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or(MessageError::Missing(key))
    };
    let task_id = text("task_id")?;
    let task_name = text("task_name")?;
    let labels = obj.get("labels").and_then(Value::as_object);
    Ok(TaskiqMessage {
        task_id,
        task_name,
        args: obj.get("args").cloned(),
        kwargs: obj.get("kwargs").cloned(),
        retries: label_u32(labels, "_retries").unwrap_or(0),
        queue_label: labels
            .and_then(|l| l.get("queue_name"))
            .and_then(Value::as_str)
            .filter(|q| !q.is_empty())
            .map(str::to_string),
        delay_s: label_f64(labels, "delay"),
    })
}

/// Whether `bytes` look like a taskiq message: a JSON or msgpack map with `task_id`,
/// `task_name`, `labels`, `args` and `kwargs`. For broker auto-detection: cheap, pure, and never
/// true for Celery, Dramatiq or RQ payloads (none of them has `task_name` with `labels`).
pub fn looks_like_message(bytes: &[u8]) -> bool {
    let Ok(value) = codec::sniff_decode(bytes) else {
        return false;
    };
    let Some(obj) = value.as_object() else {
        return false;
    };
    ["labels", "args", "kwargs"]
        .iter()
        .all(|k| obj.contains_key(*k))
        && from_value(&value).is_ok()
}

/// Whether the fields of a stream entry (`[(field, value)]`) look like a taskiq
/// `RedisStreamBroker` entry: one `data` field holding a taskiq message.
pub fn looks_like_stream_entry(fields: &[(&[u8], &[u8])]) -> bool {
    fields
        .iter()
        .any(|(f, v)| *f == STREAM_DATA_FIELD && looks_like_message(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_message_with_retry_labels() {
        let m = decode(br#"{"task_id": "a1", "task_name": "app:flaky", "labels": {"retry_on_error": "True", "_retries": "2"}, "labels_types": {"_retries": 2}, "args": [1], "kwargs": {}}"#).unwrap();
        assert_eq!(m.task_id, "a1");
        assert_eq!(m.retries, 2);
        assert_eq!(m.args, Some(serde_json::json!([1])));
        assert!(looks_like_message(
            br#"{"task_id": "a1", "task_name": "n", "labels": {}, "args": [], "kwargs": {}}"#
        ));
    }

    #[test]
    fn other_brokers_payloads_are_not_taskiq() {
        assert!(!looks_like_message(br#"{"queue_name": "default", "actor_name": "add", "args": [], "kwargs": {}, "message_id": "x"}"#));
        assert!(!looks_like_message(b"\x80\x04N."));
        assert!(!looks_like_message(b""));
    }
}
