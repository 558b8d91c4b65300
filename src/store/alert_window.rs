//! What alert rules count over a window (`src/alerts`): per queue, the finished, failed and
//! abandoned tasks and the 95th percentile of the waits of tasks started in `[since, until)`.
//!
//! Reads raw transitions only (append-only, in time order, so DuckDB's zone maps skip the
//! older row groups): a window must lie within `--retention`, which rule validation checks.

use super::reader::StoreReader;
use super::reports::{count, ts};
use super::rows;
use super::{ReportFilter, StoreError};
use broker_adapters::Broker;
use chrono::{DateTime, Utc};

/// One queue's counts over an alert window.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueWindow {
    pub broker: Broker,
    /// `None` when the tasks' queue is unknown.
    pub queue: Option<String>,
    /// Transitions into `success`, `failure` or `abandoned`.
    pub finished: u64,
    pub failures: u64,
    pub abandoned: u64,
    /// p95 of the waits (ms) of the `running` transitions in the window; `None` without any.
    pub wait_p95_ms: Option<f64>,
}

impl StoreReader {
    /// The counts of every queue matching `filter` with a transition in `[since, until)`.
    pub async fn alert_window(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        filter: ReportFilter,
    ) -> Result<Vec<QueueWindow>, StoreError> {
        self.with_conn_heavy("alert_window", move |conn| {
            let cond = filter.conditions("t.broker", "t.queue", Some("t.name"));
            let wait = broker_adapters::model::WAIT_MS_SQL;
            let sql = format!(
                "SELECT t.broker, t.queue,
                        count(*) FILTER (WHERE tr.state IN ('success', 'failure', 'abandoned')),
                        count(*) FILTER (WHERE tr.state = 'failure'),
                        count(*) FILTER (WHERE tr.state = 'abandoned'),
                        quantile_cont(CASE WHEN tr.state = 'running' AND t.started_at IS NOT NULL
                                           THEN {wait} END, 0.95)
                 FROM transitions tr JOIN task_rows t ON t.num = tr.task_num
                 WHERE tr.occurred_at >= ? AND tr.occurred_at < ?
                   AND tr.state IN ('success', 'failure', 'abandoned', 'running'){}
                 GROUP BY t.broker, t.queue
                 ORDER BY t.broker, t.queue",
                cond.sql
            );
            let params = cond.after([ts(since), ts(until)]);
            let mut stmt = conn.prepare(&sql)?;
            let mut found = stmt.query(duckdb::params_from_iter(params))?;
            let mut out = Vec::new();
            while let Some(row) = found.next()? {
                out.push(QueueWindow {
                    broker: rows::parse_broker(&row.get::<_, String>(0)?)?,
                    queue: row.get(1)?,
                    finished: count(row.get(2)?),
                    failures: count(row.get(3)?),
                    abandoned: count(row.get(4)?),
                    wait_p95_ms: row.get(5)?,
                });
            }
            Ok(out)
        })
        .await
    }
}
