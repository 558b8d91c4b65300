//! Every query of the history. [`StoreReader`] is a cheap clone around a small pool of DuckDB
//! connections (clones of the writer's database); each query borrows one on a `spawn_blocking`
//! thread and gives it back, so no connection ever crosses an `.await`.
//!
//! Readers see what the writer has committed (MVCC), with the live tail (`live.rs`: folded,
//! published, not yet committed) merged over it where a task, a count or a queue is answered:
//! `get_task`, `list_tasks` (its page's tasks), `stats` (all-time counts) and `queues`. So the
//! API never shows a task older than `/api/events` did. Other reads (reports, workers, exports,
//! `open_tasks`, `stats` since a time) are at most one flush interval behind; call
//! `StoreWriter::flush` first to read your own writes there. User input only ever reaches SQL
//! as bound parameters.

use super::live::{self, Key, LiveTail, TailTask};
use super::rows::{
    self, decode_cursor, encode_cursor, get_ts_required, read_task, read_transition, TASK_COLUMNS,
    TRANSITION_COLUMNS,
};
use super::StoreError;
use broker_adapters::state::worker_alive;
use broker_adapters::{Broker, OpenTask, QueueSample, Task, TaskState, Transition, Worker};
use chrono::{DateTime, Utc};
use duckdb::types::Value as DbValue;
use duckdb::Connection;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// The filters of `/api/tasks` (and of the CSV export). Empty lists and `None` mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskQuery {
    pub brokers: Vec<Broker>,
    pub queue: Option<String>,
    pub name: Option<String>,
    pub states: Vec<TaskState>,
    /// Case-insensitive substring of the id, the name, or the arguments (args and kwargs JSON).
    pub q: Option<String>,
    /// `updated_at >= since`.
    pub since: Option<DateTime<Utc>>,
    /// `updated_at < until`.
    pub until: Option<DateTime<Utc>>,
    /// Page size; the caller clamps it to 1..=1000 (0 reads as 1).
    pub limit: usize,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// A failure group: tasks whose current error, or one of whose failed attempts, has this
    /// fingerprint.
    pub fingerprint: Option<String>,
}

/// One page of tasks, newest activity first.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// `Some` when more tasks match after this page.
    pub next_cursor: Option<String>,
}

/// Counts for the overview and `/api/stats`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    /// Every one of the six states, 0 when none.
    pub by_state: BTreeMap<TaskState, u64>,
    /// Only brokers that have tasks.
    pub by_broker: BTreeMap<Broker, u64>,
}

/// Read access to the history. Cheap to clone.
/// Memory DuckDB's buffer manager accounts for under one tag ([`StoreReader::engine_memory`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineMemory {
    /// DuckDB's name for what holds it (`BASE_TABLE`, `HASH_TABLE`, `ORDER_BY`, ...).
    pub tag: String,
    pub bytes: u64,
    /// Spilled to `<db>.tmp`.
    pub temporary_bytes: u64,
}

#[derive(Clone)]
pub struct StoreReader {
    pool: Arc<Pool>,
    /// `Some` for the HTTP layer's reader ([`StoreReader::gated`]): a bound on its queries
    /// running at once, so a burst of requests queues here instead of taking every blocking
    /// thread and a DuckDB transaction each. Ingest and housekeeping read ungated.
    gate: Option<Arc<QueryGate>>,
}

/// At most `slots.available_permits()` queries at once; a query waits at most `wait` for one.
#[derive(Debug)]
struct QueryGate {
    slots: Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader").finish_non_exhaustive()
    }
}

struct Pool {
    /// What the writer folded but has not committed yet.
    live: Arc<LiveTail>,
    /// The file's all-time counts and the live tail's generation they were read at.
    file_counts: Mutex<Option<(u64, Stats)>>,
    /// Cloned to make new connections (never queried itself).
    template: Mutex<Connection>,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    /// One analytic query (a report, a search, failure groups, an alert window) at a time,
    /// across every reader of the pool: each may take most of DuckDB's `memory_limit` for its
    /// hash tables, and several at once ran out of it (four clients loading `/reports` at
    /// 10M tasks: `failures` answered 500 "Out of Memory" at the default 64 MiB). They take
    /// 5-50 ms each, so queueing costs little; point queries and lists never wait here. The
    /// sink takes it too, to retry a failed batch with no analytic query beside it.
    heavy: Arc<tokio::sync::Semaphore>,
}

impl Pool {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(conn);
        }
        let template = self.template.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(template.try_clone()?)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}

/// A task's state as the SQL literal the schema stores.
fn state_value(s: TaskState) -> DbValue {
    DbValue::Text(s.as_str().to_string())
}

/// `col IN (?, ?, …)` for a non-empty list.
pub(super) fn in_list(col: &str, n: usize) -> String {
    format!("{col} IN ({})", vec!["?"; n].join(", "))
}

/// `q`'s condition on `task_rows` (five parameters: [`search_params`]), the same as
/// [`task_filter`]'s on the `tasks` view: a case-insensitive substring of the id, the name, the
/// args or the kwargs. A UUID id is stored as its value and reads as text already in lower
/// case, so only other ids are lowered: at 10M tasks ~30 % cheaper than `lower()` of every id
/// (DuckDB 1.5.6, one thread: 4.0 s against 5.6 s a scan).
const SEARCH_CONDITION: &str = "(CASE WHEN id_text IS NULL THEN contains(uid::VARCHAR, ?) \
     ELSE contains(lower(id_text), ?) END \
     OR contains(lower(coalesce(name, '')), ?) \
     OR contains(lower(coalesce(args, '')), ?) \
     OR contains(lower(coalesce(kwargs, '')), ?))";

/// The lower-cased `q` of a query, when it has one.
fn search_text(query: &TaskQuery) -> Option<String> {
    query
        .q
        .as_deref()
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase)
}

/// The parameters of [`SEARCH_CONDITION`].
fn search_params(q: &str) -> impl Iterator<Item = DbValue> {
    std::iter::repeat_n(DbValue::Text(q.to_string()), 5)
}

/// A search matching at most this many stored tasks has their numbers read first, and its page
/// is read among them; one that matches more is filtered as it is paged, as other filters are
/// (DuckDB's top-N prunes row groups older than the page as it fills: a common match is found
/// in the newest ones).
#[cfg(not(test))]
const SEARCH_NUMS_FIRST: usize = 50_000;
/// Small in tests, so that their searches take both ways.
#[cfg(test)]
const SEARCH_NUMS_FIRST: usize = 5;

/// The `WHERE` conditions of a [`TaskQuery`]'s filters (not its cursor or limit), and their bound
/// values in order. Shared by the task list and the exports.
pub(super) fn task_filter(query: &TaskQuery) -> (Vec<String>, Vec<DbValue>) {
    let mut wheres: Vec<String> = Vec::new();
    let mut params: Vec<DbValue> = Vec::new();
    if !query.brokers.is_empty() {
        wheres.push(in_list("broker", query.brokers.len()));
        params.extend(
            query
                .brokers
                .iter()
                .map(|b| DbValue::Text(b.as_str().to_string())),
        );
    }
    if let Some(queue) = &query.queue {
        wheres.push("queue = ?".into());
        params.push(DbValue::Text(queue.clone()));
    }
    if let Some(name) = &query.name {
        wheres.push("name = ?".into());
        params.push(DbValue::Text(name.clone()));
    }
    if !query.states.is_empty() {
        wheres.push(in_list("state", query.states.len()));
        params.extend(query.states.iter().copied().map(state_value));
    }
    if let Some(q) = search_text(query) {
        wheres.push(
            "(contains(lower(id), ?) OR contains(lower(coalesce(name, '')), ?) \
             OR contains(lower(coalesce(args, '')), ?) \
             OR contains(lower(coalesce(kwargs, '')), ?))"
                .into(),
        );
        params.extend(std::iter::repeat_n(DbValue::Text(q), 4));
    }
    if let Some(fingerprint) = &query.fingerprint {
        wheres.push(
            "(fingerprint = ? OR num IN (SELECT task_num FROM transitions WHERE fingerprint = ?))"
                .into(),
        );
        params.extend(std::iter::repeat_n(DbValue::Text(fingerprint.clone()), 2));
    }
    if let Some(since) = query.since {
        wheres.push("updated_at >= ?".into());
        params.push(rows::opt_ts(Some(since)));
    }
    if let Some(until) = query.until {
        wheres.push("updated_at < ?".into());
        params.push(rows::opt_ts(Some(until)));
    }
    (wheres, params)
}

impl StoreReader {
    pub(super) fn new(
        template: Connection,
        max_idle: usize,
        live: Arc<LiveTail>,
        analytic: Arc<tokio::sync::Semaphore>,
    ) -> StoreReader {
        StoreReader {
            pool: Arc::new(Pool {
                live,
                file_counts: Mutex::new(None),
                template: Mutex::new(template),
                idle: Mutex::new(Vec::new()),
                max_idle,
                heavy: analytic,
            }),
            gate: None,
        }
    }

    /// A reader of the same pool that runs at most `max` queries at once (a CSV export holds
    /// one for as long as it streams); a query that waits longer than `wait` for a slot fails
    /// with [`StoreError::Busy`] (HTTP 503).
    pub fn gated(&self, max: usize, wait: std::time::Duration) -> StoreReader {
        StoreReader {
            pool: self.pool.clone(),
            gate: Some(Arc::new(QueryGate {
                slots: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
                wait,
            })),
        }
    }

    /// Runs `f` with a pooled connection on a blocking thread (after taking a slot of the gate,
    /// if this reader has one).
    pub(super) async fn with_conn<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let permit = match &self.gate {
            None => None,
            Some(gate) => Some(
                tokio::time::timeout(gate.wait, gate.slots.clone().acquire_owned())
                    .await
                    .map_err(|_| StoreError::Busy(what))?
                    .map_err(|_| StoreError::Cancelled(format!("{what}: the gate closed")))?,
            ),
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.take()?;
            let out = f(&conn);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Cancelled(format!("{what}: {e}")))?
    }

    /// Runs `f` as [`Self::with_conn`] does, after taking the pool's one slot for analytic
    /// queries (see `Pool::heavy`).
    pub(super) async fn with_conn_heavy<T, F>(
        &self,
        what: &'static str,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self.heavy_slot(what).await?;
        self.with_conn(what, move |conn| {
            let _permit = permit;
            f(conn)
        })
        .await
    }

    /// The pool's one slot for analytic queries; a gated reader waits for it within the
    /// gate's `wait` (then [`StoreError::Busy`]).
    async fn heavy_slot(
        &self,
        what: &'static str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        let acquire = self.pool.heavy.clone().acquire_owned();
        match &self.gate {
            None => acquire.await,
            Some(gate) => tokio::time::timeout(gate.wait, acquire)
                .await
                .map_err(|_| StoreError::Busy(what))?,
        }
        .map_err(|_| StoreError::Cancelled(format!("{what}: the gate closed")))
    }

    /// Runs `f` as [`Self::with_conn`] does, with the live tail at hand.
    async fn with_conn_live<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &LiveTail) -> Result<T, StoreError> + Send + 'static,
    {
        let live = self.pool.live.clone();
        self.with_conn(what, move |conn| f(conn, &live)).await
    }

    /// The first column of every row of `sql`, as text (tests check exact table contents).
    ///
    /// Test support, compiled always: the binary's unit tests (`src/http`, `src/housekeeping`)
    /// use it through this library, where `cfg(test)` is off.
    #[doc(hidden)]
    pub async fn column_for_test(&self, sql: &str) -> Vec<String> {
        let sql = sql.to_string();
        self.with_conn("test", move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let v: Option<String> = row.get(0)?;
                out.push(v.unwrap_or_else(|| "NULL".into()));
            }
            Ok(out)
        })
        .await
        .unwrap()
    }

    /// Runs raw SQL on a reader connection: lets tests plant rows no writer would write.
    ///
    /// Tests plant rows shaped like schema v2 (`INSERT INTO tasks (broker, id, ...)`,
    /// `INSERT INTO transitions (broker, task_id, ...)`, `UPDATE tasks`): they go to
    /// v2-shaped temporary tables and are filed as migration 3 files them, numbered far above
    /// the writer's numbers. Test support, compiled always (see [`Self::column_for_test`]).
    #[doc(hidden)]
    pub async fn execute_for_test(&self, sql: &'static str) {
        let planted = sql
            .replace("INSERT INTO tasks ", "INSERT INTO plant_tasks ")
            .replace("INSERT INTO transitions ", "INSERT INTO plant_transitions ")
            .replace("UPDATE tasks ", "UPDATE task_rows ");
        self.with_conn("test", move |conn| {
            conn.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS plant_tasks (
                     broker VARCHAR NOT NULL, id VARCHAR NOT NULL, queue VARCHAR, name VARCHAR,
                     state VARCHAR NOT NULL, args VARCHAR, kwargs VARCHAR, result VARCHAR,
                     error VARCHAR, traceback VARCHAR, retries INTEGER NOT NULL DEFAULT 0,
                     worker VARCHAR, eta TIMESTAMP, enqueued_at TIMESTAMP, started_at TIMESTAMP,
                     finished_at TIMESTAMP, runtime_ms DOUBLE, updated_at TIMESTAMP NOT NULL);
                 CREATE TEMP TABLE IF NOT EXISTS plant_transitions (
                     broker VARCHAR NOT NULL, task_id VARCHAR NOT NULL, state VARCHAR NOT NULL,
                     occurred_at TIMESTAMP NOT NULL, worker VARCHAR, detail VARCHAR,
                     seq BIGINT NOT NULL);",
            )?;
            conn.execute_batch(&planted)?;
            conn.execute_batch(&format!(
                "BEGIN;
                 {}
                 DELETE FROM plant_tasks;
                 DELETE FROM plant_transitions;
                 COMMIT;",
                super::schema::copy_v2_rows_sql(
                    "plant_tasks",
                    "plant_transitions",
                    "transitions",
                    1_000_000_000_000
                )
            ))?;
            Ok(())
        })
        .await
        .unwrap();
    }

    /// The tasks matching `query`, newest activity first (`updated_at` desc, then broker, id).
    pub async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, StoreError> {
        let query = query.clone();
        let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
        // A search scans the text of every task in range: an analytic query.
        let search = match query.q.as_deref() {
            Some(q) if !q.trim().is_empty() => Some(self.heavy_slot("list_tasks").await?),
            _ => None,
        };
        self.with_conn_live("list_tasks", move |conn, live| {
            let _search = search;
            // The page as the file has it, then the live version of its tasks; again when a
            // commit emptied the tail in between (the file may then hold newer versions).
            let mut retries = live::Retries::new();
            loop {
                let generation = live.generation();
                let page = list_tasks_in_file(conn, &query, cursor.as_ref())?;
                let keys: Vec<_> = page
                    .tasks
                    .iter()
                    .map(|t| (t.broker, t.id.clone()))
                    .collect();
                let snapshot = live.tasks_of(&keys);
                // Tasks the file's page lacks (new ones, or moved up by a change) that match.
                let extra = live.tasks_where(|t, transitions| {
                    !keys.iter().any(|k| k.0 == t.broker && k.1 == t.id)
                        && live_task_matches(&query, cursor.as_ref(), t, transitions)
                });
                if (snapshot.generation == generation && live.unchanged_since(generation))
                    || !retries.again()
                {
                    return Ok(overlay_page(page, snapshot.value, extra, &query));
                }
                live.wait_out_commit();
            }
        })
        .await
    }
}

/// The numbers of the stored tasks that `q` (lower case) and the other filters (`wheres`, with
/// their `params`) match, or `None` when there are more than [`SEARCH_NUMS_FIRST`].
fn nums_matching(
    conn: &Connection,
    q: &str,
    wheres: &[String],
    params: &[DbValue],
) -> Result<Option<Vec<i64>>, StoreError> {
    let others: String = wheres.iter().map(|w| format!("{w} AND ")).collect();
    let sql = format!(
        "SELECT num FROM task_rows WHERE {others}{SEARCH_CONDITION} LIMIT {}",
        SEARCH_NUMS_FIRST + 1
    );
    let mut stmt = conn.prepare(&sql)?;
    let all = params.iter().cloned().chain(search_params(q));
    let mut rows = stmt.query(duckdb::params_from_iter(all))?;
    let mut nums = Vec::new();
    while let Some(row) = rows.next()? {
        nums.push(row.get::<_, i64>(0)?);
        if nums.len() > SEARCH_NUMS_FIRST {
            return Ok(None);
        }
    }
    Ok(Some(nums))
}

/// The page of `query` as the file has it.
fn list_tasks_in_file(
    conn: &Connection,
    query: &TaskQuery,
    cursor: Option<&rows::Cursor>,
) -> Result<TaskPage, StoreError> {
    {
        {
            // A search scans the text of every task. The page query below filters twice (its
            // top-N, then the rows at or after the N-th newest time, which for a rare match is
            // most of the table): a search matching few tasks has their numbers read in one
            // scan first, and the page is read among those numbers (zone maps of `num`).
            let (mut wheres, mut params) = match search_text(query) {
                Some(q) => {
                    // The other filters hold for `task_rows` as for the view (same columns).
                    let without_q = TaskQuery {
                        q: None,
                        ..query.clone()
                    };
                    let (mut wheres, params) = task_filter(&without_q);
                    match nums_matching(conn, &q, &wheres, &params)? {
                        Some(nums) if nums.is_empty() => {
                            return Ok(TaskPage {
                                tasks: Vec::new(),
                                next_cursor: None,
                            })
                        }
                        Some(nums) => {
                            let list: Vec<String> = nums.iter().map(i64::to_string).collect();
                            // Numbers read from the file, not user text.
                            wheres.push(format!("num IN ({})", list.join(", ")));
                            (wheres, params)
                        }
                        None => task_filter(query),
                    }
                }
                None => task_filter(query),
            };
            if let Some(c) = cursor {
                wheres.push(
                    "(updated_at < ? OR (updated_at = ? AND (broker > ? OR (broker = ? AND id > ?))))"
                        .into(),
                );
                let at = rows::opt_ts(Some(c.updated_at));
                let broker = DbValue::Text(c.broker.as_str().to_string());
                params.extend([
                    at.clone(),
                    at,
                    broker.clone(),
                    broker,
                    DbValue::Text(c.id.clone()),
                ]);
            }
            let limit = query.limit.clamp(1, 10_000);
            let where_sql = if wheres.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", wheres.join(" AND "))
            };
            // Two passes: the top-N of the `updated_at` column alone (a narrow scan), then the
            // full rows at or after the N-th newest time, which zone maps find in a few row
            // groups. A single `ORDER BY ... LIMIT` over every column reads the whole table.
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks {where_sql}{and} updated_at >= (
                     SELECT min(updated_at) FROM (
                         SELECT updated_at FROM tasks {where_sql}
                         ORDER BY updated_at DESC LIMIT {n}))
                 ORDER BY updated_at DESC, broker, id LIMIT {n}",
                and = if wheres.is_empty() { " WHERE" } else { " AND" },
                // A number we computed, not user text.
                n = limit + 1
            );
            let params: Vec<DbValue> = params.iter().chain(params.iter()).cloned().collect();
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query(duckdb::params_from_iter(params))?;
            let mut tasks = Vec::with_capacity(limit + 1);
            while let Some(row) = rows.next()? {
                tasks.push(read_task(row)?);
            }
            let next_cursor = if tasks.len() > limit {
                tasks.truncate(limit);
                tasks.last().map(encode_cursor)
            } else {
                None
            };
            Ok(TaskPage { tasks, next_cursor })
        }
    }
}

/// `page` (the file's, up to `limit + 1` tasks) with the live version of its tasks and the
/// tail's other matching tasks, newest first, cut to the query's limit. A task whose live state
/// no longer matches the query's states leaves the page.
fn overlay_page(
    page: TaskPage,
    live: HashMap<Key, Task>,
    extra: Vec<Task>,
    query: &TaskQuery,
) -> TaskPage {
    if live.is_empty() && extra.is_empty() {
        return page;
    }
    let file_has_more = page.next_cursor.is_some();
    let mut tasks: Vec<Task> = page
        .tasks
        .into_iter()
        .filter_map(|t| match live.get(&(t.broker, t.id.clone())) {
            Some(newer) if newer.updated_at >= t.updated_at => (query.states.is_empty()
                || query.states.contains(&newer.state))
            .then(|| newer.clone()),
            _ => Some(t),
        })
        .chain(extra)
        .collect();
    tasks.sort_by(|a, b| {
        b.updated_at
            .cmp(&a.updated_at)
            .then_with(|| a.broker.as_str().cmp(b.broker.as_str()))
            .then_with(|| a.id.cmp(&b.id))
    });
    let limit = query.limit.clamp(1, 10_000);
    let next_cursor = if tasks.len() > limit || file_has_more {
        tasks.truncate(limit);
        tasks.last().map(encode_cursor)
    } else {
        None
    };
    TaskPage { tasks, next_cursor }
}

/// Whether a tail task belongs on the page of `query` after `cursor` (the SQL filters of
/// `task_filter`, applied to the live version; a fingerprint is matched on the task's current
/// one and its uncommitted transitions).
fn live_task_matches(
    query: &TaskQuery,
    cursor: Option<&rows::Cursor>,
    t: &Task,
    transitions: &[Transition],
) -> bool {
    let lower = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .map(|v| v.to_string().to_lowercase())
            .unwrap_or_default()
    };
    let text_is = |field: &Option<String>, wanted: &Option<String>| {
        wanted.as_ref().is_none_or(|w| field.as_ref() == Some(w))
    };
    (query.brokers.is_empty() || query.brokers.contains(&t.broker))
        && text_is(&t.queue, &query.queue)
        && text_is(&t.name, &query.name)
        && (query.states.is_empty() || query.states.contains(&t.state))
        && query.q.as_ref().is_none_or(|q| {
            let q = q.to_lowercase();
            t.id.to_lowercase().contains(&q)
                || t.name.as_deref().unwrap_or("").to_lowercase().contains(&q)
                || lower(&t.args).contains(&q)
                || lower(&t.kwargs).contains(&q)
        })
        && query.fingerprint.as_ref().is_none_or(|f| {
            t.fingerprint.as_ref() == Some(f)
                || transitions
                    .iter()
                    .any(|tr| tr.fingerprint.as_ref() == Some(f))
        })
        && query.since.is_none_or(|s| t.updated_at >= s)
        && query.until.is_none_or(|u| t.updated_at < u)
        && cursor.is_none_or(|c| {
            t.updated_at < c.updated_at
                || (t.updated_at == c.updated_at
                    && (t.broker.as_str() > c.broker.as_str()
                        || (t.broker == c.broker && t.id > c.id)))
        })
}

impl StoreReader {
    /// The newest `limit` tasks, unfiltered.
    pub async fn recent_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        let query = TaskQuery {
            limit,
            ..TaskQuery::default()
        };
        Ok(self.list_tasks(&query).await?.tasks)
    }

    /// What DuckDB's buffer manager holds, in bytes, by its tag (`duckdb_memory()`: cached
    /// blocks, hash tables, sorts...) and what it spilled to temporary files. Database-wide:
    /// the writer's and every reader's queries together.
    pub async fn engine_memory(&self) -> Result<Vec<EngineMemory>, StoreError> {
        self.with_conn("engine_memory", |conn| {
            let mut stmt = conn.prepare(
                "SELECT tag, memory_usage_bytes, temporary_storage_bytes FROM duckdb_memory()
                 WHERE memory_usage_bytes > 0 OR temporary_storage_bytes > 0 ORDER BY tag",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(EngineMemory {
                    tag: row.get(0)?,
                    bytes: row.get::<_, i64>(1)?.max(0) as u64,
                    temporary_bytes: row.get::<_, i64>(2)?.max(0) as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// A task and its timeline (oldest first). When several brokers know the id, the most
    /// recently updated task wins.
    pub async fn get_task(&self, id: &str) -> Result<Option<(Task, Vec<Transition>)>, StoreError> {
        let id = id.to_string();
        self.with_conn_live("get_task", move |conn, live| {
            live::merged(
                live,
                |tail| tail.tasks_with_id(&id),
                || get_task_in_file(conn, &id),
                merge_task,
            )
        })
        .await
    }

    /// The newest sample of every queue, ordered by broker and queue.
    pub async fn queues(&self) -> Result<Vec<QueueSample>, StoreError> {
        self.with_conn_live("queues", |conn, live| {
            live::merged(
                live,
                LiveTail::queues,
                || queues_in_file(conn),
                merge_queues,
            )
        })
        .await
    }

    /// Every known worker, ordered by broker and id. `alive` is judged at `now`
    /// (`state::worker_alive`); `running` counts its tasks in state `running`.
    pub async fn workers(
        &self,
        now: DateTime<Utc>,
        abandon_after: chrono::Duration,
    ) -> Result<Vec<Worker>, StoreError> {
        self.with_conn("workers", move |conn| {
            let mut stmt = conn.prepare(
                "SELECT w.broker, w.id, w.hostname, w.pid, w.alive, w.last_seen, w.online_since,
                        coalesce(r.n, 0)
                 FROM workers w
                 LEFT JOIN (SELECT broker, worker, count(*) AS n FROM tasks
                            WHERE state = 'running' AND worker IS NOT NULL
                            GROUP BY broker, worker) r
                   ON r.broker = w.broker AND r.worker = w.id
                 ORDER BY w.broker, w.id",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let broker: String = row.get(0)?;
                let pid: Option<i64> = row.get(3)?;
                let running: i64 = row.get(7)?;
                let mut w = Worker {
                    broker: rows::parse_broker(&broker)?,
                    id: row.get(1)?,
                    hostname: row.get(2)?,
                    pid: pid.and_then(|p| u32::try_from(p).ok()),
                    alive: row.get(4)?,
                    last_seen: get_ts_required(row, 5)?,
                    online_since: get_ts_required(row, 6)?,
                    running: u64::try_from(running).unwrap_or(0),
                };
                w.alive = worker_alive(&w, now, abandon_after);
                out.push(w);
            }
            Ok(out)
        })
        .await
    }

    /// Task counts by state and by broker, of the tasks updated since `since` (all when `None`).
    ///
    /// All time, it is answered from memory: the file's counts change only when the sink
    /// commits (or housekeeping runs), so they are read once per commit and the live tail's
    /// changes are added to them.
    pub async fn stats(&self, since: Option<DateTime<Utc>>) -> Result<Stats, StoreError> {
        if since.is_none() {
            if let Some(stats) = self.stats_from_memory() {
                return Ok(stats);
            }
        }
        let pool = self.pool.clone();
        self.with_conn_live("stats", move |conn, live| match since {
            // All time: the file's counts moved on by the tail's unwritten tasks.
            None => {
                let mut retries = live::Retries::new();
                loop {
                    let deltas = live.count_deltas();
                    let file = stats_in_file(conn, None)?;
                    if live.unchanged_since(deltas.generation) {
                        *pool
                            .file_counts
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) =
                            Some((deltas.generation, file.clone()));
                    } else if retries.again() {
                        live.wait_out_commit();
                        continue;
                    }
                    return Ok(add_count_deltas(file, deltas.value));
                }
            }
            Some(_) => stats_in_file(conn, since),
        })
        .await
    }

    /// The all-time counts from the file's counts read at the current generation, if any.
    fn stats_from_memory(&self) -> Option<Stats> {
        let deltas = self.pool.live.count_deltas();
        let cached = self
            .pool
            .file_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &*cached {
            Some((generation, file))
                if self.pool.live.unchanged_since(*generation)
                    && *generation == deltas.generation =>
            {
                Some(add_count_deltas(file.clone(), deltas.value))
            }
            _ => None,
        }
    }

    /// Tasks of `broker` that may still move (queued, running, retried, abandoned), most
    /// recently updated first: what the reconcile poller re-reads.
    pub async fn open_tasks(
        &self,
        broker: Broker,
        limit: usize,
    ) -> Result<Vec<OpenTask>, StoreError> {
        self.with_conn("open_tasks", move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, queue, name FROM tasks
                 WHERE broker = ? AND state IN ('queued', 'running', 'retried', 'abandoned')
                 ORDER BY updated_at DESC, id LIMIT ?",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut rows = stmt.query(duckdb::params![broker.as_str(), limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(OpenTask {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    name: row.get(2)?,
                });
            }
            Ok(out)
        })
        .await
    }
}

/// A task and its timeline as the file has them.
fn get_task_in_file(
    conn: &Connection,
    id: &str,
) -> Result<Option<(Task, Vec<Transition>)>, StoreError> {
    let id = id.to_string();
    {
        // The 16-byte key (no index: a scan of one narrow column), then the text.
        let mut stmt = conn.prepare(&format!(
            "SELECT {TASK_COLUMNS}, num FROM tasks WHERE uid = {} AND id = $1
                 ORDER BY updated_at DESC, broker LIMIT 1",
            super::schema::uid_sql("$1::VARCHAR")
        ))?;
        let mut rows = stmt.query([&id])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let task = read_task(row)?;
        let num: i64 = row.get(19)?;
        // The timeline by the task's number, bounded by its last update (no transition is
        // later): zone maps skip the row groups written before the task was first seen
        // (their numbers are lower) and after it last changed.
        let mut stmt = conn.prepare(&format!(
                "SELECT {TRANSITION_COLUMNS} FROM (
                     SELECT t.broker, ? AS task_id, t.state, t.occurred_at, t.worker, t.detail, t.seq
                     FROM transitions t WHERE t.task_num = ? AND t.occurred_at <= ?)
                 ORDER BY occurred_at, seq"
            ))?;
        let mut rows = stmt.query(duckdb::params![
            task.id.as_str(),
            num,
            rows::Ts(task.updated_at)
        ])?;
        let mut transitions = Vec::new();
        while let Some(row) = rows.next()? {
            transitions.push(read_transition(row)?);
        }
        Ok(Some((task, transitions)))
    }
}

/// The file's answer for an id with the live tail's versions of that id over it: the newest
/// version wins (as in the file, by `updated_at`), and a task's uncommitted transitions follow
/// those of the file. (A tail task of another broker than the file's answer shows only its
/// uncommitted transitions until it is written: the same id in two brokers at once.)
fn merge_task(
    file: Option<(Task, Vec<Transition>)>,
    tail: Vec<TailTask>,
) -> Option<(Task, Vec<Transition>)> {
    let Some(newest) = tail.into_iter().max_by(|a, b| {
        a.task
            .updated_at
            .cmp(&b.task.updated_at)
            .then_with(|| b.task.broker.as_str().cmp(a.task.broker.as_str()))
    }) else {
        return file;
    };
    match file {
        Some((task, mut transitions)) if task.broker == newest.task.broker => {
            transitions.extend(newest.transitions);
            // Stable: equal times keep the file's order, then the tail's.
            transitions.sort_by_key(|t| t.at);
            Some((Task::clone(&newest.task), transitions))
        }
        Some((task, transitions)) if task.updated_at > newest.task.updated_at => {
            Some((task, transitions))
        }
        _ => Some((Task::clone(&newest.task), newest.transitions)),
    }
}

/// Task counts by state and broker as the file has them.
fn stats_in_file(conn: &Connection, since: Option<DateTime<Utc>>) -> Result<Stats, StoreError> {
    {
        // All time: the counts the writer keeps (no scan of every task).
        let (sql, params): (&str, Vec<DbValue>) = match since {
            Some(since) => (
                "SELECT broker, state, count(*) FROM tasks WHERE updated_at >= ?
                     GROUP BY broker, state",
                vec![rows::opt_ts(Some(since))],
            ),
            None => (
                "SELECT broker, state, n FROM task_counts WHERE n > 0",
                Vec::new(),
            ),
        };
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query(duckdb::params_from_iter(params))?;
        let mut stats = Stats {
            by_state: TaskState::ALL.into_iter().map(|s| (s, 0)).collect(),
            by_broker: BTreeMap::new(),
        };
        while let Some(row) = rows.next()? {
            let broker: String = row.get(0)?;
            let state: String = row.get(1)?;
            let n: i64 = row.get(2)?;
            let n = u64::try_from(n).unwrap_or(0);
            *stats
                .by_state
                .entry(rows::parse_state(&state)?)
                .or_default() += n;
            *stats
                .by_broker
                .entry(rows::parse_broker(&broker)?)
                .or_default() += n;
        }
        Ok(stats)
    }
}

/// `stats` with the tail's count changes added (never below zero).
fn add_count_deltas(mut stats: Stats, deltas: BTreeMap<(Broker, TaskState), i64>) -> Stats {
    let apply = |n: &mut u64, d: i64| {
        *n = u64::try_from(i64::try_from(*n).unwrap_or(i64::MAX).saturating_add(d)).unwrap_or(0);
    };
    for ((broker, state), d) in deltas {
        apply(stats.by_state.entry(state).or_default(), d);
        apply(stats.by_broker.entry(broker).or_default(), d);
    }
    stats.by_broker.retain(|_, n| *n > 0);
    stats
}

/// The newest sample of every queue as the file has it.
fn queues_in_file(conn: &Connection) -> Result<Vec<QueueSample>, StoreError> {
    {
        let mut stmt = conn.prepare(
            "SELECT broker, queue, sampled_at, length, delayed, dead, running, oldest_enqueued_at
                 FROM queue_latest ORDER BY broker, queue",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let broker: String = row.get(0)?;
            out.push(QueueSample {
                broker: rows::parse_broker(&broker)?,
                name: row.get(1)?,
                sampled_at: get_ts_required(row, 2)?,
                length: row.get(3)?,
                delayed: row.get(4)?,
                dead: row.get(5)?,
                running: row.get(6)?,
                oldest_enqueued_at: rows::get_ts(row, 7)?,
            });
        }
        Ok(out)
    }
}

/// The file's newest samples with the tail's newer ones over them, ordered by broker and queue.
fn merge_queues(mut file: Vec<QueueSample>, tail: Vec<QueueSample>) -> Vec<QueueSample> {
    if tail.is_empty() {
        return file;
    }
    for sample in tail {
        match file
            .iter_mut()
            .find(|s| s.broker == sample.broker && s.name == sample.name)
        {
            Some(s) if s.sampled_at <= sample.sampled_at => *s = sample,
            Some(_) => {}
            None => file.push(sample),
        }
    }
    file.sort_by(|a, b| (a.broker.as_str(), &a.name).cmp(&(b.broker.as_str(), &b.name)));
    file
}
