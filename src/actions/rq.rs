//! RQ's writes, as RQ 2/3 itself makes them (`rq/queue.py`, `rq/job.py`, `rq/command.py`),
//! pure: `Queue.enqueue` (the job hash of `Job.to_dict` with `data` = zlib of the default
//! serializer's pickle of `(func_name, None, args, kwargs)`, `SADD rq:queues`, `RPUSH
//! rq:queue:<q>`), `enqueue_in` (status `scheduled`, `ZADD rq:scheduled:<q>` at the whole
//! second), `Job.delete` of a waiting job, `Queue.empty` (its Lua script), and
//! `send_stop_job_command` (a JSON command published on `rq:pubsub:<worker>`).

use super::pickle::{self, Pickled};
use super::{RedisCommand, Write};
use chrono::{DateTime, Utc};
use flate2::write::ZlibEncoder;
use serde_json::Value;
use std::io::Write as _;

/// RQ's default key prefix.
pub const PREFIX: &str = "rq:";

pub fn job_key(id: &str) -> String {
    format!("{PREFIX}job:{id}")
}

pub fn queue_key(queue: &str) -> String {
    format!("{PREFIX}queue:{queue}")
}

pub fn scheduled_key(queue: &str) -> String {
    format!("{PREFIX}scheduled:{queue}")
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// RQ's `utcformat`: `2026-12-06T12:00:00.123456Z`.
fn utcformat(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// RQ's job description: `func(1, 2, note='x')`.
fn description(func: &str, args: &[Value], kwargs: &serde_json::Map<String, Value>) -> String {
    let mut parts: Vec<String> = args.iter().map(super::py_repr).collect();
    parts.extend(
        kwargs
            .iter()
            .map(|(k, v)| format!("{k}={}", super::py_repr(v))),
    );
    format!("{func}({})", parts.join(", "))
}

/// The pickled call RQ stores in `data` (before zlib).
pub fn call_data(func: &str, args: &[Value], kwargs: &serde_json::Map<String, Value>) -> Vec<u8> {
    let args = Value::Array(args.to_vec());
    let kwargs = Value::Object(kwargs.clone());
    pickle::dumps(&Pickled::Tuple(vec![
        Pickled::Str(func),
        Pickled::None,
        Pickled::Json(&args),
        Pickled::Json(&kwargs),
    ]))
}

/// A new job `id` calling `func(*args, **kwargs)` on `queue`; waiting at once, or scheduled at
/// `run_at` (RQ's scheduler, in every `rq worker` by default, enqueues it then).
pub fn enqueue(
    id: &str,
    func: &str,
    args: &[Value],
    kwargs: &serde_json::Map<String, Value>,
    queue: &str,
    now: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
) -> Write {
    let fields: Vec<(&str, Vec<u8>)> = vec![
        ("created_at", utcformat(now).into_bytes()),
        ("data", zlib(&call_data(func, args, kwargs))),
        ("success_callback_name", Vec::new()),
        ("failure_callback_name", Vec::new()),
        ("stopped_callback_name", Vec::new()),
        ("started_at", Vec::new()),
        ("ended_at", Vec::new()),
        ("last_heartbeat", Vec::new()),
        ("worker_name", Vec::new()),
        ("group_id", Vec::new()),
        ("origin", queue.as_bytes().to_vec()),
        ("description", description(func, args, kwargs).into_bytes()),
        ("timeout", b"180".to_vec()),
    ];
    place(id, fields, queue, now, run_at)
}

/// Fields of a job a retry carries over as they are (the call itself, byte for byte).
const CARRIED: [&str; 12] = [
    "data",
    "description",
    "timeout",
    "result_ttl",
    "failure_ttl",
    "ttl",
    "meta",
    "success_callback_name",
    "failure_callback_name",
    "stopped_callback_name",
    "success_callback_timeout",
    "failure_callback_timeout",
];

/// A new job `new_id` with the same call as the job hash `original` (its fields as read), on
/// `queue`: what `Job.requeue` would run, under a new id so both attempts stay in the history.
/// `None` when `original` has no `data`.
pub fn retry(
    original: &[(String, Vec<u8>)],
    new_id: &str,
    queue: &str,
    now: DateTime<Utc>,
) -> Option<Write> {
    if !original.iter().any(|(k, _)| k == "data") {
        return None;
    }
    let mut fields: Vec<(&str, Vec<u8>)> = vec![("created_at", utcformat(now).into_bytes())];
    for name in CARRIED {
        if let Some((_, v)) = original.iter().find(|(k, _)| k == name) {
            fields.push((name, v.clone()));
        }
    }
    for empty in [
        "started_at",
        "ended_at",
        "last_heartbeat",
        "worker_name",
        "group_id",
    ] {
        fields.push((empty, Vec::new()));
    }
    fields.push(("origin", queue.as_bytes().to_vec()));
    Some(place(new_id, fields, queue, now, None))
}

/// The job hash with its status, then the queue push or the scheduled registry.
fn place(
    id: &str,
    mut fields: Vec<(&str, Vec<u8>)>,
    queue: &str,
    now: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
) -> Write {
    let scheduled = run_at.filter(|at| *at > now);
    let mut hset = vec![job_key(id).into_bytes()];
    if scheduled.is_none() {
        fields.push(("enqueued_at", utcformat(now).into_bytes()));
    }
    fields.push((
        "status",
        if scheduled.is_some() {
            b"scheduled".to_vec()
        } else {
            b"queued".to_vec()
        },
    ));
    for (k, v) in fields {
        hset.push(k.as_bytes().to_vec());
        hset.push(v);
    }
    let mut commands = vec![
        RedisCommand::new("SADD", [format!("{PREFIX}queues"), queue_key(queue)]),
        RedisCommand::new("HSET", hset),
    ];
    match scheduled {
        Some(at) => commands.push(RedisCommand::new(
            "ZADD",
            [
                scheduled_key(queue),
                at.timestamp().to_string(),
                id.to_string(),
            ],
        )),
        None => commands.push(RedisCommand::new(
            "RPUSH",
            [queue_key(queue), id.to_string()],
        )),
    }
    Write::Multi(commands)
}

/// Removes a waiting (queue list) or scheduled job `id` and its hash; replies how many it
/// removed (0: the job was not waiting, nothing changed).
const DELETE_LUA: &str = r#"
local removed = redis.call('LREM', KEYS[1], 0, ARGV[1]) + redis.call('ZREM', KEYS[2], ARGV[1])
if removed > 0 then
    redis.call('DEL', KEYS[3], KEYS[3] .. ':dependents')
end
return removed
"#;

pub fn delete(queue: &str, id: &str) -> Write {
    Write::Script {
        lua: DELETE_LUA,
        keys: vec![queue_key(queue), scheduled_key(queue), job_key(id)],
        args: vec![id.as_bytes().to_vec()],
    }
}

/// `Queue.empty()`'s script: pops every waiting id and deletes its job hash; replies the count.
const PURGE_LUA: &str = r#"
local prefix = ARGV[1]
local out = {0}
while true do
    local job_id = redis.call('LPOP', KEYS[1])
    if job_id == false then break end
    redis.call('DEL', prefix .. job_id, prefix .. job_id .. ':dependents')
    out[1] = out[1] + 1
    if #out <= 10000 then out[#out + 1] = job_id end
end
return out
"#;

pub fn purge(queue: &str) -> Write {
    Write::Script {
        lua: PURGE_LUA,
        keys: vec![queue_key(queue)],
        args: vec![format!("{PREFIX}job:").into_bytes()],
    }
}

/// `send_stop_job_command`: the worker running `id` kills its work horse; the job ends
/// `stopped`.
pub fn stop_job(worker: &str, id: &str) -> Write {
    Write::Publish {
        channel: format!("{PREFIX}pubsub:{worker}"),
        message: serde_json::json!({"command": "stop-job", "job_id": id})
            .to_string()
            .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn enqueue_writes_the_job_hash_then_pushes_its_id() {
        let now = at("2026-12-06T12:00:00.5Z");
        let kwargs = json!({"note": "x"}).as_object().cloned().unwrap();
        let Write::Multi(cmds) = enqueue(
            "j1",
            "rq_app.add",
            &[json!(1), json!(2)],
            &kwargs,
            "default",
            now,
            None,
        ) else {
            panic!("a MULTI");
        };
        assert_eq!(
            cmds[0],
            RedisCommand::new("SADD", ["rq:queues", "rq:queue:default"])
        );
        assert_eq!(cmds[1].name, "HSET");
        assert_eq!(cmds[1].arg_text(0), "rq:job:j1");
        let field = |name: &str| {
            let i = cmds[1]
                .args
                .iter()
                .position(|a| a == name.as_bytes())
                .unwrap();
            cmds[1].args[i + 1].clone()
        };
        assert_eq!(field("status"), b"queued");
        assert_eq!(field("origin"), b"default");
        assert_eq!(field("description"), b"rq_app.add(1, 2, note='x')");
        assert_eq!(field("enqueued_at"), b"2026-12-06T12:00:00.500000Z");
        let mut data = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(&field("data")[..]),
            &mut data,
        )
        .unwrap();
        assert_eq!(
            data,
            call_data("rq_app.add", &[json!(1), json!(2)], &kwargs)
        );
        assert_eq!(
            cmds[2],
            RedisCommand::new("RPUSH", ["rq:queue:default", "j1"])
        );
    }

    #[test]
    fn a_delayed_job_is_scheduled_at_its_second() {
        let now = at("2026-12-06T12:00:00Z");
        let Write::Multi(cmds) = enqueue(
            "j1",
            "f",
            &[],
            &Default::default(),
            "q",
            now,
            Some(at("2026-12-06T12:00:30.9Z")),
        ) else {
            panic!();
        };
        assert_eq!(
            cmds[2],
            RedisCommand::new("ZADD", ["rq:scheduled:q", "1796558430", "j1"])
        );
        assert!(cmds[1]
            .args
            .windows(2)
            .any(|w| w[0] == b"status" && w[1] == b"scheduled"));
        assert!(!cmds[1].args.iter().any(|a| a == b"enqueued_at"));
    }

    #[test]
    fn a_retry_copies_the_call_byte_for_byte_under_a_new_id() {
        let original = vec![
            ("data".to_string(), b"\x78\x9c...".to_vec()),
            ("description".to_string(), b"rq_app.fail(3)".to_vec()),
            ("status".to_string(), b"failed".to_vec()),
            ("exc_info".to_string(), b"boom".to_vec()),
        ];
        let Some(Write::Multi(cmds)) =
            retry(&original, "j2", "default", at("2026-12-06T12:00:00Z"))
        else {
            panic!();
        };
        let hset = &cmds[1];
        assert_eq!(hset.arg_text(0), "rq:job:j2");
        assert!(hset
            .args
            .windows(2)
            .any(|w| w[0] == b"data" && w[1] == b"\x78\x9c..."));
        assert!(hset
            .args
            .windows(2)
            .any(|w| w[0] == b"status" && w[1] == b"queued"));
        assert!(!hset.args.iter().any(|a| a == b"exc_info"));
        assert!(retry(&original[1..], "j2", "default", at("2026-12-06T12:00:00Z")).is_none());
    }

    #[test]
    fn stop_job_publishes_rqs_command() {
        assert_eq!(
            stop_job("w1", "j1"),
            Write::Publish {
                channel: "rq:pubsub:w1".into(),
                message: br#"{"command":"stop-job","job_id":"j1"}"#.to_vec()
            }
        );
    }
}
