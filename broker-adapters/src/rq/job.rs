//! RQ job hashes (`<p>job:<id>`): the fields taskscope reads and what they decode to.
//!
//! `data` is `zlib.compress(serializer.dumps((func_name, instance, args, kwargs)))`; the default
//! serializer is pickle (protocol 5), `rq.serializers.JSONSerializer` writes JSON. Nothing in the
//! hash names the serializer, so the payload is sniffed. A payload that does not decode (a
//! custom class in the arguments, an unknown serializer) still yields the job, with the function
//! name taken from `description` and no arguments.

use crate::adapter::Reply;
use crate::codec;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The fields read with every HMGET of a job hash, in this order; `data` is appended when the
/// call has not been decoded yet.
pub const JOB_FIELDS: [&str; 13] = [
    "status",
    "origin",
    "description",
    "created_at",
    "enqueued_at",
    "started_at",
    "ended_at",
    "last_heartbeat",
    "worker_name",
    "retries_left",
    "number_of_retries",
    "exc_info",
    "result",
];

/// The field holding the serialized call.
pub const DATA_FIELD: &str = "data";

/// RQ's `JobStatus` values (RQ 3.0 adds `created`, `rate_limited`, `ready_to_enqueue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Created,
    Queued,
    Deferred,
    Scheduled,
    RateLimited,
    ReadyToEnqueue,
    Started,
    Finished,
    Failed,
    Stopped,
    Canceled,
}

impl JobStatus {
    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s.trim() {
            "created" => JobStatus::Created,
            "queued" => JobStatus::Queued,
            "deferred" => JobStatus::Deferred,
            "scheduled" => JobStatus::Scheduled,
            "rate_limited" => JobStatus::RateLimited,
            "ready_to_enqueue" => JobStatus::ReadyToEnqueue,
            "started" => JobStatus::Started,
            "finished" => JobStatus::Finished,
            "failed" => JobStatus::Failed,
            "stopped" => JobStatus::Stopped,
            "canceled" => JobStatus::Canceled,
            _ => return None,
        })
    }

    /// Waiting for a worker (in a queue or a registry that will enqueue it).
    pub fn is_waiting(self) -> bool {
        matches!(
            self,
            JobStatus::Created
                | JobStatus::Queued
                | JobStatus::Deferred
                | JobStatus::Scheduled
                | JobStatus::RateLimited
                | JobStatus::ReadyToEnqueue
        )
    }
}

/// Why a job hash did not decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("job hash has no status field")]
    NoStatus,
    #[error("unknown job status {0:?}")]
    UnknownStatus(String),
    #[error("job data: {0}")]
    Data(String),
    /// `data` is over `--max-payload-bytes` and was not read (its length).
    #[error("job data: {}", crate::adapter::too_large_error(*.0))]
    TooLarge(u64),
}

impl JobError {
    /// A stable short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::NoStatus => "job-no-status",
            JobError::UnknownStatus(_) => "job-status",
            JobError::Data(_) => "job-data",
            JobError::TooLarge(_) => "job-data-too-large",
        }
    }
}

/// The decoded call: what the job runs with which arguments.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Call {
    /// `module.function` (or `module.Class.method` for an instance method).
    pub name: Option<String>,
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
}

/// One job hash as read.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub status: JobStatus,
    /// The queue name.
    pub origin: Option<String>,
    /// `module.func(args...)` as RQ rendered it at enqueue time.
    pub description: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Start of the latest attempt (kept while a retried job waits again).
    pub started_at: Option<DateTime<Utc>>,
    /// Raw `started_at`, to tell attempts apart.
    pub started_at_raw: Option<String>,
    pub ended_at: Option<DateTime<Utc>>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub worker_name: Option<String>,
    pub retries_left: Option<u32>,
    pub number_of_retries: Option<u32>,
    /// The legacy `exc_info` field (zlib text); RQ >= 1.12 keeps the traceback in the results
    /// stream instead.
    pub exc_info: Option<String>,
    /// The legacy `result` field (the serializer's bytes of the return value), when present and
    /// plain data; RQ >= 1.12 keeps results in the results stream instead.
    pub legacy_result: Option<Value>,
    /// `None` when `data` was not read; `Some(Err)` when it was but did not decode.
    pub call: Option<Result<Call, JobError>>,
}

impl JobRecord {
    /// The name to show: the decoded function, else the description up to its `(`.
    pub fn name(&self) -> Option<String> {
        if let Some(Ok(Call { name: Some(n), .. })) = &self.call {
            return Some(n.clone());
        }
        let d = self.description.as_deref()?;
        let name = d.split('(').next().unwrap_or(d).trim();
        (!name.is_empty()).then(|| name.to_string())
    }
}

fn text(reply: &Reply) -> Option<String> {
    let b = reply.as_bytes()?;
    let s = String::from_utf8_lossy(b).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn time(reply: &Reply) -> Option<DateTime<Utc>> {
    text(reply).and_then(|s| codec::parse_time_str(&s))
}

fn count(reply: &Reply) -> Option<u32> {
    reply.as_i64().and_then(|n| u32::try_from(n).ok())
}

/// Decodes an HMGET of `fields` (as asked: [`JOB_FIELDS`], maybe plus `data`). `Ok(None)` when
/// the hash does not exist (every value nil).
pub fn decode(fields: &[String], values: &[Reply]) -> Result<Option<JobRecord>, JobError> {
    if values.iter().all(|v| matches!(v, Reply::Nil)) {
        return Ok(None);
    }
    let get = |name: &str| -> &Reply {
        fields
            .iter()
            .position(|f| f == name)
            .and_then(|i| values.get(i))
            .unwrap_or(&Reply::Nil)
    };
    let Some(status_text) = text(get("status")) else {
        // RQ's heartbeat can race the deletion of a job (`result_ttl=0`) and leave a hash with
        // only `last_heartbeat`, which it deletes at once: not a job.
        let job_like = ["origin", "description", DATA_FIELD]
            .iter()
            .any(|f| !matches!(get(f), Reply::Nil));
        return if job_like {
            Err(JobError::NoStatus)
        } else {
            Ok(None)
        };
    };
    let status = JobStatus::parse(&status_text).ok_or(JobError::UnknownStatus(status_text))?;
    let call = match get(DATA_FIELD) {
        Reply::TooLarge(n) => Some(Err(JobError::TooLarge(*n))),
        data => data.as_bytes().map(decode_data),
    };
    Ok(Some(JobRecord {
        status,
        origin: text(get("origin")),
        description: text(get("description")),
        created_at: time(get("created_at")),
        enqueued_at: time(get("enqueued_at")),
        started_at: time(get("started_at")),
        started_at_raw: text(get("started_at")),
        ended_at: time(get("ended_at")),
        last_heartbeat: time(get("last_heartbeat")),
        worker_name: text(get("worker_name")),
        retries_left: count(get("retries_left")),
        number_of_retries: count(get("number_of_retries")),
        exc_info: get("exc_info")
            .as_bytes()
            .map(decompress_text)
            .filter(|t| !t.trim().is_empty()),
        legacy_result: get("result").as_bytes().and_then(|b| match deserialize(b) {
            Ok(Decoded::Exact(v)) => Some(v),
            _ => None,
        }),
        call,
    }))
}

/// zlib-compressed text, or the text itself when it is not compressed.
pub fn decompress_text(bytes: &[u8]) -> String {
    match codec::decompress("zlib", bytes) {
        Ok(plain) => String::from_utf8_lossy(&plain).into_owned(),
        Err(over @ codec::CodecError::Budget(_)) => format!("[not shown: {over}]"),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A serializer's output as JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Plain data (numbers, strings, lists, dicts...): shown as is.
    Exact(Value),
    /// A pickle naming classes taskscope cannot know (a custom class, `datetime`, `Decimal`):
    /// its structure, with the objects replaced by what they pickled. Good enough to find the
    /// function name; not shown as arguments or results.
    WithClasses(Value),
}

/// A serializer's output (pickle or JSON), sniffed: pickle protocol 2+ starts with `0x80`.
pub fn deserialize(bytes: &[u8]) -> Result<Decoded, String> {
    let json_like = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| {
            matches!(
                b,
                b'[' | b'{' | b'"' | b'-' | b'0'..=b'9' | b'n' | b't' | b'f'
            )
        });
    if bytes.first() == Some(&0x80) || !json_like {
        match codec::pickle_to_json_checked(bytes) {
            Ok((v, false)) => Ok(Decoded::Exact(v)),
            Ok((v, true)) => Ok(Decoded::WithClasses(v)),
            Err(e) => Err(e.to_string()),
        }
    } else {
        codec::json_from_slice(bytes)
            .map(Decoded::Exact)
            .map_err(|e| e.to_string())
    }
}

/// Decodes `data`: zlib (older RQ stored it raw), then the serializer, then the
/// `(func_name, instance, args, kwargs)` tuple. Arguments holding objects of classes come out
/// as `None` (the function name is still known).
pub fn decode_data(bytes: &[u8]) -> Result<Call, JobError> {
    let plain = match codec::decompress("zlib", bytes) {
        Ok(plain) => plain,
        Err(over @ codec::CodecError::Budget(_)) => return Err(JobError::Data(over.to_string())),
        // Older RQ stored it uncompressed.
        Err(_) => bytes.to_vec(),
    };
    let (value, exact) = match deserialize(&plain).map_err(JobError::Data)? {
        Decoded::Exact(v) => (v, true),
        Decoded::WithClasses(v) => (v, false),
    };
    let Value::Array(mut parts) = value else {
        return Err(JobError::Data(
            "not a (func_name, instance, args, kwargs) tuple".into(),
        ));
    };
    if parts.len() != 4 {
        return Err(JobError::Data(format!(
            "a tuple of {} items, expected (func_name, instance, args, kwargs)",
            parts.len()
        )));
    }
    let kwargs = parts.pop().unwrap_or(Value::Null);
    let args = parts.pop().unwrap_or(Value::Null);
    let name = match parts.first() {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    if !exact {
        return Ok(Call {
            name,
            args: None,
            kwargs: None,
        });
    }
    let args = match args {
        Value::Array(_) => Some(args),
        Value::Null => None,
        _ => return Err(JobError::Data("args is not a tuple".into())),
    };
    let kwargs = match kwargs {
        Value::Object(_) => Some(kwargs),
        Value::Null => None,
        _ => return Err(JobError::Data("kwargs is not a dict".into())),
    };
    Ok(Call { name, args, kwargs })
}
