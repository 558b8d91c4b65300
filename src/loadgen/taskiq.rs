//! taskiq's `RedisStreamBroker` (stream `taskiq`, consumer group `taskiq`) with a JSON
//! `RedisAsyncResultBackend` (no prefix), as captured in
//! `broker-adapters/tests/fixtures/taskiq/stream_*`: `XADD taskiq <id> data <message>`, the
//! worker's `XREADGROUP GROUP taskiq <consumer>`, the result `SET <task_id>`, then `XACK`
//! (`ack_type` `when_saved`). A retry is a copy of the message with label `_retries` + 1, then
//! the ack of the failed entry. The generator chooses each entry id itself (`<ms>-<n>`, as
//! Redis would) so that it can acknowledge it without reading `XADD`'s reply.

use super::{cmd, Cmd, Outcome, Task};
use chrono::{DateTime, Utc};
use serde_json::json;

pub const STREAM: &str = "taskiq";
const GROUP: &str = "taskiq";
const CONSUMER: &str = "worker-bench-1";

/// Monotonic stream entry ids.
#[derive(Debug, Default)]
pub struct StreamIds {
    ms: i64,
    n: u64,
}

impl StreamIds {
    pub fn next(&mut self, wall: DateTime<Utc>) -> String {
        let ms = wall.timestamp_millis();
        if ms > self.ms {
            self.ms = ms;
            self.n = 0;
        } else {
            self.n += 1;
        }
        format!("{}-{}", self.ms, self.n)
    }
}

fn task_name(t: &Task) -> &'static str {
    match t.seq % 3 {
        0 => "taskiq_app:add",
        1 => "taskiq_app:notify",
        _ => "taskiq_app:flaky",
    }
}

fn message(t: &Task) -> String {
    let (labels, types) = if t.outcome == Outcome::RetryThenSuccess {
        (
            json!({"retry_on_error": "True", "max_retries": "3", "_retries": t.attempt.to_string()}),
            json!({"retry_on_error": 5, "max_retries": 2, "_retries": 2}),
        )
    } else {
        (json!({}), json!({}))
    };
    json!({
        "task_id": t.id, "task_name": task_name(t), "labels": labels, "labels_types": types,
        "args": [t.seq % 1000, 1], "kwargs": {}
    })
    .to_string()
}

/// The consumer group, as workers create it at start.
pub fn setup() -> Vec<Cmd> {
    vec![cmd("XGROUP", ["CREATE", STREAM, GROUP, "$", "MKSTREAM"])]
}

pub fn enqueue(t: &Task) -> Vec<Cmd> {
    vec![cmd(
        "XADD",
        [
            STREAM.to_string(),
            t.delivery.clone(),
            "data".into(),
            message(t),
        ],
    )]
}

/// One `XREADGROUP` delivering the `n` oldest undelivered entries.
pub fn read_group(n: usize) -> Cmd {
    cmd(
        "XREADGROUP",
        [
            "GROUP".to_string(),
            GROUP.into(),
            CONSUMER.into(),
            "COUNT".into(),
            n.to_string(),
            "STREAMS".into(),
            STREAM.into(),
            ">".into(),
        ],
    )
}

/// The result record, then the ack.
pub fn finish(t: &Task) -> Vec<Cmd> {
    let labels = if t.outcome == Outcome::RetryThenSuccess {
        json!({"retry_on_error": "True", "max_retries": "3", "_retries": t.attempt.to_string()})
    } else {
        json!({})
    };
    let record = if t.outcome == Outcome::Failure {
        json!({"is_err": true, "log": null, "return_value": null,
               "execution_time": t.runtime.as_secs_f64(), "labels": labels,
               "error": {"exc_type": "CardDeclined", "exc_message": ["card declined 1"],
                         "exc_module": "taskiq_app", "exc_cause": null, "exc_context": null,
                         "exc_suppress_context": false}})
    } else {
        json!({"is_err": false, "log": null, "return_value": t.seq % 1000 + 1,
               "execution_time": t.runtime.as_secs_f64(), "labels": labels, "error": null})
    };
    vec![
        cmd("SET", [t.id.clone(), record.to_string()]),
        cmd(
            "XACK",
            [STREAM.to_string(), GROUP.into(), t.delivery.clone()],
        ),
    ]
}

/// The retry middleware's copy (`t` already carries the new entry id and attempt), then the
/// ack of the failed entry `old`.
pub fn retry(t: &Task, old: &str) -> Vec<Cmd> {
    let mut out = enqueue(t);
    out.push(cmd(
        "XACK",
        [STREAM.to_string(), GROUP.into(), old.to_string()],
    ));
    out
}
