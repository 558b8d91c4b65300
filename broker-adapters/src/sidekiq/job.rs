//! Sidekiq's payloads decoded as data: a job's JSON (in a queue list, the `schedule`, `retry`
//! and `dead` sorted sets, and inside a running job's work entry), a work entry
//! (`{"queue", "payload", "run_at"}`), and a process's `info` JSON. Every JSON goes through
//! the crate's budgeted decoder; a compressed backtrace (base64 of zlib of a JSON array) through
//! its budgeted decompression.
//!
//! Times: Sidekiq 6 writes `created_at`, `enqueued_at`, `failed_at`, `retried_at` as float
//! epoch seconds, Sidekiq 8 as integer epoch milliseconds (told apart by size); a work entry's
//! `run_at` is integer seconds in both (8.1.7's `processor.rb`), read either way.

use crate::codec::{self, CodecError};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Lines of a backtrace kept.
const BACKTRACE_LINES: usize = 50;

/// Why a payload did not decode.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no jid")]
    NoJid,
}

impl JobError {
    /// A stable short name for logs and counters (`job`, `job-budget`, `work`...).
    pub fn kind(&self, what: &'static str) -> &'static str {
        match (what, self) {
            ("job", JobError::Codec(e)) if e.is_over_budget() => "job-budget",
            ("job", _) => "job",
            ("work", JobError::Codec(e)) if e.is_over_budget() => "work-budget",
            ("work", _) => "work",
            (_, JobError::Codec(e)) if e.is_over_budget() => "process-budget",
            _ => "process",
        }
    }
}

/// What a job's JSON says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Job {
    pub jid: String,
    /// The worker class (`HardJob`), or the wrapped ActiveJob class.
    pub class: Option<String>,
    pub args: Option<Value>,
    pub queue: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub enqueued_at: Option<DateTime<Utc>>,
    /// `retry_count`: 0 after the first failure, 1 after the second...
    pub retry_count: Option<u32>,
    /// `error_class: error_message`, one line.
    pub error: Option<String>,
    /// The backtrace lines Sidekiq kept (`backtrace: true` or a count).
    pub backtrace: Option<String>,
    pub failed_at: Option<DateTime<Utc>>,
    pub retried_at: Option<DateTime<Utc>>,
}

impl Job {
    /// When its last failure happened (the retry's, or the first one's).
    pub fn last_failure_at(&self) -> Option<DateTime<Utc>> {
        self.retried_at.or(self.failed_at)
    }
}

/// A time as Sidekiq writes it: float seconds (6), or integer milliseconds (7.x, 8).
pub fn job_time(value: &Value) -> Option<DateTime<Utc>> {
    let n = value.as_f64()?;
    // 1e11 seconds is the year 5138; milliseconds of today are 1.8e12.
    let secs = if n > 1e11 { n / 1000.0 } else { n };
    codec::unix_seconds(secs)
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, JobError> {
    match codec::json_from_slice(bytes)? {
        Value::Object(map) => Ok(map),
        _ => Err(JobError::NotAnObject),
    }
}

/// A compressed backtrace (`error_backtrace`: base64 of zlib of a JSON array of lines), or a
/// plain array (Sidekiq 5), as text.
fn backtrace(value: &Value) -> Option<String> {
    let lines = match value {
        Value::Array(lines) => lines.clone(),
        Value::String(text) => {
            let zlib = codec::base64_decode(text).ok()?;
            let json = codec::decompress("application/x-zlib", &zlib).ok()?;
            match codec::json_from_slice(&json).ok()? {
                Value::Array(lines) => lines,
                _ => return None,
            }
        }
        _ => return None,
    };
    let text: Vec<&str> = lines
        .iter()
        .filter_map(Value::as_str)
        .take(BACKTRACE_LINES)
        .collect();
    (!text.is_empty()).then(|| text.join("\n"))
}

/// The job of a JSON object already parsed (a work entry's payload in Sidekiq 7+).
pub fn job_from_map(map: &Map<String, Value>) -> Result<Job, JobError> {
    let jid = map
        .get("jid")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .ok_or(JobError::NoJid)?
        .to_string();
    let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
    // ActiveJob: the job class is in `wrapped`, its arguments in the first arg's `arguments`.
    let class = text("wrapped").or_else(|| text("class"));
    let error = match (text("error_class"), text("error_message")) {
        (Some(c), Some(m)) if !m.is_empty() => Some(codec::one_line(&format!("{c}: {m}"))),
        (Some(c), _) => Some(c),
        (None, Some(m)) => Some(codec::one_line(&m)),
        (None, None) => None,
    };
    Ok(Job {
        jid,
        class,
        args: map.get("args").cloned(),
        queue: text("queue"),
        created_at: map.get("created_at").and_then(job_time),
        enqueued_at: map.get("enqueued_at").and_then(job_time),
        retry_count: map
            .get("retry_count")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok()),
        error,
        backtrace: map.get("error_backtrace").and_then(backtrace),
        failed_at: map.get("failed_at").and_then(job_time),
        retried_at: map.get("retried_at").and_then(job_time),
    })
}

/// Decodes a job's JSON (a queue list entry, a sorted-set member).
pub fn decode_job(bytes: &[u8]) -> Result<Job, JobError> {
    job_from_map(&object(bytes)?)
}

/// A running job, as a process's heartbeat writes it into its work hash.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkEntry {
    pub queue: Option<String>,
    pub job: Job,
    /// When the job started (`run_at`).
    pub run_at: Option<DateTime<Utc>>,
}

/// Decodes one value of `<identity>:workers` (Sidekiq 6: `payload` is the job's JSON as a
/// string) or `<identity>:work` (Sidekiq 7+: the same, or an object).
pub fn decode_work(bytes: &[u8]) -> Result<WorkEntry, JobError> {
    let map = object(bytes)?;
    let job = match map.get("payload") {
        Some(Value::String(s)) => decode_job(s.as_bytes())?,
        Some(Value::Object(m)) => job_from_map(m)?,
        _ => return Err(JobError::NoJid),
    };
    Ok(WorkEntry {
        queue: map.get("queue").and_then(Value::as_str).map(str::to_string),
        job,
        run_at: map.get("run_at").and_then(job_time),
    })
}

/// What a process's hash says about it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcessInfo {
    pub hostname: Option<String>,
    pub pid: Option<u32>,
    pub queues: Vec<String>,
    pub concurrency: Option<u32>,
    /// Jobs running at its last heartbeat.
    pub busy: Option<u32>,
    /// Its last heartbeat (the process's clock).
    pub beat: Option<DateTime<Utc>>,
    /// Quiet (TSTP): it fetches no more jobs.
    pub quiet: bool,
}

/// Decodes a process hash read as `HGETALL` pairs: `info` (JSON), `busy`, `beat`, `quiet`.
pub fn decode_process(fields: &[(String, Vec<u8>)]) -> Result<ProcessInfo, JobError> {
    let mut p = ProcessInfo::default();
    for (field, value) in fields {
        let text = || String::from_utf8_lossy(value).trim().to_string();
        match field.as_str() {
            "info" => {
                let info = object(value)?;
                p.hostname = info
                    .get("hostname")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                p.pid = info
                    .get("pid")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok());
                p.concurrency = info
                    .get("concurrency")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .or(p.concurrency);
                p.queues = info
                    .get("queues")
                    .and_then(Value::as_array)
                    .map(|qs| {
                        qs.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "busy" => p.busy = text().parse().ok(),
            "concurrency" => p.concurrency = text().parse().ok(),
            "beat" => p.beat = text().parse::<f64>().ok().and_then(codec::unix_seconds),
            "quiet" => p.quiet = text() == "true",
            _ => {}
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_seconds_or_milliseconds() {
        let s = job_time(&serde_json::json!(1796549656.8053188)).unwrap();
        let ms = job_time(&serde_json::json!(1796549656805u64)).unwrap();
        assert_eq!(s.timestamp(), ms.timestamp());
        assert_eq!(job_time(&serde_json::json!("x")), None);
    }

    #[test]
    fn a_job_without_jid_is_refused() {
        assert!(matches!(
            decode_job(br#"{"class":"A"}"#),
            Err(JobError::NoJid)
        ));
        assert!(matches!(decode_job(b"[1]"), Err(JobError::NotAnObject)));
        assert!(decode_job(b"{").is_err());
    }
}
