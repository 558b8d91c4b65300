//! RQ 3 (prefix `rq:`, queue `default`, `JSONSerializer`), as captured in
//! `broker-adapters/tests/fixtures/rq/`: a job hash (`data` = zlib of the JSON call),
//! `RPUSH rq:queue:default`; the worker's `LPOP`, the attempt's execution (hash
//! `rq:execution:<job id>:<execution id>`, `rq:executions:<job id>`, `rq:wip:default` member
//! `<job id>:<execution id>`, the worker's execution index; removed as the attempt ends),
//! status `started`; then status `finished`/`failed`, the finished/failed registry and a
//! `rq:results:<id>` stream entry (type 1 succeeded, 2 failed with `exc_string` = base64 of
//! zlib of the traceback). A `Retry(max=1)` job goes back to
//! `queued` with `retries_left` decremented and no results entry for the failed attempt.

use super::{cmd, Cmd, Outcome, Task};
use base64::Engine;
use chrono::{DateTime, Utc};
use flate2::write::ZlibEncoder;
use std::io::Write;

const QUEUE: &str = "default";
pub const WORKER: &str = "58bfc04e55154252a80fb0eacfaca8b3";
const TRACEBACK: &str = "Traceback (most recent call last):\n  File \"/app/rq/worker/base.py\", line 1671, in perform_job\n    return_value = job.perform()\n  File \"/app/rq_app.py\", line 40, in fail\n    raise ValueError(f\"card declined {n}\")\nValueError: card declined 3\n";

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

fn iso(wall: DateTime<Utc>) -> String {
    wall.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn func(t: &Task) -> &'static str {
    match t.seq % 3 {
        0 => "rq_app.add",
        1 => "rq_app.fetch_feed",
        _ => "rq_app.fail",
    }
}

fn job_key(t: &Task) -> String {
    format!("rq:job:{}", t.id)
}

fn execution_id(t: &Task) -> String {
    t.delivery.replace('-', "")
}

fn wip_member(t: &Task) -> String {
    format!("{}:{}", t.id, execution_id(t))
}

fn worker_executions() -> String {
    format!("rq:worker:{WORKER}:executions")
}

/// RQ 3's `prepare_execution`: the execution hash, the job's executions registry, the `wip`
/// member and the worker's execution index (captured from a real worker with `MONITOR`).
fn start_execution(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let key = format!("rq:execution:{}", wip_member(t));
    let executions = format!("rq:executions:{}", t.id);
    let now = format!("{:.6}", wall.timestamp_micros() as f64 / 1e6);
    vec![
        cmd(
            "HSET",
            [
                key.clone(),
                "id".into(),
                execution_id(t),
                "job_id".into(),
                t.id.clone(),
                "created_at".into(),
                now.clone(),
                "last_heartbeat".into(),
                now,
                "worker_name".into(),
                WORKER.into(),
            ],
        ),
        cmd("EXPIRE", [key, "90".to_string()]),
        cmd(
            "ZADD",
            [
                executions.clone(),
                (wall.timestamp() + 150).to_string(),
                execution_id(t),
            ],
        ),
        cmd("EXPIRE", [executions, "150".to_string()]),
        cmd(
            "ZADD",
            [
                format!("rq:wip:{QUEUE}"),
                (wall.timestamp() + 90).to_string(),
                wip_member(t),
            ],
        ),
        cmd("SADD", [worker_executions(), wip_member(t)]),
        cmd("EXPIRE", [worker_executions(), "150".to_string()]),
    ]
}

/// RQ 3's `cleanup_execution`, at the end of every attempt.
fn end_execution(t: &Task) -> Vec<Cmd> {
    vec![
        cmd("DEL", [format!("rq:execution:{}", wip_member(t))]),
        cmd("ZREM", [format!("rq:wip:{QUEUE}"), wip_member(t)]),
        cmd("ZREM", [format!("rq:executions:{}", t.id), execution_id(t)]),
        cmd("SREM", [worker_executions(), wip_member(t)]),
    ]
}

fn hset(key: String, fields: Vec<(&str, Vec<u8>)>) -> Cmd {
    let mut args = vec![fred::prelude::Value::from(key)];
    for (f, v) in fields {
        args.push(fred::prelude::Value::from(f.to_string()));
        args.push(fred::prelude::Value::Bytes(v.into()));
    }
    ("HSET", args)
}

/// Registries and the queue set, once.
pub fn setup() -> Vec<Cmd> {
    vec![cmd("SADD", ["rq:queues", "rq:queue:default"])]
}

pub fn enqueue(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let a = t.seq % 1000;
    let data = zlib(format!("[\"{}\", null, [{a}, 5], {{}}]", func(t)).as_bytes());
    let now = iso(wall);
    let mut fields: Vec<(&str, Vec<u8>)> = vec![
        ("created_at", now.clone().into_bytes()),
        ("data", data),
        ("description", format!("{}({a}, 5)", func(t)).into_bytes()),
        ("ended_at", Vec::new()),
        ("enqueued_at", now.into_bytes()),
        ("failure_callback_name", Vec::new()),
        ("group_id", Vec::new()),
        ("last_heartbeat", Vec::new()),
        ("origin", QUEUE.as_bytes().to_vec()),
        ("started_at", Vec::new()),
        ("status", b"queued".to_vec()),
        ("stopped_callback_name", Vec::new()),
        ("success_callback_name", Vec::new()),
        ("timeout", b"180".to_vec()),
        ("worker_name", Vec::new()),
    ];
    if t.outcome == Outcome::RetryThenSuccess {
        fields.push(("retries_left", b"1".to_vec()));
        fields.push(("retry_intervals", b"[0]".to_vec()));
    }
    vec![
        hset(job_key(t), fields),
        cmd("RPUSH", [format!("rq:queue:{QUEUE}"), t.id.clone()]),
    ]
}

pub fn deliver(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let now = iso(wall);
    let mut out = vec![cmd("LPOP", [format!("rq:queue:{QUEUE}")])];
    out.extend(start_execution(t, wall));
    out.push(hset(
        job_key(t),
        vec![
            ("status", b"started".to_vec()),
            ("started_at", now.clone().into_bytes()),
            ("last_heartbeat", now.into_bytes()),
            ("worker_name", WORKER.as_bytes().to_vec()),
        ],
    ));
    out
}

fn end(t: &Task, status: &str, registry: &str, wall: DateTime<Utc>) -> Vec<Cmd> {
    let now = iso(wall);
    let mut out = end_execution(t);
    out.push(hset(
        job_key(t),
        vec![
            ("status", status.as_bytes().to_vec()),
            ("ended_at", now.clone().into_bytes()),
            ("last_heartbeat", now.into_bytes()),
        ],
    ));
    out.push(cmd(
        "ZADD",
        [
            format!("rq:{registry}:{QUEUE}"),
            (wall.timestamp() + 500).to_string(),
            t.id.clone(),
        ],
    ));
    out
}

/// The attempt's cleanup, the job's status and registry, then the results stream entry (the
/// order of RQ 3's `handle_job_success` / `handle_job_failure` transaction, as in
/// `broker-adapters/tests/fixtures/rq/keyspace_retried_twice.json`).
pub fn finish(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let started = wall.timestamp_micros() as f64 / 1e6 - t.runtime.as_secs_f64();
    let ended = wall.timestamp_micros() as f64 / 1e6;
    let exec = t.delivery.replace('-', "");
    let failed = t.outcome == Outcome::Failure;
    let mut entry = vec![
        format!("rq:results:{}", t.id),
        "MAXLEN".into(),
        "~".into(),
        "10".into(),
        "*".into(),
        "type".into(),
        if failed { "2" } else { "1" }.into(),
        "worker_name".into(),
        WORKER.into(),
    ];
    if failed {
        entry.push("exc_string".into());
        entry.push(base64::engine::general_purpose::STANDARD.encode(zlib(TRACEBACK.as_bytes())));
    } else {
        entry.push("return_value".into());
        entry.push("gAVLBS4=".into());
    }
    entry.extend([
        "execution_id".into(),
        exec,
        "execution_started_at".into(),
        format!("{started:.6}"),
        "execution_ended_at".into(),
        format!("{ended:.6}"),
    ]);
    let mut out = if failed {
        end(t, "failed", "failed", wall)
    } else {
        end(t, "finished", "finished", wall)
    };
    out.push(cmd("XADD", entry));
    out
}

/// `Retry(max=1)`: back to `queued`, `retries_left` 0, requeued at the tail of the queue.
pub fn retry(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let now = iso(wall);
    let mut out = end_execution(t);
    out.push(hset(
        job_key(t),
        vec![
            ("status", b"queued".to_vec()),
            ("retries_left", b"0".to_vec()),
            ("ended_at", now.clone().into_bytes()),
            ("enqueued_at", now.into_bytes()),
        ],
    ));
    out.push(cmd("RPUSH", [format!("rq:queue:{QUEUE}"), t.id.clone()]));
    out
}

/// The worker's hash and TTL (`next heartbeat due + 60 s`), and the workers set.
pub fn heartbeat(wall: DateTime<Utc>) -> Vec<Cmd> {
    let key = format!("rq:worker:{WORKER}");
    let now = iso(wall);
    vec![
        cmd("SADD", ["rq:workers".to_string(), key.clone()]),
        cmd(
            "HSET",
            [
                key.clone(),
                "birth".into(),
                now.clone(),
                "hostname".into(),
                "bench".into(),
                "last_heartbeat".into(),
                now,
                "pid".into(),
                "4242".into(),
                "queues".into(),
                QUEUE.into(),
                "state".into(),
                "busy".into(),
                "version".into(),
                "3.0.0".into(),
            ],
        ),
        cmd("EXPIRE", [key, "90".to_string()]),
    ]
}
