//! Dramatiq messages as the RedisBroker stores them: compact JSON in the `.msgs` hashes
//! (`queue_name`, `actor_name`, `args`, `kwargs`, `options`, `message_id`, `message_timestamp`).

use crate::codec;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// What taskscope needs from one message.
#[derive(Debug, Clone, PartialEq)]
pub struct DramatiqMessage {
    /// Stable across retries: the task id.
    pub message_id: String,
    /// The queue without the `.DQ` / `.XQ` suffix.
    pub queue: String,
    pub actor: String,
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    /// `options.retries`: failed attempts before this copy.
    pub retries: u32,
    /// `options.eta` of a delayed copy.
    pub eta: Option<DateTime<Utc>>,
    /// When the message was first sent (`message_timestamp`, kept across retries).
    pub sent_at: Option<DateTime<Utc>>,
    /// The last line of `options.traceback` (the failure that caused a retry), if any.
    pub error: Option<String>,
    pub traceback: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message has no {0}")]
    Missing(&'static str),
}

impl MessageError {
    pub fn kind(&self) -> &'static str {
        match self {
            MessageError::Json(_) => "message-json",
            MessageError::Missing(_) => "message-shape",
        }
    }
}

/// Queue names end in `.DQ` (delay queue) or `.XQ` (dead letters) for the derived queues.
pub fn base_queue(queue_name: &str) -> &str {
    super::layout::split_queue(queue_name).0
}

fn millis(v: &Value) -> Option<DateTime<Utc>> {
    v.as_f64().and_then(|ms| codec::unix_seconds(ms / 1000.0))
}

pub fn decode(bytes: &[u8]) -> Result<DramatiqMessage, MessageError> {
    let v: Value = codec::json_value(bytes)?;
    let str_of = |key: &'static str| {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(MessageError::Missing(key))
    };
    let options = v.get("options");
    let traceback = options
        .and_then(|o| o.get("traceback"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    Ok(DramatiqMessage {
        message_id: str_of("message_id")?,
        queue: base_queue(&str_of("queue_name")?).to_string(),
        actor: str_of("actor_name")?,
        args: v.get("args").cloned(),
        kwargs: v.get("kwargs").cloned(),
        retries: options
            .and_then(|o| o.get("retries"))
            .and_then(Value::as_u64)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0),
        eta: options.and_then(|o| o.get("eta")).and_then(millis),
        sent_at: v.get("message_timestamp").and_then(millis),
        error: traceback
            .as_deref()
            .and_then(codec::error_line_from_traceback),
        traceback,
    })
}

/// The key of a message's result under the Results middleware (namespace `dramatiq-results`):
/// the md5 hex of `dramatiq-results:<queue>:<actor>:<message_id>`.
pub fn result_key(queue: &str, actor: &str, message_id: &str) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(format!("dramatiq-results:{queue}:{actor}:{message_id}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored result: the return value, or `{"__t": "dramatiq.results.Result", "exn": {...}}`
/// for a failure. `Ok(value)` or `Err(error line)`.
pub fn decode_result(bytes: &[u8]) -> Result<Result<Value, String>, MessageError> {
    let v: Value = codec::json_value(bytes)?;
    if v.get("__t").and_then(Value::as_str) == Some("dramatiq.results.Result") {
        let exn = v.get("exn");
        let kind = exn
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("Error");
        let msg = exn
            .and_then(|e| e.get("msg"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let line = if msg.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}: {msg}")
        };
        return Ok(Err(codec::one_line(&line)));
    }
    Ok(Ok(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_key_matches_the_results_middleware() {
        // Checked against dramatiq 2.2.1 by the capture script (fixtures/dramatiq/README.md).
        assert_eq!(result_key("default", "add", "x").len(), 32);
        assert_eq!(base_queue("default.DQ"), "default");
        assert_eq!(base_queue("default.XQ"), "default");
        assert_eq!(base_queue("default"), "default");
    }

    #[test]
    fn failure_results_become_error_lines() {
        let r = decode_result(br#"{"__t":"dramatiq.results.Result","exn":{"type":"ValueError","msg":"card declined 3"}}"#).unwrap();
        assert_eq!(r, Err("ValueError: card declined 3".to_string()));
        assert_eq!(decode_result(b"42").unwrap(), Ok(serde_json::json!(42)));
    }
}
