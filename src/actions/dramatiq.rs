//! Dramatiq's writes (`RedisBroker`, namespace `dramatiq`), as its `dispatch.lua` makes them,
//! pure:
//! - enqueue: the message JSON (`queue_name`, `actor_name`, `args`, `kwargs`, `options` with a
//!   fresh `redis_message_id`, `message_id`, `message_timestamp`) by `HSET <ns>:<q>.msgs
//!   <redis id> <message>` + `RPUSH <ns>:<q> <redis id>`; delayed: the same on the delay queue
//!   `<q>.DQ` with `options.eta` (the worker moves it back when due);
//! - delete: the waiting or delayed message whose `message_id` is the task, by its
//!   `redis_message_id`, from the list and the hash;
//! - purge: the queue's waiting and delayed messages (lists and hashes), as `flush` does for
//!   those two (dead letters in `.XQ` are kept).
//!
//! Dramatiq has no way to stop a running message from Redis.

use super::{RedisCommand, Write};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// Dramatiq's default namespace.
pub const NAMESPACE: &str = "dramatiq";

pub fn queue_key(queue: &str) -> String {
    format!("{NAMESPACE}:{queue}")
}

fn messages_key(queue: &str) -> String {
    format!("{NAMESPACE}:{queue}.msgs")
}

/// The delay queue of `queue`.
pub fn delay_queue(queue: &str) -> String {
    format!("{queue}.DQ")
}

/// The dead-letter hash of `queue` (where a failed message's body stays, by its Redis id).
pub fn dead_messages_key(queue: &str) -> String {
    format!("{NAMESPACE}:{queue}.XQ.msgs")
}

/// Reads the body of the dead letter whose `message_id` is ARGV[1] from the hash KEYS[1]
/// (read-only; nil when none).
pub const FIND_DEAD_LUA: &str = r#"
local entries = redis.call('HGETALL', KEYS[1])
for j = 1, #entries, 2 do
    local body = entries[j + 1]
    if string.find(body, ARGV[1], 1, true) then
        local ok, decoded = pcall(cjson.decode, body)
        if ok and type(decoded) == 'table' and decoded.message_id == ARGV[1] then
            return body
        end
    end
end
return false
"#;

/// A new message.
pub struct Message<'a> {
    pub message_id: &'a str,
    /// Its id in Redis (`options.redis_message_id`).
    pub redis_id: &'a str,
    pub actor: &'a str,
    pub args: &'a [Value],
    pub kwargs: &'a Map<String, Value>,
    pub queue: &'a str,
    pub eta: Option<DateTime<Utc>>,
}

/// The message JSON and the queue it goes to (the delay queue with an ETA).
pub fn encode(m: &Message<'_>, now: DateTime<Utc>) -> (String, String) {
    let mut options = json!({ "redis_message_id": m.redis_id });
    let queue = match m.eta.filter(|at| *at > now) {
        Some(at) => {
            options["eta"] = json!(at.timestamp_millis());
            delay_queue(m.queue)
        }
        None => m.queue.to_string(),
    };
    let body = json!({
        "queue_name": queue, "actor_name": m.actor, "args": m.args, "kwargs": m.kwargs,
        "options": options, "message_id": m.message_id,
        "message_timestamp": now.timestamp_millis()
    });
    (queue, body.to_string())
}

pub fn enqueue(m: &Message<'_>, now: DateTime<Utc>) -> Write {
    let (queue, body) = encode(m, now);
    Write::Multi(vec![
        RedisCommand::new("HSET", [messages_key(&queue), m.redis_id.to_string(), body]),
        RedisCommand::new("RPUSH", [queue_key(&queue), m.redis_id.to_string()]),
    ])
}

/// The actor, args and kwargs of a raw message (a dead letter's body), if it is one.
pub fn call_of(raw: &[u8]) -> Option<(String, Vec<Value>, Map<String, Value>)> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    let actor = v.get("actor_name")?.as_str()?.to_string();
    let args = v.get("args")?.as_array()?.clone();
    let kwargs = v
        .get("kwargs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Some((actor, args, kwargs))
}

/// Removes the message whose `message_id` is ARGV[1] from the lists KEYS[1], KEYS[3] and their
/// hashes KEYS[2], KEYS[4] (waiting, delayed); replies how many.
const DELETE_LUA: &str = r#"
local removed = 0
for i = 1, 3, 2 do
    local entries = redis.call('HGETALL', KEYS[i + 1])
    for j = 1, #entries, 2 do
        local body = entries[j + 1]
        if string.find(body, ARGV[1], 1, true) then
            local ok, decoded = pcall(cjson.decode, body)
            if ok and type(decoded) == 'table' and decoded.message_id == ARGV[1] then
                removed = removed + redis.call('LREM', KEYS[i], 0, entries[j])
                redis.call('HDEL', KEYS[i + 1], entries[j])
            end
        end
    end
end
return removed
"#;

pub fn delete(queue: &str, message_id: &str) -> Write {
    let dq = delay_queue(queue);
    Write::Script {
        lua: DELETE_LUA,
        keys: vec![
            queue_key(queue),
            messages_key(queue),
            queue_key(&dq),
            messages_key(&dq),
        ],
        args: vec![message_id.as_bytes().to_vec()],
    }
}

/// The waiting and delayed messages counted, then their lists and hashes deleted.
const PURGE_LUA: &str = r#"
local out = {redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[3])}
for _, hash in ipairs({KEYS[2], KEYS[4]}) do
    for _, body in ipairs(redis.call('HVALS', hash)) do
        local ok, decoded = pcall(cjson.decode, body)
        if #out <= 10000 and ok and type(decoded) == 'table' and type(decoded.message_id) == 'string' then
            out[#out + 1] = decoded.message_id
        end
    end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return out
"#;

pub fn purge(queue: &str) -> Write {
    let dq = delay_queue(queue);
    Write::Script {
        lua: PURGE_LUA,
        keys: vec![
            queue_key(queue),
            messages_key(queue),
            queue_key(&dq),
            messages_key(&dq),
        ],
        args: Vec::new(),
    }
}

/// Keys whose existence says a queue is in use (waiting, delayed, dead letters).
pub fn known_keys(queue: &str) -> [String; 3] {
    [
        queue_key(queue),
        queue_key(&delay_queue(queue)),
        format!("{NAMESPACE}:{queue}.XQ"),
    ]
}

/// The keys a queue's waiting and delayed messages live in (lists).
pub fn waiting_lists(queue: &str) -> [String; 2] {
    [queue_key(queue), queue_key(&delay_queue(queue))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_is_dispatch_luas_hset_then_rpush_and_a_delay_goes_to_the_dq() {
        let now: DateTime<Utc> = "2026-12-06T12:00:00Z".parse().unwrap();
        let kwargs = Map::new();
        let m = Message {
            message_id: "m1",
            redis_id: "r1",
            actor: "add",
            args: &[json!(1), json!(2)],
            kwargs: &kwargs,
            queue: "default",
            eta: None,
        };
        let Write::Multi(cmds) = enqueue(&m, now) else {
            panic!()
        };
        assert_eq!(cmds[0].arg_text(0), "dramatiq:default.msgs");
        assert_eq!(cmds[0].arg_text(1), "r1");
        let body: Value = serde_json::from_slice(&cmds[0].args[2]).unwrap();
        assert_eq!(body["actor_name"], "add");
        assert_eq!(body["message_id"], "m1");
        assert_eq!(body["options"]["redis_message_id"], "r1");
        assert_eq!(
            cmds[1],
            RedisCommand::new("RPUSH", ["dramatiq:default", "r1"])
        );
        let later = Message {
            eta: Some(now + chrono::Duration::seconds(2)),
            ..m
        };
        let Write::Multi(cmds) = enqueue(&later, now) else {
            panic!()
        };
        assert_eq!(
            cmds[1],
            RedisCommand::new("RPUSH", ["dramatiq:default.DQ", "r1"])
        );
        let body: Value = serde_json::from_slice(&cmds[0].args[2]).unwrap();
        assert_eq!(body["queue_name"], "default.DQ");
        assert_eq!(body["options"]["eta"], json!(now.timestamp_millis() + 2000));
    }

    #[test]
    fn a_dead_letters_call_is_read_back() {
        let raw = br#"{"queue_name":"default","actor_name":"fail","args":[3],"kwargs":{"k":1},"options":{},"message_id":"m"}"#;
        let (actor, args, kwargs) = call_of(raw).unwrap();
        assert_eq!(actor, "fail");
        assert_eq!(args, vec![json!(3)]);
        assert_eq!(kwargs["k"], json!(1));
        assert!(call_of(b"not json").is_none());
    }
}
