//! The audit journal (issue #21): one row per write action taken through taskscope (run,
//! retry, delete, purge, revoke), including refused and failed ones, with who asked, the target,
//! the arguments, the task it created and the outcome.
//!
//! Rows are appended only by the store writer thread ([`super::StoreWriter::audit`]), deleted
//! only by housekeeping past `--audit-retention` (never with the task retention), and read here
//! for `GET /api/audit`, `/audit` and each task's timeline. Ids are increasing integers: the
//! newest entry has the highest id, which is also the page cursor.

use super::rows::{self, Ts};
use super::{StoreError, StoreReader};
use chrono::{DateTime, Utc};
use duckdb::types::Value as DbValue;
use duckdb::Connection;
use serde::Serialize;

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// Written to the broker.
    Ok,
    /// Refused before anything was written (not allowed, bad request, unsupported).
    Refused,
    /// Tried and failed (Redis refused the write, the connection broke).
    Failed,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Refused => "refused",
            AuditOutcome::Failed => "failed",
        }
    }

    fn parse(s: &str) -> AuditOutcome {
        match s {
            "ok" => AuditOutcome::Ok,
            "refused" => AuditOutcome::Refused,
            _ => AuditOutcome::Failed,
        }
    }
}

/// An action to journal, before it has an id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    pub at: DateTime<Utc>,
    /// The trusted header's value, `"token"`, `"local"` (no auth, loopback) or `"cli"`.
    pub who: String,
    /// `run`, `retry`, `delete`, `purge`, `revoke`.
    pub action: String,
    pub broker: Option<String>,
    pub queue: Option<String>,
    /// The task or message id acted on; the queue for `purge`, the task name for `run`.
    pub target: Option<String>,
    /// The action's arguments as JSON (for `run`: name, args, kwargs, delay).
    pub arguments: Option<serde_json::Value>,
    /// The task the action created (run, retry).
    pub new_task_id: Option<String>,
    pub outcome: AuditOutcome,
    pub error: Option<String>,
    /// How many messages it removed (delete, purge).
    pub count: Option<u64>,
}

/// A journal entry, as `/api/audit` and the action routes answer it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(serialize_with = "ser_time")]
    pub at: DateTime<Utc>,
    pub who: String,
    pub action: String,
    pub broker: Option<String>,
    pub queue: Option<String>,
    pub target: Option<String>,
    pub arguments: Option<serde_json::Value>,
    pub new_task_id: Option<String>,
    pub outcome: AuditOutcome,
    pub error: Option<String>,
    pub count: Option<u64>,
}

fn ser_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&broker_adapters::rfc3339(t))
}

/// Filters of `GET /api/audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub who: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Entries with an id below this (the previous page's `next_cursor`).
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// One page of the journal, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

const COLUMNS: &str = "id, occurred_at, who, action, broker, queue, target, arguments, \
                       new_task_id, outcome, error, removed";

fn read_entry(row: &duckdb::Row<'_>) -> Result<AuditEntry, StoreError> {
    let outcome: String = row.get(9)?;
    let count: Option<i64> = row.get(11)?;
    Ok(AuditEntry {
        id: row.get(0)?,
        at: rows::get_ts_required(row, 1)?,
        who: row.get(2)?,
        action: row.get(3)?,
        broker: row.get(4)?,
        queue: row.get(5)?,
        target: row.get(6)?,
        arguments: rows::parse_json(row.get(7)?),
        new_task_id: row.get(8)?,
        outcome: AuditOutcome::parse(&outcome),
        error: row.get(10)?,
        count: count.and_then(|c| u64::try_from(c).ok()),
    })
}

/// Appends `entry` (on the writer thread) and returns it with its id.
pub(super) fn append(conn: &Connection, entry: NewAuditEntry) -> Result<AuditEntry, StoreError> {
    let id: i64 = conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM audit_log", [], |r| {
        r.get(0)
    })?;
    conn.execute(
        &format!("INSERT INTO audit_log ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        duckdb::params![
            id,
            Ts(entry.at),
            entry.who.as_str(),
            entry.action.as_str(),
            rows::opt_text(&entry.broker),
            rows::opt_text(&entry.queue),
            rows::opt_text(&entry.target),
            rows::opt_json(&entry.arguments),
            rows::opt_text(&entry.new_task_id),
            entry.outcome.as_str(),
            rows::opt_text(&entry.error),
            entry.count.and_then(|c| i64::try_from(c).ok()),
        ],
    )?;
    Ok(AuditEntry {
        id,
        at: entry.at,
        who: entry.who,
        action: entry.action,
        broker: entry.broker,
        queue: entry.queue,
        target: entry.target,
        arguments: entry.arguments,
        new_task_id: entry.new_task_id,
        outcome: entry.outcome,
        error: entry.error,
        count: entry.count,
    })
}

/// Deletes the entries older than `before` (housekeeping, `--audit-retention`).
pub(super) fn delete_before(conn: &Connection, before: DateTime<Utc>) -> Result<u64, StoreError> {
    Ok(conn.execute(
        "DELETE FROM audit_log WHERE occurred_at < ?",
        duckdb::params![Ts(before)],
    )? as u64)
}

impl StoreReader {
    /// A page of the journal, newest first.
    pub async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let query = query.clone();
        self.with_conn("audit", move |conn| {
            let mut wheres = vec!["TRUE".to_string()];
            let mut params: Vec<DbValue> = Vec::new();
            if let Some(action) = &query.action {
                wheres.push("action = ?".into());
                params.push(DbValue::Text(action.clone()));
            }
            if let Some(who) = &query.who {
                wheres.push("who = ?".into());
                params.push(DbValue::Text(who.clone()));
            }
            if let Some(since) = query.since {
                wheres.push("occurred_at >= ?".into());
                params.push(rows::opt_ts(Some(since)));
            }
            if let Some(until) = query.until {
                wheres.push("occurred_at < ?".into());
                params.push(rows::opt_ts(Some(until)));
            }
            if let Some(before) = query.before_id {
                wheres.push("id < ?".into());
                params.push(DbValue::BigInt(before));
            }
            let limit = query.limit.clamp(1, 1000);
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE {} ORDER BY id DESC LIMIT {}",
                wheres.join(" AND "),
                limit + 1
            ))?;
            let mut found = stmt.query(duckdb::params_from_iter(params))?;
            let mut entries = Vec::new();
            while let Some(row) = found.next()? {
                entries.push(read_entry(row)?);
            }
            let next_cursor = if entries.len() > limit {
                entries.truncate(limit);
                entries.last().map(|e| e.id.to_string())
            } else {
                None
            };
            Ok(AuditPage {
                entries,
                next_cursor,
            })
        })
        .await
    }

    /// The actions on task `id` or that created it, oldest first (a task's timeline).
    pub async fn audit_for_task(&self, id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let id = id.to_string();
        self.with_conn("audit_for_task", move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE target = $1 OR new_task_id = $1
                 ORDER BY id LIMIT 200"
            ))?;
            let mut found = stmt.query([&id])?;
            let mut entries = Vec::new();
            while let Some(row) = found.next()? {
                entries.push(read_entry(row)?);
            }
            Ok(entries)
        })
        .await
    }
}
