//! BullMQ 6 (prefix `bull`, queue `load`), as captured in `broker-adapters/tests/fixtures/bullmq/`
//! and watched with `redis-cli monitor`: the library's Lua scripts, written out as the commands
//! they run.
//! - Add (`addStandardJob`): `HMSET` of the job hash, `LPUSH wait`, `XADD events` `added` and
//!   `waiting`.
//! - Start (`moveToActive`): `RPOPLPUSH wait active` (here `LREM` and `LPUSH`, so the driver's
//!   oldest-first pick is exact), the lock `SET PX`, `HSET processedOn pb`, `HINCRBY ats`,
//!   `XADD active`.
//! - Finish (`moveToFinished`): `LREM active`, `ZADD completed|failed`, `HSET
//!   returnvalue|failedReason finishedOn`, `HINCRBY atm`, `DEL` of the lock, `XADD
//!   completed|failed` (and `retries-exhausted`).
//! - A retry without backoff (`retryJob`): `LREM active`, `LPUSH wait`, `HINCRBY atm`, `XADD
//!   waiting prev=active`.

use super::{cmd, Cmd, Outcome, Task};
use chrono::{DateTime, Utc};
use serde_json::json;

/// The queue's key prefix: `<prefix>:<queue>`.
pub const QUEUE: &str = "bull:load";
/// The events stream's `maxLenEvents` (BullMQ's default).
const MAX_EVENTS: &str = "10000";

/// The job id inside the queue (a task id is `QUEUE:<job id>`).
fn job_id(t: &Task) -> &str {
    t.id.rsplit(':').next().unwrap_or(&t.id)
}

fn key(suffix: &str) -> String {
    format!("{QUEUE}:{suffix}")
}

fn event(fields: &[&str]) -> Cmd {
    let mut args = vec![
        key("events"),
        "MAXLEN".into(),
        "~".into(),
        MAX_EVENTS.into(),
        "*".into(),
    ];
    args.extend(fields.iter().map(|f| f.to_string()));
    cmd("XADD", args)
}

fn function(t: &Task) -> &'static str {
    match t.seq % 3 {
        0 => "add",
        1 => "send-email",
        _ => "charge",
    }
}

/// The queue's metadata hash, as the first `Queue.add` writes it.
pub fn setup() -> Vec<Cmd> {
    vec![cmd(
        "HSET",
        [
            key("meta"),
            "opts.maxLenEvents".into(),
            MAX_EVENTS.into(),
            "version".into(),
            "bullmq:6.7.6".into(),
        ],
    )]
}

pub fn enqueue(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let id = job_id(t);
    let data = json!({"x": t.seq % 1000, "y": 1}).to_string();
    vec![
        cmd(
            "HSET",
            [
                t.id.clone(),
                "name".into(),
                function(t).into(),
                "data".into(),
                data,
                "opts".into(),
                r#"{"attempts":2}"#.into(),
                "timestamp".into(),
                wall.timestamp_millis().to_string(),
                "delay".into(),
                "0".into(),
                "priority".into(),
                "0".into(),
            ],
        ),
        cmd("LPUSH", [key("wait"), id.to_string()]),
        event(&["event", "added", "jobId", id, "name", function(t)]),
        event(&["event", "waiting", "jobId", id]),
    ]
}

/// A worker takes the job (`t.attempt` 0 is the first).
pub fn deliver(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let id = job_id(t);
    vec![
        cmd("LREM", [key("wait"), "1".into(), id.to_string()]),
        cmd("LPUSH", [key("active"), id.to_string()]),
        cmd(
            "SET",
            [
                format!("{}:lock", t.id),
                format!("loadgen-token:{}", t.attempt),
                "PX".into(),
                "30000".into(),
            ],
        ),
        cmd(
            "HSET",
            [
                t.id.clone(),
                "processedOn".into(),
                wall.timestamp_millis().to_string(),
                "pb".into(),
                "loadgen".into(),
            ],
        ),
        cmd("HINCRBY", [t.id.clone(), "ats".into(), "1".into()]),
        event(&["event", "active", "jobId", id, "prev", "waiting"]),
    ]
}

/// The attempt ends: completed or failed for good.
pub fn finish(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let id = job_id(t);
    let ms = wall.timestamp_millis().to_string();
    let ok = t.outcome != Outcome::Failure;
    let value = (t.seq % 1000 + 1).to_string();
    let reason = format!("card declined {}", t.seq % 7);
    let (set, field, text) = if ok {
        ("completed", "returnvalue", value.as_str())
    } else {
        ("failed", "failedReason", reason.as_str())
    };
    let mut cmds = vec![
        cmd("LREM", [key("active"), "1".into(), id.to_string()]),
        cmd("ZADD", [key(set), ms.clone(), id.to_string()]),
        cmd(
            "HSET",
            [
                t.id.clone(),
                field.into(),
                text.into(),
                "finishedOn".into(),
                ms,
            ],
        ),
        cmd("HINCRBY", [t.id.clone(), "atm".into(), "1".into()]),
        cmd("DEL", [format!("{}:lock", t.id)]),
        event(&["event", set, "jobId", id, field, text, "prev", "active"]),
    ];
    if !ok {
        let made = (t.attempt + 1).to_string();
        cmds.push(event(&[
            "event",
            "retries-exhausted",
            "jobId",
            id,
            "attemptsMade",
            &made,
        ]));
    }
    cmds
}

/// A failed first attempt with attempts left and no backoff: back to `wait`.
pub fn retry(t: &Task) -> Vec<Cmd> {
    let id = job_id(t);
    vec![
        cmd("LREM", [key("active"), "1".into(), id.to_string()]),
        cmd(
            "HSET",
            [
                t.id.clone(),
                "failedReason".into(),
                "flaky first attempt".into(),
            ],
        ),
        cmd("HINCRBY", [t.id.clone(), "atm".into(), "1".into()]),
        cmd("DEL", [format!("{}:lock", t.id)]),
        cmd("LPUSH", [key("wait"), id.to_string()]),
        event(&["event", "waiting", "jobId", id, "prev", "active"]),
    ]
}
