//! The actions' Redis connection: runs a [`Write`] atomically (`MULTI`/`EXEC`, one `EVAL`, or
//! one `PUBLISH`) and makes the few reads an action needs. The only fred user of
//! `src/actions`; everything it runs is built by the pure broker files.
#![allow(clippy::disallowed_types)]

use super::{ActionError, RedisCommand, Write};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use std::time::Duration;

/// A connected client for the watched Redis.
#[derive(Clone)]
pub struct ActionRedis {
    client: Client,
}

impl std::fmt::Debug for ActionRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActionRedis(..)")
    }
}

fn redis_error(e: Error) -> ActionError {
    ActionError::Redis(e.to_string())
}

fn custom(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

fn values(args: &[Vec<u8>]) -> Vec<Value> {
    args.iter()
        .map(|a| Value::Bytes(a.clone().into()))
        .collect()
}

impl ActionRedis {
    /// Builds the client and starts connecting (reconnecting in the background): taskscope
    /// starts even when Redis is down; an action then fails with a clear error.
    pub async fn connect(url: &str) -> anyhow::Result<ActionRedis> {
        use anyhow::Context;
        let config = Config::from_url(url).with_context(|| format!("bad Redis URL {url:?}"))?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.internal_command_timeout = Duration::from_secs(10);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(10);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
            .context("cannot build the Redis client for actions")?;
        client
            .init()
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        Ok(ActionRedis { client })
    }

    /// Applies `write` atomically; the integer reply of a script or `PUBLISH` (removed
    /// messages, receivers), 0 for a `MULTI`.
    pub async fn apply(&self, write: &Write) -> Result<i64, ActionError> {
        Ok(self.apply_listing(write).await?.0)
    }

    /// [`Self::apply`], with the task ids a purge script lists after its count.
    pub async fn apply_listing(&self, write: &Write) -> Result<(i64, Vec<String>), ActionError> {
        match write {
            Write::Script { lua, keys, args } => {
                let mut all = vec![Value::from(*lua), Value::from(keys.len() as i64)];
                all.extend(keys.iter().map(|k| Value::from(k.as_str())));
                all.extend(values(args));
                let reply: Value = self
                    .client
                    .custom(custom("EVAL"), all)
                    .await
                    .map_err(redis_error)?;
                Ok(match reply {
                    Value::Array(items) => {
                        let mut it = items.into_iter();
                        let count = it.next().and_then(|v| v.as_i64()).unwrap_or(0);
                        (count, it.map(bytes_text).collect())
                    }
                    other => (other.as_i64().unwrap_or(0), Vec::new()),
                })
            }
            other => Ok((self.apply_one(other).await?, Vec::new())),
        }
    }

    async fn apply_one(&self, write: &Write) -> Result<i64, ActionError> {
        match write {
            Write::Multi(commands) => {
                let trx = self.client.multi();
                for RedisCommand { name, args } in commands {
                    let _: () = trx
                        .custom(custom(name), values(args))
                        .await
                        .map_err(redis_error)?;
                }
                let _: Value = trx.exec(true).await.map_err(redis_error)?;
                Ok(0)
            }
            Write::Script { lua, keys, args } => {
                let mut all = vec![Value::from(*lua), Value::from(keys.len() as i64)];
                all.extend(keys.iter().map(|k| Value::from(k.as_str())));
                all.extend(values(args));
                let reply: Value = self
                    .client
                    .custom(custom("EVAL"), all)
                    .await
                    .map_err(redis_error)?;
                Ok(reply.as_i64().unwrap_or(0))
            }
            Write::Publish { channel, message } => {
                let reply: Value = self
                    .client
                    .custom(
                        custom("PUBLISH"),
                        vec![
                            Value::from(channel.as_str()),
                            Value::Bytes(message.clone().into()),
                        ],
                    )
                    .await
                    .map_err(redis_error)?;
                Ok(reply.as_i64().unwrap_or(0))
            }
        }
    }

    /// A hash's fields (empty when the key is missing), each value at most `max_bytes` (a
    /// larger hash is refused rather than read).
    pub async fn hash(
        &self,
        key: &str,
        max_bytes: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ActionError> {
        let size: i64 = self
            .client
            .custom(
                custom("MEMORY"),
                vec![Value::from("USAGE"), Value::from(key)],
            )
            .await
            .map(|v: Value| v.as_i64().unwrap_or(0))
            .unwrap_or(0);
        if size as usize > max_bytes {
            return Err(ActionError::Conflict(format!(
                "{key} holds {size} bytes, more than --max-payload-bytes: not read"
            )));
        }
        let reply: Value = self
            .client
            .custom(custom("HGETALL"), vec![Value::from(key)])
            .await
            .map_err(redis_error)?;
        let mut out = Vec::new();
        match reply {
            Value::Array(items) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    out.push((bytes_text(k), bytes_of(v)));
                }
            }
            Value::Map(map) => {
                for (k, v) in map.inner() {
                    out.push((
                        k.as_str().map(|s| s.to_string()).unwrap_or_default(),
                        bytes_of(v),
                    ));
                }
            }
            _ => {}
        }
        Ok(out)
    }

    /// A read-only Lua script whose reply is one value (`None` for nil); a reply over
    /// `max_bytes` is refused.
    pub async fn read_script(
        &self,
        lua: &'static str,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>, ActionError> {
        let mut all = vec![Value::from(lua), Value::from(keys.len() as i64)];
        all.extend(keys.iter().map(|k| Value::from(k.as_str())));
        all.extend(values(&args));
        let reply: Value = self
            .client
            .custom(custom("EVAL"), all)
            .await
            .map_err(redis_error)?;
        let bytes = match reply {
            Value::Null => return Ok(None),
            v => bytes_of(v),
        };
        if bytes.len() > max_bytes.max(1) {
            return Err(ActionError::Conflict(format!(
                "the message holds {} bytes, more than --max-payload-bytes",
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }

    /// One command whose reply is a simple string (`TYPE`).
    pub async fn text(
        &self,
        name: &'static str,
        args: Vec<Vec<u8>>,
    ) -> Result<String, ActionError> {
        let reply: Value = self
            .client
            .custom(custom(name), values(&args))
            .await
            .map_err(redis_error)?;
        Ok(bytes_text(reply))
    }

    /// One command whose reply is an integer (`LLEN`, `ZCARD`, `EXISTS`...).
    pub async fn integer(
        &self,
        name: &'static str,
        args: Vec<Vec<u8>>,
    ) -> Result<i64, ActionError> {
        let reply: Value = self
            .client
            .custom(custom(name), values(&args))
            .await
            .map_err(redis_error)?;
        Ok(reply.as_i64().unwrap_or(0))
    }
}

fn bytes_of(v: Value) -> Vec<u8> {
    match v {
        Value::Bytes(b) => b.to_vec(),
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Integer(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

fn bytes_text(v: Value) -> String {
    String::from_utf8_lossy(&bytes_of(v)).into_owned()
}
