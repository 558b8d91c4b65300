//! The housekeeping jobs: what each does, as a sequence of store steps.
//!
//! - `rollup`: aggregate finished hours and days of raw transitions into `rollup_hourly` and
//!   `rollup_daily`.
//! - `retention`: roll up first, then delete raw tasks and transitions older than
//!   `--retention` (never past the hourly roll-up watermark; days are rolled up from hours
//!   once their raw rows go), down-sample queue samples older than
//!   `--sample-retention`, delete aggregates older than `--aggregate-retention`.
//! - `compaction`: `FORCE CHECKPOINT`, so the blocks of deleted rows are reused instead of the
//!   file growing; the file size and free blocks before and after are reported.
//!
//! Deletes run in time windows sized so that each step takes about [`CHUNK_TARGET`]: the writer
//! runs ingest batches between steps, so ingestion waits at most one step (plus, rarely, a
//! checkpoint DuckDB starts on its own when its WAL grows past `wal_autocheckpoint`).

use crate::store::maintenance::{rollup_limit, DbSize, Period, Step};
use crate::store::{StoreError, StoreReader, StoreWriter};
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::Duration;

/// How long one delete step should take: ingestion waits at most about this long.
pub const CHUNK_TARGET: Duration = Duration::from_millis(10);
const MIN_WINDOW: chrono::Duration = chrono::Duration::seconds(1);
/// Below this many rows a step's time is mostly its fixed cost.
const FEW_ROWS: u64 = 1_000;
const MAX_WINDOW: chrono::Duration = chrono::Duration::days(30);
/// Periods rolled up per step (one transaction each).
const ROLLUP_PERIODS_PER_STEP: i64 = 24;

/// The jobs, in the order a combined run does them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    Rollup,
    Retention,
    Compaction,
}

impl Job {
    pub const ALL: [Job; 3] = [Job::Rollup, Job::Retention, Job::Compaction];

    pub fn as_str(self) -> &'static str {
        match self {
            Job::Rollup => "rollup",
            Job::Retention => "retention",
            Job::Compaction => "compaction",
        }
    }
}

impl std::fmt::Display for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long each kind of data is kept.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Raw tasks and transitions.
    pub retention: Duration,
    /// Queue samples at full resolution; older ones are down-sampled.
    pub sample_retention: Duration,
    /// Roll-ups and down-sampled queue samples.
    pub aggregate_retention: Duration,
    /// The audit journal (`--audit-retention`): never shortened by the task retention.
    pub audit_retention: Duration,
}

/// `--audit-retention`'s default: 400 days (tests).
#[cfg(test)]
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(400 * 86_400);

/// What a job did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobReport {
    pub rows: u64,
    /// One line for logs, `/` and the CLI.
    pub detail: String,
}

/// Everything a job needs.
pub struct Context<'a> {
    pub writer: &'a StoreWriter,
    pub reader: &'a StoreReader,
    pub db_path: PathBuf,
    pub policy: &'a Policy,
}

fn ago(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub async fn run(
    job: Job,
    cx: &Context<'_>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<JobReport, StoreError> {
    match job {
        Job::Rollup => rollup(cx, now, dry_run).await,
        Job::Retention => retention(cx, now, dry_run).await,
        Job::Compaction => compaction(cx, dry_run).await,
    }
}

async fn rollup(
    cx: &Context<'_>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<JobReport, StoreError> {
    let mut report = JobReport::default();
    let mut parts = Vec::new();
    for period in Period::ALL {
        let until = rollup_limit(period, now);
        if dry_run {
            let (hourly, daily) = cx.reader.rollup_watermarks().await?;
            let mark = if period == Period::Hour {
                hourly
            } else {
                daily
            };
            parts.push(format!(
                "{}: rolled up until {}, would roll up until {}",
                period.table(),
                mark.map_or("never".to_string(), |m| broker_adapters::rfc3339(&m)),
                broker_adapters::rfc3339(&until)
            ));
            continue;
        }
        let rows = repeat_step(cx, || Step::Rollup {
            period,
            until,
            max_periods: ROLLUP_PERIODS_PER_STEP,
        })
        .await?;
        report.rows += rows;
        parts.push(format!(
            "{rows} {} rows up to {}",
            period.table(),
            broker_adapters::rfc3339(&until)
        ));
    }
    report.detail = parts.join("; ");
    Ok(report)
}

/// Runs a step until it says no more of its work remains; the rows of all runs.
async fn repeat_step(cx: &Context<'_>, step: impl Fn() -> Step) -> Result<u64, StoreError> {
    let mut rows = 0;
    loop {
        let outcome = cx.writer.maintain(step()).await?;
        rows += outcome.rows;
        if !outcome.more {
            return Ok(rows);
        }
    }
}

/// Deletes `[start, before)` in time windows sized so each step takes about [`CHUNK_TARGET`]
/// (a window that took longer is halved, a quick one doubled); returns the rows, the steps
/// and the longest step.
async fn windowed_delete(
    cx: &Context<'_>,
    start: DateTime<Utc>,
    before: DateTime<Utc>,
    make: impl Fn(DateTime<Utc>, DateTime<Utc>) -> Step,
) -> Result<(u64, u32, Duration), StoreError> {
    let mut window = chrono::Duration::minutes(1);
    let (mut rows, mut steps, mut longest) = (0u64, 0u32, Duration::ZERO);
    let mut from = start;
    while from < before {
        let to = from
            .checked_add_signed(window)
            .map_or(before, |t| t.min(before));
        let outcome = cx.writer.maintain(make(from, to)).await?;
        rows += outcome.rows;
        steps += 1;
        longest = longest.max(outcome.took);
        // A step costs a fixed part (the statement, the commit) plus a part per row: shrink
        // the window only when rows make it slow, grow it when the fixed part dominates.
        if outcome.took > CHUNK_TARGET && outcome.rows > FEW_ROWS {
            window = (window / 2).max(MIN_WINDOW);
        } else if outcome.took < CHUNK_TARGET / 3 || outcome.rows < FEW_ROWS / 2 {
            window = (window * 2).min(MAX_WINDOW);
        }
        from = to;
        // Let the ingest path queue its next batch ahead of the next step.
        tokio::task::yield_now().await;
    }
    Ok((rows, steps, longest))
}

async fn retention(
    cx: &Context<'_>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<JobReport, StoreError> {
    let mut report = JobReport::default();
    let mut parts = Vec::new();
    // Raw rows go only once rolled up.
    let rolled = rollup(cx, now, dry_run).await?;
    if !dry_run {
        parts.push(format!("rolled up {}", rolled.rows));
    }
    let (hourly, _daily) = cx.reader.rollup_watermarks().await?;
    let wanted = ago(now, cx.policy.retention);
    // On an hour boundary: reports read whole rolled-up hours before it, raw rows after.
    // Only the hourly watermark bounds it: a day whose raw rows are partly gone is rolled up
    // from its hours (`maintenance::rollup`).
    let raw_before = match hourly {
        Some(h) => Some(Period::Hour.floor(wanted.min(h))),
        // Nothing rolled up yet: either no transitions at all, or a dry run before the first
        // roll-up. Deleting waits for the roll-up.
        _ if dry_run => Some(wanted),
        _ => None,
    };
    let samples_before = ago(now, cx.policy.sample_retention);
    let aggregates_before = ago(now, cx.policy.aggregate_retention);
    if dry_run {
        let p = cx
            .reader
            .retention_preview(
                raw_before.unwrap_or(DateTime::<Utc>::MIN_UTC),
                samples_before,
                aggregates_before,
            )
            .await?;
        report.rows = p.tasks + p.transitions + p.aggregates;
        report.detail = format!(
            "would delete {} tasks and {} transitions older than {}, down-sample {} queue samples older than {}, delete {} aggregate rows older than {}",
            p.tasks,
            p.transitions,
            raw_before.map_or("-".into(), |t| broker_adapters::rfc3339(&t)),
            p.samples_to_downsample,
            broker_adapters::rfc3339(&samples_before),
            p.aggregates,
            broker_adapters::rfc3339(&aggregates_before),
        );
        return Ok(report);
    }
    if let Some(before) = raw_before {
        let (oldest_task, oldest_transition) = cx.reader.oldest_history().await?;
        let (mut tasks, mut transitions) = ((0, 0, Duration::ZERO), (0, 0, Duration::ZERO));
        if let Some(start) = oldest_task {
            tasks = windowed_delete(cx, start, before, |from, to| Step::DeleteTasks { from, to })
                .await?;
        }
        if let Some(start) = oldest_transition {
            transitions = windowed_delete(cx, start, before, |from, to| Step::DeleteTransitions {
                from,
                to,
            })
            .await?;
        }
        cx.writer.maintain(Step::SetRawFloor(before)).await?;
        let workers = cx
            .writer
            .maintain(Step::DeleteWorkers { before })
            .await?
            .rows;
        if workers > 0 {
            parts.push(format!(
                "forgot {workers} workers last seen before {}",
                broker_adapters::rfc3339(&before)
            ));
        }
        report.rows += tasks.0 + transitions.0 + workers;
        parts.push(format!(
            "deleted {} tasks and {} transitions older than {} in {} steps (longest {:.1} ms)",
            tasks.0,
            transitions.0,
            broker_adapters::rfc3339(&before),
            tasks.1 + transitions.1,
            tasks.2.max(transitions.2).as_secs_f64() * 1000.0
        ));
    }
    let downsampled = repeat_step(cx, || Step::DownsampleSamples {
        before: samples_before,
    })
    .await?;
    let aggregates = cx
        .writer
        .maintain(Step::DeleteAggregates {
            before: aggregates_before,
        })
        .await?
        .rows;
    let audit_before = ago(now, cx.policy.audit_retention);
    let audit = cx
        .writer
        .maintain(Step::DeleteAudit {
            before: audit_before,
        })
        .await?
        .rows;
    report.rows += downsampled + aggregates + audit;
    parts.push(format!(
        "down-sampled queue samples older than {} (-{downsampled} rows); deleted {aggregates} aggregate rows older than {}; deleted {audit} audit entries older than {}",
        broker_adapters::rfc3339(&samples_before),
        broker_adapters::rfc3339(&aggregates_before),
        broker_adapters::rfc3339(&audit_before)
    ));
    report.detail = parts.join("; ");
    Ok(report)
}

fn describe(size: &DbSize) -> String {
    format!(
        "{} (+{} WAL), {} of {} blocks free",
        human_bytes(size.file_bytes),
        human_bytes(size.wal_bytes),
        size.free_blocks,
        size.total_blocks
    )
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

async fn compaction(cx: &Context<'_>, dry_run: bool) -> Result<JobReport, StoreError> {
    let before = cx.reader.db_size(cx.db_path.clone()).await?;
    if dry_run {
        return Ok(JobReport {
            rows: 0,
            detail: format!("would checkpoint; now {}", describe(&before)),
        });
    }
    cx.writer.maintain(Step::Checkpoint).await?;
    let after = cx.reader.db_size(cx.db_path.clone()).await?;
    Ok(JobReport {
        rows: 0,
        detail: format!(
            "checkpointed: {} -> {}",
            describe(&before),
            describe(&after)
        ),
    })
}
