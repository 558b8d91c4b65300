//! `taskscope purge <broker> <queue> [--yes]`: empties a queue the way the broker's own library
//! does (`src/actions`), after printing how many messages wait in it and asking (unless
//! `--yes`). With `--db` the purge is journaled in that history file's audit journal (who:
//! `cli:<$USER>`); the file must not be held by a running `taskscope serve` (use its
//! `POST /api/queues/{broker}/{queue}/purge` then), and is opened before anything is purged,
//! so nothing is purged unjournaled.

use crate::actions::{ActionError, ActionSettings, Actions};
use crate::config::UsageError;
use broker_adapters::Broker;
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use taskscope::store::{self, AuditOutcome, NewAuditEntry};

/// `taskscope purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The broker (`rq`, `celery`).
    pub broker: String,
    /// The queue to empty.
    pub queue: String,
    /// Purge without asking.
    #[arg(long)]
    pub yes: bool,
    /// The Redis the broker uses.
    #[arg(
        long,
        env = "TASKSCOPE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        value_name = "URL"
    )]
    pub redis: String,
    /// A history file to journal the purge in (not held by a running `taskscope serve`).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
}

/// Why `purge` failed: bad usage (exit 2) or anything else (exit 1).
#[derive(Debug)]
pub enum PurgeError {
    Usage(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for PurgeError {
    fn from(e: anyhow::Error) -> Self {
        PurgeError::Other(e)
    }
}

fn who() -> String {
    let user = std::env::var("USER").unwrap_or_default();
    if user.trim().is_empty() {
        "cli".into()
    } else {
        format!("cli:{}", user.trim())
    }
}

/// Runs the command (the question is read from stdin).
pub async fn run(args: PurgeArgs) -> Result<(), PurgeError> {
    let broker: Broker = args.broker.parse().map_err(|e| {
        PurgeError::Usage(format!(
            "{e} (expected celery, dramatiq, taskiq, rq, arq, bullmq or sidekiq)"
        ))
    })?;
    let db =
        crate::config::redis_db_of(&args.redis).map_err(|UsageError(m)| PurgeError::Usage(m))?;
    let journal = match &args.db {
        Some(path) => {
            if !path.exists() {
                return Err(PurgeError::Usage(format!(
                    "--db {}: no such history file",
                    path.display()
                )));
            }
            Some(
                store::open(path, store::StoreOptions::default()).map_err(|e| {
                    PurgeError::Other(anyhow::anyhow!(
                        "{e}; to purge while taskscope serve runs on it, use its API: \
                     POST /api/queues/{}/{}/purge",
                        args.broker,
                        args.queue
                    ))
                })?,
            )
        }
        None => None,
    };
    let settings = ActionSettings {
        enabled: true,
        ..ActionSettings::default()
    };
    let actions = Actions::start(settings, &args.redis, db, 0).await?;
    let count = actions
        .queue_length(broker, &args.queue)
        .await
        .map_err(usage_or_other)?;
    println!(
        "{count} waiting message{} in {} queue {:?}.",
        if count == 1 { "" } else { "s" },
        broker.as_str(),
        args.queue
    );
    if !args.yes {
        print!("Purge them? [y/N] ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("Nothing purged.");
            return Ok(());
        }
    }
    let result = actions.purge(broker, &args.queue).await;
    if let Some((writer, reader, handle)) = journal {
        let (outcome, error, count) = match &result {
            Ok((n, ids)) => {
                let reason = format!("purged from queue {} by taskscope ({})", args.queue, who());
                let now = chrono::Utc::now();
                let removed = ids
                    .iter()
                    .map(|id| Actions::removed(broker, id, reason.clone(), now))
                    .collect();
                if let Err(e) = writer.observe(removed).await {
                    tracing::warn!(error = %e, "Could not record the purged tasks.");
                }
                (AuditOutcome::Ok, None, Some(*n))
            }
            Err(ActionError::Redis(m)) => (
                AuditOutcome::Failed,
                Some(format!("Redis refused the write: {m}")),
                None,
            ),
            Err(e) => (AuditOutcome::Refused, Some(e.to_string()), None),
        };
        let entry = NewAuditEntry {
            at: chrono::Utc::now(),
            who: who(),
            action: "purge".into(),
            broker: Some(broker.as_str().into()),
            queue: Some(args.queue.clone()),
            target: Some(args.queue.clone()),
            arguments: None,
            new_task_id: None,
            outcome,
            error,
            count,
        };
        let journaled = writer.audit(entry).await;
        drop(writer);
        drop(reader);
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        journaled
            .map_err(|e| PurgeError::Other(anyhow::anyhow!("cannot journal the purge: {e}")))?;
    }
    let (removed, _) = result.map_err(usage_or_other)?;
    println!(
        "Purged {removed} message{}.",
        if removed == 1 { "" } else { "s" }
    );
    Ok(())
}

fn usage_or_other(e: ActionError) -> PurgeError {
    match e {
        ActionError::Unsupported { .. } => PurgeError::Usage(e.to_string()),
        other => PurgeError::Other(anyhow::anyhow!("{other}")),
    }
}
