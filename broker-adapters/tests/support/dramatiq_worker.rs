//! What Dramatiq's RedisBroker writes, command for command (its `dispatch.lua`, dramatiq 2.2.1),
//! applied to a [`FakeRedis`]: each function is one script call, heartbeat included. The caller
//! delivers the notifications afterwards (a script is atomic).

use super::fake_redis::FakeRedis;
use serde_json::Value;

pub const NS: &str = "dramatiq";

/// Fields of a captured message.
pub fn field(payload: &[u8], path: &[&str]) -> String {
    let mut v: Value = serde_json::from_slice(payload).expect("a Dramatiq message is JSON");
    for p in path {
        v = v[*p].take();
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{path:?} in the message"))
        .to_string()
}

pub fn redis_id(payload: &[u8]) -> String {
    field(payload, &["options", "redis_message_id"])
}

pub fn message_id(payload: &[u8]) -> String {
    field(payload, &["message_id"])
}

/// The copy a worker enqueues when a delayed message is due (`Worker`'s delay consumer:
/// `broker.enqueue(message.copy(queue_name=q_name(...)))`): the base queue, no `eta`, a new
/// `redis_message_id`, the rest kept.
pub fn due_copy(payload: &[u8], new_redis_id: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(payload).expect("JSON");
    let queue = v["queue_name"].as_str().expect("queue_name");
    let base = queue.strip_suffix(".DQ").unwrap_or(queue).to_string();
    v["queue_name"] = Value::String(base);
    let options = v["options"].as_object_mut().expect("options");
    options.remove("eta");
    options.insert(
        "redis_message_id".into(),
        Value::String(new_redis_id.into()),
    );
    serde_json::to_vec(&v).expect("JSON")
}

fn heartbeat(r: &mut FakeRedis, worker: &str) {
    r.zadd(&format!("{NS}:__heartbeats__"), 1_795_445_580_000.0, worker);
}

fn acks(worker: &str, queue_name: &str) -> String {
    format!("{NS}:__acks__.{worker}.{queue_name}")
}

/// `enqueue`: the message into `<queue_name>.msgs`, its id at the tail of `<queue_name>`.
/// Returns the `redis_message_id`.
pub fn enqueue(r: &mut FakeRedis, producer: &str, payload: &[u8]) -> String {
    let rid = redis_id(payload);
    let queue_name = field(payload, &["queue_name"]);
    heartbeat(r, producer);
    r.hset(&format!("{NS}:{queue_name}.msgs"), &rid, payload);
    r.rpush(&format!("{NS}:{queue_name}"), rid.as_bytes());
    rid
}

/// `fetch`: up to `prefetch` ids from the head of the list into the worker's ack set.
pub fn fetch(r: &mut FakeRedis, worker: &str, queue_name: &str, prefetch: usize) -> Vec<String> {
    heartbeat(r, worker);
    let mut ids = Vec::new();
    for _ in 0..prefetch {
        let Some(id) = r.lpop(&format!("{NS}:{queue_name}")) else {
            break;
        };
        let id = String::from_utf8(id).expect("ids are text");
        r.sadd(&acks(worker, queue_name), &id);
        ids.push(id);
    }
    ids
}

/// `ack`: out of the ack set, then out of `.msgs`.
pub fn ack(r: &mut FakeRedis, worker: &str, queue_name: &str, id: &str) {
    heartbeat(r, worker);
    if r.srem(&acks(worker, queue_name), id) {
        r.hdel(&format!("{NS}:{queue_name}.msgs"), id);
    }
}

/// `nack`: out of the ack set into the dead letters (`<base>.XQ` scored by time, the original
/// payload in `<base>.XQ.msgs`), out of `.msgs`.
pub fn nack(r: &mut FakeRedis, worker: &str, queue_name: &str, id: &str) {
    heartbeat(r, worker);
    let base = queue_name.strip_suffix(".DQ").unwrap_or(queue_name);
    if r.srem(&acks(worker, queue_name), id) {
        let msgs = format!("{NS}:{queue_name}.msgs");
        if let Some(message) = r.hget(&msgs, id) {
            r.zadd(&format!("{NS}:{base}.XQ"), 1_795_445_581_000.0, id);
            r.hset(&format!("{NS}:{base}.XQ.msgs"), id, &message);
            r.hdel(&msgs, id);
        }
    }
}

/// `requeue` (a graceful stop gives back what it prefetched): out of the ack set, back at the
/// tail of the list when the message is still there.
pub fn requeue(r: &mut FakeRedis, worker: &str, queue_name: &str, ids: &[String]) {
    heartbeat(r, worker);
    for id in ids {
        if r.srem(&acks(worker, queue_name), id)
            && r.hget(&format!("{NS}:{queue_name}.msgs"), id).is_some()
        {
            r.rpush(&format!("{NS}:{queue_name}"), id.as_bytes());
        }
    }
}

/// The maintenance step of some live worker's call on `queue_name`, once `dead`'s heartbeat is
/// older than the timeout: `dead`'s ack set of that queue goes back to the list, then is
/// deleted (no `srem`: one `del`), and the dead worker's heartbeat is removed when it has no
/// other ack set.
pub fn maintenance(r: &mut FakeRedis, live: &str, dead: &str, queue_name: &str) {
    heartbeat(r, live);
    let set = acks(dead, queue_name);
    let ids = r.smembers(&set);
    if !ids.is_empty() {
        for id in &ids {
            if r.hget(&format!("{NS}:{queue_name}.msgs"), id).is_some() {
                r.rpush(&format!("{NS}:{queue_name}"), id.as_bytes());
            }
        }
        r.del(&set);
    }
    let prefix = format!("{NS}:__acks__.{dead}");
    if !r.keys().any(|k| k.starts_with(&prefix)) {
        r.zrem(&format!("{NS}:__heartbeats__"), dead);
    }
}
