//! What Sidekiq 6.4 writes, command for command (`src/loadgen/sidekiq.rs`, watched with
//! `redis-cli monitor`), applied to a [`FakeRedis`], on the captured job JSON and process hash
//! of `tests/fixtures/sidekiq/` with the jid and times rewritten.
//!
//! - push: `SADD queues <q>`, `LPUSH queue:<q> <job>`; `perform_in`: `ZADD schedule <at> <job>`;
//! - a fetcher's `BRPOP queue:<q>` (an `rpop` event);
//! - a success writes nothing; a failure with retries left `ZADD retry <due> <job + error
//!   fields>`, without `ZADD dead <now> <job>`; the poller moves a due `retry`/`schedule` member
//!   back with `ZREM` + `LPUSH`;
//! - every heartbeat (5 s): `UNLINK <identity>:workers`, one `HSET` per running job (`{queue,
//!   payload, run_at}`), `EXPIRE 60`, `SADD processes <identity>`, `HSET <identity> info ..
//!   busy .. beat .. quiet ..`, `EXPIRE 60`.

use super::fake_redis::FakeRedis;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub const QUEUE: &str = "default";
pub const IDENTITY: &str = "vm:18874:9926824b5aba";
/// Sidekiq 6's heartbeat period.
pub const BEAT_MS: i64 = 5_000;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/sidekiq/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_slice(&bytes).expect("JSON")
}

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// The captured `AddJob` of `workers_running.json` as job `jid`, created at `now`.
pub fn job(jid: &str, now: DateTime<Utc>) -> Value {
    let entry: Value = serde_json::from_str(
        fixture("workers_running.json")["fields"]["f5u"]
            .as_str()
            .expect("a work entry"),
    )
    .expect("JSON");
    let mut job: Value =
        serde_json::from_str(entry["payload"].as_str().expect("a payload")).expect("JSON");
    job["jid"] = json!(jid);
    job["created_at"] = json!(seconds(now));
    job["enqueued_at"] = json!(seconds(now));
    job
}

/// `perform_async`.
pub fn push(r: &mut FakeRedis, job: &Value) {
    r.sadd("queues", QUEUE);
    r.lpush(&format!("queue:{QUEUE}"), job.to_string().as_bytes());
}

/// A fetcher's `BRPOP`: the job taken.
pub fn fetch(r: &mut FakeRedis) -> Option<Value> {
    let bytes = r.rpop(&format!("queue:{QUEUE}"))?;
    Some(serde_json::from_slice(&bytes).expect("JSON"))
}

/// A heartbeat of the process, `running` in its work hash.
pub fn heartbeat(
    r: &mut FakeRedis,
    started: DateTime<Utc>,
    running: &[&Value],
    now: DateTime<Utc>,
) {
    heartbeat_of(r, IDENTITY, started, running, now);
}

/// A heartbeat of process `identity`.
pub fn heartbeat_of(
    r: &mut FakeRedis,
    identity: &str,
    started: DateTime<Utc>,
    running: &[&Value],
    now: DateTime<Utc>,
) {
    let workers = format!("{identity}:workers");
    r.del(&workers);
    for (n, job) in running.iter().enumerate() {
        let entry = json!({"queue": QUEUE, "payload": job.to_string(), "run_at": now.timestamp()});
        r.hset(&workers, &format!("t{n}"), entry.to_string().as_bytes());
    }
    r.expire(&workers, 60);
    r.sadd("processes", identity);
    let mut info: Value = serde_json::from_str(
        fixture("process_busy.json")["fields"]["info"]
            .as_str()
            .expect("info"),
    )
    .expect("JSON");
    info["started_at"] = json!(seconds(started));
    info["identity"] = json!(identity);
    let (info, busy, beat) = (
        info.to_string(),
        running.len().to_string(),
        seconds(now).to_string(),
    );
    r.hset_many(
        identity,
        &[
            ("info", info.as_bytes()),
            ("busy", busy.as_bytes()),
            ("beat", beat.as_bytes()),
            ("quiet", b"false"),
        ],
    );
    r.expire(identity, 60);
}

/// The job with a failure's fields (`retry_count` the retries so far).
fn failed(job: &Value, retry_count: u32, now: DateTime<Utc>) -> Value {
    let mut j = job.clone();
    j["error_message"] = json!("card-declined-3");
    j["error_class"] = json!("ArgumentError");
    j["failed_at"] = json!(seconds(now));
    j["retry_count"] = json!(retry_count);
    j
}

/// A failure with retries left: into `retry`, due in `in_s` seconds. The member written.
pub fn fail_to_retry(
    r: &mut FakeRedis,
    job: &Value,
    retry_count: u32,
    in_s: f64,
    now: DateTime<Utc>,
) -> String {
    let member = failed(job, retry_count, now).to_string();
    r.zadd("retry", seconds(now) + in_s, &member);
    member
}

/// A failure without retries left (or `retry: 0`): into `dead`.
pub fn fail_to_dead(r: &mut FakeRedis, job: &Value, retry_count: u32, now: DateTime<Utc>) {
    let member = failed(job, retry_count, now).to_string();
    r.zadd("dead", seconds(now), &member);
}

/// The poller moves a due member of `set` (`retry` or `schedule`) back to its queue.
pub fn requeue(r: &mut FakeRedis, set: &str, member: &str) {
    r.zrem(set, member);
    r.lpush(&format!("queue:{QUEUE}"), member.as_bytes());
}

/// `perform_in`: into `schedule`, due at `at`. The member written.
pub fn schedule(r: &mut FakeRedis, job: &Value, at: DateTime<Utc>) -> String {
    let member = job.to_string();
    r.zadd("schedule", seconds(at), &member);
    member
}
