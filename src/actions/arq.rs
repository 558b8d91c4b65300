//! arq's writes, as arq 0.28 itself makes them (`arq/connections.py`, `arq/jobs.py`,
//! `arq/constants.py`), pure:
//! - `ArqRedis.enqueue_job(function, *args, **kwargs)`: the job `serializer({"t": job_try,
//!   "f": function, "a": args, "k": kwargs, "et": enqueue_ms})` — pickle by default, JSON for an
//!   application with a JSON `job_serializer` — `PSETEX arq:job:<id> <expires> <job>` and `ZADD
//!   <queue> <score> <id>` in one `MULTI` (score = enqueue ms, or the deferred time; expires =
//!   the deferral + arq's `expires_extra_ms`, a day). The id is `uuid4().hex`.
//! - A retry: a new job with the function, args and kwargs of the failed job's result
//!   (`arq:result:<id>`, kept `keep_result` seconds) under a new id.
//! - Deleting a waiting or deferred job: out of the queue's sorted set with its job and retry
//!   keys, unless a worker holds it (`arq:in-progress:<id>`: arq keeps a running job in the
//!   queue set until it ends).
//! - Purging: the same for every job of the queue not in progress.
//! - `Job.abort()`: a deferred job's score brought to 1 (so a worker picks it to abort it), then
//!   `ZADD arq:abort <now ms> <id>`; a worker with `allow_abort_jobs` cancels the running or
//!   waiting job, its result a `CancelledError`.
//!
//! arq has no queue pause: `execute.rs` answers it unsupported.

use super::pickle::{self, Pickled};
use super::{RedisCommand, Write};
use serde_json::{Map, Value};

pub const JOB_PREFIX: &str = "arq:job:";
pub const RESULT_PREFIX: &str = "arq:result:";
pub const IN_PROGRESS_PREFIX: &str = "arq:in-progress:";
pub const RETRY_PREFIX: &str = "arq:retry:";
pub const ABORT_KEY: &str = "arq:abort";
pub const DEFAULT_QUEUE: &str = "arq:queue";
/// `ArqRedis.expires_extra_ms`: a job not started within a day of its time expires.
const EXPIRES_EXTRA_MS: i64 = 86_400_000;

/// Which of arq's serializers a job is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serializer {
    /// `pickle.dumps` (arq's default).
    Pickle,
    /// `json.dumps` as a `job_serializer`.
    Json,
}

/// A pickle's opcodes without its protocol header and `STOP`, to nest in a larger pickle.
fn pickle_body(value: &Pickled<'_>) -> Vec<u8> {
    let bytes = pickle::dumps(value);
    bytes[2..bytes.len() - 1].to_vec()
}

/// `serializer({"t": job_try, "f": function, "a": args, "k": kwargs, "et": enqueue_ms})`;
/// args as a tuple in a pickle (as Python passes `*args`), a list in JSON.
pub fn job_bytes(
    serializer: Serializer,
    function: &str,
    args: &[Value],
    kwargs: &Map<String, Value>,
    job_try: Option<u32>,
    enqueue_ms: i64,
) -> Vec<u8> {
    match serializer {
        Serializer::Json => serde_json::json!({
            "t": job_try, "f": function, "a": args, "k": kwargs, "et": enqueue_ms
        })
        .to_string()
        .into_bytes(),
        Serializer::Pickle => {
            let job_try = job_try.map(Value::from);
            let et = Value::from(enqueue_ms);
            let kwargs = Value::Object(kwargs.clone());
            let items: [(&str, Pickled<'_>); 5] = [
                (
                    "t",
                    match &job_try {
                        Some(v) => Pickled::Json(v),
                        None => Pickled::None,
                    },
                ),
                ("f", Pickled::Str(function)),
                (
                    "a",
                    Pickled::Tuple(args.iter().map(Pickled::Json).collect()),
                ),
                ("k", Pickled::Json(&kwargs)),
                ("et", Pickled::Json(&et)),
            ];
            // PROTO 2, EMPTY_DICT, MARK, key value..., SETITEMS, STOP: `pickle.dumps(dict)`.
            let mut out = vec![0x80, 2, b'}', b'('];
            for (k, v) in &items {
                out.extend(pickle_body(&Pickled::Str(k)));
                out.extend(pickle_body(v));
            }
            out.push(b'u');
            out.push(b'.');
            out
        }
    }
}

/// `enqueue_job` of `job` (from [`job_bytes`]) as `id` on `queue`, at `score_ms` (the enqueue
/// time, or the deferred time).
pub fn enqueue(queue: &str, id: &str, job: Vec<u8>, enqueue_ms: i64, score_ms: i64) -> Write {
    let expires = (score_ms - enqueue_ms).max(0) + EXPIRES_EXTRA_MS;
    Write::Multi(vec![
        RedisCommand::new(
            "PSETEX",
            [
                format!("{JOB_PREFIX}{id}").into_bytes(),
                expires.to_string().into_bytes(),
                job,
            ],
        ),
        RedisCommand::new(
            "ZADD",
            [queue.to_string(), score_ms.to_string(), id.to_string()],
        ),
    ])
}

/// Removes job `ARGV[1]` from the queue `KEYS[1]` unless in progress; replies 1 when removed.
const DELETE_LUA: &str = r#"
if redis.call('EXISTS', ARGV[2] .. ARGV[1]) == 1 then return 0 end
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
    redis.call('DEL', ARGV[3] .. ARGV[1], ARGV[4] .. ARGV[1])
end
return removed
"#;

fn prefixes() -> [Vec<u8>; 3] {
    [
        IN_PROGRESS_PREFIX.as_bytes().to_vec(),
        JOB_PREFIX.as_bytes().to_vec(),
        RETRY_PREFIX.as_bytes().to_vec(),
    ]
}

pub fn delete(queue: &str, id: &str) -> Write {
    let mut args = vec![id.as_bytes().to_vec()];
    args.extend(prefixes());
    Write::Script {
        lua: DELETE_LUA,
        keys: vec![queue.to_string()],
        args,
    }
}

/// Every job of the queue `KEYS[1]` not in progress, out with its keys; replies the count, then
/// the ids of at most 10000 of them.
const PURGE_LUA: &str = r#"
local out = {0}
local start = 0
while true do
    local ids = redis.call('ZRANGE', KEYS[1], start, start + 999)
    if #ids == 0 then break end
    local kept = 0
    for _, id in ipairs(ids) do
        if redis.call('EXISTS', ARGV[1] .. id) == 1 then
            kept = kept + 1
        else
            redis.call('ZREM', KEYS[1], id)
            redis.call('DEL', ARGV[2] .. id, ARGV[3] .. id)
            out[1] = out[1] + 1
            if #out <= 10000 then out[#out + 1] = id end
        end
    end
    start = start + kept
end
return out
"#;

pub fn purge(queue: &str) -> Write {
    Write::Script {
        lua: PURGE_LUA,
        keys: vec![queue.to_string()],
        args: prefixes().to_vec(),
    }
}

/// Jobs of the queue `KEYS[1]` not in progress (what a purge removes).
pub const WAITING_LUA: &str = r#"
local count = 0
local start = 0
while true do
    local ids = redis.call('ZRANGE', KEYS[1], start, start + 999)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
        if redis.call('EXISTS', ARGV[1] .. id) == 0 then count = count + 1 end
    end
    start = start + 1000
end
return count
"#;

pub fn waiting(queue: &str) -> Write {
    Write::Script {
        lua: WAITING_LUA,
        keys: vec![queue.to_string()],
        args: vec![IN_PROGRESS_PREFIX.as_bytes().to_vec()],
    }
}

/// `Job.abort()`: a deferred job brought forward (score 1), then `ZADD arq:abort`. Replies 1.
const ABORT_LUA: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], 1, ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"#;

pub fn abort(queue: &str, id: &str, now_ms: i64) -> Write {
    Write::Script {
        lua: ABORT_LUA,
        keys: vec![queue.to_string(), ABORT_KEY.to_string()],
        args: vec![id.as_bytes().to_vec(), now_ms.to_string().into_bytes()],
    }
}

/// A serializer sniffed from an existing job or result key: the first byte of one
/// `arq:result:*`, else `arq:job:*` value (a few `SCAN` pages at most), or nil.
pub const SNIFF_LUA: &str = r#"
for _, pattern in ipairs({'arq:result:*', 'arq:job:*'}) do
    local cursor = '0'
    for _ = 1, 10 do
        local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
        for _, key in ipairs(page[2]) do
            local head = redis.call('GETRANGE', key, 0, 1)
            if head and #head > 0 then return head end
        end
        cursor = page[1]
        if cursor == '0' then break end
    end
end
return false
"#;

/// The serializer a sniffed head names (msgpack and unknown: `None`).
pub fn serializer_of(head: &[u8]) -> Option<Serializer> {
    use broker_adapters::arq::record::{sniff, Serialization};
    match sniff(head) {
        Some(Serialization::Pickle) => Some(Serializer::Pickle),
        Some(Serialization::Json) => Some(Serializer::Json),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pickled_job_decodes_as_arqs_dict() {
        let kwargs = json!({"note": "x"}).as_object().cloned().unwrap();
        let bytes = job_bytes(
            Serializer::Pickle,
            "add",
            &[json!(2), json!(3)],
            &kwargs,
            None,
            1796558400000,
        );
        assert_eq!(&bytes[..4], &[0x80, 2, b'}', b'(']);
        let job = broker_adapters::arq::record::decode_job(&bytes).unwrap();
        assert_eq!(job.function, "add");
        assert_eq!(job.args, Some(json!([2, 3])));
        assert_eq!(job.kwargs, Some(json!({"note": "x"})));
        assert_eq!(
            job.enqueued_at.map(|t| t.timestamp_millis()),
            Some(1796558400000)
        );
        let json_job = job_bytes(
            Serializer::Json,
            "add",
            &[json!(1)],
            &Map::new(),
            Some(2),
            5,
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&json_job).unwrap(),
            json!({"t": 2, "f": "add", "a": [1], "k": {}, "et": 5})
        );
        assert_eq!(serializer_of(&bytes[..2]), Some(Serializer::Pickle));
        assert_eq!(serializer_of(b"{\""), Some(Serializer::Json));
        assert_eq!(serializer_of(&[0x85, 0xa1]), None);
    }

    #[test]
    fn enqueue_sets_the_job_with_its_expiry_and_scores_it() {
        let Write::Multi(cmds) = enqueue("arq:queue", "abc", b"JOB".to_vec(), 1000, 6000) else {
            panic!("a MULTI")
        };
        assert_eq!(
            cmds[0],
            RedisCommand::new(
                "PSETEX",
                [
                    b"arq:job:abc".to_vec(),
                    b"86405000".to_vec(),
                    b"JOB".to_vec()
                ]
            )
        );
        assert_eq!(
            cmds[1],
            RedisCommand::new("ZADD", ["arq:queue", "6000", "abc"])
        );
    }

    #[test]
    fn delete_purge_and_abort_name_arqs_keys() {
        let Write::Script { keys, args, .. } = delete("q", "abc") else {
            panic!("a script")
        };
        assert_eq!(keys, ["q"]);
        assert_eq!(args[0], b"abc");
        assert_eq!(args[1], b"arq:in-progress:");
        let Write::Script { keys, .. } = abort("q", "abc", 7) else {
            panic!("a script")
        };
        assert_eq!(keys, ["q", "arq:abort"]);
        let Write::Script { args, .. } = purge("q") else {
            panic!("a script")
        };
        assert_eq!(args.len(), 3);
    }
}
