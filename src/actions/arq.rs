//! arq's writes (`ArqRedis.enqueue_job`, `Job.abort`), pure:
//! - enqueue: the job (`pickle.dumps({'t': None, 'f': function, 'a': args, 'k': kwargs,
//!   'et': enqueue ms})`, arq's default serializer) by `PSETEX arq:job:<id> <expires> <job>` +
//!   `ZADD <queue> <score> <id>` in one `MULTI` (score: when it is due, in ms; expiry: 24 h past
//!   it, as arq's `expires_extra_ms`);
//! - delete and purge: waiting jobs only (members of the queue's sorted set with no
//!   `arq:in-progress:<id>` key), the member and its job key;
//! - revoke: `ZADD arq:abort <now ms> <id>`, which a worker with `allow_abort_jobs` obeys.

use super::pickle::{self, Pickled};
use super::{RedisCommand, Write};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// arq's default queue (the sorted set's key).
pub const DEFAULT_QUEUE: &str = "arq:queue";
const JOB_PREFIX: &str = "arq:job:";
const EXPIRES_EXTRA_MS: i64 = 86_400_000;

pub fn job_key(id: &str) -> String {
    format!("{JOB_PREFIX}{id}")
}

/// The pickled job arq's worker reads.
pub fn job_data(
    function: &str,
    args: &[Value],
    kwargs: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Vec<u8> {
    let job =
        json!({"t": null, "f": function, "a": args, "k": kwargs, "et": now.timestamp_millis()});
    pickle::dumps(&Pickled::Json(&job))
}

pub fn enqueue(
    id: &str,
    function: &str,
    args: &[Value],
    kwargs: &Map<String, Value>,
    queue: &str,
    now: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
) -> Write {
    let now_ms = now.timestamp_millis();
    let score = run_at.map_or(now_ms, |t| t.timestamp_millis().max(now_ms));
    let expires = score - now_ms + EXPIRES_EXTRA_MS;
    Write::Multi(vec![
        RedisCommand::new(
            "PSETEX",
            [
                job_key(id).into_bytes(),
                expires.to_string().into_bytes(),
                job_data(function, args, kwargs, now),
            ],
        ),
        RedisCommand::new(
            "ZADD",
            [queue.to_string(), score.to_string(), id.to_string()],
        ),
    ])
}

/// Removes waiting job ARGV[1] from the queue KEYS[1]; replies 1 or 0.
const DELETE_LUA: &str = r#"
if redis.call('EXISTS', 'arq:in-progress:' .. ARGV[1]) == 1 then return 0 end
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed > 0 then redis.call('DEL', 'arq:job:' .. ARGV[1]) end
return removed
"#;

pub fn delete(queue: &str, id: &str) -> Write {
    Write::Script {
        lua: DELETE_LUA,
        keys: vec![queue.to_string()],
        args: vec![id.as_bytes().to_vec()],
    }
}

/// Removes every waiting job of the queue KEYS[1] (ARGV[1] = 1) or counts them (0).
const PURGE_LUA: &str = r#"
local out = {0}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if redis.call('EXISTS', 'arq:in-progress:' .. id) == 0 then
        out[1] = out[1] + 1
        if ARGV[1] == '1' then
            redis.call('ZREM', KEYS[1], id)
            redis.call('DEL', 'arq:job:' .. id)
            if #out <= 10000 then out[#out + 1] = id end
        end
    end
end
return out
"#;

pub fn purge(queue: &str) -> Write {
    Write::Script {
        lua: PURGE_LUA,
        keys: vec![queue.to_string()],
        args: vec![b"1".to_vec()],
    }
}

pub fn count(queue: &str) -> Write {
    Write::Script {
        lua: PURGE_LUA,
        keys: vec![queue.to_string()],
        args: vec![b"0".to_vec()],
    }
}

/// `Job.abort()`'s write.
pub fn abort(id: &str, now: DateTime<Utc>) -> Write {
    Write::Multi(vec![RedisCommand::new(
        "ZADD",
        [
            "arq:abort".to_string(),
            now.timestamp_millis().to_string(),
            id.to_string(),
        ],
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_sets_the_pickled_job_then_scores_it_when_due() {
        let now: DateTime<Utc> = "2026-12-06T12:00:00Z".parse().unwrap();
        let later = now + chrono::Duration::seconds(5);
        let Write::Multi(cmds) = enqueue(
            "j1",
            "add",
            &[json!(1)],
            &Map::new(),
            "arq:queue",
            now,
            Some(later),
        ) else {
            panic!()
        };
        assert_eq!(cmds[0].arg_text(0), "arq:job:j1");
        assert_eq!(cmds[0].arg_text(1), (5_000 + EXPIRES_EXTRA_MS).to_string());
        assert_eq!(cmds[0].args[2][..2], [0x80, 2]);
        assert_eq!(
            cmds[1],
            RedisCommand::new(
                "ZADD",
                ["arq:queue", &later.timestamp_millis().to_string(), "j1"]
            )
        );
    }
}
