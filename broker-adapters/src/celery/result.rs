//! Records of Celery's Redis result backend (`celery-task-meta-<id>`, stored with SETEX and
//! published on a channel of the same name): status, result or exception, traceback, and with
//! `result_extended` the task's name, arguments, worker, retries and queue.

use super::message::{as_string, as_u32};
use crate::codec::{self, CodecError};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The key and channel prefix of result records.
pub const RESULT_PREFIX: &str = "celery-task-meta-";

/// What Celery 5.7's `result_compression` puts before a compressed record.
const COMPRESSED_MARKER: &[u8] = b"\x00celery-compressed\x00";

/// One result record.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMeta {
    pub task_id: String,
    /// `PENDING`, `RECEIVED`, `STARTED`, `RETRY`, `SUCCESS`, `FAILURE`, `REVOKED`, `REJECTED`,
    /// or a custom state a task set with `update_state`.
    pub status: String,
    pub result: Value,
    pub traceback: Option<String>,
    pub date_done: Option<DateTime<Utc>>,
    pub name: Option<String>,
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    pub worker: Option<String>,
    pub retries: Option<u32>,
    pub queue: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("result record does not decode: {0}")]
    Decode(#[from] CodecError),
    #[error("result record has no task_id or status")]
    Shape,
}

/// Decodes a stored or published result record (JSON by default; msgpack and pickle
/// result serializers are recognised by their first byte).
pub fn decode(bytes: &[u8], key_task_id: Option<&str>) -> Result<ResultMeta, ResultError> {
    let decompressed;
    let bytes = match bytes.strip_prefix(COMPRESSED_MARKER) {
        // Celery 5.7 `result_compression`: marker, compression type, NUL, compressed body.
        Some(rest) => {
            let nul = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or(ResultError::Shape)?;
            let compression = String::from_utf8_lossy(&rest[..nul]);
            decompressed = codec::decompress(&compression, &rest[nul + 1..])?;
            &decompressed[..]
        }
        None => bytes,
    };
    let v = codec::sniff_decode(bytes)?;
    let obj = v.as_object().ok_or(ResultError::Shape)?;
    let status = obj
        .get("status")
        .and_then(Value::as_str)
        .ok_or(ResultError::Shape)?;
    let task_id = obj
        .get("task_id")
        .and_then(as_string)
        .or_else(|| key_task_id.map(str::to_string))
        .ok_or(ResultError::Shape)?;
    Ok(ResultMeta {
        task_id,
        status: status.to_string(),
        result: obj.get("result").cloned().unwrap_or(Value::Null),
        traceback: obj
            .get("traceback")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        date_done: obj.get("date_done").and_then(codec::parse_time),
        name: obj.get("name").and_then(as_string),
        args: obj.get("args").cloned().filter(|v| !v.is_null()),
        kwargs: obj.get("kwargs").cloned().filter(|v| !v.is_null()),
        worker: obj.get("worker").and_then(as_string),
        retries: obj.get("retries").and_then(as_u32),
        queue: obj.get("queue").and_then(as_string),
    })
}

/// The one-line error of a failed or retried task: from the serialised exception
/// (`{"exc_type": "ValueError", "exc_message": ["card declined 3"]}`), else from the
/// traceback's last line, else the raw value.
pub fn error_line(result: &Value, traceback: Option<&str>) -> Option<String> {
    if let Some(obj) = result.as_object() {
        if let Some(exc_type) = obj.get("exc_type").and_then(Value::as_str) {
            let message = match obj.get("exc_message") {
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match p {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            return Some(codec::one_line(&if message.is_empty() {
                exc_type.to_string()
            } else {
                format!("{exc_type}: {message}")
            }));
        }
    }
    if let Some(line) = traceback.and_then(codec::error_line_from_traceback) {
        return Some(line);
    }
    match result {
        Value::Null => None,
        Value::String(s) => Some(codec::one_line(s)),
        other => Some(codec::one_line(&other.to_string())),
    }
}
