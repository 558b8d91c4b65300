//! What arq 0.28 writes, command for command (`src/loadgen/arq.rs`, watched with `redis-cli
//! monitor`; arq's `connections.py` / `worker.py`), applied to a [`FakeRedis`], on the captured
//! JSON-serializer job and results (`tests/fixtures/arq/job_json_queued.json`,
//! `result_json_*.json`) with their times and id rewritten. Each function is one transaction.
//!
//! - enqueue: `PSETEX arq:job:<id> <expires> <job>`, `ZADD arq:queue <due ms> <id>`;
//! - a try starts: `PSETEX arq:in-progress:<id> <timeout + 10 s> 1`, then `INCR` and `EXPIRE
//!   arq:retry:<id>` (the try number);
//! - a try ends with a result (`finish_job`): `SET arq:result:<id> <result> PX <keep_result>`,
//!   `ZREM arq:queue <id>`, `DEL` of the in-progress, retry and job keys;
//! - `Retry`: `ZINCRBY arq:queue <defer + elapsed> <id>`, `DEL arq:in-progress:<id>`;
//! - health check: `PSETEX <queue>:health-check <interval + 1 s> <summary>`.

use super::fake_redis::FakeRedis;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub const QUEUE: &str = "arq:queue";
/// `job_timeout` (300 s) + 10 s: the in-progress key's life.
pub const IN_PROGRESS_MS: i64 = 310_000;
/// `keep_result` (an hour).
pub const KEEP_RESULT_MS: i64 = 3_600_000;
/// `health_check_interval` (an hour) + 1 s.
pub const HEALTH_CHECK_MS: i64 = 3_601_000;

fn fixture_value(name: &str) -> Value {
    use base64::Engine;
    let path = format!("{}/tests/fixtures/arq/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_slice(&bytes).expect("JSON");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["value"].as_str().expect("a value"))
        .expect("base64");
    serde_json::from_slice(&raw).expect("a JSON-serialized arq record")
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The captured `add(1, 2, note=None)` job, enqueued at `now`.
fn job(now: DateTime<Utc>) -> Value {
    let mut job = fixture_value("job_json_queued.json");
    job["et"] = json!(ms(now));
    job
}

/// `enqueue_job`: the definition and the queue entry, due at `due` (`_defer_by` when later
/// than `now`).
pub fn enqueue(r: &mut FakeRedis, id: &str, now: DateTime<Utc>, due: DateTime<Utc>) {
    let expires = (ms(due) - ms(now)) + 86_400_000;
    r.set_px(
        &format!("arq:job:{id}"),
        job(now).to_string().as_bytes(),
        expires,
    );
    r.zadd(QUEUE, ms(due) as f64, id);
}

/// A worker starts a try: the in-progress key, then the try counter. The try number.
pub fn start(r: &mut FakeRedis, id: &str) -> i64 {
    r.set_px(&format!("arq:in-progress:{id}"), b"1", IN_PROGRESS_MS);
    let retry = format!("arq:retry:{id}");
    let tries = r.incr(&retry);
    r.expire(&retry, 88_400);
    tries
}

/// How a try ended with a result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Returned 3.
    Success,
    /// Raised an exception the JSON serializer cannot store.
    Failure,
}

/// `finish_job` with a result: written, then the queue entry and the keys deleted.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    r: &mut FakeRedis,
    id: &str,
    enqueued: DateTime<Utc>,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
    tries: i64,
    outcome: Outcome,
) {
    let mut result = match outcome {
        Outcome::Success => fixture_value("result_json_success.json"),
        Outcome::Failure => {
            let mut v = fixture_value("result_json_failure.json");
            let j = job(enqueued);
            for k in ["f", "a", "k"] {
                v[k] = j[k].clone();
            }
            v
        }
    };
    result["t"] = json!(tries);
    result["et"] = json!(ms(enqueued));
    result["st"] = json!(ms(started));
    result["ft"] = json!(ms(now));
    result["q"] = json!(QUEUE);
    result["id"] = json!(id);
    r.set_px(
        &format!("arq:result:{id}"),
        result.to_string().as_bytes(),
        KEEP_RESULT_MS,
    );
    r.zrem(QUEUE, id);
    for key in ["in-progress", "retry", "job"] {
        r.del(&format!("arq:{key}:{id}"));
    }
}

/// The job raised `Retry(defer)`: its score moves on, its in-progress key goes.
pub fn retry(r: &mut FakeRedis, id: &str, by_ms: i64) {
    r.zincrby(QUEUE, by_ms as f64, id);
    r.del(&format!("arq:in-progress:{id}"));
}

/// A worker's health check.
pub fn health_check(r: &mut FakeRedis, now: DateTime<Utc>) {
    let summary = format!(
        "{} j_complete=0 j_failed=0 j_retried=0 j_ongoing=1 queued=0",
        now.format("%b-%d %H:%M:%S")
    );
    r.set_px(
        &format!("{QUEUE}:health-check"),
        summary.as_bytes(),
        HEALTH_CHECK_MS,
    );
}
