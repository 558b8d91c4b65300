//! `taskscope inspect queues|workers|tasks`: a one-shot look at what the brokers hold in Redis
//! now, with no history file and nothing written to Redis.
//!
//! It runs the same pipeline as `serve` (detection, the brokers' adapters, the state machine)
//! against a throw-away store in a temporary directory, without `CONFIG SET` (it polls), until
//! the brokers are found and their keys read, then prints the store's view: a table, or with
//! `--json` the shapes of `/api/queues`, `/api/workers` and `/api/tasks`. A task that finished
//! before the look shows as Redis still tells it (a result kept, a message gone).

use crate::config::{parse_duration, ServeArgs, UsageError};
use crate::metrics::Metrics;
use anyhow::Context;
use broker_adapters::{QueueSample, Task, TaskState, Worker};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskscope::store::{self, TaskQuery};
use templates::format;
use tokio::sync::watch;

/// How long the brokers may take to be found and read before `inspect` gives up waiting and
/// prints what it has.
const FIND_DEADLINE: Duration = Duration::from_secs(20);
/// How long Redis may take to answer at all.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// The pipeline's periods during the look: every read repeats well within `--settle`.
const LOOK_PERIOD: Duration = Duration::from_millis(250);

/// What `inspect` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// Each queue's waiting, delayed, running and dead messages, and its oldest waiting age.
    Queues,
    /// The workers seen, alive or not, and what they run.
    Workers,
    /// The tasks Redis holds (waiting, running, results kept), newest activity first.
    Tasks,
}

/// `taskscope inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// What to show: queues, workers or tasks.
    #[arg(value_enum)]
    pub what: What,

    /// Print JSON (the shapes of `/api/queues`, `/api/workers`, `/api/tasks`) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// `tasks`: only these states (comma list of queued, running, success, failure, retried,
    /// abandoned).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub state: Vec<String>,

    /// `tasks`: at most this many (1-1000).
    #[arg(long, default_value = "50", value_name = "N")]
    pub limit: usize,

    /// How long to keep reading once the brokers are found, so that every queue is sampled and
    /// every in-flight message read at least once.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DUR")]
    pub settle: Duration,

    /// The Redis and broker settings, as for `serve` (`--redis`, `--brokers`, each broker's
    /// flags, `--config`); the HTTP and history settings are ignored.
    #[command(flatten)]
    pub serve: Box<ServeArgs>,
}

/// Why `inspect` failed: bad usage (exit 2) or anything else (exit 1).
#[derive(Debug)]
pub enum InspectError {
    Usage(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for InspectError {
    fn from(e: anyhow::Error) -> Self {
        InspectError::Other(e)
    }
}

/// Runs the look and prints it to stdout.
pub async fn run(args: InspectArgs) -> Result<(), InspectError> {
    let states = parse_states(&args.state).map_err(InspectError::Usage)?;
    if !(1..=1000).contains(&args.limit) {
        return Err(InspectError::Usage("--limit must be 1 to 1000".into()));
    }
    let mut settings = args
        .serve
        .into_settings()
        .map_err(|UsageError(msg)| InspectError::Usage(msg))?;
    // Read-only and quick: never turn notifications on, poll often.
    settings.config_set = false;
    settings.sample_every = settings.sample_every.min(LOOK_PERIOD);
    settings.reconcile_every = settings.reconcile_every.min(LOOK_PERIOD);
    settings.poll_every = settings.poll_every.min(LOOK_PERIOD);
    broker_adapters::limits::Limits::configure(settings.decode_limits);

    let dir = std::env::temp_dir().join(format!("taskscope-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the temporary directory {}", dir.display()))?;
    let result = look(&settings, &dir, args.what, states, args.limit, args.settle).await;
    let _ = std::fs::remove_dir_all(&dir);
    let view = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view.json()).context("JSON")?
        );
    } else {
        print!("{}", view.table(Utc::now()));
    }
    Ok(())
}

/// What the look found, for one of [`What`].
enum View {
    Queues(Vec<QueueSample>),
    Workers(Vec<Worker>),
    Tasks(Vec<Task>),
}

async fn look(
    settings: &crate::config::ServeSettings,
    dir: &std::path::Path,
    what: What,
    states: Vec<TaskState>,
    limit: usize,
    settle: Duration,
) -> anyhow::Result<View> {
    let (writer, reader, writer_thread) =
        store::open(&dir.join("inspect.duckdb"), store::StoreOptions::default())?;
    let metrics = Arc::new(Metrics::default());
    metrics.set_brokers(settings.brokers.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (cfg, adapters, auto) = crate::ingest_parts(settings);
    let auto_on = auto.is_some();
    let ingest = crate::ingest::spawn(
        cfg,
        adapters,
        auto,
        writer.clone(),
        reader.clone(),
        metrics.clone(),
        shutdown_rx,
    )?;

    let watched = wait_until_read(&metrics, auto_on).await;
    let outcome = match watched {
        Err(e) => Err(e.context(format!("cannot read {}", settings.redis_url))),
        Ok(()) => {
            tokio::time::sleep(settle).await;
            writer.flush().await?;
            let now = Utc::now();
            match what {
                What::Queues => Ok(View::Queues(reader.queues().await?)),
                What::Workers => {
                    let abandon_after = chrono::Duration::from_std(settings.abandon_after)
                        .unwrap_or(chrono::Duration::MAX);
                    Ok(View::Workers(reader.workers(now, abandon_after).await?))
                }
                What::Tasks => {
                    let query = TaskQuery {
                        states,
                        limit,
                        ..TaskQuery::default()
                    };
                    Ok(View::Tasks(reader.list_tasks(&query).await?.tasks))
                }
            }
        }
    };
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), ingest).await;
    drop(writer);
    drop(reader);
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    outcome
}

/// Waits until Redis answers, the first detection pass is over (with `--brokers auto`) and
/// every broker found is watched (its start-up reads done).
async fn wait_until_read(metrics: &Metrics, auto: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !metrics.redis_connected() {
        if start.elapsed() > CONNECT_DEADLINE {
            anyhow::bail!(
                "Redis did not answer within {}s (is it running, is --redis right?)",
                CONNECT_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !auto {
        // Given brokers start with the pipeline; `--settle` covers their first reads.
        return Ok(());
    }
    loop {
        let d = metrics.detection();
        // Only a broker's first finding records how long it took to be watched.
        let found_all_watched = d.found.iter().all(|f| {
            d.found
                .iter()
                .any(|g| g.broker == f.broker && g.watching_after_ms.is_some())
        });
        if d.passes >= 1 && found_all_watched {
            return Ok(());
        }
        if start.elapsed() > FIND_DEADLINE {
            tracing::warn!("brokers not all read after {FIND_DEADLINE:?}: showing what was read");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn parse_states(list: &[String]) -> Result<Vec<TaskState>, String> {
    list.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<TaskState>().map_err(|_| {
                format!(
                    "--state: unknown state {s:?} (queued, running, success, failure, retried, \
                     abandoned)"
                )
            })
        })
        .collect()
}

impl View {
    fn json(&self) -> Value {
        let now = Utc::now();
        match self {
            View::Queues(queues) => crate::http::api::queues_json(queues, now),
            View::Workers(workers) => json!({ "workers": workers }),
            View::Tasks(tasks) => json!({ "tasks": tasks, "next_cursor": null }),
        }
    }

    fn table(&self, now: DateTime<Utc>) -> String {
        let (header, rows): (Vec<&str>, Vec<Vec<String>>) = match self {
            View::Queues(queues) => (
                vec![
                    "BROKER", "QUEUE", "WAITING", "DELAYED", "RUNNING", "DEAD", "OLDEST",
                ],
                queues
                    .iter()
                    .map(|q| {
                        vec![
                            q.broker.as_str().to_string(),
                            q.name.clone(),
                            q.length.to_string(),
                            q.delayed.to_string(),
                            q.running.to_string(),
                            q.dead.to_string(),
                            q.oldest_age_ms(now)
                                .map_or("-".to_string(), format::runtime),
                        ]
                    })
                    .collect(),
            ),
            View::Workers(workers) => (
                vec!["BROKER", "WORKER", "HOST", "ALIVE", "RUNNING", "LAST SEEN"],
                workers
                    .iter()
                    .map(|w| {
                        vec![
                            w.broker.as_str().to_string(),
                            w.id.clone(),
                            w.hostname.clone().unwrap_or_else(|| "-".into()),
                            if w.alive { "yes" } else { "no" }.to_string(),
                            w.running.to_string(),
                            format::relative_time(&w.last_seen, &now),
                        ]
                    })
                    .collect(),
            ),
            View::Tasks(tasks) => (
                vec![
                    "ID", "BROKER", "QUEUE", "NAME", "STATE", "RETRIES", "UPDATED",
                ],
                tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.broker.as_str().to_string(),
                            t.queue.clone().unwrap_or_else(|| "-".into()),
                            t.name.clone().unwrap_or_else(|| "-".into()),
                            t.state.as_str().to_string(),
                            t.retries.to_string(),
                            format::relative_time(&t.updated_at, &now),
                        ]
                    })
                    .collect(),
            ),
        };
        if rows.is_empty() {
            return match self {
                View::Queues(_) => "No queues found.\n",
                View::Workers(_) => "No workers found.\n",
                View::Tasks(_) => "No tasks found.\n",
            }
            .to_string();
        }
        render_table(&header, &rows)
    }
}

/// Columns padded to their widest cell; what came from Redis is cleaned of control characters
/// so it cannot move the terminal's cursor or colours.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| -> String {
        let printable: String = s
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        format::truncate(&printable, 60).into_owned()
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_defuse_terminal_escapes() {
        let out = render_table(
            &["A", "LONGER"],
            &[
                vec!["x".into(), "1".into()],
                vec!["\u{1b}[31mred".into(), "2".into()],
            ],
        );
        assert_eq!(out, "A         LONGER\nx         1\n?[31mred  2\n");
    }

    #[test]
    fn states_are_checked() {
        assert_eq!(
            parse_states(&["queued".into(), " failure".into()]).unwrap(),
            vec![TaskState::Queued, TaskState::Failure]
        );
        assert!(parse_states(&["done".into()])
            .unwrap_err()
            .contains("--state"));
    }
}
