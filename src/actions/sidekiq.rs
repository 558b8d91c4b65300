//! Sidekiq's writes (6.x, no namespace), as `Sidekiq::Client.push` and `Sidekiq::Queue#clear`
//! make them, pure:
//! - push: the job JSON (`class`, `args`, `queue`, `jid`, `retry`, `created_at`,
//!   `enqueued_at`) by `SADD queues <q>` + `LPUSH queue:<q> <job>`; with a delay
//!   (`perform_in`) `ZADD schedule <at> <job>` without `enqueued_at` (the poller pushes it);
//! - retry: a dead or retry-set job's JSON (its class and args exactly), without its error
//!   fields, pushed again under a new `jid`;
//! - delete: the waiting job whose `jid` is the task removed from `queue:<q>` (or from
//!   `schedule`);
//! - purge: `Queue#clear`: the list counted and unlinked.
//!
//! Sidekiq has no way to stop a running job from Redis (OSS): revoke is not offered.

use super::{RedisCommand, Write};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

pub fn queue_key(queue: &str) -> String {
    format!("queue:{queue}")
}

fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

/// A new job's JSON.
pub fn job(
    jid: &str,
    class: &str,
    args: &[Value],
    queue: &str,
    now: DateTime<Utc>,
) -> Map<String, Value> {
    let mut j = Map::new();
    j.insert("retry".into(), json!(true));
    j.insert("queue".into(), json!(queue));
    j.insert("args".into(), json!(args));
    j.insert("class".into(), json!(class));
    j.insert("jid".into(), json!(jid));
    j.insert("created_at".into(), json!(seconds(now)));
    j
}

/// Pushes `job` (its `queue` field names the queue), now or at `run_at`.
pub fn push(
    mut job: Map<String, Value>,
    now: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
) -> Write {
    let queue = job
        .get("queue")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    match run_at.filter(|at| *at > now) {
        Some(at) => {
            job.remove("enqueued_at");
            Write::Multi(vec![RedisCommand::new(
                "ZADD",
                [
                    "schedule".to_string(),
                    format!("{:.6}", seconds(at)),
                    Value::Object(job).to_string(),
                ],
            )])
        }
        None => {
            job.insert("enqueued_at".into(), json!(seconds(now)));
            Write::Multi(vec![
                RedisCommand::new("SADD", ["queues".to_string(), queue.clone()]),
                RedisCommand::new("LPUSH", [queue_key(&queue), Value::Object(job).to_string()]),
            ])
        }
    }
}

/// A failed job's JSON from the dead or retry set, ready to push again under `new_jid`.
pub fn retry_of(raw: &[u8], new_jid: &str, now: DateTime<Utc>) -> Option<Map<String, Value>> {
    let Value::Object(mut j) = serde_json::from_slice(raw).ok()? else {
        return None;
    };
    j.get("class")?.as_str()?;
    j.get("args")?.as_array()?;
    for field in [
        "error_message",
        "error_class",
        "error_backtrace",
        "failed_at",
        "retried_at",
        "retry_count",
        "enqueued_at",
    ] {
        j.remove(field);
    }
    j.insert("jid".into(), json!(new_jid));
    j.insert("created_at".into(), json!(seconds(now)));
    Some(j)
}

/// The JSON of the job `jid` ARGV[1] in the sorted sets KEYS (dead, retry), or nil.
pub const FIND_FAILED_LUA: &str = r#"
for _, key in ipairs(KEYS) do
    for _, body in ipairs(redis.call('ZRANGE', key, 0, -1)) do
        if string.find(body, ARGV[1], 1, true) then
            local ok, decoded = pcall(cjson.decode, body)
            if ok and type(decoded) == 'table' and decoded.jid == ARGV[1] then return body end
        end
    end
end
return false
"#;

/// Removes job ARGV[1] from the list KEYS[1] and the sorted set KEYS[2]; replies how many.
const DELETE_LUA: &str = r#"
local function matches(body)
    if not string.find(body, ARGV[1], 1, true) then return false end
    local ok, decoded = pcall(cjson.decode, body)
    return ok and type(decoded) == 'table' and decoded.jid == ARGV[1]
end
local removed = 0
for _, body in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    if matches(body) then removed = removed + redis.call('LREM', KEYS[1], 1, body) end
end
for _, body in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if matches(body) then removed = removed + redis.call('ZREM', KEYS[2], body) end
end
return removed
"#;

pub fn delete(queue: &str, jid: &str) -> Write {
    Write::Script {
        lua: DELETE_LUA,
        keys: vec![queue_key(queue), "schedule".into()],
        args: vec![jid.as_bytes().to_vec()],
    }
}

/// `Queue#clear`: the list's length, then the list unlinked and the queue unregistered.
const PURGE_LUA: &str = r#"
local out = {redis.call('LLEN', KEYS[1])}
for _, body in ipairs(redis.call('LRANGE', KEYS[1], 0, 9999)) do
    local ok, decoded = pcall(cjson.decode, body)
    if ok and type(decoded) == 'table' and type(decoded.jid) == 'string' then
        out[#out + 1] = decoded.jid
    end
end
redis.call('UNLINK', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return out
"#;

pub fn purge(queue: &str) -> Write {
    Write::Script {
        lua: PURGE_LUA,
        keys: vec![queue_key(queue), "queues".into()],
        args: vec![queue.as_bytes().to_vec()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_registers_the_queue_then_lpushes_the_job() {
        let now: DateTime<Utc> = "2026-12-06T12:00:00Z".parse().unwrap();
        let Write::Multi(cmds) = push(
            job("j1", "AddJob", &[json!(1), json!(2)], "default", now),
            now,
            None,
        ) else {
            panic!()
        };
        assert_eq!(cmds[0], RedisCommand::new("SADD", ["queues", "default"]));
        assert_eq!(cmds[1].arg_text(0), "queue:default");
        let j: Value = serde_json::from_slice(&cmds[1].args[1]).unwrap();
        assert_eq!(j["class"], "AddJob");
        assert_eq!(j["jid"], "j1");
        assert_eq!(j["enqueued_at"], json!(seconds(now)));
        let later = now + chrono::Duration::seconds(3);
        let Write::Multi(cmds) = push(job("j2", "AddJob", &[], "default", now), now, Some(later))
        else {
            panic!()
        };
        assert_eq!(cmds[0].arg_text(0), "schedule");
        assert!(!cmds[0].arg_text(2).contains("enqueued_at"));
    }

    #[test]
    fn a_dead_job_is_pushed_again_without_its_error_under_a_new_jid() {
        let now: DateTime<Utc> = "2026-12-06T12:00:00Z".parse().unwrap();
        let raw = br#"{"class":"FailJob","args":["x"],"queue":"default","jid":"old","retry":1,"error_message":"x","error_class":"ArgumentError","failed_at":1.0,"retry_count":1}"#;
        let j = retry_of(raw, "new", now).unwrap();
        assert_eq!(j["jid"], "new");
        assert_eq!(j["args"], json!(["x"]));
        assert_eq!(j["retry"], json!(1));
        assert!(!j.contains_key("error_message") && !j.contains_key("retry_count"));
        assert!(retry_of(b"{}", "n", now).is_none());
    }
}
