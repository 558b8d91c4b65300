//! Failure groups (`/api/failures/groups`, `/failures`): failure and retried transitions counted
//! per fingerprint over a window, with each group's names, brokers, a sample task and a dense
//! series of counts per bucket.
//!
//! Counts read raw transitions and, for rolled-up hours and days, `failure_rollup_hourly` and
//! `failure_rollup_daily`, split exactly as the other reports ([`Split`]): nothing is counted
//! twice, and counts survive retention. What a group is (exception, message, frames) and when
//! it was first and last seen, ever, comes from `failure_groups`, which the writer keeps.

use super::maintenance::FAILURE_FINGERPRINT_SQL;
use super::reader::StoreReader;
use super::reports::{bucket_time, buckets_sql, count, Split};
use super::rows;
use super::{ReportFilter, ReportRange, StoreError};
use broker_adapters::Broker;
use chrono::{DateTime, Utc};
use duckdb::types::Value as DbValue;
use duckdb::Connection;

/// One failure group over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureGroup {
    pub fingerprint: String,
    /// The exception type as first seen (`ValueError`); `None` when the error names none.
    pub exception: Option<String>,
    /// The normalised message (`card declined <n>`).
    pub message: String,
    /// The innermost frames, outermost first.
    pub frames: Vec<String>,
    /// Failure and retried transitions in the window.
    pub count: u64,
    /// When the group was first and last seen, ever (within retention).
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub names: Vec<String>,
    pub brokers: Vec<Broker>,
    /// The task of the group's newest raw transition (none when only roll-ups remain).
    pub sample_task_id: Option<String>,
    /// Counts per bucket of the window, dense, oldest first.
    pub points: Vec<(DateTime<Utc>, u64)>,
}

/// Which groups a query lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupState {
    /// Groups with a failure or retry in the window.
    #[default]
    Open,
    /// Also the groups seen before the window (within retention) and quiet in it (count 0).
    All,
}

/// The most groups one answer holds.
pub const MAX_GROUPS: usize = 200;

/// A separator no name contains (names are capped, printable text).
const SEP: char = '\u{1f}';

impl StoreReader {
    /// The failure groups of `range` matching `filter`, the most frequent first.
    pub async fn failure_groups(
        &self,
        range: ReportRange,
        filter: ReportFilter,
        state: GroupState,
        limit: usize,
    ) -> Result<Vec<FailureGroup>, StoreError> {
        self.with_conn_heavy("failure_groups", move |conn| {
            failure_groups(conn, &range, &filter, state, limit.min(MAX_GROUPS))
        })
        .await
    }
}

/// `(SELECT fp, broker, name, occurred, n, task_id, w ...)`: the failure and retried
/// transitions of `split` with their group, `w` being `weight` (1 in the window, 0 before it).
fn events(
    conn: &Connection,
    split: &Split,
    filter: &ReportFilter,
    weight: u8,
) -> Result<(String, Vec<DbValue>), StoreError> {
    let cond = filter.conditions("t.broker", "t.queue", Some("t.name"));
    let (raw, mut params) = split.raw_union_tasks(
        conn,
        &format!(
            "SELECT {FAILURE_FINGERPRINT_SQL} AS fp, tr.broker, t.name,
                    tr.occurred_at AS occurred, 1 AS n,
                    coalesce(t.id_text, t.uid::VARCHAR) AS task_id, {weight} AS w
             FROM transitions tr JOIN task_rows t ON t.num = tr.task_num
             WHERE tr.state IN ('failure', 'retried')
               AND tr.occurred_at >= ? AND tr.occurred_at < ? AND t.updated_at >= ?
               AND t.num >= ? AND t.num <= ?
               AND {FAILURE_FINGERPRINT_SQL} IS NOT NULL{}",
            cond.sql
        ),
        |lo, hi, first, last| cond.after([lo.clone(), hi, lo, first, last]),
    )?;
    let rolled = filter.conditions("r.broker", "r.queue", Some("r.name"));
    let sql = format!(
        "({raw} UNION ALL
          SELECT r.fingerprint, r.broker, nullif(r.name, ''), r.bucket, r.transitions,
                 NULL::VARCHAR, {weight}
          FROM (SELECT * FROM failure_rollup_hourly WHERE bucket >= ? AND bucket < ?
                UNION ALL SELECT * FROM failure_rollup_hourly WHERE bucket >= ? AND bucket < ?
                UNION ALL SELECT * FROM failure_rollup_daily WHERE bucket >= ? AND bucket < ?) r
          WHERE r.bucket >= ? AND r.bucket < ?{})",
        rolled.sql
    );
    params.extend(split.rolled_params());
    params.extend(rolled.params);
    Ok((sql, params))
}

fn failure_groups(
    conn: &Connection,
    range: &ReportRange,
    filter: &ReportFilter,
    state: GroupState,
    limit: usize,
) -> Result<Vec<FailureGroup>, StoreError> {
    let window = Split::of(conn, range.since, range.until, Some(range.step_us))?;
    let (mut ev, mut params) = events(conn, &window, filter, 1)?;
    if state == GroupState::All {
        let before = Split::of(conn, DateTime::UNIX_EPOCH, range.since, None)?;
        let (earlier, earlier_params) = events(conn, &before, filter, 0)?;
        ev = format!("({ev} UNION ALL {earlier})");
        params.extend(earlier_params);
    }
    let (buckets, bucket_params) = buckets_sql(range);
    let sql = format!(
        "WITH ev AS (SELECT * FROM {ev}),
         g AS (
            SELECT fp, sum(n * w)::BIGINT AS cnt,
                   string_agg(DISTINCT broker, chr(31) ORDER BY broker) AS brokers,
                   string_agg(DISTINCT name, chr(31) ORDER BY name) AS names,
                   arg_max(task_id, occurred) FILTER (WHERE task_id IS NOT NULL) AS sample
            FROM ev GROUP BY fp
            HAVING sum(n * w) > 0 OR ?
            ORDER BY cnt DESC, fp LIMIT ?),
         pts AS (
            SELECT fp, (epoch_us(occurred) // ?) * ? AS bucket, sum(n)::BIGINT AS n
            FROM ev WHERE w = 1 AND fp IN (SELECT fp FROM g) GROUP BY ALL)
         SELECT g.fp, f.exception, f.message, f.frames, f.first_seen, f.last_seen, g.cnt,
                g.brokers, g.names, g.sample, b.bucket, coalesce(p.n, 0)
         FROM g LEFT JOIN failure_groups f ON f.fingerprint = g.fp
         CROSS JOIN {buckets} b
         LEFT JOIN pts p ON p.fp = g.fp AND p.bucket = b.bucket
         ORDER BY g.cnt DESC, g.fp, b.bucket"
    );
    params.push(DbValue::Boolean(state == GroupState::All));
    params.push(DbValue::BigInt(i64::try_from(limit).unwrap_or(i64::MAX)));
    params.push(DbValue::BigInt(range.step_us));
    params.push(DbValue::BigInt(range.step_us));
    params.extend(bucket_params);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(duckdb::params_from_iter(params))?;
    let mut out: Vec<FailureGroup> = Vec::new();
    while let Some(row) = rows.next()? {
        let fingerprint: String = row.get(0)?;
        let point = (bucket_time(row.get(10)?)?, count(row.get(11)?));
        if let Some(group) = out.last_mut().filter(|g| g.fingerprint == fingerprint) {
            group.points.push(point);
            continue;
        }
        let list = |v: Option<String>| -> Vec<String> {
            v.map(|s| s.split(SEP).map(str::to_string).collect())
                .unwrap_or_default()
        };
        let brokers = list(row.get(7)?)
            .iter()
            .map(|b| rows::parse_broker(b))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(FailureGroup {
            fingerprint,
            exception: row.get(1)?,
            message: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
            frames: row
                .get::<_, Option<String>>(3)?
                .map(|f| f.lines().map(str::to_string).collect())
                .unwrap_or_default(),
            first_seen: rows::get_ts(row, 4)?,
            last_seen: rows::get_ts(row, 5)?,
            count: count(row.get(6)?),
            brokers,
            names: list(row.get(8)?),
            sample_task_id: row.get(9)?,
            points: vec![point],
        });
    }
    Ok(out)
}
