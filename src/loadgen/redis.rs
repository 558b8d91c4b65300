//! The generator's own Redis connection: the commands of a tick go out as pipelines, and each
//! reply comes back as a value or the error Redis answered.
//!
//! Deliberately not the ingest layer's client (no bounded reads, no reconnect policy to tune):
//! the generator plays the brokers' libraries, which talk to Redis plainly.

use super::Cmd;
use anyhow::Context;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use std::time::Duration;

/// Commands per pipeline.
const PIPELINE_CHUNK: usize = 512;

/// A connected client for `url`.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let config = Config::from_url(url).with_context(|| format!("bad Redis URL {url:?}"))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.internal_command_timeout = Duration::from_secs(10);
        })
        .build()
        .context("cannot build the Redis client")?;
    client
        .init()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(client)
}

/// Runs `commands` pipelined (512 a round trip); replies in order, `Err` holding what Redis
/// answered to a refused command. A lost connection fails the whole call.
pub async fn run_commands(
    client: &Client,
    commands: Vec<Cmd>,
) -> anyhow::Result<Vec<Result<Value, String>>> {
    let mut replies = Vec::with_capacity(commands.len());
    for chunk in commands.chunks(PIPELINE_CHUNK) {
        let pipeline = client.pipeline();
        for (name, args) in chunk {
            let command = CustomCommand::new_static(name, ClusterHash::FirstKey, false);
            let _: () = pipeline.custom(command, args.clone()).await?;
        }
        let results = pipeline.try_all::<Value>().await;
        if results.len() != chunk.len() {
            let reason = results
                .into_iter()
                .find_map(Result::err)
                .map(|e| e.to_string())
                .unwrap_or_else(|| "pipeline returned a different number of replies".into());
            anyhow::bail!("pipelined commands failed: {reason}");
        }
        for result in results {
            replies.push(match result {
                Ok(v) => Ok(v),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout
                    ) =>
                {
                    anyhow::bail!("pipelined commands failed: {e}")
                }
                Err(e) => Err(e.to_string()),
            });
        }
    }
    Ok(replies)
}

/// Sends one tick's commands pipelined; returns how many Redis refused.
pub async fn send(client: &Client, commands: Vec<Cmd>) -> anyhow::Result<u64> {
    if commands.is_empty() {
        return Ok(0);
    }
    let mut errors = 0;
    for reply in run_commands(client, commands).await? {
        if let Err(e) = reply {
            errors += 1;
            tracing::debug!(error = %e, "Redis refused a generated command.");
        }
    }
    Ok(errors)
}
