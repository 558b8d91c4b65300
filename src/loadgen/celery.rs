//! Celery (kombu's Redis transport, Redis result backend), as captured in
//! `broker-adapters/tests/fixtures/celery/` (`monitor_lifecycle_early_ack.txt`):
//! `LPUSH celery <envelope>`; the worker's `BRPOP` (here `RPOP`), `ZADD unacked_index` +
//! `HSET unacked` and, with the default early ack, `ZREM` + `HDEL` a few ms later; the result
//! `SETEX celery-task-meta-<id>` + `PUBLISH` on the same name; with `-E`, task events published
//! as `task.multi` envelopes on `/0.celeryev/task.multi`; worker heartbeats always.

use super::{cmd, Cmd, Flavor, Task};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub const QUEUE: &str = "celery";
const HOSTNAME: &str = "celery@bench";
const TRACEBACK: &str = "Traceback (most recent call last):\n  File \"/app/celery/app/trace.py\", line 564, in trace_task\n    R = retval = fun(*args, **kwargs)\n  File \"/app/billing.py\", line 12, in charge\n    raise ValueError(f\"card declined {card}\")\nValueError: card declined 3\n";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn name(t: &Task) -> &'static str {
    match t.seq % 3 {
        0 => "billing.charge",
        1 => "emails.send",
        _ => "reports.render",
    }
}

fn args(t: &Task) -> Value {
    json!([t.seq, t.seq % 97])
}

/// The kombu envelope of a protocol 2 task message (`queue_message_json.bin`).
pub fn envelope(t: &Task) -> String {
    let body = json!([
        args(t),
        {},
        {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
    ]);
    json!({
        "body": b64(body.to_string().as_bytes()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": name(t), "id": t.id, "shadow": null, "eta": null,
            "expires": null, "group": null, "group_index": null, "retries": t.attempt,
            "timelimit": [null, null], "root_id": t.id, "parent_id": null,
            "argsrepr": format!("({}, {})", t.seq, t.seq % 97), "kwargsrepr": "{}",
            "origin": "gen1@bench", "ignore_result": false, "replaced_task_nesting": 0,
            "stamped_headers": null, "stamps": {}
        },
        "properties": {
            "correlation_id": t.id, "reply_to": "da1b8bd6-b5bb-38cd-a889-e033a8b465a5",
            "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0, "body_encoding": "base64", "delivery_tag": t.delivery
        }
    })
    .to_string()
}

/// A kombu envelope on the `celeryev` exchange (events, heartbeats).
fn event_envelope(body: &Value, routing_key: &str) -> String {
    json!({
        "body": b64(body.to_string().as_bytes()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": HOSTNAME},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0, "body_encoding": "base64",
            "delivery_tag": "37597ba2-a03a-43d2-b899-e718ba7fc432"
        }
    })
    .to_string()
}

fn ts(wall: DateTime<Utc>) -> f64 {
    wall.timestamp_micros() as f64 / 1e6
}

fn task_event(t: &Task, kind: &str, wall: DateTime<Utc>, extra: Value) -> Value {
    let mut e = json!({
        "hostname": HOSTNAME, "utcoffset": 0.0, "pid": 4242, "clock": t.seq,
        "uuid": t.id, "timestamp": ts(wall), "type": kind
    });
    if let (Some(map), Value::Object(more)) = (e.as_object_mut(), extra) {
        map.extend(more);
    }
    e
}

fn publish_events(events: Vec<Value>) -> Cmd {
    cmd(
        "PUBLISH",
        [
            "/0.celeryev/task.multi".to_string(),
            event_envelope(&Value::Array(events), "task.multi"),
        ],
    )
}

pub fn enqueue(t: &Task, _wall: DateTime<Utc>) -> Vec<Cmd> {
    vec![cmd("LPUSH", [QUEUE.to_string(), envelope(t)])]
}

/// The worker takes the message: `BRPOP` (an `RPOP` here: the generator knows it is there),
/// the `unacked` entry, and its removal at the early ack.
pub fn deliver(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let unacked = json!([
        serde_json::from_str::<Value>(&envelope(t)).unwrap_or(Value::Null),
        "",
        QUEUE
    ])
    .to_string();
    let mut out = vec![
        cmd("RPOP", [QUEUE]),
        cmd(
            "ZADD",
            [
                "unacked_index".to_string(),
                format!("{:.7}", ts(wall)),
                t.delivery.clone(),
            ],
        ),
        cmd("HSET", ["unacked".to_string(), t.delivery.clone(), unacked]),
        cmd("ZREM", ["unacked_index".to_string(), t.delivery.clone()]),
        cmd("HDEL", ["unacked".to_string(), t.delivery.clone()]),
    ];
    if t.flavor == Flavor::CeleryEvents {
        out.push(publish_events(vec![
            task_event(
                t,
                "task-received",
                wall,
                json!({"name": name(t), "args": format!("({}, {})", t.seq, t.seq % 97),
                       "kwargs": "{}", "root_id": t.id, "parent_id": null,
                       "retries": t.attempt, "eta": null, "expires": null}),
            ),
            task_event(t, "task-started", wall, json!({})),
        ]));
    }
    out
}

fn result(
    t: &Task,
    status: &str,
    result: Value,
    traceback: Option<&str>,
    wall: DateTime<Utc>,
) -> Vec<Cmd> {
    let key = format!("celery-task-meta-{}", t.id);
    let meta = json!({
        "status": status, "result": result, "traceback": traceback, "children": [],
        "date_done": broker_adapters::rfc3339(&wall), "task_id": t.id
    })
    .to_string();
    vec![
        cmd("SETEX", [key.clone(), "86400".to_string(), meta.clone()]),
        cmd("PUBLISH", [key, meta]),
    ]
}

fn exc() -> Value {
    json!({"exc_type": "ValueError", "exc_message": ["card declined 3"], "exc_module": "builtins"})
}

/// The final outcome: result record (and its `PUBLISH`), plus the event with `-E`.
pub fn finish(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let failed = t.outcome == super::Outcome::Failure;
    let mut out = if failed {
        result(t, "FAILURE", exc(), Some(TRACEBACK), wall)
    } else {
        result(t, "SUCCESS", json!(t.seq * 2), None, wall)
    };
    if t.flavor == Flavor::CeleryEvents {
        let runtime = t.runtime.as_secs_f64();
        out.push(publish_events(vec![if failed {
            task_event(
                t,
                "task-failed",
                wall,
                json!({"exception": "ValueError('card declined 3')", "traceback": TRACEBACK}),
            )
        } else {
            task_event(
                t,
                "task-succeeded",
                wall,
                json!({"result": (t.seq * 2).to_string(), "runtime": runtime}),
            )
        }]));
    }
    out
}

/// A failed attempt that will be retried: `RETRY` result (and event); the caller re-enqueues
/// the same id with `retries` + 1.
pub fn retry(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    let mut out = result(t, "RETRY", exc(), Some(TRACEBACK), wall);
    if t.flavor == Flavor::CeleryEvents {
        out.push(publish_events(vec![task_event(
            t,
            "task-retried",
            wall,
            json!({"exception": "ValueError('card declined 3')", "traceback": TRACEBACK}),
        )]));
    }
    out
}

/// `worker.heartbeat`, sent by every worker every 2 s with or without `-E`.
pub fn heartbeat(wall: DateTime<Utc>) -> Vec<Cmd> {
    let body = json!({
        "hostname": HOSTNAME, "utcoffset": 0.0, "pid": 4242, "clock": 1, "freq": 2.0,
        "active": 1, "processed": 1, "loadavg": [0.5, 0.5, 0.5], "sw_ident": "py-celery",
        "sw_ver": "5.7.0", "sw_sys": "Linux", "timestamp": ts(wall), "type": "worker-heartbeat"
    });
    vec![cmd(
        "PUBLISH",
        [
            "/0.celeryev/worker.heartbeat".to_string(),
            event_envelope(&body, "worker.heartbeat"),
        ],
    )]
}
