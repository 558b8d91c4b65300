//! A BullMQ job hash (`<prefix>:<queue>:<id>`), decoded: what the events stream does not carry
//! (the job's data, options, enqueue time, stack trace, the worker that ran it) and, when the
//! stream was trimmed past it, its outcome (`finishedOn` with `returnvalue` or `failedReason`).
//! Read with one `HMGET` of [`FIELDS`]; `data` and `returnvalue` are JSON (decoded within the
//! crate's budget), `stacktrace` a JSON array of strings.

use crate::codec;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The fields read, in this order.
pub const FIELDS: [&str; 12] = [
    "name",
    "data",
    "timestamp",
    "delay",
    "processedOn",
    "finishedOn",
    "returnvalue",
    "failedReason",
    "stacktrace",
    "atm",
    "pb",
    "parentKey",
];

/// What a job hash says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobHash {
    pub name: Option<String>,
    pub data: Option<Value>,
    /// When the job was added (`timestamp`).
    pub added_at: Option<DateTime<Utc>>,
    /// `delay` in ms (0 for none).
    pub delay_ms: Option<i64>,
    /// When its last attempt started.
    pub processed_on: Option<DateTime<Utc>>,
    /// When its last attempt ended; set once the job finished (and by a failed attempt).
    pub finished_on: Option<DateTime<Utc>>,
    pub returnvalue: Option<Value>,
    /// A `returnvalue` field is there (what `moveToFinished` writes on success, whatever
    /// the value, even one that does not decode).
    pub completed: bool,
    pub failed_reason: Option<String>,
    /// The stack traces of its failed attempts, newest last, joined.
    pub stacktrace: Option<String>,
    /// Attempts made (`atm`): attempts that ended, success or failure (not stalls).
    pub attempts_made: Option<u32>,
    /// The worker that ran its last attempt (`pb`: the `Worker`'s `name` option).
    pub worker: Option<String>,
    /// A flow child's parent job key.
    pub parent_key: Option<String>,
    /// `data` or `returnvalue` that did not decode: `(field, message)`.
    pub errors: Vec<(&'static str, String)>,
}

impl JobHash {
    /// Whether the hash was there at all (BullMQ writes `name`, `data`, `timestamp` at add).
    pub fn exists(&self) -> bool {
        self.name.is_some() || self.added_at.is_some() || self.data.is_some()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn int(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

fn millis(bytes: &[u8]) -> Option<DateTime<Utc>> {
    int(bytes)
        .filter(|ms| *ms > 0)
        .and_then(DateTime::from_timestamp_millis)
}

/// Decodes `(field, value)` pairs (an `HMGET` of [`FIELDS`] zipped with them, or an
/// `HGETALL`); a missing value is `None`.
pub fn decode<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> JobHash {
    let mut job = JobHash::default();
    for (field, value) in pairs {
        let Some(v) = value else {
            continue;
        };
        match field {
            "name" => job.name = Some(text(v)),
            "data" => match codec::json_from_slice(v) {
                Ok(d) => job.data = Some(d),
                Err(e) => job.errors.push(("data", e.to_string())),
            },
            "timestamp" => job.added_at = millis(v),
            "delay" => job.delay_ms = int(v),
            "processedOn" => job.processed_on = millis(v),
            "finishedOn" => job.finished_on = millis(v),
            "returnvalue" => {
                job.completed = true;
                match codec::json_from_slice(v) {
                    Ok(r) => job.returnvalue = Some(r),
                    Err(e) => job.errors.push(("returnvalue", e.to_string())),
                }
            }
            "failedReason" => job.failed_reason = Some(text(v)).filter(|r| !r.is_empty()),
            "stacktrace" => job.stacktrace = stacktrace(v),
            "atm" => job.attempts_made = int(v).and_then(|n| u32::try_from(n).ok()),
            "pb" => job.worker = Some(text(v)).filter(|w| !w.is_empty()),
            "parentKey" => job.parent_key = Some(text(v)),
            _ => {}
        }
    }
    job
}

/// `stacktrace`: a JSON array of strings (one per failed attempt, `stackTraceLimit` kept).
fn stacktrace(bytes: &[u8]) -> Option<String> {
    let value = codec::json_from_slice(bytes).ok()?;
    let lines: Vec<&str> = value.as_array()?.iter().filter_map(Value::as_str).collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}
