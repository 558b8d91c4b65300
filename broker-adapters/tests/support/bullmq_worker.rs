//! What BullMQ 6's Lua scripts write, command for command (`src/loadgen/bullmq.rs`, watched
//! with `redis-cli monitor`), applied to a [`FakeRedis`], with the captured job hash of
//! `tests/fixtures/bullmq/lifecycles.json` (job `1`, `add`) and its times rewritten. Each
//! function is one script call (atomic: deliver after it).
//!
//! - `addStandardJob`: `HMSET` of the job hash, `LPUSH wait`, `XADD events` `added`, `waiting`;
//!   with a delay: `ZADD delayed`, `XADD delayed delay=<due ms>`;
//! - `moveToActive`: `RPOPLPUSH wait active`, the lock `SET PX 30000`, `HSET processedOn pb`,
//!   `HINCRBY ats`, `XADD active prev=waiting`;
//! - `moveToFinished`: `LREM active`, `ZADD completed|failed`, `HSET returnvalue|failedReason
//!   finishedOn`, `HINCRBY atm`, `DEL` of the lock, `XADD completed|failed`;
//! - a retry without backoff: `LREM active`, `HSET failedReason`, `HINCRBY atm`, `DEL` lock,
//!   `LPUSH wait`, `XADD waiting prev=active`;
//! - `moveStalledJobsToWait` (a job whose lock expired): `LREM active`, `LPUSH wait`, `XADD
//!   waiting prev=active`, `XADD stalled`.

use super::fake_redis::FakeRedis;
use chrono::{DateTime, Utc};

pub const PREFIX: &str = "bull";
pub const QUEUE: &str = "q1";
/// The worker name (`pb`) of the captures.
pub const WORKER: &str = "w1";
/// The lock's life (`lockDuration`).
pub const LOCK_MS: i64 = 30_000;

fn key(suffix: &str) -> String {
    format!("{PREFIX}:{QUEUE}:{suffix}")
}

/// A task's id: the job key.
pub fn task_id(job: &str) -> String {
    key(job)
}

fn event(r: &mut FakeRedis, fields: &[(&str, &str)]) {
    let fields: Vec<(&str, &[u8])> = fields.iter().map(|(f, v)| (*f, v.as_bytes())).collect();
    r.xadd_maxlen(&key("events"), 10_000, "*", &fields);
}

fn ms(t: DateTime<Utc>) -> String {
    t.timestamp_millis().to_string()
}

/// `Queue.add('add', {x: 2, y: 3}, {attempts})`, as job `job`, at `now`; with `delay_ms`, a
/// delayed job.
pub fn add(r: &mut FakeRedis, job: &str, attempts: u32, delay_ms: i64, now: DateTime<Utc>) {
    let opts = format!("{{\"attempts\":{attempts}}}");
    let (ts, delay) = (ms(now), delay_ms.to_string());
    r.hset_many(
        &key(job),
        &[
            ("name", b"add"),
            ("data", br#"{"x":2,"y":3}"#),
            ("opts", opts.as_bytes()),
            ("timestamp", ts.as_bytes()),
            ("delay", delay.as_bytes()),
            ("priority", b"0"),
        ],
    );
    event(r, &[("event", "added"), ("jobId", job), ("name", "add")]);
    if delay_ms > 0 {
        let due = now.timestamp_millis() + delay_ms;
        r.zadd(&key("delayed"), due as f64, job);
        event(
            r,
            &[
                ("event", "delayed"),
                ("jobId", job),
                ("delay", &due.to_string()),
            ],
        );
    } else {
        r.lpush(&key("wait"), job.as_bytes());
        event(r, &[("event", "waiting"), ("jobId", job)]);
    }
}

/// A delayed job due: out of `delayed`, into `wait`.
pub fn promote(r: &mut FakeRedis, job: &str) {
    r.zrem(&key("delayed"), job);
    r.lpush(&key("wait"), job.as_bytes());
    event(
        r,
        &[("event", "waiting"), ("jobId", job), ("prev", "delayed")],
    );
}

/// `moveToActive` by `worker`: the job taken.
pub fn take(r: &mut FakeRedis, worker: &str, now: DateTime<Utc>) -> Option<String> {
    let job = String::from_utf8(r.rpop(&key("wait"))?).expect("a job id");
    r.lpush(&key("active"), job.as_bytes());
    r.set_px(&format!("{}:lock", key(&job)), b"token-1", LOCK_MS);
    let at = ms(now);
    r.hset_many(
        &key(&job),
        &[("processedOn", at.as_bytes()), ("pb", worker.as_bytes())],
    );
    r.hincrby(&key(&job), "ats", 1);
    event(
        r,
        &[("event", "active"), ("jobId", &job), ("prev", "waiting")],
    );
    Some(job)
}

/// The worker extends its lock (every `lockDuration / 2`).
pub fn extend_lock(r: &mut FakeRedis, job: &str) {
    r.pexpire(&format!("{}:lock", key(job)), LOCK_MS);
}

/// `moveToFinished`: completed with `returnvalue`, or failed for good with `reason`.
pub fn finish(r: &mut FakeRedis, job: &str, outcome: Result<&str, &str>, now: DateTime<Utc>) {
    let (set, field, text) = match outcome {
        Ok(v) => ("completed", "returnvalue", v),
        Err(e) => ("failed", "failedReason", e),
    };
    r.lrem(&key("active"), job.as_bytes());
    r.zadd(&key(set), now.timestamp_millis() as f64, job);
    let at = ms(now);
    r.hset_many(
        &key(job),
        &[(field, text.as_bytes()), ("finishedOn", at.as_bytes())],
    );
    let made = r.hincrby(&key(job), "atm", 1);
    r.del(&format!("{}:lock", key(job)));
    event(
        r,
        &[
            ("event", set),
            ("jobId", job),
            (field, text),
            ("prev", "active"),
        ],
    );
    if outcome.is_err() {
        event(
            r,
            &[
                ("event", "retries-exhausted"),
                ("jobId", job),
                ("attemptsMade", &made.to_string()),
            ],
        );
    }
}

/// A failed attempt with attempts left and no backoff: back to `wait`.
pub fn retry(r: &mut FakeRedis, job: &str, reason: &str) {
    r.lrem(&key("active"), job.as_bytes());
    r.hset(&key(job), "failedReason", reason.as_bytes());
    r.hincrby(&key(job), "atm", 1);
    r.del(&format!("{}:lock", key(job)));
    r.lpush(&key("wait"), job.as_bytes());
    event(
        r,
        &[("event", "waiting"), ("jobId", job), ("prev", "active")],
    );
}

/// The stalled checker moves a job whose lock expired back to `wait`.
pub fn move_stalled(r: &mut FakeRedis, job: &str) {
    r.lrem(&key("active"), job.as_bytes());
    r.lpush(&key("wait"), job.as_bytes());
    event(
        r,
        &[("event", "waiting"), ("jobId", job), ("prev", "active")],
    );
    event(r, &[("event", "stalled"), ("jobId", job)]);
}

/// A failed attempt with attempts left and a backoff: into `delayed`, due in `backoff_ms`.
pub fn retry_with_backoff(
    r: &mut FakeRedis,
    job: &str,
    reason: &str,
    backoff_ms: i64,
    now: DateTime<Utc>,
) {
    let due = now.timestamp_millis() + backoff_ms;
    r.lrem(&key("active"), job.as_bytes());
    r.zadd(&key("delayed"), due as f64, job);
    r.hset(&key(job), "failedReason", reason.as_bytes());
    r.hincrby(&key(job), "atm", 1);
    r.del(&format!("{}:lock", key(job)));
    event(
        r,
        &[
            ("event", "delayed"),
            ("jobId", job),
            ("delay", &due.to_string()),
        ],
    );
}
