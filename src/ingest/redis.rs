//! The only place that knows fred: building clients, turning an adapter's [`ReadRequest`]s into
//! one pipelined round trip, converting replies into [`Reply`]s, bounded SCANs.
//!
//! Reads of values (`GET`, `MGET`, `HMGET`, `HGETALL`, `LRANGE`, `XRANGE`, `XREVRANGE`) are
//! *bounded*: each runs inside one `EVALSHA` of `bounded_read.lua`, which replies as the command
//! would but replaces every bulk string longer than `--max-payload-bytes` by its length
//! ([`Reply::TooLarge`]). fred buffers a whole reply before parsing it (its RESP reader keeps
//! the bytes of an incomplete frame and parses again from the start as more arrive), so the
//! guard has to be on Redis's side. Same commands and round trips as unbounded reads; inside
//! Redis one more command per read (the `EVALSHA`; the read runs inside it, plus a `STRLEN`
//! before a lone `GET`). When Redis refuses scripts (ACLs,
//! a managed Redis without `EVALSHA`), reads fall back to the plain commands, with a warning.

use crate::metrics::Metrics;
use anyhow::Context;
use broker_adapters::{ReadRequest, Reply};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::warn;

/// A Redis connection whose every command is counted (`/healthz` `redis_commands` and
/// `redis_round_trips`; the benchmarks' commands per lifecycle): all of taskscope's reads, scans
/// and publishes go through one, so the count is kept here and nowhere else. What is not a
/// command of the watch (connecting, the notification config) uses [`Redis::client`].
#[derive(Clone)]
pub struct Redis {
    client: Client,
    metrics: Arc<Metrics>,
}

impl Redis {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Redis {
        Redis { client, metrics }
    }

    /// Another connection counted with this one (a second database of the same Redis).
    pub fn sibling(&self, client: Client) -> Redis {
        Redis::new(client, self.metrics.clone())
    }

    /// fred's client, for connecting and what is not counted.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `requests` pipelined, bounded; one reply per request, in order (see
    /// [`run_reads`]).
    pub async fn reads(&self, requests: &[ReadRequest]) -> anyhow::Result<Vec<Reply>> {
        run_reads(self, requests).await
    }

    /// Commands outside the adapters' vocabulary (auto-detection's `EXISTS`, `TYPE`,
    /// `XRANGE`...), `(name, arguments)` pairs, pipelined; replies in order.
    pub async fn commands(
        &self,
        commands: Vec<(&'static str, Vec<Value>)>,
    ) -> anyhow::Result<Vec<Reply>> {
        run_pipelined(
            self,
            commands
                .into_iter()
                .map(|(name, args)| (cmd(name), args))
                .collect(),
        )
        .await
    }

    /// One page of `SCAN cursor MATCH pattern COUNT count`: the next cursor (0 = done) and keys.
    pub async fn scan_page(
        &self,
        cursor: u64,
        pattern: &str,
        count: u32,
    ) -> anyhow::Result<(u64, Vec<String>)> {
        self.scan_page_of_type(cursor, pattern, None, count).await
    }

    /// [`Redis::scan_page`] keeping only keys of one type (`SCAN ... TYPE stream`): Redis
    /// filters, so only matching names cross the wire.
    pub async fn scan_page_of_type(
        &self,
        cursor: u64,
        pattern: &str,
        key_type: Option<&str>,
        count: u32,
    ) -> anyhow::Result<(u64, Vec<String>)> {
        self.count(1);
        scan_page_of_type(&self.client, cursor, pattern, key_type, count).await
    }

    /// `PUBLISH channel payload`: how many subscribers received it.
    pub async fn publish(&self, channel: &str, payload: Vec<u8>) -> anyhow::Result<i64> {
        self.count(1);
        Ok(self.client.publish::<i64, _, _>(channel, payload).await?)
    }

    /// `INFO keyspace`.
    pub async fn info_keyspace(&self) -> anyhow::Result<String> {
        self.count(1);
        Ok(self
            .client
            .info(Some(fred::types::InfoKind::Keyspace))
            .await?)
    }

    fn count(&self, commands: usize) {
        self.metrics.count_redis_commands(commands as u64);
    }
}

/// Commands per pipeline: enough to amortise the round trip, small enough to keep replies
/// (and Redis's output buffer for us) modest.
pub const PIPELINE_CHUNK: usize = 512;

/// Builds a command client for `url` that reconnects forever with backoff and keeps going when
/// Redis is down at start (`fail_fast = false`). Subscribing is [`super::subscriber`]'s.
pub fn builder(url: &str) -> anyhow::Result<Builder> {
    let mut config =
        // fred's message is shown only when it cannot quote the URL's credentials.
        Config::from_url(url).map_err(|e| {
            let details = e.details();
            let credentials = url
                .split_once("://")
                .map_or(url, |(_, rest)| rest)
                .rsplit_once('@')
                .map_or("", |(user, _)| user);
            let leaks = details.contains('@')
                || credentials
                    .split(':')
                    .any(|part| !part.is_empty() && details.contains(part));
            let why = if leaks {
                format!("{:?}", e.kind())
            } else {
                details.to_string()
            };
            anyhow::anyhow!(
                "cannot use the Redis URL {:?} ({why}): expected redis://[:password@]host:port/db",
                super::redact(url)
            )
        })?;
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.internal_command_timeout = Duration::from_secs(10);
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 10_000, 2));
    Ok(builder)
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

fn command(req: &ReadRequest) -> (CustomCommand, Vec<Value>) {
    let s = |k: &str| Value::from(k.to_string());
    match req {
        ReadRequest::Side(inner) => command(inner),
        ReadRequest::Get(k) => (cmd("GET"), vec![s(k)]),
        ReadRequest::MGet(keys) => (cmd("MGET"), keys.iter().map(|k| s(k)).collect()),
        ReadRequest::LLen(k) => (cmd("LLEN"), vec![s(k)]),
        ReadRequest::LRange { key, start, stop } => (
            cmd("LRANGE"),
            vec![s(key), Value::from(*start), Value::from(*stop)],
        ),
        ReadRequest::HGetAll(k) => (cmd("HGETALL"), vec![s(k)]),
        ReadRequest::HScanFirstPage { key, count } => (
            cmd("HSCAN"),
            vec![
                s(key),
                s("0"),
                s("COUNT"),
                Value::from(i64::try_from(*count).unwrap_or(i64::MAX)),
            ],
        ),
        ReadRequest::HMGet { key, fields } => (
            cmd("HMGET"),
            std::iter::once(s(key))
                .chain(fields.iter().map(|f| s(f)))
                .collect(),
        ),
        ReadRequest::HLen(k) => (cmd("HLEN"), vec![s(k)]),
        ReadRequest::HKeys(k) => (cmd("HKEYS"), vec![s(k)]),
        ReadRequest::SMembers(k) => (cmd("SMEMBERS"), vec![s(k)]),
        ReadRequest::ZCard(k) => (cmd("ZCARD"), vec![s(k)]),
        ReadRequest::PTtl(k) => (cmd("PTTL"), vec![s(k)]),
        ReadRequest::Type(k) => (cmd("TYPE"), vec![s(k)]),
        ReadRequest::XLen(k) => (cmd("XLEN"), vec![s(k)]),
        ReadRequest::XRange {
            key,
            start,
            end,
            count,
        } => (
            cmd("XRANGE"),
            vec![
                s(key),
                s(start),
                s(end),
                s("COUNT"),
                Value::from(i64::try_from(*count).unwrap_or(i64::MAX)),
            ],
        ),
        ReadRequest::XRevRange {
            key,
            end,
            start,
            count,
        } => (
            cmd("XREVRANGE"),
            vec![
                s(key),
                s(end),
                s(start),
                s("COUNT"),
                Value::from(i64::try_from(*count).unwrap_or(i64::MAX)),
            ],
        ),
        ReadRequest::XReadFirst { keys, count } => (
            cmd("XREAD"),
            [
                s("COUNT"),
                Value::from(i64::try_from(*count).unwrap_or(i64::MAX)),
                s("STREAMS"),
            ]
            .into_iter()
            .chain(keys.iter().map(|k| s(k)))
            .chain(keys.iter().map(|_| s("0")))
            .collect(),
        ),
        ReadRequest::SortGet {
            key,
            desc,
            count,
            gets,
        } => {
            let mut args = vec![s(key), s("BY"), s("nosort")];
            if *desc {
                args.push(s("DESC"));
            }
            args.extend([
                s("LIMIT"),
                Value::from(0),
                Value::from(i64::try_from(*count).unwrap_or(i64::MAX)),
                s("GET"),
                s("#"),
            ]);
            for get in gets {
                args.extend([s("GET"), s(get)]);
            }
            (cmd("SORT_RO"), args)
        }
        ReadRequest::XPending { key, group, count } => (
            cmd("XPENDING"),
            vec![
                s(key),
                s(group),
                s("-"),
                s("+"),
                Value::from(i64::try_from(*count).unwrap_or(i64::MAX)),
            ],
        ),
        ReadRequest::XInfoGroups(k) => (cmd("XINFO"), vec![s("GROUPS"), s(k)]),
        ReadRequest::ClientList => (cmd("CLIENT"), vec![s("LIST")]),
        ReadRequest::XInfoConsumers { key, group } => {
            (cmd("XINFO"), vec![s("CONSUMERS"), s(key), s(group)])
        }
        ReadRequest::ZRangeWithScores { key, start, stop } => (
            cmd("ZRANGE"),
            vec![
                s(key),
                Value::from(*start),
                Value::from(*stop),
                s("WITHSCORES"),
            ],
        ),
    }
}

/// The script of bounded reads (see its header).
const BOUNDED_READ: &str = include_str!("bounded_read.lua");
/// What the script puts in place of a value too large to send: `[MARK, length]`.
const TOO_LARGE_MARK: &[u8] = b"taskscope:too-large";
/// The script's SHA-1, as Redis named it at its first `SCRIPT LOAD` (it never changes).
static BOUNDED_SHA: OnceLock<String> = OnceLock::new();
/// Redis refused scripts once: reads are sent as plain commands from then on.
static SCRIPTS_REFUSED: AtomicBool = AtomicBool::new(false);
/// `--max-payload-bytes`: one setting for every connection of the process (the loop's, the
/// prefetcher's, side connections), set once at start by [`set_max_payload_bytes`].
static MAX_PAYLOAD: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_PAYLOAD);
/// The limit until [`set_max_payload_bytes`] is called (`--max-payload-bytes`'s default).
const DEFAULT_MAX_PAYLOAD: usize = 4 << 20;

/// Sets the largest value a read brings back whole (`--max-payload-bytes`).
pub fn set_max_payload_bytes(bytes: usize) {
    MAX_PAYLOAD.store(bytes, Ordering::Relaxed);
}

/// The command a read is sent as, bounded to `max_payload` bytes per value when it reads
/// values and scripts are available.
fn wire_command(
    req: &ReadRequest,
    max_payload: usize,
    sha: Option<&str>,
) -> (CustomCommand, Vec<Value>) {
    let (name, args) = command(req);
    let Some(sha) = sha.filter(|_| is_bounded(req)) else {
        return (name, args);
    };
    let s = |k: &str| Value::from(k.to_string());
    if let ReadRequest::XReadFirst { keys, count } = req.inner() {
        // KEYS: the streams; ARGV: the limit, `XREAD`, the count (the script adds the ids).
        let mut wire = Vec::with_capacity(keys.len() + 5);
        wire.push(s(sha));
        wire.push(Value::from(keys.len() as i64));
        wire.extend(keys.iter().map(|k| s(k)));
        wire.push(Value::from(i64::try_from(max_payload).unwrap_or(i64::MAX)));
        wire.push(s("XREAD"));
        wire.push(Value::from(i64::try_from(*count).unwrap_or(i64::MAX)));
        return (cmd("EVALSHA"), wire);
    }
    let keys = match req.inner() {
        ReadRequest::MGet(keys) => keys.len(),
        _ => 1,
    };
    let mut wire = Vec::with_capacity(args.len() + 5);
    wire.push(s(sha));
    wire.push(Value::from(keys as i64));
    let mut args = args.into_iter();
    wire.extend(args.by_ref().take(keys));
    wire.push(Value::from(i64::try_from(max_payload).unwrap_or(i64::MAX)));
    wire.push(Value::from(name.cmd.to_string()));
    wire.extend(args);
    (cmd("EVALSHA"), wire)
}

/// Whether a read returns values (payloads) and so goes through the bounded-read script.
fn is_bounded(req: &ReadRequest) -> bool {
    matches!(
        req.inner(),
        ReadRequest::Get(_)
            | ReadRequest::MGet(_)
            | ReadRequest::HMGet { .. }
            | ReadRequest::HGetAll(_)
            | ReadRequest::HScanFirstPage { .. }
            | ReadRequest::LRange { .. }
            | ReadRequest::XRange { .. }
            | ReadRequest::XRevRange { .. }
            | ReadRequest::XReadFirst { .. }
            | ReadRequest::SortGet { .. }
    )
}

/// Converts the reply of a bounded read: the script's `[MARK, length]` pairs become
/// [`Reply::TooLarge`]. (No reply of these commands holds an integer inside an array, so the
/// pair cannot be mistaken for data.)
fn to_bounded_reply(value: Value) -> Reply {
    match value {
        Value::Array(items) => {
            if let [mark, Value::Integer(n)] = items.as_slice() {
                if mark.as_bytes() == Some(TOO_LARGE_MARK) {
                    return Reply::TooLarge(u64::try_from(*n).unwrap_or(0));
                }
            }
            Reply::Array(items.into_iter().map(to_bounded_reply).collect())
        }
        other => to_reply(other),
    }
}

/// Converts a fred value into the adapters' reply type.
pub fn to_reply(value: Value) -> Reply {
    match value {
        Value::Null | Value::Queued => Reply::Nil,
        Value::Boolean(b) => Reply::Int(i64::from(b)),
        Value::Integer(i) => Reply::Int(i),
        Value::Double(d) => Reply::Double(d),
        Value::String(s) => Reply::Bytes(s.as_bytes().to_vec()),
        Value::Bytes(b) => Reply::Bytes(b.to_vec()),
        Value::Array(items) => Reply::Array(items.into_iter().map(to_reply).collect()),
        Value::Map(map) => Reply::Array(
            map.inner()
                .into_iter()
                .flat_map(|(k, v)| [Reply::Bytes(k.as_bytes().to_vec()), to_reply(v)])
                .collect(),
        ),
    }
}

/// Runs `requests` as pipelines of [`PIPELINE_CHUNK`] commands; one reply per request, in order.
/// A failed command yields `Reply::Error` for that request only; a lost connection fails all.
/// Values longer than [`set_max_payload_bytes`] come back as [`Reply::TooLarge`] (module docs).
async fn run_reads(redis: &Redis, requests: &[ReadRequest]) -> anyhow::Result<Vec<Reply>> {
    let max_payload = MAX_PAYLOAD.load(Ordering::Relaxed);
    let sha = if SCRIPTS_REFUSED.load(Ordering::Relaxed) || !requests.iter().any(is_bounded) {
        None
    } else {
        load_script(redis, false).await?
    };
    let wire = |req: &ReadRequest, sha: Option<&str>| wire_command(req, max_payload, sha);
    let mut replies = run_pipelined(
        redis,
        requests.iter().map(|r| wire(r, sha.as_deref())).collect(),
    )
    .await?;
    let Some(sha) = sha else {
        return Ok(replies);
    };
    // Redis restarted (or `SCRIPT FLUSH`): load the script again and redo those reads; Redis
    // refuses scripts (ACL, disabled `EVALSHA`): redo them plainly, from now on too.
    let mut redo: Vec<usize> = Vec::new();
    let mut refused = false;
    for (i, reply) in replies.iter().enumerate() {
        if let Reply::Error(e) = reply {
            if e.contains("NOSCRIPT") {
                redo.push(i);
            } else if is_bounded(&requests[i]) && script_refused(e) {
                refused = true;
                redo.push(i);
            }
        }
    }
    if redo.is_empty() {
        return Ok(replies);
    }
    let sha = if refused {
        warn!("Redis refuses EVALSHA: values are read whole, --max-payload-bytes is not enforced.");
        SCRIPTS_REFUSED.store(true, Ordering::Relaxed);
        None
    } else {
        load_script(redis, true).await?.or(Some(sha))
    };
    let again = run_pipelined(
        redis,
        redo.iter()
            .map(|i| wire(&requests[*i], sha.as_deref()))
            .collect(),
    )
    .await?;
    for (i, reply) in redo.into_iter().zip(again) {
        replies[i] = reply;
    }
    Ok(replies)
}

/// Whether an `EVALSHA` error means scripts are not allowed for us.
fn script_refused(error: &str) -> bool {
    ["NOPERM", "unknown command", "disabled", "not allowed"]
        .iter()
        .any(|p| error.contains(p))
}

/// The bounded-read script's SHA, loading it into Redis when `reload` or never loaded. `None`
/// when Redis refuses scripts (then reads go out plainly).
async fn load_script(redis: &Redis, reload: bool) -> anyhow::Result<Option<String>> {
    if let (Some(sha), false) = (BOUNDED_SHA.get(), reload) {
        return Ok(Some(sha.clone()));
    }
    redis.count(1);
    let reply: Result<Value, Error> = redis
        .client
        .custom(
            cmd("SCRIPT"),
            vec![Value::from("LOAD"), Value::from(BOUNDED_READ)],
        )
        .await;
    match reply {
        Ok(value) => {
            let sha = value
                .as_string()
                .context("SCRIPT LOAD of the bounded-read script: no SHA in the reply")?;
            Ok(Some(BOUNDED_SHA.get_or_init(|| sha).clone()))
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout
            ) =>
        {
            Err(e).context("SCRIPT LOAD of the bounded-read script")
        }
        Err(e) => {
            warn!(error = %e, "Redis refuses SCRIPT LOAD: values are read whole, --max-payload-bytes is not enforced.");
            SCRIPTS_REFUSED.store(true, Ordering::Relaxed);
            Ok(None)
        }
    }
}

async fn run_pipelined(
    redis: &Redis,
    commands: Vec<(CustomCommand, Vec<Value>)>,
) -> anyhow::Result<Vec<Reply>> {
    let mut replies = Vec::with_capacity(commands.len());
    for chunk in commands.chunks(PIPELINE_CHUNK) {
        redis.count(chunk.len());
        let pipeline = redis.client.pipeline();
        for (c, args) in chunk {
            let _: () = pipeline.custom(c.clone(), args.clone()).await?;
        }
        let results = pipeline.try_all::<Value>().await;
        if results.len() != chunk.len() {
            // The whole pipeline failed (connection lost): report it as one error.
            let reason = results
                .into_iter()
                .find_map(Result::err)
                .map(|e| e.to_string())
                .unwrap_or_else(|| "pipeline returned a different number of replies".into());
            anyhow::bail!("pipelined read failed: {reason}");
        }
        for result in results {
            replies.push(match result {
                // Only the bounded-read script sends `[MARK, length]` pairs (the mark is no
                // key, field or stream id a plain read could return with an integer).
                Ok(v) => to_bounded_reply(v),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout
                    ) =>
                {
                    anyhow::bail!("pipelined read failed: {e}")
                }
                Err(e) => Reply::Error(e.to_string()),
            });
        }
    }
    Ok(replies)
}

async fn scan_page_of_type(
    client: &Client,
    cursor: u64,
    pattern: &str,
    key_type: Option<&str>,
    count: u32,
) -> anyhow::Result<(u64, Vec<String>)> {
    let mut args = vec![
        Value::from(cursor.to_string()),
        Value::from("MATCH"),
        Value::from(pattern.to_string()),
        Value::from("COUNT"),
        Value::from(i64::from(count)),
    ];
    if let Some(t) = key_type {
        args.extend([Value::from("TYPE"), Value::from(t.to_string())]);
    }
    let reply: Value = client
        .custom(cmd("SCAN"), args)
        .await
        .with_context(|| format!("SCAN {pattern}"))?;
    let mut parts = match to_reply(reply) {
        Reply::Array(parts) => parts.into_iter(),
        other => anyhow::bail!("SCAN {pattern}: unexpected reply {other:?}"),
    };
    let next = parts.next().and_then(|c| c.as_i64()).unwrap_or(0).max(0) as u64;
    let keys = parts
        .next()
        .map(Reply::into_items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|k| {
            k.as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        })
        .collect();
    Ok((next, keys))
}

/// `url` with its database number replaced by `db` (`redis://h:6379/0` -> `redis://h:6379/1`),
/// for a connection to another database of the same Redis.
pub fn url_with_db(url: &str, db: u32) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url).context("cannot parse the Redis URL")?;
    parsed.set_path(&format!("/{db}"));
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_database_of_the_same_redis() {
        assert_eq!(
            url_with_db("redis://:pw@localhost:6380/0", 1).unwrap(),
            "redis://:pw@localhost:6380/1"
        );
        assert_eq!(
            url_with_db("redis://127.0.0.1:6379", 2).unwrap(),
            "redis://127.0.0.1:6379/2"
        );
        assert_eq!(
            url_with_db("rediss://h/3?protocol=resp3", 4).unwrap(),
            "rediss://h/4?protocol=resp3"
        );
    }
}
