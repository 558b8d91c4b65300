//! What Celery 5.7 / kombu 5.7's Redis transport and Redis result backend write, command for
//! command (`tests/fixtures/celery/monitor_lifecycle_early_ack.txt`,
//! `keyspace_lifecycle_early_ack.txt`, `observations.json`), applied to a [`FakeRedis`], on the
//! captured payloads of `tests/fixtures/celery/` with their task id, delivery tag and times
//! rewritten (each capture is of another task; a lifecycle needs one id throughout).
//!
//! - producer: `SADD _kombu.binding.celery celery\x06\x16\x06\x16celery` (declare), `LPUSH
//!   celery <message>`;
//! - worker: `BRPOP celery ...` (an `rpop` event), then `MULTI ZADD unacked_index <t> <tag>;
//!   HSET unacked <tag> [<message>, "", "celery"]`; the ack (early by default, after the task
//!   with `acks_late`) `MULTI ZREM unacked_index <tag>; HDEL unacked <tag>`;
//! - result backend: `MULTI SETEX celery-task-meta-<id> 86400 <record>; PUBLISH
//!   celery-task-meta-<id> <record>` (STARTED with `task_track_started`, then the outcome);
//! - retry: the new message (`retries` + 1, its countdown as `eta`) `LPUSH`ed, then the RETRY
//!   record;
//! - visibility timeout (`restore_visible`, acks_late worker gone): `MULTI ZREM unacked_index
//!   <tag>; HDEL unacked <tag>; RPUSH celery <message with redelivered>`;
//! - events (`-E`): kombu envelopes on `/0.celeryev/task.multi` (task events) and
//!   `/0.celeryev/worker.*` (worker events, sent without `-E` too).

use super::fake_redis::FakeRedis;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

pub const QUEUE: &str = "celery";
pub const UNACKED: &str = "unacked";
pub const UNACKED_INDEX: &str = "unacked_index";
pub const RESULT_TTL_S: i64 = 86_400;
const SEP: &str = "\x06\x16";
/// The hostname in the captured worker events.
pub const HOSTNAME: &str = "cap_extended@caphost";

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/celery/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("a captured Celery payload is JSON")
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
        .replace('Z', "+00:00")
}

/// A queue message: the captured `file` as task `id`, delivery tag `tag`, `retries`, `eta`.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub tag: String,
    pub envelope: Value,
}

impl Message {
    pub fn new(file: &str, id: &str, tag: &str) -> Message {
        let mut envelope = json_of(&fixture(file));
        envelope["headers"]["id"] = json!(id);
        envelope["headers"]["root_id"] = json!(id);
        envelope["properties"]["correlation_id"] = json!(id);
        envelope["properties"]["delivery_tag"] = json!(tag);
        Message {
            id: id.to_string(),
            tag: tag.to_string(),
            envelope,
        }
    }

    pub fn with_eta(mut self, eta: Option<DateTime<Utc>>) -> Message {
        self.envelope["headers"]["eta"] = eta.map_or(Value::Null, |t| json!(iso(t)));
        self
    }

    /// The retry's copy: the same id, `retries` + 1, a new tag, due at `eta`.
    pub fn retry(&self, tag: &str, eta: DateTime<Utc>) -> Message {
        let mut m = self.clone().with_eta(Some(eta));
        let retries = self.envelope["headers"]["retries"].as_u64().unwrap_or(0) + 1;
        m.envelope["headers"]["retries"] = json!(retries);
        m.envelope["properties"]["delivery_tag"] = json!(tag);
        m.tag = tag.to_string();
        m
    }

    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.envelope).expect("JSON")
    }
}

/// The producer's first publish declares the queue's binding.
pub fn declare(r: &mut FakeRedis) {
    r.sadd(
        "_kombu.binding.celery",
        &format!("{QUEUE}{SEP}{SEP}{QUEUE}"),
    );
}

/// `apply_async`: `LPUSH celery <message>`.
pub fn send(r: &mut FakeRedis, msg: &Message) {
    r.lpush(QUEUE, &msg.bytes());
}

/// A worker's `BRPOP` and the `MULTI` that puts the message in `unacked`: the message taken.
pub fn take(r: &mut FakeRedis) -> Option<Message> {
    let bytes = r.rpop(QUEUE)?;
    let envelope = json_of(&bytes);
    let tag = envelope["properties"]["delivery_tag"]
        .as_str()
        .expect("a delivery tag")
        .to_string();
    let id = envelope["headers"]["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let score = r.now_ms() as f64 / 1000.0;
    r.zadd(UNACKED_INDEX, score, &tag);
    let value = json!([envelope, "", QUEUE]);
    r.hset(UNACKED, &tag, &serde_json::to_vec(&value).expect("JSON"));
    Some(Message { id, tag, envelope })
}

/// The acknowledgement: `MULTI ZREM unacked_index <tag>; HDEL unacked <tag>`.
pub fn ack(r: &mut FakeRedis, tag: &str) {
    r.zrem(UNACKED_INDEX, tag);
    r.hdel(UNACKED, tag);
}

/// `restore_visible` of an unacknowledged message (its worker gone, the visibility timeout
/// passed): out of `unacked`, back at the tail of the queue, flagged redelivered.
pub fn restore(r: &mut FakeRedis, tag: &str) {
    let Some(value) = r.hget(UNACKED, tag) else {
        return;
    };
    let mut value = json_of(&value);
    r.zrem(UNACKED_INDEX, tag);
    r.hdel(UNACKED, tag);
    let mut envelope = value[0].take();
    envelope["headers"]["redelivered"] = json!(true);
    envelope["properties"]["delivery_info"]["redelivered"] = json!(true);
    r.rpush(QUEUE, &serde_json::to_vec(&envelope).expect("JSON"));
}

/// A result record: the captured `file` as task `id`, done at `now`.
pub fn record(file: &str, id: &str, now: DateTime<Utc>) -> Vec<u8> {
    let mut v = json_of(&fixture(file));
    v["task_id"] = json!(id);
    if !v["date_done"].is_null() {
        v["date_done"] = json!(iso(now));
    }
    serde_json::to_vec(&v).expect("JSON")
}

pub fn result_key(id: &str) -> String {
    format!("celery-task-meta-{id}")
}

/// The result backend's `set`: `SETEX` then `PUBLISH` of the same record.
pub fn store_result(r: &mut FakeRedis, id: &str, record: &[u8]) {
    let key = result_key(id);
    r.setex(&key, RESULT_TTL_S, record);
    r.publish(&key, record);
}

/// A task event (`-E`) from the captured `file`, about task `id`, sent at `now`, on
/// `/0.celeryev/task.multi`.
pub fn task_event(r: &mut FakeRedis, file: &str, id: &str, now: DateTime<Utc>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut envelope = json_of(&fixture(file));
    let body = b64
        .decode(envelope["body"].as_str().expect("a body"))
        .expect("base64");
    let mut events = json_of(&body);
    for e in events.as_array_mut().expect("a list of events") {
        e["uuid"] = json!(id);
        e["timestamp"] = json!(now.timestamp_micros() as f64 / 1e6);
        if e.get("eta").is_some() {
            e["eta"] = Value::Null;
        }
        if e.get("root_id").is_some() {
            e["root_id"] = json!(id);
        }
    }
    envelope["body"] = json!(b64.encode(serde_json::to_vec(&events).expect("JSON")));
    r.publish(
        "/0.celeryev/task.multi",
        &serde_json::to_vec(&envelope).expect("JSON"),
    );
}

/// A worker event (`worker-online`, `worker-heartbeat`...) from the captured `file`, sent at
/// `now`.
pub fn worker_event(r: &mut FakeRedis, file: &str, now: DateTime<Utc>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut envelope = json_of(&fixture(file));
    let body = b64
        .decode(envelope["body"].as_str().expect("a body"))
        .expect("base64");
    let mut event = json_of(&body);
    event["timestamp"] = json!(now.timestamp_micros() as f64 / 1e6);
    let routing_key = envelope["properties"]["delivery_info"]["routing_key"]
        .as_str()
        .expect("a routing key")
        .to_string();
    envelope["body"] = json!(b64.encode(serde_json::to_vec(&event).expect("JSON")));
    r.publish(
        &format!("/0.celeryev/{routing_key}"),
        &serde_json::to_vec(&envelope).expect("JSON"),
    );
}
