//! Entries of RQ's results streams (`<p>results:<job_id>`, RQ >= 1.12), one per finished
//! execution: `type` (1 successful, 2 failed, 3 stopped, 4 retried, 5 max retries exceeded),
//! `worker_name`, `return_value` (base64 of the serializer's bytes), `exc_string` (base64 of
//! zlib of the traceback text), `execution_id`, `execution_started_at` / `execution_ended_at`
//! (Unix seconds). The stream id's milliseconds are when it was written.

use crate::adapter::Reply;
use crate::codec;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// RQ's `Result.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultType {
    Successful,
    Failed,
    Stopped,
    Retried,
    MaxRetriesExceeded,
}

/// Why a results entry did not decode.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("results stream entry is not [id, [field, value, ...]]")]
    Shape,
    #[error("unknown result type {0:?}")]
    Type(String),
    #[error("exc_string: {0}")]
    ExcString(String),
}

impl ResultError {
    pub fn kind(&self) -> &'static str {
        match self {
            ResultError::Shape => "result-shape",
            ResultError::Type(_) => "result-type",
            ResultError::ExcString(_) => "result-exc-string",
        }
    }
}

/// One decoded entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultEntry {
    pub kind: ResultType,
    pub worker_name: Option<String>,
    /// The return value; `None` when absent, or when it does not decode (a custom class).
    pub return_value: Option<Value>,
    /// Whether a return value was present but did not decode.
    pub return_value_undecodable: bool,
    pub traceback: Option<String>,
    /// The attempt's execution id (RQ >= 2.0): one per attempt of the job.
    pub execution_id: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// From the stream id.
    pub written_at: Option<DateTime<Utc>>,
}

impl ResultEntry {
    /// Whether `exc_string` is an exception's traceback (what a job that raised gets), not a
    /// sentence RQ wrote itself (a stopped job, the cleanup of an abandoned one).
    pub fn has_traceback(&self) -> bool {
        self.traceback.as_deref().is_some_and(|tb| {
            tb.trim_start()
                .starts_with("Traceback (most recent call last)")
        })
    }

    /// The traceback's last line (`ValueError: card declined 3`), the contract's `error`. RQ's
    /// cleanup of a dead worker's job writes a sentence instead of a traceback
    /// (`Moved to FailedJobRegistry, due to AbandonedJobError, at ...`): it becomes
    /// `AbandonedJobError: Moved to ...`.
    pub fn error_line(&self) -> Option<String> {
        let tb = self.traceback.as_deref()?;
        let line = codec::error_line_from_traceback(tb)?;
        if !tb.trim_start().starts_with("Traceback") && line.contains("AbandonedJobError") {
            return Some(format!("AbandonedJobError: {line}"));
        }
        Some(line)
    }
}

/// The newest entry of an `XREVRANGE key + - COUNT 1` reply; `Ok(None)` for an empty stream.
pub fn decode_latest(reply: Reply) -> Result<Option<ResultEntry>, ResultError> {
    let Some(entry) = reply.into_items().into_iter().next() else {
        return Ok(None);
    };
    decode_entry(entry).map(Some)
}

/// One `[id, [field, value, ...]]` stream entry.
pub fn decode_entry(entry: Reply) -> Result<ResultEntry, ResultError> {
    let mut parts = entry.into_items().into_iter();
    let (Some(id), Some(body)) = (parts.next(), parts.next()) else {
        return Err(ResultError::Shape);
    };
    let written_at = id
        .as_bytes()
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.split('-').next())
        .and_then(|ms| ms.parse::<f64>().ok())
        .and_then(|ms| codec::unix_seconds(ms / 1000.0));
    let mut kind = None;
    let mut entry = ResultEntry {
        kind: ResultType::Successful,
        worker_name: None,
        return_value: None,
        return_value_undecodable: false,
        traceback: None,
        execution_id: None,
        started_at: None,
        ended_at: None,
        written_at,
    };
    for (field, value) in body.into_pairs() {
        let Some(field) = field.as_bytes() else {
            continue;
        };
        let text = value
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).trim().to_string());
        match (field, text) {
            (b"type", Some(t)) => {
                kind = Some(match t.as_str() {
                    "1" => ResultType::Successful,
                    "2" => ResultType::Failed,
                    "3" => ResultType::Stopped,
                    "4" => ResultType::Retried,
                    "5" => ResultType::MaxRetriesExceeded,
                    _ => return Err(ResultError::Type(t)),
                })
            }
            (b"worker_name", Some(w)) if !w.is_empty() => entry.worker_name = Some(w),
            (b"return_value", Some(b64)) => {
                match codec::base64_decode(&b64)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| super::job::deserialize(&bytes))
                {
                    Ok(super::job::Decoded::Exact(v)) => entry.return_value = Some(v),
                    // An object of a class: not shown, not an error either.
                    Ok(super::job::Decoded::WithClasses(_)) => {}
                    Err(_) => entry.return_value_undecodable = true,
                }
            }
            (b"exc_string", Some(b64)) => {
                let bytes = codec::base64_decode(&b64)
                    .map_err(|e| ResultError::ExcString(e.to_string()))?;
                let text = super::job::decompress_text(&bytes);
                if !text.trim().is_empty() {
                    entry.traceback = Some(text);
                }
            }
            (b"execution_id", Some(id)) if !id.is_empty() => entry.execution_id = Some(id),
            (b"execution_started_at", Some(t)) => entry.started_at = codec::parse_time_str(&t),
            (b"execution_ended_at", Some(t)) => entry.ended_at = codec::parse_time_str(&t),
            _ => {}
        }
    }
    entry.kind = kind.ok_or_else(|| ResultError::Type(String::new()))?;
    Ok(entry)
}
