//! arq's payloads: job definitions (`arq:job:<id>`), results (`arq:result:<id>`), try counters
//! and health-check lines, decoded as data.
//!
//! A job is `serializer({"t": job_try, "f": function, "a": args, "k": kwargs, "et":
//! enqueue_ms})`, a result the same plus `"s"` (success), `"r"` (the return value or the
//! exception), `"st"`/`"ft"` (start and finish, ms) and `"q"`, `"id"` (`arq/jobs.py`). The
//! serializer is pickle unless the application sets `job_serializer`; nothing in Redis names
//! it, so the bytes are sniffed: pickle (`0x80` then a protocol byte), JSON (`{`), msgpack (a
//! map header). Every decoder is the crate's budgeted one; a pickle is never executed, its
//! objects become `{"__class__": ..., "__args__": [...]}` placeholders.

use crate::codec::{self, CodecError};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

/// Why a payload did not decode.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("unknown serialization (not pickle, JSON or msgpack)")]
    UnknownSerialization,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("not a dict of arq's fields")]
    NotADict,
    #[error("no function name (\"f\")")]
    NoFunction,
}

impl RecordError {
    /// A stable short name for logs and counters.
    pub fn kind(&self, what: &'static str) -> &'static str {
        match (what, self) {
            ("job", RecordError::Codec(e)) if e.is_over_budget() => "job-budget",
            ("job", _) => "job",
            (_, RecordError::Codec(e)) if e.is_over_budget() => "result-budget",
            _ => "result",
        }
    }
}

/// Which serializer wrote a payload, as far as its bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serialization {
    Pickle,
    Json,
    Msgpack,
}

/// Recognises arq's serializers from the first bytes. arq's records are dicts of 5 or 11
/// entries, so a msgpack one starts with a fixmap header `0x85`/`0x8b` (never `0x80`, an empty
/// map); a pickle of protocol 2+ starts `0x80 <protocol>`.
pub fn sniff(bytes: &[u8]) -> Option<Serialization> {
    match bytes {
        [0x80, 2..=5, ..] => Some(Serialization::Pickle),
        [0x81..=0x8f, ..] | [0xde | 0xdf, ..] => Some(Serialization::Msgpack),
        _ => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Some(Serialization::Json),
            _ => None,
        },
    }
}

/// Decodes a payload of any of arq's serializers into JSON; `true` when a pickle held objects
/// of classes (placeholders stand in them).
fn decode(bytes: &[u8]) -> Result<(Map<String, Value>, bool), RecordError> {
    let (value, classes) = match sniff(bytes).ok_or(RecordError::UnknownSerialization)? {
        Serialization::Pickle => codec::pickle_to_json_checked(bytes)?,
        Serialization::Json => (codec::json_from_slice(bytes)?, false),
        Serialization::Msgpack => (codec::msgpack_to_json(bytes)?, false),
    };
    match value {
        Value::Object(map) => Ok((map, classes)),
        _ => Err(RecordError::NotADict),
    }
}

/// What a job definition (or the job part of a result) says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobDef {
    pub function: String,
    /// `None` when they held objects taskscope cannot show as data.
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    /// The try it was enqueued with (`_job_try`), or the result's try (1-based).
    pub job_try: Option<u32>,
    pub enqueued_at: Option<DateTime<Utc>>,
}

/// An `arq:result:<id>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRecord {
    pub job: JobDef,
    pub success: bool,
    /// The return value (success only; `None` when it is not plain data).
    pub value: Option<Value>,
    /// The exception (failures): `ValueError: card declined 3`, or the text arq stored when
    /// the exception did not serialize.
    pub error: Option<String>,
    /// The exception's class name (`CancelledError`, `TimeoutError`...).
    pub exception: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub queue: Option<String>,
}

/// Milliseconds since the epoch, as arq writes every time.
pub fn ms_time(value: &Value) -> Option<DateTime<Utc>> {
    let ms = value
        .as_i64()
        .or_else(|| value.as_f64().map(|f| f as i64))?;
    Utc.timestamp_millis_opt(ms).single()
}

/// Whether a value holds a pickled object's placeholder anywhere.
fn has_object(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if map.contains_key("__class__") {
                    return true;
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    false
}

fn job_fields(map: &Map<String, Value>, classes: bool) -> Result<JobDef, RecordError> {
    let function = map
        .get("f")
        .and_then(Value::as_str)
        .ok_or(RecordError::NoFunction)?
        .to_string();
    let data = |key: &str| {
        map.get(key)
            .filter(|v| !(v.is_null() || (classes && has_object(v))))
            .cloned()
    };
    Ok(JobDef {
        function,
        args: data("a"),
        kwargs: data("k"),
        job_try: map
            .get("t")
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok()),
        enqueued_at: map.get("et").and_then(ms_time),
    })
}

/// Decodes an `arq:job:<id>` value.
pub fn decode_job(bytes: &[u8]) -> Result<JobDef, RecordError> {
    let (map, classes) = decode(bytes)?;
    job_fields(&map, classes)
}

/// The one-line error of an exception placeholder (`{"__class__": "builtins.ValueError",
/// "__args__": ["card declined 3"]}` -> `ValueError: card declined 3`), or of a string.
fn exception_line(value: &Value) -> (String, Option<String>) {
    let Some(map) = value.as_object() else {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return (codec::one_line(&text), None);
    };
    let class = map
        .get("__class__")
        .and_then(Value::as_str)
        .unwrap_or("Exception");
    let short = class.rsplit('.').next().unwrap_or(class).to_string();
    let message = match map.get("__args__") {
        Some(Value::Array(args)) if args.len() == 1 => match &args[0] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        Some(Value::Array(args)) if args.is_empty() => String::new(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let line = if message.is_empty() {
        short.clone()
    } else {
        format!("{short}: {message}")
    };
    (codec::one_line(&line), Some(short))
}

/// Decodes an `arq:result:<id>` value.
pub fn decode_result(bytes: &[u8]) -> Result<ResultRecord, RecordError> {
    let (map, classes) = decode(bytes)?;
    let job = job_fields(&map, classes)?;
    let success = map.get("s").and_then(Value::as_bool).unwrap_or(false);
    let r = map.get("r").cloned().unwrap_or(Value::Null);
    let (value, error, exception) = if success {
        let shown = (!(classes && has_object(&r))).then_some(r);
        (shown, None, None)
    } else {
        let (line, class) = exception_line(&r);
        (None, Some(line), class)
    };
    Ok(ResultRecord {
        job,
        success,
        value,
        error,
        exception,
        started_at: map.get("st").and_then(ms_time),
        finished_at: map.get("ft").and_then(ms_time),
        queue: map.get("q").and_then(Value::as_str).map(str::to_string),
    })
}

/// A health-check line (`Dec-06 06:43:46 j_complete=3 j_failed=1 j_retried=1 j_ongoing=0
/// queued=0`): the jobs running, when it says.
pub fn health_check_ongoing(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.split_whitespace()
        .find_map(|part| part.strip_prefix("j_ongoing="))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_pickle_from_msgpack_and_json() {
        assert_eq!(sniff(b"\x80\x04\x95"), Some(Serialization::Pickle));
        assert_eq!(sniff(b"\x85\xa1t"), Some(Serialization::Msgpack));
        assert_eq!(sniff(b" {\"f\": 1}"), Some(Serialization::Json));
        assert_eq!(
            sniff(b"\x80"),
            None,
            "an empty msgpack map is no arq record"
        );
        assert_eq!(sniff(b"hello"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn an_exception_becomes_one_line() {
        let v = serde_json::json!({"__class__": "builtins.ValueError", "__args__": ["a\nb"]});
        assert_eq!(
            exception_line(&v),
            ("ValueError: a".to_string(), Some("ValueError".to_string()))
        );
        let v =
            serde_json::json!({"__class__": "asyncio.exceptions.CancelledError", "__args__": []});
        assert_eq!(exception_line(&v).0, "CancelledError");
        assert_eq!(exception_line(&Value::from("unable")).0, "unable");
    }

    #[test]
    fn health_check_lines_say_how_many_jobs_run() {
        assert_eq!(
            health_check_ongoing(b"Dec-06 06:43:46 j_complete=0 j_failed=0 j_ongoing=2 queued=0"),
            Some(2)
        );
        assert_eq!(health_check_ongoing(b"garbage"), None);
    }
}
