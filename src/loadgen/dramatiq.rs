//! Dramatiq's `RedisBroker` (namespace `dramatiq`, queue `default`), as captured in
//! `broker-adapters/tests/fixtures/dramatiq/monitor_lifecycle_*.txt`. The real library runs
//! every operation inside its Lua script; the generator issues the same commands the script
//! runs (they fire the same keyspace notifications): enqueue `HSET .msgs` + `RPUSH`; fetch
//! `LPOP` + `SADD __acks__.<worker>.<queue>`; ack `SREM` + `HDEL .msgs`; nack (dead letter)
//! `ZADD .XQ` + `HSET .XQ.msgs`; retry = a copy into the delay queue, then the ack; a due
//! delayed message moves back to the queue under a new `redis_message_id`.

use super::{cmd, Cmd, Outcome, Task};
use chrono::{DateTime, Utc};
use serde_json::json;

const NS: &str = "dramatiq";
const QUEUE: &str = "default";
pub const WORKER: &str = "c9969593-dbec-40ca-be49-334c25b533a0";
const TRACEBACK: &str = "Traceback (most recent call last):\n  File \"/app/dramatiq/worker.py\", line 560, in process_message\n    res = actor(*message.args, **message.kwargs)\n  File \"/app/jobs.py\", line 88, in flaky\n    raise RuntimeError(\"flaky: attempt 1 failed\")\nRuntimeError: flaky: attempt 1 failed\n";

fn actor(t: &Task) -> &'static str {
    match t.seq % 3 {
        0 => "resize_image",
        1 => "sync_account",
        _ => "flaky",
    }
}

/// The message JSON (`queue_message.bin`, `retry_copy_dq_1.bin`).
fn message(t: &Task, queue_name: &str, wall: DateTime<Utc>) -> String {
    let mut options = json!({"redis_message_id": t.delivery});
    if t.attempt > 0 {
        options["retries"] = json!(t.attempt);
        options["traceback"] = json!(TRACEBACK);
        options["requeue_timestamp"] = json!(wall.timestamp_millis());
        options["eta"] = json!(wall.timestamp_millis());
    }
    json!({
        "queue_name": queue_name, "actor_name": actor(t), "args": [t.seq, format!("k{}", t.seq % 13)],
        "kwargs": {}, "options": options, "message_id": t.id,
        "message_timestamp": wall.timestamp_millis()
    })
    .to_string()
}

fn heartbeat_cmd(wall: DateTime<Utc>) -> Cmd {
    cmd(
        "ZADD",
        [
            format!("{NS}:__heartbeats__"),
            wall.timestamp_millis().to_string(),
            WORKER.to_string(),
        ],
    )
}

fn acks(queue: &str) -> String {
    format!("{NS}:__acks__.{WORKER}.{queue}")
}

pub fn enqueue(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    vec![
        cmd(
            "HSET",
            [
                format!("{NS}:{QUEUE}.msgs"),
                t.delivery.clone(),
                message(t, QUEUE, wall),
            ],
        ),
        cmd("RPUSH", [format!("{NS}:{QUEUE}"), t.delivery.clone()]),
    ]
}

pub fn deliver(t: &Task, _wall: DateTime<Utc>) -> Vec<Cmd> {
    vec![
        cmd("LPOP", [format!("{NS}:{QUEUE}")]),
        cmd("SADD", [acks(QUEUE), t.delivery.clone()]),
    ]
}

fn ack(queue: &str, rid: &str) -> Vec<Cmd> {
    vec![
        cmd("SREM", [acks(queue), rid.to_string()]),
        cmd("HDEL", [format!("{NS}:{queue}.msgs"), rid.to_string()]),
    ]
}

/// Success: the ack. Failure: the nack (dead letter).
pub fn finish(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    if t.outcome == Outcome::Failure {
        vec![
            cmd("SREM", [acks(QUEUE), t.delivery.clone()]),
            cmd(
                "ZADD",
                [
                    format!("{NS}:{QUEUE}.XQ"),
                    wall.timestamp_millis().to_string(),
                    t.delivery.clone(),
                ],
            ),
            cmd(
                "HSET",
                [
                    format!("{NS}:{QUEUE}.XQ.msgs"),
                    t.delivery.clone(),
                    message(t, QUEUE, wall),
                ],
            ),
            cmd("HDEL", [format!("{NS}:{QUEUE}.msgs"), t.delivery.clone()]),
        ]
    } else {
        ack(QUEUE, &t.delivery)
    }
}

/// The Retries middleware: a copy (new `redis_message_id`, `retries` 1) into the delay queue,
/// then the ack of the original `old` id.
pub fn retry(t: &Task, old: &str, wall: DateTime<Utc>) -> Vec<Cmd> {
    let dq = format!("{QUEUE}.DQ");
    let mut out = vec![
        cmd(
            "HSET",
            [
                format!("{NS}:{dq}.msgs"),
                t.delivery.clone(),
                message(t, &dq, wall),
            ],
        ),
        cmd("RPUSH", [format!("{NS}:{dq}"), t.delivery.clone()]),
    ];
    out.extend(ack(QUEUE, old));
    out
}

/// A due delayed message: fetched from `.DQ`, re-enqueued into the queue as `t.delivery`,
/// and the delayed copy `old` acked.
pub fn requeue_from_delay(t: &Task, old: &str, wall: DateTime<Utc>) -> Vec<Cmd> {
    let dq = format!("{QUEUE}.DQ");
    let mut out = vec![
        cmd("LPOP", [format!("{NS}:{dq}")]),
        cmd("SADD", [acks(&dq), old.to_string()]),
    ];
    out.extend(enqueue(t, wall));
    out.extend(ack(&dq, old));
    out
}

/// Every script call bumps the worker's heartbeat.
pub fn heartbeat(wall: DateTime<Utc>) -> Vec<Cmd> {
    vec![heartbeat_cmd(wall)]
}
