//! The only place that knows fred: building clients, turning an adapter's [`ReadRequest`]s into
//! one pipelined round trip, converting replies into [`Reply`]s, bounded SCANs.

use anyhow::Context;
use broker_adapters::{ReadRequest, Reply};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use std::time::Duration;

/// Commands per pipeline: enough to amortise the round trip, small enough to keep replies
/// (and Redis's output buffer for us) modest.
pub const PIPELINE_CHUNK: usize = 512;

/// Builds a client for `url` that reconnects forever with backoff and keeps going when Redis is
/// down at start (`fail_fast = false`).
///
/// `pubsub`: the client subscribes. fred sizes all eight of a client's broadcast channels
/// (messages, keyspace events, errors, reconnects...) with one capacity and allocates every slot
/// up front, so a large capacity costs ~20 MB of resident memory per client: only subscribers
/// need it (their messages and keyspace events must survive a burst); command clients keep
/// fred's default.
pub fn builder(url: &str, pubsub: bool) -> anyhow::Result<Builder> {
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
        .with_performance_config(|p| {
            // fred drops pub/sub messages for a receiver that lags more than this.
            if pubsub {
                p.broadcast_channel_capacity = 65_536;
            }
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
pub async fn run_reads(client: &Client, requests: &[ReadRequest]) -> anyhow::Result<Vec<Reply>> {
    run_pipelined(client, requests.iter().map(command).collect()).await
}

/// [`run_reads`] for commands outside the adapters' vocabulary (auto-detection's `EXISTS`,
/// `TYPE`, `XRANGE`...): `(name, arguments)` pairs, replies in order.
pub async fn run_commands(
    client: &Client,
    commands: Vec<(&'static str, Vec<Value>)>,
) -> anyhow::Result<Vec<Reply>> {
    run_pipelined(
        client,
        commands
            .into_iter()
            .map(|(name, args)| (cmd(name), args))
            .collect(),
    )
    .await
}

async fn run_pipelined(
    client: &Client,
    commands: Vec<(CustomCommand, Vec<Value>)>,
) -> anyhow::Result<Vec<Reply>> {
    let mut replies = Vec::with_capacity(commands.len());
    for chunk in commands.chunks(PIPELINE_CHUNK) {
        let pipeline = client.pipeline();
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
                Ok(v) => to_reply(v),
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

/// One page of `SCAN cursor MATCH pattern COUNT count`: the next cursor (0 = done) and keys.
pub async fn scan_page(
    client: &Client,
    cursor: u64,
    pattern: &str,
    count: u32,
) -> anyhow::Result<(u64, Vec<String>)> {
    scan_page_of_type(client, cursor, pattern, None, count).await
}

/// [`scan_page`] keeping only keys of one type (`SCAN ... TYPE stream`): Redis filters, so
/// only matching names cross the wire.
pub async fn scan_page_of_type(
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
