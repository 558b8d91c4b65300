//! arq 0.28 (queue `arq:queue`, an app with `job_serializer` JSON), as captured in
//! `broker-adapters/tests/fixtures/arq/` and watched with `redis-cli monitor`: `PSETEX
//! arq:job:<id>` + `ZADD arq:queue <enqueue ms> <id>` (one transaction); the worker's `PSETEX
//! arq:in-progress:<id>`, then `INCR` + `EXPIRE arq:retry:<id>`; at the end `SET
//! arq:result:<id> PX`, `ZREM arq:queue`, `DEL` of the in-progress, retry and job keys. A job
//! raising `Retry` is `ZINCRBY arq:queue <defer + elapsed>` and `DEL arq:in-progress:<id>`; its
//! job key and try counter stay. The health check is `PSETEX arq:queue:health-check`.

use super::{cmd, Cmd, Outcome, Task};
use chrono::{DateTime, Utc};
use serde_json::json;

pub const QUEUE: &str = "arq:queue";
/// arq's default `job_timeout` (300 s) + 10 s.
const IN_PROGRESS_MS: &str = "310000";

fn function(t: &Task) -> &'static str {
    match t.seq % 3 {
        0 => "add",
        1 => "send_email",
        _ => "charge",
    }
}

fn job(t: &Task, wall: DateTime<Utc>) -> serde_json::Value {
    json!({"t": null, "f": function(t), "a": [t.seq % 1000, 1], "k": {},
           "et": wall.timestamp_millis()})
}

pub fn enqueue(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let ms = wall.timestamp_millis().to_string();
    vec![
        cmd(
            "PSETEX",
            [
                format!("arq:job:{}", t.id),
                "86400000".into(),
                job(t, wall).to_string(),
            ],
        ),
        cmd("ZADD", [QUEUE.to_string(), ms, t.id.clone()]),
    ]
}

/// A worker starts the try (`t.attempt` 0 is the first).
pub fn deliver(t: &Task) -> Vec<Cmd> {
    let retry = format!("arq:retry:{}", t.id);
    vec![
        cmd(
            "PSETEX",
            [
                format!("arq:in-progress:{}", t.id),
                IN_PROGRESS_MS.into(),
                "1".into(),
            ],
        ),
        cmd("INCR", [retry.clone()]),
        cmd("EXPIRE", [retry, "88400".into()]),
    ]
}

/// The result, then the keys arq deletes.
pub fn finish(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let finished = wall.timestamp_millis();
    let started = finished - t.runtime.as_millis() as i64;
    let ok = t.outcome != Outcome::Failure;
    let mut record = job(t, wall);
    record["t"] = json!(t.attempt + 1);
    record["s"] = json!(ok);
    // What a JSON serializer stores for an exception it cannot encode.
    record["r"] = if ok {
        json!(t.seq % 1000 + 1)
    } else {
        json!("unable to serialize result")
    };
    record["st"] = json!(started);
    record["ft"] = json!(finished);
    record["q"] = json!(QUEUE);
    record["id"] = json!(t.id);
    vec![
        cmd(
            "SET",
            [
                format!("arq:result:{}", t.id),
                record.to_string(),
                "PX".into(),
                "3600000".into(),
            ],
        ),
        cmd("ZREM", [QUEUE.to_string(), t.id.clone()]),
        cmd(
            "DEL",
            [
                format!("arq:in-progress:{}", t.id),
                format!("arq:retry:{}", t.id),
                format!("arq:job:{}", t.id),
            ],
        ),
    ]
}

/// `Retry` without a delay: arq adds the time since the score to it, so the job is due again.
pub fn retry(t: &Task) -> Vec<Cmd> {
    vec![
        cmd("ZINCRBY", [QUEUE.to_string(), "1".into(), t.id.clone()]),
        cmd("DEL", [format!("arq:in-progress:{}", t.id)]),
    ]
}

/// The queue's health check, as a worker writes it every `health_check_interval`.
pub fn heartbeat(wall: DateTime<Utc>) -> Vec<Cmd> {
    vec![cmd(
        "PSETEX",
        [
            format!("{QUEUE}:health-check"),
            "3601000".into(),
            format!(
                "{} j_complete=0 j_failed=0 j_retried=0 j_ongoing=0 queued=0",
                wall.format("%b-%d %H:%M:%S")
            ),
        ],
    )]
}
