//! Celery's writes over kombu's Redis transport, as `app.send_task` and `app.control.revoke`
//! make them (captured with `MONITOR` from Celery 5.7 / kombu 5.7), pure:
//! - a task: the protocol 2 message in kombu's envelope (body = base64 of `[args, kwargs,
//!   embed]`, headers `task`, `id`, `root_id`, `retries`, `eta` ISO 8601 for a countdown...),
//!   `SADD _kombu.binding.<q>` of the queue's binding as `Queue.declare` writes it, then
//!   `LPUSH <q>` (priority 0; kombu's priority lists are `<q>\x06\x16<p>`);
//! - delete: the waiting message whose `headers.id` is the task removed from the queue's lists;
//! - purge: kombu's `_purge`: each priority list counted and deleted;
//! - revoke: the `revoke` control message (`terminate: true`) published on the `celery.pidbox`
//!   fanout exchange (`PUBLISH /<db>.celery.pidbox`), which every worker obeys.
//!
//! An ETA task is held by the worker that received it (in kombu's `unacked` hash), not in the
//! queue: it can be revoked, not deleted.

use super::{py_repr, RedisCommand, Write};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// kombu's separator of priority list names (`celery\x06\x163`).
const SEP: &str = "\x06\x16";
/// kombu's default `priority_steps`.
const PRIORITIES: [u8; 4] = [0, 3, 6, 9];

/// The lists kombu keeps a queue in, highest priority first as kombu reads them.
pub fn queue_keys(queue: &str) -> Vec<String> {
    PRIORITIES
        .iter()
        .map(|p| {
            if *p == 0 {
                queue.to_string()
            } else {
                format!("{queue}{SEP}{p}")
            }
        })
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A protocol 2 task message.
pub struct Message<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub args: &'a [Value],
    pub kwargs: &'a Map<String, Value>,
    pub queue: &'a str,
    /// A countdown / ETA (the worker holds it until then).
    pub eta: Option<DateTime<Utc>>,
    pub retries: u32,
    /// The workflow's root (its own id for a task sent on its own).
    pub root_id: Option<&'a str>,
}

/// The kombu envelope of `message`, as `send_task` writes it.
pub fn envelope(message: &Message<'_>, delivery_tag: &str) -> String {
    let body = json!([
        message.args,
        message.kwargs,
        {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
    ]);
    let eta = message
        .eta
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string());
    json!({
        "body": b64(body.to_string().as_bytes()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": message.name, "id": message.id, "shadow": null, "eta": eta,
            "expires": null, "group": null, "group_index": null, "retries": message.retries,
            "timelimit": [null, null], "root_id": message.root_id.unwrap_or(message.id),
            "parent_id": null,
            "argsrepr": py_repr(&Value::Array(message.args.to_vec())),
            "kwargsrepr": py_repr(&Value::Object(message.kwargs.clone())),
            "origin": "taskscope", "ignore_result": null, "replaced_task_nesting": 0,
            "stamped_headers": null, "stamps": {}
        },
        "properties": {
            "correlation_id": message.id, "reply_to": null,
            "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": message.queue},
            "priority": 0, "body_encoding": "base64", "delivery_tag": delivery_tag
        }
    })
    .to_string()
}

/// The queue's binding (as `Queue.declare` writes it), then the message pushed.
pub fn enqueue(message: &Message<'_>) -> Write {
    let binding = format!("{q}{SEP}{SEP}{q}", q = message.queue);
    let tag = uuid::Uuid::new_v4().to_string();
    Write::Multi(vec![
        RedisCommand::new(
            "SADD",
            [format!("_kombu.binding.{}", message.queue), binding],
        ),
        RedisCommand::new(
            "LPUSH",
            [message.queue.to_string(), envelope(message, &tag)],
        ),
    ])
}

/// Removes the waiting messages of task ARGV[1] from the lists in KEYS; replies how many.
/// A message is matched by its decoded `headers.id` (a cheap substring test first).
const DELETE_LUA: &str = r#"
local removed = 0
for _, key in ipairs(KEYS) do
    local messages = redis.call('LRANGE', key, 0, -1)
    for _, message in ipairs(messages) do
        if string.find(message, ARGV[1], 1, true) then
            local ok, decoded = pcall(cjson.decode, message)
            if ok and type(decoded) == 'table' and type(decoded.headers) == 'table'
                and decoded.headers.id == ARGV[1] then
                removed = removed + redis.call('LREM', key, 1, message)
            end
        end
    end
end
return removed
"#;

pub fn delete(queue: &str, id: &str) -> Write {
    Write::Script {
        lua: DELETE_LUA,
        keys: queue_keys(queue),
        args: vec![id.as_bytes().to_vec()],
    }
}

/// kombu's `_purge`: every priority list counted, then deleted.
const PURGE_LUA: &str = r#"
local out = {0}
for _, key in ipairs(KEYS) do
    for _, message in ipairs(redis.call('LRANGE', key, 0, -1)) do
        out[1] = out[1] + 1
        local ok, decoded = pcall(cjson.decode, message)
        if #out <= 10000 and ok and type(decoded) == 'table' and type(decoded.headers) == 'table'
            and type(decoded.headers.id) == 'string' then
            out[#out + 1] = decoded.headers.id
        end
    end
    redis.call('DEL', key)
end
return out
"#;

pub fn purge(queue: &str) -> Write {
    Write::Script {
        lua: PURGE_LUA,
        keys: queue_keys(queue),
        args: Vec::new(),
    }
}

/// `app.control.revoke(id, terminate=True)` on database `db`: a broadcast every worker
/// obeys (a waiting task is discarded when it arrives, a running one gets SIGTERM).
pub fn revoke_on(db: u32, id: &str, delivery_tag: String, now: DateTime<Utc>) -> Write {
    let body = json!({
        "method": "revoke",
        "arguments": {"task_id": id, "terminate": true, "signal": "SIGTERM"},
        "destination": null, "pattern": null, "matcher": null
    });
    let expires = now.timestamp_micros() as f64 / 1e6 + 10.0;
    let message = json!({
        "body": b64(body.to_string().as_bytes()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1, "expires": expires},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
            "priority": 0, "body_encoding": "base64", "delivery_tag": delivery_tag
        }
    });
    Write::Publish {
        channel: format!("/{db}.celery.pidbox"),
        message: message.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_message_is_kombus_envelope_pushed_on_its_queue() {
        let kwargs = json!({"note": "x"}).as_object().cloned().unwrap();
        let eta: DateTime<Utc> = "2026-12-06T12:23:59.927809Z".parse().unwrap();
        let m = Message {
            id: "t1",
            name: "billing.add",
            args: &[json!(1), json!(2)],
            kwargs: &kwargs,
            queue: "celery",
            eta: Some(eta),
            retries: 0,
            root_id: None,
        };
        let Write::Multi(cmds) = enqueue(&m) else {
            panic!()
        };
        assert_eq!(
            cmds[0],
            RedisCommand::new(
                "SADD",
                ["_kombu.binding.celery", "celery\x06\x16\x06\x16celery"]
            )
        );
        assert_eq!(cmds[1].name, "LPUSH");
        assert_eq!(cmds[1].arg_text(0), "celery");
        let env: Value = serde_json::from_slice(&cmds[1].args[1]).unwrap();
        assert_eq!(env["headers"]["task"], "billing.add");
        assert_eq!(env["headers"]["root_id"], "t1");
        assert_eq!(env["headers"]["eta"], "2026-12-06T12:23:59.927809+00:00");
        assert_eq!(env["headers"]["argsrepr"], "[1, 2]");
        assert_eq!(env["headers"]["kwargsrepr"], "{'note': 'x'}");
        let body = base64::engine::general_purpose::STANDARD
            .decode(env["body"].as_str().unwrap())
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body[0], json!([1, 2]));
        assert_eq!(body[1], json!({"note": "x"}));
    }

    #[test]
    fn priority_lists_use_kombus_separator() {
        assert_eq!(
            queue_keys("q"),
            vec!["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]
        );
    }

    #[test]
    fn revoke_is_broadcast_on_the_pidbox_exchange() {
        let now: DateTime<Utc> = "2026-12-06T12:00:00Z".parse().unwrap();
        let Write::Publish { channel, message } = revoke_on(1, "t1", "tag".into(), now) else {
            panic!()
        };
        assert_eq!(channel, "/1.celery.pidbox");
        let env: Value = serde_json::from_slice(&message).unwrap();
        let body = base64::engine::general_purpose::STANDARD
            .decode(env["body"].as_str().unwrap())
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["method"], "revoke");
        assert_eq!(body["arguments"]["task_id"], "t1");
        assert_eq!(body["arguments"]["terminate"], true);
        assert_eq!(
            env["properties"]["delivery_info"]["exchange"],
            "celery.pidbox"
        );
    }
}
