//! BullMQ's writes, as bullmq 6.7.6 itself makes them (`src/commands/*.lua`), pure. A queue is
//! named as taskscope names it, `<prefix>:<queue>` (`bull:emails`); a task id is its job's key
//! (`bull:emails:7`).
//! - `Queue.add(name, data)` = `addStandardJob`: `INCR <q>:id` (the job id), the job hash
//!   (`name`, `data`, `opts`, `timestamp`, `delay`, `priority`), `XADD events added`, `LPUSH
//!   wait` with the worker marker (`ZADD <q>:marker 0 "0"`, not when `meta.paused` or the
//!   queue's concurrency is reached), `XADD events waiting`; with `delay` = `addDelayedJob`:
//!   `ZADD delayed` at `(timestamp + delay) * 4096` (+ a sequence), `XADD events delayed`, the
//!   marker at the next delayed time. One script of ours doing the same (BullMQ's own scripts
//!   take msgpack arguments and handle parents, deduplication and repeat jobs we never write).
//! - Retry of a failed job: a new job with the failed job's `name`, `data` and `opts` (without
//!   its own `jobId`, `delay`, parent, repeat, deduplication) — BullMQ's `Job.retry()` reuses
//!   the id, we keep both attempts in the history.
//! - `Job.remove()` of a waiting or delayed job: out of `wait`, `paused`, `prioritized` or
//!   `delayed`, its keys deleted, `XADD events removed`.
//! - `Queue.drain()` (`drain.lua`): every waiting job (`wait`, legacy `paused`, `prioritized`)
//!   out, their hashes deleted; delayed jobs stay (as `drain(false)`).
//! - `Queue.pause()` / `resume()` (`pause.lua`): `HSET meta paused 1` + `DEL marker` /
//!   `HDEL meta paused`, the legacy `paused` list moved back to `wait`, the marker re-added;
//!   `XADD events paused|resumed`. (bullmq 6 no longer renames `wait` to `paused` on pause.)
//!
//! Stopping a running job is the worker's own business in BullMQ (no command a client can
//! send): `execute.rs` answers revoke as unsupported.

use super::Write;
use broker_adapters::bullmq::layout::QueueName;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// `Queue.add` (`addStandardJob`, or `addDelayedJob` when `delay_ms` > 0), replying the new
/// job's numeric id.
///
/// KEYS: wait, meta, id, delayed, active, events, marker, prioritized.
/// ARGV: job key prefix (`bull:q:`), name, data JSON, opts JSON, timestamp ms, delay ms.
const ADD_LUA: &str = r#"
local rcall = redis.call
local jobId = rcall('INCR', KEYS[3]) .. ''
local jobKey = ARGV[1] .. jobId
local maxEvents = rcall('HGET', KEYS[2], 'opts.maxLenEvents')
if not maxEvents then
    maxEvents = 10000
    rcall('HSET', KEYS[2], 'opts.maxLenEvents', maxEvents)
end
local delay = tonumber(ARGV[6])
rcall('HMSET', jobKey, 'name', ARGV[2], 'data', ARGV[3], 'opts', ARGV[4],
    'timestamp', ARGV[5], 'delay', delay, 'priority', 0)
rcall('XADD', KEYS[6], '*', 'event', 'added', 'jobId', jobId, 'name', ARGV[2])
if delay > 0 then
    local at = tonumber(ARGV[5]) + delay
    local minScore = at * 0x1000
    local maxScore = (at + 1) * 0x1000 - 1
    local score = minScore
    local top = rcall('ZREVRANGEBYSCORE', KEYS[4], maxScore, minScore, 'WITHSCORES', 'LIMIT', 0, 1)
    if top[2] then score = math.min(tonumber(top[2]) + 1, maxScore) end
    rcall('ZADD', KEYS[4], score, jobId)
    rcall('XADD', KEYS[6], 'MAXLEN', '~', maxEvents, '*', 'event', 'delayed', 'jobId', jobId,
        'delay', at)
    local first = rcall('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    if first[2] then rcall('ZADD', KEYS[7], tonumber(first[2]) / 0x1000, '1') end
else
    local meta = rcall('HMGET', KEYS[2], 'paused', 'concurrency')
    local held = meta[1] and true or false
    if not held and meta[2] then held = rcall('LLEN', KEYS[5]) >= tonumber(meta[2]) end
    rcall('LPUSH', KEYS[1], jobId)
    if not held then rcall('ZADD', KEYS[7], 0, '0') end
    rcall('XADD', KEYS[6], 'MAXLEN', '~', maxEvents, '*', 'event', 'waiting', 'jobId', jobId)
end
return tonumber(jobId)
"#;

/// The job's `data` from JSON args/kwargs: BullMQ takes one JSON value; taskscope shows an
/// object as kwargs and anything else as a one-item args list (the adapter's mapping), so
/// either kwargs alone, or exactly one positional argument.
pub fn data_of(args: &[Value], kwargs: &Map<String, Value>) -> Result<Value, String> {
    match (args, kwargs.is_empty()) {
        ([], _) => Ok(Value::Object(kwargs.clone())),
        ([one], true) => Ok(one.clone()),
        _ => Err(
            "a BullMQ job takes one data value: give kwargs (an object) or exactly one \
                  positional argument"
                .into(),
        ),
    }
}

/// The `opts` `Queue.add` stores for a job without options (`{"attempts":0}`), or with a delay.
pub fn default_opts(delay_ms: u64) -> String {
    if delay_ms > 0 {
        format!(r#"{{"delay":{delay_ms},"attempts":0}}"#)
    } else {
        r#"{"attempts":0}"#.to_string()
    }
}

/// Options of a failed job a retry does not carry: its identity, schedule and relations.
const NOT_CARRIED: [&str; 9] = [
    "jobId",
    "delay",
    "repeat",
    "repeatJobKey",
    "prevMillis",
    "parent",
    "de",
    "deduplication",
    "timestamp",
];

/// A failed job's `opts` for its retry: its own options (attempts, backoff, removeOnFail...)
/// without [`NOT_CARRIED`]; the default when unreadable.
pub fn retry_opts(opts: &[u8]) -> String {
    match serde_json::from_slice::<Value>(opts) {
        Ok(Value::Object(mut m)) => {
            for k in NOT_CARRIED {
                m.remove(k);
            }
            Value::Object(m).to_string()
        }
        _ => default_opts(0),
    }
}

/// `Queue.add(name, data, opts)` on `queue` at `now`, delayed by `delay_ms`; the script replies
/// the job id (its task id is `queue.job(id)`).
pub fn add(
    queue: &QueueName,
    name: &str,
    data: &[u8],
    opts: &str,
    now: DateTime<Utc>,
    delay_ms: u64,
) -> Write {
    Write::Script {
        lua: ADD_LUA,
        keys: vec![
            queue.key("wait"),
            queue.key("meta"),
            queue.key("id"),
            queue.key("delayed"),
            queue.key("active"),
            queue.events(),
            queue.key("marker"),
            queue.key("prioritized"),
        ],
        args: vec![
            format!("{}:", queue.qualified()).into_bytes(),
            name.as_bytes().to_vec(),
            data.to_vec(),
            opts.as_bytes().to_vec(),
            now.timestamp_millis().to_string().into_bytes(),
            delay_ms.to_string().into_bytes(),
        ],
    }
}

/// The job id of `id` on `queue`: a task id (`bull:q:7`) or a bare job id (`7`).
pub fn job_id<'a>(queue: &QueueName, id: &'a str) -> &'a str {
    id.strip_prefix(&format!("{}:", queue.qualified()))
        .unwrap_or(id)
}

/// `Job.remove()` of a waiting or delayed job: replies 1 when it was one (then its keys are
/// gone and `removed` is in the events), else 0 and nothing changed.
///
/// KEYS: wait, paused, prioritized, delayed, events, job key. ARGV: job id.
const DELETE_LUA: &str = r#"
local rcall = redis.call
local removed = rcall('LREM', KEYS[1], 0, ARGV[1]) + rcall('LREM', KEYS[2], 0, ARGV[1])
    + rcall('ZREM', KEYS[3], ARGV[1]) + rcall('ZREM', KEYS[4], ARGV[1])
if removed == 0 then return 0 end
rcall('DEL', KEYS[6], KEYS[6] .. ':logs', KEYS[6] .. ':dependencies', KEYS[6] .. ':processed',
    KEYS[6] .. ':failed', KEYS[6] .. ':unsuccessful')
rcall('XADD', KEYS[5], '*', 'event', 'removed', 'jobId', ARGV[1], 'prev', 'waiting')
return 1
"#;

pub fn delete(queue: &QueueName, job_id: &str) -> Write {
    Write::Script {
        lua: DELETE_LUA,
        keys: vec![
            queue.key("wait"),
            queue.key("paused"),
            queue.key("prioritized"),
            queue.key("delayed"),
            queue.events(),
            queue.job(job_id),
        ],
        args: vec![job_id.as_bytes().to_vec()],
    }
}

/// `Queue.drain()`: every waiting job's keys deleted, then the lists and the priority set;
/// replies the count, then the task ids (job keys) of at most 10000 of them. Pages of 1000 ids
/// keep each `DEL` bounded.
///
/// KEYS: wait, paused, prioritized, priority counter. ARGV: job key prefix.
const PURGE_LUA: &str = r#"
local rcall = redis.call
local out = {0}
local function drop(ids)
    for _, id in ipairs(ids) do
        rcall('DEL', ARGV[1] .. id, ARGV[1] .. id .. ':logs')
        if #out <= 10000 then out[#out + 1] = ARGV[1] .. id end
    end
    out[1] = out[1] + #ids
end
for i = 1, 2 do
    local start = 0
    while true do
        local ids = rcall('LRANGE', KEYS[i], start, start + 999)
        if #ids == 0 then break end
        drop(ids)
        start = start + 1000
    end
    rcall('DEL', KEYS[i])
end
local start = 0
while true do
    local ids = rcall('ZRANGE', KEYS[3], start, start + 999)
    if #ids == 0 then break end
    drop(ids)
    start = start + 1000
end
rcall('DEL', KEYS[3], KEYS[4])
return out
"#;

pub fn purge(queue: &QueueName) -> Write {
    Write::Script {
        lua: PURGE_LUA,
        keys: vec![
            queue.key("wait"),
            queue.key("paused"),
            queue.key("prioritized"),
            queue.key("pc"),
        ],
        args: vec![format!("{}:", queue.qualified()).into_bytes()],
    }
}

/// `pause.lua`: pause (`HSET meta paused 1`, `DEL marker`) or resume (`HDEL meta paused`, the
/// legacy `paused` list back into `wait`, the marker when jobs wait or are delayed); an event
/// either way.
///
/// KEYS: paused, wait, meta, prioritized, events, delayed, marker. ARGV: `paused`|`resumed`.
const PAUSE_LUA: &str = r#"
local rcall = redis.call
if ARGV[1] == 'paused' then
    rcall('HSET', KEYS[3], 'paused', 1)
    rcall('DEL', KEYS[7])
else
    rcall('HDEL', KEYS[3], 'paused')
    if rcall('EXISTS', KEYS[1]) == 1 then
        if rcall('EXISTS', KEYS[2]) == 0 then
            rcall('RENAME', KEYS[1], KEYS[2])
        else
            local jobs = rcall('LRANGE', KEYS[1], 0, 6999)
            rcall('RPUSH', KEYS[2], unpack(jobs))
            rcall('LTRIM', KEYS[1], #jobs, -1)
        end
    end
    if rcall('LLEN', KEYS[2]) + rcall('ZCARD', KEYS[4]) > 0 then
        rcall('ZADD', KEYS[7], 0, '0')
    else
        local first = rcall('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
        if first[2] then rcall('ZADD', KEYS[7], tonumber(first[2]) / 0x1000, '1') end
    end
end
rcall('XADD', KEYS[5], '*', 'event', ARGV[1])
return 1
"#;

pub fn pause(queue: &QueueName, paused: bool) -> Write {
    Write::Script {
        lua: PAUSE_LUA,
        keys: vec![
            queue.key("paused"),
            queue.key("wait"),
            queue.key("meta"),
            queue.key("prioritized"),
            queue.events(),
            queue.key("delayed"),
            queue.key("marker"),
        ],
        args: vec![if paused {
            b"paused".to_vec()
        } else {
            b"resumed".to_vec()
        }],
    }
}

/// The data JSON of `data`, as `JSON.stringify` writes it (compact).
pub fn data_json(data: &Value) -> Vec<u8> {
    data.to_string().into_bytes()
}

/// The data of a job hash's `data` field, for a retry's record: parsed when JSON.
pub fn parsed_data(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap_or_else(|_| json!(String::from_utf8_lossy(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> QueueName {
        QueueName::new("bull", "emails")
    }

    #[test]
    fn data_is_kwargs_or_one_argument() {
        let kw = json!({"x": 1}).as_object().cloned().unwrap();
        assert_eq!(data_of(&[], &kw).unwrap(), json!({"x": 1}));
        assert_eq!(data_of(&[], &Map::new()).unwrap(), json!({}));
        assert_eq!(
            data_of(&[json!([1, 2])], &Map::new()).unwrap(),
            json!([1, 2])
        );
        assert!(data_of(&[json!(1), json!(2)], &Map::new()).is_err());
        assert!(data_of(&[json!(1)], &kw).is_err());
    }

    #[test]
    fn add_names_the_queue_keys_and_the_job_prefix() {
        let now: DateTime<Utc> = "2026-12-06T12:00:00Z".parse().unwrap();
        let Write::Script { keys, args, .. } =
            add(&q(), "send", br#"{"to":"a"}"#, &default_opts(500), now, 500)
        else {
            panic!("a script")
        };
        assert_eq!(
            keys,
            [
                "bull:emails:wait",
                "bull:emails:meta",
                "bull:emails:id",
                "bull:emails:delayed",
                "bull:emails:active",
                "bull:emails:events",
                "bull:emails:marker",
                "bull:emails:prioritized"
            ]
        );
        let text: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(
            text,
            [
                "bull:emails:",
                "send",
                r#"{"to":"a"}"#,
                r#"{"delay":500,"attempts":0}"#,
                "1796558400000",
                "500"
            ]
        );
        assert_eq!(default_opts(0), r#"{"attempts":0}"#);
    }

    #[test]
    fn a_retry_keeps_the_jobs_options_but_not_its_identity() {
        let opts = retry_opts(
            br#"{"attempts":3,"backoff":{"type":"fixed","delay":200},"jobId":"x","delay":5,"parent":{"id":"1","queue":"bull:p"}}"#,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&opts).unwrap(),
            json!({"attempts": 3, "backoff": {"type": "fixed", "delay": 200}})
        );
        assert_eq!(retry_opts(b"not json"), r#"{"attempts":0}"#);
    }

    #[test]
    fn delete_takes_a_task_id_or_a_job_id() {
        assert_eq!(job_id(&q(), "bull:emails:7"), "7");
        assert_eq!(job_id(&q(), "7"), "7");
        let Write::Script { keys, args, .. } = delete(&q(), "7") else {
            panic!("a script")
        };
        assert_eq!(keys[5], "bull:emails:7");
        assert_eq!(keys[0], "bull:emails:wait");
        assert_eq!(args, [b"7".to_vec()]);
        let Write::Script { args, .. } = pause(&q(), true) else {
            panic!("a script")
        };
        assert_eq!(args, [b"paused".to_vec()]);
        let Write::Script { keys, .. } = purge(&q()) else {
            panic!("a script")
        };
        assert_eq!(keys[3], "bull:emails:pc");
    }
}
