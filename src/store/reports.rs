//! The reports: aggregate queries over the history, all computed by DuckDB (bucketing, counts,
//! percentiles, ranking), never by loops over rows in Rust.
//!
//! Time is cut into buckets of `step` microseconds aligned on the Unix epoch
//! (`epoch_us(t) // step * step`), so the same time always falls in the same bucket whatever the
//! range asked for. Counting reports (throughput, failures) are dense: every bucket of the range
//! is present, with zeros where nothing happened (`range(first, until, step)` joined to the
//! counts). The backlog is sparse: a bucket without a sample is unknown, not empty, and is left
//! out; each point is the highest length sampled in its bucket (a peak must not be averaged away).
//!
//! Joins of `transitions` to `tasks` also bound `tasks.updated_at` by the window's start: a
//! task's `updated_at` is never before any of its transitions (the state machine keeps a
//! timeline from going backwards), so the bound changes no answer and lets DuckDB's zone maps
//! skip the row groups of tasks last touched before the window instead of scanning them all.
//!
//! "Failures over time" counts transitions into `failure`; "retries" counts transitions into
//! `retried`; both are attributed to the bucket of the transition's own time.
//!
//! Raw or rolled up ([`Split`]): whole hours that housekeeping rolled up (before the hourly
//! watermark, and everything before the raw floor, whose raw rows are deleted) are read from
//! `rollup_hourly` when the buckets are whole hours, and raw transitions for the rest of the
//! range (the current hour, a partial first hour, minute buckets), so long windows read ~one row
//! per hour and series instead of every transition, and nothing is counted twice; rolled-up
//! counts land in the bucket of their hour. Whole days rolled up by day are read from
//! `rollup_daily` when the buckets are whole days or there are none (the per-name tables): a
//! month of hourly rows is millions of rows at 10M tasks. The per-name tables do the same: rolled-up runs are
//! finished runs, and runtime percentiles over rolled-up hours are the count-weighted mean of
//! the hourly percentiles (an approximation; counts, max and mean stay exact).

use super::reader::{in_list, StoreReader};
use super::rows::{self, micros_to_time};
use super::StoreError;
use broker_adapters::{Broker, TaskState};
use chrono::{DateTime, Utc};
use duckdb::types::Value as DbValue;
use duckdb::Connection;

/// The time window of a report, cut into buckets of `step_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRange {
    /// Inclusive.
    pub since: DateTime<Utc>,
    /// Exclusive.
    pub until: DateTime<Utc>,
    /// Bucket width in microseconds, > 0.
    pub step_us: i64,
}

impl ReportRange {
    /// The start of the bucket `since` falls in (epoch-aligned).
    pub fn first_bucket_us(&self) -> i64 {
        let step = self.step_us.max(1);
        let first = i128::from(self.since.timestamp_micros()).div_euclid(i128::from(step))
            * i128::from(step);
        i64::try_from(first).unwrap_or(i64::MIN)
    }

    /// How many buckets the range spans (saturating: in `i128`, so no step or window wraps it
    /// into a small or negative count).
    pub fn buckets(&self) -> i64 {
        let step = i128::from(self.step_us.max(1));
        let span = i128::from(self.until.timestamp_micros()) - i128::from(self.first_bucket_us());
        if span <= 0 {
            0
        } else {
            i64::try_from((span + step - 1) / step).unwrap_or(i64::MAX)
        }
    }
}

/// Filters every report accepts. Empty and `None` mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportFilter {
    pub brokers: Vec<Broker>,
    pub queue: Option<String>,
    /// A task name (ignored by the backlog, which is about queues).
    pub name: Option<String>,
}

impl ReportFilter {
    /// `AND ...` conditions on the given column prefix (`k.` for tasks), with their parameters.
    pub(super) fn conditions(
        &self,
        broker_col: &str,
        queue_col: &str,
        name_col: Option<&str>,
    ) -> Cond {
        let mut sql = String::new();
        let mut params = Vec::new();
        if !self.brokers.is_empty() {
            sql.push_str(&format!(" AND {}", in_list(broker_col, self.brokers.len())));
            params.extend(
                self.brokers
                    .iter()
                    .map(|b| DbValue::Text(b.as_str().to_string())),
            );
        }
        if let Some(queue) = &self.queue {
            sql.push_str(&format!(" AND {queue_col} = ?"));
            params.push(DbValue::Text(queue.clone()));
        }
        if let (Some(name), Some(col)) = (&self.name, name_col) {
            sql.push_str(&format!(" AND {col} = ?"));
            params.push(DbValue::Text(name.clone()));
        }
        Cond { sql, params }
    }
}

/// SQL conditions (each starting with ` AND `) and their bound values, in order.
pub(super) struct Cond {
    pub(super) sql: String,
    pub(super) params: Vec<DbValue>,
}

impl Cond {
    /// `head` (the values of a query part's own placeholders) followed by these conditions'.
    pub(super) fn after(&self, head: impl IntoIterator<Item = DbValue>) -> Vec<DbValue> {
        head.into_iter()
            .chain(self.params.iter().cloned())
            .collect()
    }
}

/// One point of the backlog: the highest sample of each count in the bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct BacklogPoint {
    pub at: DateTime<Utc>,
    pub length: u64,
    pub delayed: u64,
    pub dead: u64,
    pub running: u64,
}

/// The backlog of one queue over time, buckets with samples only, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct BacklogSeries {
    pub broker: Broker,
    pub queue: String,
    pub points: Vec<BacklogPoint>,
}

/// Transitions into one state per bucket (dense), oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputSeries {
    pub state: TaskState,
    pub points: Vec<(DateTime<Utc>, u64)>,
}

/// Failure and retry transitions per bucket (dense), oldest first. `name` is `None` for the
/// total over all names (and for tasks whose name is unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct FailureSeries {
    pub name: Option<String>,
    /// `(bucket start, failures, retries)`.
    pub points: Vec<(DateTime<Utc>, u64, u64)>,
}

/// What the failures report returns: one series per name (the names with the most failures and
/// retries first) and the total.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureReport {
    pub series: Vec<FailureSeries>,
    pub total: FailureSeries,
}

/// Activity of one task name in a range.
#[derive(Debug, Clone, PartialEq)]
pub struct NameStats {
    pub name: Option<String>,
    /// Distinct tasks with at least one transition in the range.
    pub runs: u64,
    /// Transitions into `failure` in the range.
    pub failures: u64,
    /// Transitions into `retried` in the range.
    pub retries: u64,
    /// `failures / runs` (0 when there are no runs).
    pub failure_rate: f64,
}

/// How [`StoreReader::name_stats`] ranks names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameOrder {
    /// Top failing: most failures, then highest failure rate.
    Failures,
    /// Most frequent: most runs.
    Runs,
    /// Most retried: most retries.
    Retries,
}

impl NameOrder {
    fn order_by(self) -> &'static str {
        match self {
            NameOrder::Failures => "failures DESC, failure_rate DESC, runs DESC, name",
            NameOrder::Runs => "runs DESC, failures DESC, name",
            NameOrder::Retries => "retries DESC, runs DESC, name",
        }
    }
}

/// Runtime percentiles of one task name, over tasks that finished in the range.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeStats {
    pub broker: Broker,
    pub name: Option<String>,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Wait-time percentiles of one (broker, queue, name) (`/api/reports/wait`).
#[derive(Debug, Clone, PartialEq)]
pub struct WaitStats {
    pub broker: Broker,
    pub queue: Option<String>,
    pub name: Option<String>,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub(super) fn ts(at: DateTime<Utc>) -> DbValue {
    rows::opt_ts(Some(at))
}

pub(super) fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn bucket_time(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    micros_to_time(micros).ok_or_else(|| StoreError::Corrupt(format!("bucket {micros} µs")))
}

/// `range(first, until, step) AS b(bucket)`: every bucket start of the range, and its 3 values.
pub(super) fn buckets_sql(range: &ReportRange) -> (&'static str, [DbValue; 3]) {
    (
        "(SELECT range AS bucket FROM range(?, ?, ?))",
        [
            DbValue::BigInt(range.first_bucket_us()),
            DbValue::BigInt(range.until.timestamp_micros()),
            DbValue::BigInt(range.step_us),
        ],
    )
}

impl StoreReader {
    /// The backlog of each queue over `range`: per bucket, the highest sampled length (and
    /// delayed, dead, running), buckets without samples left out. Ordered by broker, queue, time.
    pub async fn backlog(
        &self,
        range: ReportRange,
        filter: ReportFilter,
    ) -> Result<Vec<BacklogSeries>, StoreError> {
        self.with_conn_heavy("backlog", move |conn| backlog(conn, &range, &filter))
            .await
    }

    /// Transitions into each of the six states per bucket (dense), in the contract's state order.
    pub async fn throughput(
        &self,
        range: ReportRange,
        filter: ReportFilter,
    ) -> Result<Vec<ThroughputSeries>, StoreError> {
        self.with_conn_heavy("throughput", move |conn| throughput(conn, &range, &filter))
            .await
    }

    /// Failure and retry transitions per bucket: the total, and one series for each of the
    /// `top` names with the most of them.
    pub async fn failures(
        &self,
        range: ReportRange,
        filter: ReportFilter,
        top: usize,
    ) -> Result<FailureReport, StoreError> {
        self.with_conn_heavy("failures", move |conn| failures(conn, &range, &filter, top))
            .await
    }

    /// Runs, failures and retries per task name in `[since, until)`, ranked by `order`.
    pub async fn name_stats(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        filter: ReportFilter,
        order: NameOrder,
        limit: usize,
    ) -> Result<Vec<NameStats>, StoreError> {
        self.with_conn_heavy("name_stats", move |conn| {
            name_stats(conn, since, until, &filter, order, limit)
        })
        .await
    }

    /// Runtime percentiles per (broker, name) of the tasks that finished in `[since, until)`
    /// with a known runtime, slowest (p95) first.
    pub async fn runtime(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        filter: ReportFilter,
        limit: usize,
    ) -> Result<Vec<RuntimeStats>, StoreError> {
        self.with_conn_heavy("runtime", move |conn| {
            runtime(conn, since, until, &filter, limit)
        })
        .await
    }

    /// Wait-time percentiles (enqueued or eta -> started, [`broker_adapters::Task::wait_ms`])
    /// per (broker, queue, name) of the tasks that finished in `[since, until)`, the longest
    /// waits (p95) first. Rolled-up hours count as in [`StoreReader::runtime`].
    pub async fn wait(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        filter: ReportFilter,
        limit: usize,
    ) -> Result<Vec<WaitStats>, StoreError> {
        self.with_conn_heavy("wait", move |conn| wait(conn, since, until, &filter, limit))
            .await
    }
}

fn backlog(
    conn: &Connection,
    range: &ReportRange,
    filter: &ReportFilter,
) -> Result<Vec<BacklogSeries>, StoreError> {
    let cond = filter.conditions("broker", "queue", None);
    let sql = format!(
        "SELECT broker, queue, (epoch_us(sampled_at) // ?) * ? AS bucket,
                max(length), max(delayed), max(dead), max(running)
         FROM queue_samples
         WHERE sampled_at >= ? AND sampled_at < ?{}
         GROUP BY ALL ORDER BY broker, queue, bucket",
        cond.sql
    );
    let mut params = vec![
        DbValue::BigInt(range.step_us),
        DbValue::BigInt(range.step_us),
        ts(range.since),
        ts(range.until),
    ];
    params.extend(cond.params);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(duckdb::params_from_iter(params))?;
    let mut out: Vec<BacklogSeries> = Vec::new();
    while let Some(row) = rows.next()? {
        let broker = rows::parse_broker(&row.get::<_, String>(0)?)?;
        let queue: String = row.get(1)?;
        let point = BacklogPoint {
            at: bucket_time(row.get(2)?)?,
            length: row.get(3)?,
            delayed: row.get(4)?,
            dead: row.get(5)?,
            running: row.get(6)?,
        };
        match out.last_mut() {
            Some(s) if s.broker == broker && s.queue == queue => s.points.push(point),
            _ => out.push(BacklogSeries {
                broker,
                queue,
                points: vec![point],
            }),
        }
    }
    Ok(out)
}

fn throughput(
    conn: &Connection,
    range: &ReportRange,
    filter: &ReportFilter,
) -> Result<Vec<ThroughputSeries>, StoreError> {
    let split = Split::of(conn, range.since, range.until, Some(range.step_us))?;
    // Transitions know their broker; the join to `tasks` is only needed for queue or name.
    // A task's `updated_at` is never before its transitions: the bound lets zone maps skip
    // older tasks.
    let needs_task = filter.queue.is_some() || filter.name.is_some();
    let (cond, from, task_bound) = if needs_task {
        (
            filter.conditions("k.broker", "k.queue", Some("k.name")),
            "transitions t JOIN task_rows k ON k.num = t.task_num",
            " AND k.updated_at >= ? AND k.num >= ? AND k.num <= ?",
        )
    } else {
        (filter.conditions("t.broker", "", None), "transitions t", "")
    };
    let part = format!(
        "SELECT t.occurred_at AS occurred, t.state, 1 AS n FROM {from}
         WHERE t.occurred_at >= ? AND t.occurred_at < ?{task_bound}{}",
        cond.sql
    );
    let (raw, raw_params) = if needs_task {
        split.raw_union_tasks(conn, &part, |lo, hi, first, last| {
            cond.after([lo.clone(), hi, lo, first, last])
        })?
    } else {
        split.raw_union(&part, |lo, hi| cond.after([lo, hi]))
    };
    let rolled = filter.conditions("r.broker", "r.queue", Some("r.name"));
    let (buckets, bucket_params) = buckets_sql(range);
    let sql = format!(
        "WITH c AS (
            SELECT (epoch_us(occurred) // ?) * ? AS bucket, state, sum(n)::BIGINT AS n FROM (
                SELECT * FROM {raw}
                UNION ALL
                SELECT r.bucket, r.state, r.transitions
                FROM (SELECT * FROM rollup_hourly WHERE bucket >= ? AND bucket < ?
                      UNION ALL SELECT * FROM rollup_hourly WHERE bucket >= ? AND bucket < ?
                      UNION ALL SELECT * FROM rollup_daily WHERE bucket >= ? AND bucket < ?) r
                WHERE r.bucket >= ? AND r.bucket < ?{})
            GROUP BY ALL)
         SELECT s.state, b.bucket, coalesce(c.n, 0)
         FROM {buckets} b
         CROSS JOIN (SELECT unnest(['queued', 'running', 'success', 'failure', 'retried', 'abandoned'])
                     AS state) s
         LEFT JOIN c ON c.bucket = b.bucket AND c.state = s.state
         ORDER BY s.state, b.bucket",
        rolled.sql
    );
    let mut params = vec![
        DbValue::BigInt(range.step_us),
        DbValue::BigInt(range.step_us),
    ];
    params.extend(raw_params);
    params.extend(split.rolled_params());
    params.extend(rolled.params);
    params.extend(bucket_params);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(duckdb::params_from_iter(params))?;
    let mut out: Vec<ThroughputSeries> = TaskState::ALL
        .into_iter()
        .map(|state| ThroughputSeries {
            state,
            points: Vec::new(),
        })
        .collect();
    while let Some(row) = rows.next()? {
        let state = rows::parse_state(&row.get::<_, String>(0)?)?;
        let point = (bucket_time(row.get(1)?)?, count(row.get(2)?));
        if let Some(s) = out.iter_mut().find(|s| s.state == state) {
            s.points.push(point);
        }
    }
    Ok(out)
}

/// Where a range reads roll-ups and where raw rows: roll-ups in `[rolled_from, rolled_until)`,
/// raw rows in the rest of `[since, until)`.
///
/// Whole hours that are rolled up (before the hourly watermark) are read from `rollup_hourly`
/// when the buckets are whole hours (or there are none): a 30-day report reads ~720 rows per
/// series instead of every transition. Before the raw floor only roll-ups exist. Empty when
/// nothing is rolled up.
pub(super) struct Split {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    rolled_from: DateTime<Utc>,
    rolled_until: DateTime<Utc>,
    /// The whole days of the rolled-up range read from `rollup_daily` instead of 24 hourly
    /// rows each (when buckets are whole days, or there are none): at 10M tasks a month holds
    /// millions of hourly rows but ~30x fewer daily ones. Empty when not rolled up by day.
    daily_from: DateTime<Utc>,
    daily_until: DateTime<Utc>,
}

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

impl Split {
    pub(super) fn of(
        conn: &Connection,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        step_us: Option<i64>,
    ) -> Result<Split, StoreError> {
        use super::maintenance::{raw_floor, watermark, Period};
        let floor = raw_floor(conn)?;
        let hours_fit = step_us.is_none_or(|s| s % HOUR_US == 0);
        let rolled_up_to = match (floor, watermark(conn, Period::Hour)?) {
            (f, Some(w)) if hours_fit => Some(f.map_or(w, |f| f.max(w))),
            (f, _) => f,
        };
        let (rolled_from, rolled_until) = match rolled_up_to {
            Some(end) => {
                // Before the floor only roll-ups exist; after it, a partial first hour is read
                // raw so the range starts exactly at `since`.
                let start = if floor.is_some_and(|f| since < f) {
                    since
                } else {
                    Period::Hour.ceil(since)
                };
                let end = end.min(until);
                if end > start {
                    (start, end)
                } else {
                    (since, since)
                }
            }
            None => (since, since),
        };
        let days_fit = step_us.is_none_or(|s| s % DAY_US == 0);
        let (daily_from, daily_until) = match watermark(conn, Period::Day)? {
            Some(w) if days_fit && rolled_until > rolled_from => {
                let from = Period::Day.ceil(rolled_from);
                let until = Period::Day.floor(rolled_until.min(w));
                if until > from {
                    (from, until)
                } else {
                    (since, since)
                }
            }
            _ => (since, since),
        };
        Ok(Split {
            since,
            until,
            rolled_from,
            rolled_until,
            daily_from,
            daily_until,
        })
    }

    /// The raw part of the range as two plain time ranges, before and after the rolled-up
    /// hours (either may be empty). Each is a range zone maps prune: a `NOT (rolled range)`
    /// condition made DuckDB scan (and join) every transition of the window.
    fn raw_ranges(&self) -> [(DateTime<Utc>, DateTime<Utc>); 2] {
        if self.rolled_until > self.rolled_from {
            [
                (self.since, self.rolled_from),
                (self.rolled_until, self.until),
            ]
        } else {
            [(self.since, self.until), (self.until, self.until)]
        }
    }

    /// `(part UNION ALL part)`, one copy per raw range; `params(lo, hi)` gives one copy's
    /// values in the order of its placeholders.
    fn raw_union(
        &self,
        part: &str,
        params: impl Fn(DbValue, DbValue) -> Vec<DbValue>,
    ) -> (String, Vec<DbValue>) {
        let [(a, b), (c, d)] = self.raw_ranges();
        (
            format!("({part} UNION ALL {part})"),
            [params(ts(a), ts(b)), params(ts(c), ts(d))].concat(),
        )
    }

    /// Like [`Split::raw_union`] for parts that join transitions to `task_rows k`:
    /// `params(lo, hi, first, last)` also gets the lowest and highest task number of the
    /// range's transitions (one narrow, zone-mapped query each), to bound `k.num` with
    /// constants. Without them DuckDB built its hash table on every task of the window (or
    /// scanned all of them): seconds, and out of memory at 64 MiB, at 10M tasks.
    pub(super) fn raw_union_tasks(
        &self,
        conn: &Connection,
        part: &str,
        params: impl Fn(DbValue, DbValue, DbValue, DbValue) -> Vec<DbValue>,
    ) -> Result<(String, Vec<DbValue>), StoreError> {
        let mut all = Vec::new();
        for (lo, hi) in self.raw_ranges() {
            let (first, last): (Option<i64>, Option<i64>) = if lo < hi {
                conn.query_row(
                    "SELECT min(task_num), max(task_num) FROM transitions
                     WHERE occurred_at >= ? AND occurred_at < ?",
                    [ts(lo), ts(hi)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
            } else {
                (None, None)
            };
            let (first, last) = match (first, last) {
                (Some(f), Some(l)) => (f, l),
                // Nothing in the range: an empty bound.
                _ => (0, -1),
            };
            all.extend(params(
                ts(lo),
                ts(hi),
                DbValue::BigInt(first),
                DbValue::BigInt(last),
            ));
        }
        Ok((format!("({part} UNION ALL {part})"), all))
    }

    /// The values of `FROM (hourly rows before the daily range UNION ALL hourly rows after it
    /// UNION ALL daily rows in it) r WHERE r.bucket >= ? AND r.bucket < ?`: plain ranges, which
    /// zone maps prune.
    pub(super) fn rolled_params(&self) -> [DbValue; 8] {
        [
            ts(self.rolled_from),
            ts(self.daily_from),
            ts(self.daily_until),
            ts(self.rolled_until),
            ts(self.daily_from),
            ts(self.daily_until),
            ts(self.rolled_from),
            ts(self.rolled_until),
        ]
    }
}

fn failures(
    conn: &Connection,
    range: &ReportRange,
    filter: &ReportFilter,
    top: usize,
) -> Result<FailureReport, StoreError> {
    let cond = filter.conditions("k.broker", "k.queue", Some("k.name"));
    let rolled = filter.conditions("r.broker", "r.queue", Some("r.name"));
    let (buckets, bucket_params) = buckets_sql(range);
    let split = Split::of(conn, range.since, range.until, Some(range.step_us))?;
    // Tasks of a transition in a range were updated at or after its start: the bound lets the
    // join skip older tasks.
    let (raw, raw_params) = split.raw_union_tasks(
        conn,
        &format!(
            "SELECT k.name, t.occurred_at AS occurred, t.state, 1 AS n
             FROM transitions t JOIN task_rows k ON k.num = t.task_num
             WHERE t.state IN ('failure', 'retried')
               AND t.occurred_at >= ? AND t.occurred_at < ? AND k.updated_at >= ?
               AND k.num >= ? AND k.num <= ?{}",
            cond.sql
        ),
        |lo, hi, first, last| cond.after([lo.clone(), hi, lo, first, last]),
    )?;
    // `ev`: the failure and retry transitions of the range with their task's name and bucket.
    // `top`: the names with the most of them (rank 1 first); rank 0 is the total.
    let sql = format!(
        "WITH ev AS (
            SELECT name, (epoch_us(occurred) // ?) * ? AS bucket, state, n FROM (
                SELECT * FROM {raw}
                UNION ALL
                SELECT nullif(r.name, ''), r.bucket, r.state, r.transitions
                FROM (SELECT * FROM rollup_hourly WHERE bucket >= ? AND bucket < ?
                      UNION ALL SELECT * FROM rollup_hourly WHERE bucket >= ? AND bucket < ?
                      UNION ALL SELECT * FROM rollup_daily WHERE bucket >= ? AND bucket < ?) r
                WHERE r.state IN ('failure', 'retried')
                  AND r.bucket >= ? AND r.bucket < ?{})),
         agg AS (
            SELECT name, bucket,
                   coalesce(sum(n) FILTER (WHERE state = 'failure'), 0) AS f,
                   coalesce(sum(n) FILTER (WHERE state = 'retried'), 0) AS r
            FROM ev GROUP BY ALL),
         top AS (
            SELECT name, row_number() OVER (ORDER BY sum(f + r) DESC, name NULLS LAST) AS rank
            FROM agg GROUP BY name ORDER BY rank LIMIT ?),
         series AS (SELECT name, rank FROM top UNION ALL SELECT NULL, 0),
         -- Points per series and bucket, joined on equalities only (a join on
         -- `rank = 0 OR name = ...` was a nested loop over every event).
         pts AS (
            SELECT t.rank, a.bucket, a.f, a.r
            FROM top t JOIN agg a ON a.name IS NOT DISTINCT FROM t.name
            UNION ALL
            SELECT 0, bucket, sum(f), sum(r) FROM agg GROUP BY bucket)
         SELECT s.rank, s.name, b.bucket, coalesce(p.f, 0)::BIGINT, coalesce(p.r, 0)::BIGINT
         FROM series s CROSS JOIN {buckets} b
         LEFT JOIN pts p ON p.rank = s.rank AND p.bucket = b.bucket
         ORDER BY s.rank, b.bucket",
        rolled.sql
    );
    let mut params = vec![
        DbValue::BigInt(range.step_us),
        DbValue::BigInt(range.step_us),
    ];
    params.extend(raw_params);
    params.extend(split.rolled_params());
    params.extend(rolled.params);
    params.push(DbValue::BigInt(i64::try_from(top).unwrap_or(i64::MAX)));
    params.extend(bucket_params);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(duckdb::params_from_iter(params))?;
    let mut total = FailureSeries {
        name: None,
        points: Vec::new(),
    };
    let mut series: Vec<(i64, FailureSeries)> = Vec::new();
    while let Some(row) = rows.next()? {
        let rank: i64 = row.get(0)?;
        let name: Option<String> = row.get(1)?;
        let point = (
            bucket_time(row.get(2)?)?,
            count(row.get(3)?),
            count(row.get(4)?),
        );
        if rank == 0 {
            total.points.push(point);
            continue;
        }
        match series.last_mut() {
            Some((r, s)) if *r == rank => s.points.push(point),
            _ => series.push((
                rank,
                FailureSeries {
                    name,
                    points: vec![point],
                },
            )),
        }
    }
    Ok(FailureReport {
        series: series.into_iter().map(|(_, s)| s).collect(),
        total,
    })
}

fn name_stats(
    conn: &Connection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    filter: &ReportFilter,
    order: NameOrder,
    limit: usize,
) -> Result<Vec<NameStats>, StoreError> {
    let cond = filter.conditions("k.broker", "k.queue", Some("k.name"));
    let rolled = filter.conditions("r.broker", "r.queue", Some("r.name"));
    let split = Split::of(conn, since, until, None)?;
    let (raw, raw_params) = split.raw_union_tasks(
        conn,
        &format!(
            "SELECT k.name, t.task_num, t.state
             FROM transitions t JOIN task_rows k ON k.num = t.task_num
             WHERE t.occurred_at >= ? AND t.occurred_at < ? AND k.updated_at >= ?
               AND k.num >= ? AND k.num <= ?{}",
            cond.sql
        ),
        |lo, hi, first, last| cond.after([lo.clone(), hi, lo, first, last]),
    )?;
    // Rolled-up hours count finished runs (success, failure, abandoned transitions): they no
    // longer know which tasks they were.
    let sql = format!(
        "SELECT name, runs, failures, retries,
                CASE WHEN runs = 0 THEN 0.0 ELSE failures / runs END AS failure_rate
         FROM (
            SELECT name, sum(runs)::BIGINT AS runs, sum(failures)::BIGINT AS failures,
                   sum(retries)::BIGINT AS retries
            FROM (
                SELECT name,
                       count(DISTINCT task_num) AS runs,
                       count(*) FILTER (WHERE state = 'failure') AS failures,
                       count(*) FILTER (WHERE state = 'retried') AS retries
                FROM {raw}
                GROUP BY name
                UNION ALL
                SELECT nullif(r.name, ''),
                       coalesce(sum(r.transitions) FILTER (WHERE r.state IN ('success', 'failure', 'abandoned')), 0),
                       coalesce(sum(r.transitions) FILTER (WHERE r.state = 'failure'), 0),
                       coalesce(sum(r.transitions) FILTER (WHERE r.state = 'retried'), 0)
                FROM (SELECT * FROM rollup_hourly WHERE bucket >= ? AND bucket < ?
                      UNION ALL SELECT * FROM rollup_hourly WHERE bucket >= ? AND bucket < ?
                      UNION ALL SELECT * FROM rollup_daily WHERE bucket >= ? AND bucket < ?) r
                WHERE r.bucket >= ? AND r.bucket < ?{}
                GROUP BY 1)
            GROUP BY name)
         ORDER BY {} LIMIT ?",
        rolled.sql,
        order.order_by()
    );
    let mut params: Vec<DbValue> = raw_params;
    params.extend(split.rolled_params());
    params.extend(rolled.params);
    params.push(DbValue::BigInt(i64::try_from(limit).unwrap_or(i64::MAX)));
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(duckdb::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(NameStats {
            name: row.get(0)?,
            runs: count(row.get(1)?),
            failures: count(row.get(2)?),
            retries: count(row.get(3)?),
            failure_rate: row.get(4)?,
        });
    }
    Ok(out)
}

fn wait(
    conn: &Connection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    filter: &ReportFilter,
    limit: usize,
) -> Result<Vec<WaitStats>, StoreError> {
    let rows = percentiles(conn, since, until, filter, limit, Measure::Wait)?;
    Ok(rows
        .into_iter()
        .map(|r| WaitStats {
            broker: r.broker,
            queue: r.queue,
            name: r.name,
            count: r.count,
            p50_ms: r.p50_ms,
            p95_ms: r.p95_ms,
            p99_ms: r.p99_ms,
            max_ms: r.max_ms,
        })
        .collect())
}

fn runtime(
    conn: &Connection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    filter: &ReportFilter,
    limit: usize,
) -> Result<Vec<RuntimeStats>, StoreError> {
    let rows = percentiles(conn, since, until, filter, limit, Measure::Runtime)?;
    Ok(rows
        .into_iter()
        .map(|r| RuntimeStats {
            broker: r.broker,
            name: r.name,
            count: r.count,
            p50_ms: r.p50_ms,
            p95_ms: r.p95_ms,
            p99_ms: r.p99_ms,
            max_ms: r.max_ms,
            mean_ms: r.mean_ms,
        })
        .collect())
}

/// What a percentile report measures, over the tasks that finished in the window.
#[derive(Debug, Clone, Copy)]
enum Measure {
    /// `runtime_ms`, per (broker, name).
    Runtime,
    /// [`broker_adapters::Task::wait_ms`], per (broker, queue, name).
    Wait,
}

impl Measure {
    /// The value over a raw task row `t`, and the condition for it to be known.
    fn raw(self) -> (&'static str, &'static str) {
        match self {
            Measure::Runtime => ("t.runtime_ms", "t.runtime_ms IS NOT NULL"),
            Measure::Wait => (
                broker_adapters::model::WAIT_MS_SQL,
                "t.started_at IS NOT NULL",
            ),
        }
    }

    /// The prefix of its roll-up columns (`<prefix>_count`, `_p50_ms`...).
    fn rolled(self) -> &'static str {
        match self {
            Measure::Runtime => "runtime",
            Measure::Wait => "wait",
        }
    }

    fn by_queue(self) -> bool {
        matches!(self, Measure::Wait)
    }
}

/// One group of a percentile report.
struct Percentiles {
    broker: Broker,
    queue: Option<String>,
    name: Option<String>,
    count: u64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

/// Percentiles of `measure` per group, the highest p95 first. Raw tasks give exact figures;
/// rolled-up hours give counts, max and sums exactly and their percentiles, which are merged
/// as a count-weighted mean (exact when all is raw).
fn percentiles(
    conn: &Connection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    filter: &ReportFilter,
    limit: usize,
    measure: Measure,
) -> Result<Vec<Percentiles>, StoreError> {
    let cond = filter.conditions("t.broker", "t.queue", Some("t.name"));
    let rolled = filter.conditions("r.broker", "r.queue", Some("r.name"));
    let split = Split::of(conn, since, until, None)?;
    let (value, known) = measure.raw();
    let (raw_queue, rolled_queue) = if measure.by_queue() {
        ("t.queue", "nullif(r.queue, '')")
    } else {
        ("NULL::VARCHAR", "NULL::VARCHAR")
    };
    let (raw, raw_params) = split.raw_union(
        &format!(
            "SELECT t.broker, {raw_queue} AS queue, t.name, {value} AS v FROM task_rows t
             WHERE {known} AND t.finished_at >= ? AND t.finished_at < ?{}",
            cond.sql
        ),
        |lo, hi| cond.after([lo, hi]),
    );
    let p = measure.rolled();
    let sql = format!(
        "WITH parts AS (
            SELECT broker, queue, name, count(v) AS n,
                   quantile_cont(v, 0.5) AS p50, quantile_cont(v, 0.95) AS p95,
                   quantile_cont(v, 0.99) AS p99, max(v) AS mx, sum(v) AS total
            FROM {raw}
            GROUP BY broker, queue, name
            HAVING count(v) > 0
            UNION ALL
            SELECT r.broker, {rolled_queue}, nullif(r.name, ''), r.{p}_count, r.{p}_p50_ms,
                   r.{p}_p95_ms, r.{p}_p99_ms, r.{p}_max_ms, r.{p}_sum_ms
            FROM (SELECT * FROM rollup_hourly WHERE bucket >= ? AND bucket < ?
                      UNION ALL SELECT * FROM rollup_hourly WHERE bucket >= ? AND bucket < ?
                      UNION ALL SELECT * FROM rollup_daily WHERE bucket >= ? AND bucket < ?) r
            WHERE r.{p}_count > 0 AND r.state IN ('success', 'failure')
              AND r.bucket >= ? AND r.bucket < ?{})
         SELECT broker, queue, name, sum(n)::BIGINT AS n,
                sum(p50 * n) / sum(n), sum(p95 * n) / sum(n) AS p95, sum(p99 * n) / sum(n),
                max(mx), sum(total) / sum(n)
         FROM parts
         GROUP BY broker, queue, name
         ORDER BY p95 DESC, n DESC, broker, queue, name LIMIT ?",
        rolled.sql
    );
    let mut params: Vec<DbValue> = raw_params;
    params.extend(split.rolled_params());
    params.extend(rolled.params);
    params.push(DbValue::BigInt(i64::try_from(limit).unwrap_or(i64::MAX)));
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(duckdb::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(Percentiles {
            broker: rows::parse_broker(&row.get::<_, String>(0)?)?,
            queue: row.get(1)?,
            name: row.get(2)?,
            count: count(row.get(3)?),
            p50_ms: row.get(4)?,
            p95_ms: row.get(5)?,
            p99_ms: row.get(6)?,
            max_ms: row.get(7)?,
            mean_ms: row.get(8)?,
        });
    }
    Ok(out)
}
