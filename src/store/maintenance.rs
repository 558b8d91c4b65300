//! Housekeeping's SQL: roll-ups, retention deletes, queue-sample down-sampling, checkpoints.
//!
//! Each [`Step`] is small and runs on the writer thread between ingest batches, in a
//! transaction of its own, so ingestion waits at most one step (the scheduler sizes delete
//! chunks to a few milliseconds). Steps are idempotent: a step that failed or was cut short by
//! a restart is simply run again by the next housekeeping run.
//!
//! Invariants:
//! - raw transitions are rolled up by hour before they are deleted: the retention cutoff never
//!   passes the hourly watermark. A day is rolled up from its raw transitions (exact
//!   percentiles) while they are all there, and from its hourly roll-ups once retention has
//!   deleted some of them (a day that starts before the raw floor), so a retention shorter
//!   than a day trims raw rows hour by hour instead of keeping them until their day ends;
//! - roll-ups cover whole periods that ended more than [`LATE_DATA_GRACE`] ago, and each period
//!   is rolled up exactly once (the watermark moves in the same transaction as the insert);
//! - `running` tasks are never deleted: the writer keeps them in memory for the abandon sweep.

use super::rows::Ts;
use super::StoreError;
use chrono::{DateTime, Duration, DurationRound, Utc};
use duckdb::Connection;

/// How long after a period ends before it is rolled up: transitions may arrive late (an
/// adapter reconciling after a gap reports what happened minutes ago).
pub const LATE_DATA_GRACE: Duration = Duration::minutes(15);

/// The width of a down-sampled queue-sample bucket.
pub const DOWNSAMPLE_BUCKET: Duration = Duration::minutes(5);

/// Periods of a roll-up table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
}

impl Period {
    pub const ALL: [Period; 2] = [Period::Hour, Period::Day];

    pub fn table(self) -> &'static str {
        match self {
            Period::Hour => "rollup_hourly",
            Period::Day => "rollup_daily",
        }
    }

    /// The failure groups' roll-up table of this period.
    pub fn failure_table(self) -> &'static str {
        match self {
            Period::Hour => "failure_rollup_hourly",
            Period::Day => "failure_rollup_daily",
        }
    }

    fn watermark(self) -> &'static str {
        match self {
            Period::Hour => "rollup_hourly_until",
            Period::Day => "rollup_daily_until",
        }
    }

    pub fn duration(self) -> Duration {
        match self {
            Period::Hour => Duration::hours(1),
            Period::Day => Duration::days(1),
        }
    }

    /// The start of the period holding `at`.
    pub fn floor(self, at: DateTime<Utc>) -> DateTime<Utc> {
        at.duration_trunc(self.duration()).unwrap_or(at)
    }

    /// The first period start at or after `at`.
    pub fn ceil(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let floor = self.floor(at);
        if floor == at {
            at
        } else {
            floor + self.duration()
        }
    }
}

/// One unit of housekeeping work, run on the writer's connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Roll up the periods from the watermark (or the oldest transition) up to `until`, at most
    /// `max_periods` of them.
    Rollup {
        period: Period,
        until: DateTime<Utc>,
        max_periods: i64,
    },
    /// Delete the tasks last updated in `[from, to)` (never running ones). Deleting by time
    /// windows lets DuckDB prune row groups by their min/max instead of scanning the table.
    DeleteTasks {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// Delete the transitions that occurred in `[from, to)`.
    DeleteTransitions {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// Replace raw queue samples of one day before `before` by one per queue and
    /// [`DOWNSAMPLE_BUCKET`] (the maximum of each count).
    DownsampleSamples { before: DateTime<Utc> },
    /// Delete queue samples and roll-ups older than `before` (the long retention), and
    /// housekeeping run records beyond the newest 1000.
    DeleteAggregates { before: DateTime<Utc> },
    /// Delete audit journal entries older than `before` (`--audit-retention` only).
    DeleteAudit { before: DateTime<Utc> },
    /// Forget workers last seen before `before` (the raw retention): a fresh id per worker
    /// process (Dramatiq, RQ, taskiq, Sidekiq, a pod's hostname) added one for good with every
    /// deploy, kept in memory, cloned by every sweep and read by every `/metrics` scrape.
    DeleteWorkers { before: DateTime<Utc> },
    /// `FORCE CHECKPOINT`: deleted rows' blocks become reusable, the WAL is folded in.
    Checkpoint,
    /// Record a job run (for `/`, `/healthz` and the next process).
    RecordRun(RunRecord),
    /// Raw history before this hour boundary is gone: reports read roll-ups before it.
    SetRawFloor(DateTime<Utc>),
}

/// One housekeeping job run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub job: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: f64,
    pub rows: u64,
    pub detail: String,
    pub error: Option<String>,
}

/// What a step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutcome {
    /// Rows inserted, deleted or replaced.
    pub rows: u64,
    /// More of the same work remains (call the step again).
    pub more: bool,
    /// How long the writer spent on the step (what ingestion waited for it).
    pub took: std::time::Duration,
}

/// Runs one step in its own transaction.
pub fn run_step(conn: &mut Connection, step: &Step) -> Result<StepOutcome, StoreError> {
    match step {
        Step::Rollup {
            period,
            until,
            max_periods,
        } => rollup(conn, *period, *until, *max_periods),
        Step::DeleteTasks { from, to } => {
            // `task_counts` (what `/api/stats` reads) loses what is deleted, in the same
            // transaction.
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO task_counts
                 SELECT broker, state, -count(*) FROM task_rows
                 WHERE updated_at >= ? AND updated_at < ? AND state <> 'running'
                 GROUP BY ALL
                 ON CONFLICT (broker, state) DO UPDATE SET n = task_counts.n + excluded.n",
                duckdb::params![Ts(*from), Ts(*to)],
            )?;
            let rows = tx.execute(
                "DELETE FROM task_rows WHERE updated_at >= ? AND updated_at < ? AND state <> 'running'",
                duckdb::params![Ts(*from), Ts(*to)],
            )? as u64;
            tx.commit()?;
            Ok(StepOutcome {
                rows,
                ..StepOutcome::default()
            })
        }
        Step::DeleteAudit { before } => Ok(StepOutcome {
            rows: super::audit::delete_before(conn, *before)?,
            ..StepOutcome::default()
        }),
        Step::DeleteWorkers { before } => Ok(StepOutcome {
            rows: conn.execute(
                "DELETE FROM workers WHERE last_seen < ?",
                duckdb::params![Ts(*before)],
            )? as u64,
            ..StepOutcome::default()
        }),
        Step::DeleteTransitions { from, to } => Ok(StepOutcome {
            rows: conn.execute(
                "DELETE FROM transitions WHERE occurred_at >= ? AND occurred_at < ?",
                duckdb::params![Ts(*from), Ts(*to)],
            )? as u64,
            ..StepOutcome::default()
        }),
        Step::DownsampleSamples { before } => downsample(conn, *before),
        Step::DeleteAggregates { before } => {
            let tx = conn.transaction()?;
            let mut rows = 0;
            for table in [
                "queue_samples",
                "rollup_hourly",
                "rollup_daily",
                "failure_rollup_hourly",
                "failure_rollup_daily",
            ] {
                let column = if table == "queue_samples" {
                    "sampled_at"
                } else {
                    "bucket"
                };
                rows += tx.execute(
                    &format!("DELETE FROM {table} WHERE {column} < ?"),
                    [Ts(*before)],
                )? as u64;
            }
            // A group last seen before the long retention is forgotten with its counts.
            rows += tx.execute(
                "DELETE FROM failure_groups WHERE last_seen < ?",
                [Ts(*before)],
            )? as u64;
            tx.execute(
                "DELETE FROM housekeeping_runs WHERE started_at < (
                     SELECT coalesce(min(started_at), TIMESTAMP '1970-01-01') FROM (
                         SELECT started_at FROM housekeeping_runs
                         ORDER BY started_at DESC LIMIT 1000))",
                [],
            )?;
            tx.commit()?;
            Ok(StepOutcome {
                rows,
                ..StepOutcome::default()
            })
        }
        Step::Checkpoint => {
            conn.execute_batch("FORCE CHECKPOINT")?;
            Ok(StepOutcome::default())
        }
        Step::SetRawFloor(at) => {
            // Never moves back: a shorter retention configured later must not expose a gap.
            let current = get_mark(conn, RAW_FLOOR)?;
            if current.is_none_or(|c| c < *at) {
                set_mark(conn, RAW_FLOOR, *at)?;
            }
            Ok(StepOutcome::default())
        }
        Step::RecordRun(run) => {
            conn.execute(
                "INSERT INTO housekeeping_runs VALUES (?, ?, ?, ?, ?, ?)",
                duckdb::params![
                    run.job,
                    Ts(run.started_at),
                    run.duration_ms,
                    run.rows as i64,
                    run.detail,
                    run.error
                ],
            )?;
            Ok(StepOutcome {
                rows: 1,
                more: false,
                ..StepOutcome::default()
            })
        }
    }
}

impl super::StoreReader {
    /// The roll-up watermarks (hourly, daily).
    pub async fn rollup_watermarks(
        &self,
    ) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), StoreError> {
        self.with_conn("rollup watermarks", |conn| {
            Ok((
                watermark(conn, Period::Hour)?,
                watermark(conn, Period::Day)?,
            ))
        })
        .await
    }

    /// What retention would remove with these cutoffs.
    pub async fn retention_preview(
        &self,
        raw_before: DateTime<Utc>,
        samples_before: DateTime<Utc>,
        aggregates_before: DateTime<Utc>,
    ) -> Result<RetentionPreview, StoreError> {
        self.with_conn("retention preview", move |conn| {
            preview(conn, raw_before, samples_before, aggregates_before)
        })
        .await
    }

    /// The size of the database file at `path` (the one this reader reads).
    pub async fn db_size(&self, path: std::path::PathBuf) -> Result<DbSize, StoreError> {
        self.with_conn("database size", move |conn| db_size(conn, &path))
            .await
    }

    /// The oldest `updated_at` of a deletable task and the oldest transition, where to start
    /// deleting.
    pub async fn oldest_history(
        &self,
    ) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), StoreError> {
        self.with_conn("oldest history", |conn| {
            let first = |sql: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
                let mut stmt = conn.prepare(sql)?;
                let mut rows = stmt.query([])?;
                match rows.next()? {
                    Some(row) => Ok(super::rows::get_ts(row, 0)?),
                    None => Ok(None),
                }
            };
            Ok((
                first("SELECT min(updated_at) FROM tasks WHERE state <> 'running'")?,
                first("SELECT min(occurred_at) FROM transitions")?,
            ))
        })
        .await
    }

    /// The newest run of each job.
    pub async fn last_housekeeping_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.with_conn("housekeeping runs", |conn| {
            let mut stmt = conn.prepare(
                "SELECT job, started_at, duration_ms, rows_affected, detail, error
                 FROM housekeeping_runs
                 QUALIFY row_number() OVER (PARTITION BY job ORDER BY started_at DESC) = 1
                 ORDER BY job",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let n: i64 = row.get(3)?;
                out.push(RunRecord {
                    job: row.get(0)?,
                    started_at: super::rows::get_ts_required(row, 1)?,
                    duration_ms: row.get(2)?,
                    rows: n.max(0) as u64,
                    detail: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    error: row.get(5)?,
                });
            }
            Ok(out)
        })
        .await
    }
}

/// Raw transitions before this time were deleted (after being rolled up): reports read
/// `rollup_hourly` before it. `None`: no raw history was ever deleted.
pub fn raw_floor(conn: &Connection) -> Result<Option<DateTime<Utc>>, StoreError> {
    get_mark(conn, RAW_FLOOR)
}

const RAW_FLOOR: &str = "raw_deleted_before";

/// The time up to which `period` is rolled up, if any roll-up ran.
pub fn watermark(conn: &Connection, period: Period) -> Result<Option<DateTime<Utc>>, StoreError> {
    get_mark(conn, period.watermark())
}

fn get_mark(conn: &Connection, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let mut stmt = conn.prepare("SELECT value FROM housekeeping_state WHERE name = ?")?;
    let mut rows = stmt.query([name])?;
    match rows.next()? {
        Some(row) => Ok(super::rows::get_ts(row, 0)?),
        None => Ok(None),
    }
}

fn set_mark(conn: &Connection, name: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO housekeeping_state (name, value) VALUES (?, ?)",
        duckdb::params![name, Ts(at)],
    )?;
    Ok(())
}

/// Where roll-up of `period` starts: the watermark, else the period of the oldest transition
/// (for days, or of the oldest hourly roll-up: the raw rows of a first day may be gone).
fn rollup_start(conn: &Connection, period: Period) -> Result<Option<DateTime<Utc>>, StoreError> {
    if let Some(mark) = watermark(conn, period)? {
        return Ok(Some(mark));
    }
    let sql = match period {
        Period::Hour => "SELECT min(occurred_at) FROM transitions",
        Period::Day => {
            "SELECT least((SELECT min(occurred_at) FROM transitions),
                          (SELECT min(bucket) FROM rollup_hourly))"
        }
    };
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let oldest = match rows.next()? {
        Some(row) => super::rows::get_ts(row, 0)?,
        None => None,
    };
    Ok(oldest.map(|t| period.floor(t)))
}

/// The last period end that may be rolled up at `now`.
pub fn rollup_limit(period: Period, now: DateTime<Utc>) -> DateTime<Utc> {
    period.floor(now - LATE_DATA_GRACE)
}

/// The roll-up columns, computed from raw transitions joined with their task: how many
/// transitions entered each state, and the runtimes and wait times of the tasks that finished
/// (success or failure) in the period.
static ROLLUP_SELECT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    ROLLUP_SELECT_TEMPLATE.replace("{wait}", broker_adapters::model::WAIT_MS_SQL)
});

const ROLLUP_SELECT_TEMPLATE: &str = "
    SELECT time_bucket($1::INTERVAL, tr.occurred_at) AS bucket,
           tr.broker,
           coalesce(t.queue, '') AS queue,
           coalesce(t.name, '') AS name,
           tr.state,
           count(*) AS transitions,
           count(t.runtime_ms) FILTER (WHERE tr.state IN ('success', 'failure')) AS runtime_count,
           sum(t.runtime_ms) FILTER (WHERE tr.state IN ('success', 'failure')) AS runtime_sum_ms,
           min(t.runtime_ms) FILTER (WHERE tr.state IN ('success', 'failure')) AS runtime_min_ms,
           max(t.runtime_ms) FILTER (WHERE tr.state IN ('success', 'failure')) AS runtime_max_ms,
           quantile_cont(t.runtime_ms, 0.5) FILTER (WHERE tr.state IN ('success', 'failure')) AS runtime_p50_ms,
           quantile_cont(t.runtime_ms, 0.95) FILTER (WHERE tr.state IN ('success', 'failure')) AS runtime_p95_ms,
           quantile_cont(t.runtime_ms, 0.99) FILTER (WHERE tr.state IN ('success', 'failure')) AS runtime_p99_ms,
           count({wait}) FILTER (WHERE tr.state IN ('success', 'failure')) AS wait_count,
           sum({wait}) FILTER (WHERE tr.state IN ('success', 'failure')) AS wait_sum_ms,
           max({wait}) FILTER (WHERE tr.state IN ('success', 'failure')) AS wait_max_ms,
           quantile_cont({wait}, 0.5) FILTER (WHERE tr.state IN ('success', 'failure')) AS wait_p50_ms,
           quantile_cont({wait}, 0.95) FILTER (WHERE tr.state IN ('success', 'failure')) AS wait_p95_ms,
           quantile_cont({wait}, 0.99) FILTER (WHERE tr.state IN ('success', 'failure')) AS wait_p99_ms
    FROM transitions tr
    LEFT JOIN task_rows t ON t.num = tr.task_num
        AND t.updated_at >= $2 AND t.num >= $4 AND t.num <= $5
    WHERE tr.occurred_at >= $2 AND tr.occurred_at < $3
    GROUP BY ALL";

/// Failure and retried transitions per period and failure group, from raw transitions joined
/// with their task (same parameters as [`ROLLUP_SELECT`]). A failure whose error was learned
/// after its transition counts under its task's fingerprint ([`FAILURE_FINGERPRINT_SQL`]).
static FAILURE_ROLLUP_SELECT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT time_bucket($1::INTERVAL, tr.occurred_at) AS bucket,
                {fp} AS fingerprint,
                tr.broker,
                coalesce(t.queue, '') AS queue,
                coalesce(t.name, '') AS name,
                tr.state,
                count(*) AS transitions
         FROM transitions tr
         LEFT JOIN task_rows t ON t.num = tr.task_num
             AND t.updated_at >= $2 AND t.num >= $4 AND t.num <= $5
         WHERE tr.occurred_at >= $2 AND tr.occurred_at < $3
           AND tr.state IN ('failure', 'retried') AND {fp} IS NOT NULL
         GROUP BY ALL",
        fp = FAILURE_FINGERPRINT_SQL
    )
});

/// A day's roll-up rows from its hourly ones (`$1`, `$2`: the days' range), for days whose raw
/// transitions retention has begun to delete. Counts, sums, minima and maxima are exact; the
/// percentiles are the count-weighted mean of the hours' (as reports merge rolled-up hours).
const DAILY_FROM_HOURLY_SELECT: &str = "
    SELECT time_bucket(INTERVAL 1 DAY, bucket) AS day, broker, queue, name, state,
           sum(transitions),
           sum(runtime_count),
           sum(runtime_sum_ms),
           min(runtime_min_ms),
           max(runtime_max_ms),
           sum(runtime_p50_ms * runtime_count) / nullif(sum(runtime_count) FILTER (WHERE runtime_p50_ms IS NOT NULL), 0),
           sum(runtime_p95_ms * runtime_count) / nullif(sum(runtime_count) FILTER (WHERE runtime_p95_ms IS NOT NULL), 0),
           sum(runtime_p99_ms * runtime_count) / nullif(sum(runtime_count) FILTER (WHERE runtime_p99_ms IS NOT NULL), 0),
           sum(coalesce(wait_count, 0)),
           sum(wait_sum_ms),
           max(wait_max_ms),
           sum(wait_p50_ms * wait_count) / nullif(sum(wait_count) FILTER (WHERE wait_p50_ms IS NOT NULL), 0),
           sum(wait_p95_ms * wait_count) / nullif(sum(wait_count) FILTER (WHERE wait_p95_ms IS NOT NULL), 0),
           sum(wait_p99_ms * wait_count) / nullif(sum(wait_count) FILTER (WHERE wait_p99_ms IS NOT NULL), 0)
    FROM rollup_hourly
    WHERE bucket >= $1 AND bucket < $2
    GROUP BY day, broker, queue, name, state";

/// A day's failure-group roll-up rows from its hourly ones (as [`DAILY_FROM_HOURLY_SELECT`]).
const DAILY_FAILURES_FROM_HOURLY_SELECT: &str = "
    SELECT time_bucket(INTERVAL 1 DAY, bucket) AS day, fingerprint, broker, queue, name, state,
           sum(transitions)
    FROM failure_rollup_hourly
    WHERE bucket >= $1 AND bucket < $2
    GROUP BY day, fingerprint, broker, queue, name, state";

/// The failure group of a transition `tr` of task `t` (`failure` or `retried`): its own
/// fingerprint, else, for a failure, its task's (the error read after the state).
pub(crate) const FAILURE_FINGERPRINT_SQL: &str =
    "coalesce(tr.fingerprint, CASE WHEN tr.state = 'failure' THEN t.fingerprint END)";

fn rollup(
    conn: &mut Connection,
    period: Period,
    until: DateTime<Utc>,
    max_periods: i64,
) -> Result<StepOutcome, StoreError> {
    let until = period.floor(until);
    let Some(start) = rollup_start(conn, period)? else {
        return Ok(StepOutcome::default());
    };
    if start >= until {
        return Ok(StepOutcome::default());
    }
    let mut end = (start + period.duration() * max_periods.max(1) as i32).min(until);
    if period == Period::Day {
        if let Some(floor) = raw_floor(conn)?.filter(|floor| start < *floor) {
            // Some raw rows of these days are gone: roll them up from their (complete) hours.
            let hours_until =
                watermark(conn, Period::Hour)?.map_or(start, |w| Period::Day.floor(w));
            end = end.min(Period::Day.ceil(floor)).min(hours_until);
            if end <= start {
                return Ok(StepOutcome::default());
            }
            return rollup_days_from_hours(conn, start, end, until);
        }
    }
    let interval = match period {
        Period::Hour => "1 hour",
        Period::Day => "1 day",
    };
    let tx = conn.transaction()?;
    // The task numbers of the period's transitions, as constants: they bound the join to
    // `task_rows` (zone maps), which DuckDB would otherwise build over every task.
    let (first, last): (Option<i64>, Option<i64>) = tx.query_row(
        "SELECT min(task_num), max(task_num) FROM transitions
         WHERE occurred_at >= ? AND occurred_at < ?",
        duckdb::params![Ts(start), Ts(end)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // The period's task roll-up (its rows are the step's count), then its failure groups'.
    let mut rows = 0;
    for (table, select) in [
        (period.table(), &*ROLLUP_SELECT),
        (period.failure_table(), &*FAILURE_ROLLUP_SELECT),
    ] {
        let inserted = tx.execute(
            &format!("INSERT INTO {table} {select}"),
            duckdb::params![
                interval,
                Ts(start),
                Ts(end),
                first.unwrap_or(0),
                last.unwrap_or(-1)
            ],
        )? as u64;
        if table == period.table() {
            rows = inserted;
        }
    }
    set_mark(&tx, period.watermark(), end)?;
    tx.commit()?;
    Ok(StepOutcome {
        rows,
        more: end < until,
        ..StepOutcome::default()
    })
}

/// Rolls up the days `[start, end)` from `rollup_hourly` (see [`DAILY_FROM_HOURLY_SELECT`]).
fn rollup_days_from_hours(
    conn: &mut Connection,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<StepOutcome, StoreError> {
    let tx = conn.transaction()?;
    let rows = tx.execute(
        &format!("INSERT INTO rollup_daily {DAILY_FROM_HOURLY_SELECT}"),
        duckdb::params![Ts(start), Ts(end)],
    )? as u64;
    tx.execute(
        &format!("INSERT INTO failure_rollup_daily {DAILY_FAILURES_FROM_HOURLY_SELECT}"),
        duckdb::params![Ts(start), Ts(end)],
    )?;
    set_mark(&tx, Period::Day.watermark(), end)?;
    tx.commit()?;
    Ok(StepOutcome {
        rows,
        more: end < until,
        ..StepOutcome::default()
    })
}

fn downsample(conn: &mut Connection, before: DateTime<Utc>) -> Result<StepOutcome, StoreError> {
    const MARK: &str = "samples_downsampled_until";
    let before = before.duration_trunc(DOWNSAMPLE_BUCKET).unwrap_or(before);
    let start = match get_mark(conn, MARK)? {
        Some(mark) => mark,
        None => {
            let mut stmt = conn.prepare("SELECT min(sampled_at) FROM queue_samples")?;
            let mut rows = stmt.query([])?;
            let oldest = match rows.next()? {
                Some(row) => super::rows::get_ts(row, 0)?,
                None => None,
            };
            match oldest {
                Some(t) => t.duration_trunc(DOWNSAMPLE_BUCKET).unwrap_or(t),
                None => return Ok(StepOutcome::default()),
            }
        }
    };
    if start >= before {
        return Ok(StepOutcome::default());
    }
    // One day per step keeps each transaction short.
    let end = (start + Duration::days(1)).min(before);
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS downsampled AS SELECT * FROM queue_samples LIMIT 0",
    )?;
    tx.execute(
        "INSERT INTO downsampled
         SELECT broker, queue, time_bucket(INTERVAL 5 MINUTE, sampled_at) AS sampled_at,
                max(length), max(delayed), max(dead), max(running)
         FROM queue_samples WHERE sampled_at >= ? AND sampled_at < ?
         GROUP BY ALL",
        duckdb::params![Ts(start), Ts(end)],
    )?;
    let removed = tx.execute(
        "DELETE FROM queue_samples WHERE sampled_at >= ? AND sampled_at < ?",
        duckdb::params![Ts(start), Ts(end)],
    )? as u64;
    let kept = tx.execute("INSERT INTO queue_samples SELECT * FROM downsampled", [])? as u64;
    // Dropped, not kept emptied: a DELETE frees no memory of an in-memory table, so every step
    // appended its day's rows to what the sink's connection held until it closed.
    tx.execute_batch("DROP TABLE downsampled")?;
    set_mark(&tx, MARK, end)?;
    tx.commit()?;
    Ok(StepOutcome {
        rows: removed.saturating_sub(kept),
        more: end < before,
        ..StepOutcome::default()
    })
}

/// Counts for a dry run and for the report: what retention would remove now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionPreview {
    pub tasks: u64,
    pub transitions: u64,
    pub samples_to_downsample: u64,
    pub aggregates: u64,
}

/// What retention would remove with these cutoffs (read-only).
pub fn preview(
    conn: &Connection,
    raw_before: DateTime<Utc>,
    samples_before: DateTime<Utc>,
    aggregates_before: DateTime<Utc>,
) -> Result<RetentionPreview, StoreError> {
    let count = |sql: &str, at: DateTime<Utc>| -> Result<u64, StoreError> {
        let n: i64 = conn.query_row(sql, [Ts(at)], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    };
    let mark = get_mark(conn, "samples_downsampled_until")?;
    let samples_from = mark.unwrap_or(DateTime::<Utc>::MIN_UTC);
    let samples: i64 = conn.query_row(
        "SELECT count(*) FROM queue_samples WHERE sampled_at >= ? AND sampled_at < ?",
        duckdb::params![Ts(samples_from.max(aggregates_before)), Ts(samples_before)],
        |r| r.get(0),
    )?;
    Ok(RetentionPreview {
        tasks: count(
            "SELECT count(*) FROM tasks WHERE updated_at < ? AND state <> 'running'",
            raw_before,
        )?,
        transitions: count(
            "SELECT count(*) FROM transitions WHERE occurred_at < ?",
            raw_before,
        )?,
        samples_to_downsample: samples.max(0) as u64,
        aggregates: count(
            "SELECT (SELECT count(*) FROM queue_samples WHERE sampled_at < $1)
                  + (SELECT count(*) FROM rollup_hourly WHERE bucket < $1)
                  + (SELECT count(*) FROM rollup_daily WHERE bucket < $1)
                  + (SELECT count(*) FROM failure_rollup_hourly WHERE bucket < $1)
                  + (SELECT count(*) FROM failure_rollup_daily WHERE bucket < $1)
                  + (SELECT count(*) FROM failure_groups WHERE last_seen < $1)",
            aggregates_before,
        )?,
    })
}

/// The database's size: the file and its free blocks (`PRAGMA database_size`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DbSize {
    pub file_bytes: u64,
    pub wal_bytes: u64,
    pub total_blocks: u64,
    pub free_blocks: u64,
}

pub fn db_size(conn: &Connection, path: &std::path::Path) -> Result<DbSize, StoreError> {
    let (total, free): (i64, i64) = conn.query_row(
        "SELECT total_blocks, free_blocks FROM pragma_database_size() LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push(".wal");
    let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    Ok(DbSize {
        file_bytes,
        wal_bytes,
        total_blocks: total.max(0) as u64,
        free_blocks: free.max(0) as u64,
    })
}

/// Rewrites the database file into a fresh one holding only live rows (`COPY FROM DATABASE`)
/// and puts it in place: the only way to give the space of deleted rows back to the file
/// system (a checkpoint only makes it reusable). Needs the file closed by every other
/// connection (`taskscope serve` stopped). Returns the file size before and after.
pub fn rewrite(path: &std::path::Path) -> Result<(u64, u64), StoreError> {
    let before = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut fresh = path.as_os_str().to_owned();
    fresh.push(".rewrite");
    let fresh = std::path::PathBuf::from(fresh);
    let _ = std::fs::remove_file(&fresh);
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    {
        let conn = Connection::open(path).map_err(open_err)?;
        conn.execute_batch("FORCE CHECKPOINT")?;
        let name: String = conn.query_row("SELECT current_database()", [], |r| r.get(0))?;
        let fresh_text = fresh.to_string_lossy().replace('\'', "''");
        conn.execute_batch(&format!(
            "ATTACH '{fresh_text}' AS taskscope_rewrite;
             COPY FROM DATABASE \"{}\" TO taskscope_rewrite;
             DETACH taskscope_rewrite;",
            name.replace('"', "\"\"")
        ))?;
    }
    std::fs::rename(&fresh, path).map_err(|source| StoreError::File {
        what: format!("cannot put the rewritten file {} in place", fresh.display()),
        source,
    })?;
    let mut wal = path.as_os_str().to_owned();
    wal.push(".wal");
    let _ = std::fs::remove_file(std::path::PathBuf::from(wal));
    let after = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok((before, after))
}
