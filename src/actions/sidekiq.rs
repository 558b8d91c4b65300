//! Sidekiq's writes, as Sidekiq 6.4 itself makes them (`lib/sidekiq/{client,job_util,api}.rb`),
//! pure, every key under the `--sidekiq-namespace` [`Layout`]:
//! - `Client.push` (`normalize_item` + `atomic_push`): the job JSON (`retry: true`, `queue`,
//!   `class`, `args`, `jid` = 12 random bytes in hex, `created_at` and `enqueued_at` in float
//!   epoch seconds) `SADD queues <q>` + `LPUSH queue:<q>` in one `MULTI`; a job with `at`
//!   (`perform_in`) is `ZADD schedule <at> <job without at, without enqueued_at>` instead.
//! - `SortedEntry#retry` of a `retry`/`dead` member: the member taken out of its set and the job
//!   pushed again, here under a new `jid` (so both attempts stay in the history) and without
//!   the failure fields; a script, so a member Sidekiq's poller moved meanwhile is not pushed
//!   twice.
//! - `JobRecord#delete` / `SortedEntry#delete`: the job with that `jid` out of the queue list,
//!   the `schedule` or the `retry` set (a script scanning by pages, as the API's iteration does).
//! - `Queue#clear`: `UNLINK queue:<q>` + `SREM queues <q>`, with the count first.
//!
//! Sidekiq (OSS) has no way to stop a running job and no queue pause (both are Sidekiq
//! Enterprise/Pro features): `execute.rs` answers those as unsupported.

use super::{RedisCommand, Write};
use broker_adapters::sidekiq::layout::{Layout, DEAD, QUEUES, RETRY, SCHEDULE};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// Float epoch seconds, as Ruby's `Time.now.to_f` (microsecond precision).
fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

/// A jid as `SecureRandom.hex(12)` makes it, from 12 random bytes.
pub fn jid(random: &[u8; 12]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

/// The job `Client.push` builds for `Worker.perform_async(*args)` with the default options
/// (`Sidekiq.default_worker_options`: `retry: true`, `queue: "default"`), before `enqueued_at`.
pub fn job(jid: &str, class: &str, args: &[Value], queue: &str, now: DateTime<Utc>) -> Value {
    json!({
        "retry": true,
        "queue": queue,
        "class": class,
        "args": args,
        "jid": jid,
        "created_at": seconds(now),
    })
}

/// `atomic_push` of `job` (an object with `queue`): into its queue list now, or into the
/// `schedule` at `run_at` when that is later than `now`.
pub fn push(
    layout: &Layout,
    mut job: Value,
    now: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
) -> Write {
    let queue = job["queue"].as_str().unwrap_or("default").to_string();
    match run_at.filter(|at| *at > now) {
        Some(at) => Write::Multi(vec![RedisCommand::new(
            "ZADD",
            [
                layout.key(SCHEDULE),
                seconds(at).to_string(),
                job.to_string(),
            ],
        )]),
        None => {
            job["enqueued_at"] = json!(seconds(now));
            Write::Multi(vec![
                RedisCommand::new("SADD", [layout.key(QUEUES), queue.clone()]),
                RedisCommand::new("LPUSH", [layout.queue(&queue), job.to_string()]),
            ])
        }
    }
}

/// `Class.perform_async(*args)` on `queue` (`perform_in` when `run_at` is later than `now`).
pub fn enqueue(
    layout: &Layout,
    jid: &str,
    class: &str,
    args: &[Value],
    queue: &str,
    now: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
) -> Write {
    push(layout, job(jid, class, args, queue, now), now, run_at)
}

/// The sorted sets a failed job may still be held in, in the order a retry looks.
pub fn failed_sets(layout: &Layout) -> [String; 2] {
    [layout.key(RETRY), layout.key(DEAD)]
}

/// Finds the member of the sorted set `KEYS[1]` whose JSON has `jid` = `ARGV[1]`, a page at a
/// time; replies the member, or nil.
pub const FIND_LUA: &str = r#"
local page = 100
local start = 0
while true do
    local members = redis.call('ZRANGE', KEYS[1], start, start + page - 1)
    if #members == 0 then return false end
    for _, m in ipairs(members) do
        if string.find(m, ARGV[1], 1, true) then
            local ok, job = pcall(cjson.decode, m)
            if ok and type(job) == 'table' and job['jid'] == ARGV[1] then return m end
        end
    end
    start = start + page
end
"#;

/// Fields of a failed job a retry does not carry: the failure's own.
const FAILURE_FIELDS: [&str; 8] = [
    "error_message",
    "error_class",
    "error_backtrace",
    "failed_at",
    "retried_at",
    "retry_count",
    "died_at",
    "enqueued_at",
];

/// What a retry pushes: the original job (class, args exactly as parsed, queue, options such
/// as `retry`, `backtrace`, `wrapped`, `tags`) under `new_jid`, created now, without the
/// failure's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub write: Write,
    pub queue: String,
    pub class: String,
    pub args: Value,
}

/// Takes the member out of `KEYS[1]` (the set it was read from) and, only when it was still
/// there, pushes the new job: `SADD KEYS[2] ARGV[2]`, `LPUSH KEYS[3] ARGV[3]`. Replies 1, or 0
/// when the member had left the set meanwhile (Sidekiq's retry poller took it).
const RETRY_LUA: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
return 1
"#;

/// The retry of `member` (read from the sorted set `set_key`) under `new_jid`. `Err` names what
/// is wrong with the member.
pub fn retry(
    layout: &Layout,
    set_key: &str,
    member: &[u8],
    new_jid: &str,
    now: DateTime<Utc>,
) -> Result<Retry, String> {
    let mut job: Map<String, Value> = match serde_json::from_slice(member) {
        Ok(Value::Object(m)) => m,
        _ => return Err("the job in Sidekiq's set is not a JSON object".into()),
    };
    let class = match job.get("class") {
        Some(Value::String(c)) if !c.is_empty() => c.clone(),
        _ => return Err("the job in Sidekiq's set has no class".into()),
    };
    let args = match job.get("args") {
        Some(a @ Value::Array(_)) => a.clone(),
        _ => return Err("the job in Sidekiq's set has no args list".into()),
    };
    let queue = match job.get("queue") {
        Some(Value::String(q)) if !q.is_empty() => q.clone(),
        _ => "default".to_string(),
    };
    for field in FAILURE_FIELDS {
        job.remove(field);
    }
    job.insert("jid".into(), json!(new_jid));
    job.insert("created_at".into(), json!(seconds(now)));
    job.insert("enqueued_at".into(), json!(seconds(now)));
    let new_job = Value::Object(job).to_string();
    Ok(Retry {
        write: Write::Script {
            lua: RETRY_LUA,
            keys: vec![
                set_key.to_string(),
                layout.key(QUEUES),
                layout.queue(&queue),
            ],
            args: vec![
                member.to_vec(),
                queue.clone().into_bytes(),
                new_job.into_bytes(),
            ],
        },
        queue,
        class,
        args,
    })
}

/// Removes the job `jid` = `ARGV[1]` from the queue list `KEYS[1]`, else from the `schedule`
/// (`KEYS[2]`) or `retry` (`KEYS[3]`) set when it is there for queue `ARGV[2]`; replies how many
/// it removed.
const DELETE_LUA: &str = r#"
local page = 100
local function matches(m, for_queue)
    if not string.find(m, ARGV[1], 1, true) then return false end
    local ok, job = pcall(cjson.decode, m)
    if not ok or type(job) ~= 'table' or job['jid'] ~= ARGV[1] then return false end
    return (not for_queue) or job['queue'] == ARGV[2]
end
local start = 0
while true do
    local members = redis.call('LRANGE', KEYS[1], start, start + page - 1)
    if #members == 0 then break end
    for _, m in ipairs(members) do
        if matches(m, false) then return redis.call('LREM', KEYS[1], 1, m) end
    end
    start = start + page
end
for i = 2, 3 do
    start = 0
    while true do
        local members = redis.call('ZRANGE', KEYS[i], start, start + page - 1)
        if #members == 0 then break end
        for _, m in ipairs(members) do
            if matches(m, true) then return redis.call('ZREM', KEYS[i], m) end
        end
        start = start + page
    end
end
return 0
"#;

pub fn delete(layout: &Layout, queue: &str, jid: &str) -> Write {
    Write::Script {
        lua: DELETE_LUA,
        keys: vec![layout.queue(queue), layout.key(SCHEDULE), layout.key(RETRY)],
        args: vec![jid.as_bytes().to_vec(), queue.as_bytes().to_vec()],
    }
}

/// `Queue#clear` (`UNLINK queue:<q>`, `SREM queues <q>`), replying the count it removed, then
/// the jids of (at most 10000 of) the removed jobs.
const PURGE_LUA: &str = r#"
local out = {redis.call('LLEN', KEYS[1])}
local start = 0
while #out <= 10000 do
    local members = redis.call('LRANGE', KEYS[1], start, start + 99)
    if #members == 0 then break end
    for _, m in ipairs(members) do
        local ok, job = pcall(cjson.decode, m)
        if ok and type(job) == 'table' and type(job['jid']) == 'string' and #out <= 10000 then
            out[#out + 1] = job['jid']
        end
    end
    start = start + 100
end
redis.call('UNLINK', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return out
"#;

pub fn purge(layout: &Layout, queue: &str) -> Write {
    Write::Script {
        lua: PURGE_LUA,
        keys: vec![layout.queue(queue), layout.key(QUEUES)],
        args: vec![queue.as_bytes().to_vec()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn parsed(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn a_jid_is_24_hex_digits() {
        let j = jid(&[0, 1, 0xab, 0xff, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(j, "0001abff0203040506070809");
    }

    #[test]
    fn perform_async_adds_the_queue_then_pushes_the_job_on_its_left() {
        let now = at("2026-12-06T12:00:00.25Z");
        let layout = Layout::new(None);
        let Write::Multi(cmds) = enqueue(
            &layout,
            "abc",
            "AddJob",
            &[json!(1), json!("x")],
            "critical",
            now,
            None,
        ) else {
            panic!("a MULTI")
        };
        assert_eq!(cmds[0], RedisCommand::new("SADD", ["queues", "critical"]));
        assert_eq!(cmds[1].name, "LPUSH");
        assert_eq!(cmds[1].arg_text(0), "queue:critical");
        let j = parsed(&cmds[1].args[1]);
        assert_eq!(
            j,
            json!({"retry": true, "queue": "critical", "class": "AddJob", "args": [1, "x"],
                "jid": "abc", "created_at": 1796558400.25, "enqueued_at": 1796558400.25})
        );
        // What the adapter reads back.
        let decoded = broker_adapters::sidekiq::job::decode_job(&cmds[1].args[1]).unwrap();
        assert_eq!(decoded.jid, "abc");
        assert_eq!(decoded.class.as_deref(), Some("AddJob"));
        assert_eq!(decoded.enqueued_at, Some(now));
    }

    #[test]
    fn perform_in_goes_to_the_schedule_without_enqueued_at_under_the_namespace() {
        let now = at("2026-12-06T12:00:00Z");
        let layout = Layout::new(Some("app"));
        let Write::Multi(cmds) = enqueue(
            &layout,
            "abc",
            "AddJob",
            &[],
            "default",
            now,
            Some(at("2026-12-06T12:00:02.5Z")),
        ) else {
            panic!("a MULTI")
        };
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].name, "ZADD");
        assert_eq!(cmds[0].arg_text(0), "app:schedule");
        assert_eq!(cmds[0].arg_text(1), "1796558402.5");
        let j = parsed(&cmds[0].args[2]);
        assert!(
            j.get("enqueued_at").is_none() && j.get("at").is_none(),
            "{j}"
        );
        assert_eq!(j["queue"], "default");
        // A time already past is pushed now.
        let Write::Multi(cmds) = enqueue(&layout, "abc", "AddJob", &[], "default", now, Some(now))
        else {
            panic!("a MULTI")
        };
        assert_eq!(
            cmds[0],
            RedisCommand::new("SADD", ["app:queues", "default"])
        );
        assert_eq!(cmds[1].arg_text(0), "app:queue:default");
    }

    #[test]
    fn a_retry_pushes_the_dead_job_again_under_a_new_jid_without_its_failure() {
        let member = br#"{"retry":1,"queue":"critical","args":[3,"card",{"k":[1.5,null]}],"class":"FailJob","jid":"old","created_at":1796558000.1,"enqueued_at":1796558000.2,"error_message":"declined","error_class":"ArgumentError","failed_at":1796558001.0,"retry_count":1,"retried_at":1796558003.0,"backtrace":true,"tags":["t"]}"#;
        let layout = Layout::new(None);
        let now = at("2026-12-06T12:00:00Z");
        let r = retry(&layout, "dead", member, "new", now).unwrap();
        assert_eq!(r.queue, "critical");
        assert_eq!(r.class, "FailJob");
        assert_eq!(r.args, json!([3, "card", {"k": [1.5, null]}]));
        let Write::Script { keys, args, .. } = &r.write else {
            panic!("a script")
        };
        assert_eq!(keys, &["dead", "queues", "queue:critical"]);
        assert_eq!(args[0], member.to_vec());
        assert_eq!(args[1], b"critical");
        assert_eq!(
            parsed(&args[2]),
            json!({"retry": 1, "queue": "critical", "args": [3, "card", {"k": [1.5, null]}],
                "class": "FailJob", "jid": "new", "created_at": 1796558400.0,
                "enqueued_at": 1796558400.0, "backtrace": true, "tags": ["t"]})
        );
        assert!(retry(&layout, "dead", b"[1]", "new", now).is_err());
        assert!(retry(&layout, "dead", br#"{"class":"X"}"#, "new", now).is_err());
    }

    #[test]
    fn delete_and_purge_name_the_namespaced_keys() {
        let layout = Layout::new(Some("app"));
        let Write::Script { keys, args, .. } = delete(&layout, "default", "j1") else {
            panic!("a script")
        };
        assert_eq!(keys, ["app:queue:default", "app:schedule", "app:retry"]);
        assert_eq!(args, [b"j1".to_vec(), b"default".to_vec()]);
        let Write::Script { keys, args, .. } = purge(&layout, "default") else {
            panic!("a script")
        };
        assert_eq!(keys, ["app:queue:default", "app:queues"]);
        assert_eq!(args, [b"default".to_vec()]);
        assert_eq!(failed_sets(&layout), ["app:retry", "app:dead"]);
    }
}
