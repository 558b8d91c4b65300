//! The sink: a `std::thread` that owns the read-write DuckDB connection and writes what the fold
//! thread (`writer.rs`) has already folded and published.
//!
//! It receives [`SinkItem`]s in the fold thread's order. Batches accumulate in a [`Pending`]
//! set (the last version of each task, every transition, worker, sample and failure group) and
//! are written in one transaction once per flush interval (`StoreOptions::flush_interval`), when
//! the set is large, or before any other item: a lookup, a flush, a housekeeping step or an
//! audit entry sees everything sent before it. A failed transaction is tried once more from the
//! pending set; if it fails again its observations are counted as dropped (the live view has
//! shown them; the file will not hold them).
//!
//! A task written for the first time takes the next task number (counted here); a changed
//! task's stored row is found by its key within the `updated_at` ranges of the stored versions
//! (tasks have no index: zone maps skip the other row groups), read for its number and state,
//! and deleted; the new version is appended with the same number. Transitions are appended
//! with their task's number, and the task counts move by what was deleted and appended: no
//! staging tables, no `INSERT ... SELECT`, no `UPDATE ... FROM`. Upserts (counts, workers,
//! queues, failure groups) are one statement per table and batch, not one per row.

use super::live::LiveTail;
use super::maintenance::{self, Step, StepOutcome};
use super::reports::ts;
use super::rows::{opt_text, read_task, task_params};
use super::schema::uid_sql;
use super::writer::{
    prefixed_task_columns, GroupSighting, Key, WorkerRow, WriterCommand, WriterStats,
};
use super::StoreError;
use broker_adapters::state::AbandonCutoff;
use broker_adapters::{Broker, QueueSample, Task, TaskState, Transition};
use chrono::{DateTime, Utc};
use duckdb::types::Value as DbValue;
use duckdb::Connection;
use foldhash::{HashMap, HashMapExt, HashSet};
use md5::Digest;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A task's last version and the `updated_at` of its version in the file (`None`: it has none;
/// [`STORED_AT_UNKNOWN`]: it may have one, at a time not known).
pub(super) type Versions = (Arc<Task>, Option<DateTime<Utc>>);

/// The stored-version time of a task whose stored version could not be read (the fold's lookup
/// failed twice): its row, if any, is searched for over all time and replaced, never duplicated.
pub(super) const STORED_AT_UNKNOWN: DateTime<Utc> = DateTime::<Utc>::MIN_UTC;

/// The time range searched for the rows of tasks stored at an unknown time (microseconds,
/// ~146,000 years either side of 1970: inside DuckDB's timestamps).
const ALL_TIME: (i64, i64) = (-(1 << 62), 1 << 62);

/// What one fold round changed, in the order it happened.
#[derive(Default)]
pub(super) struct Batch {
    /// The fold round's number (increasing).
    pub round: u64,
    /// The last version of every changed task, with the `updated_at` of the version before the
    /// round (`None`: a new task); each task once.
    pub tasks: Vec<(Key, Versions)>,
    /// Transitions with their `seq`, in order.
    pub transitions: Vec<(i64, Transition)>,
    pub workers: HashMap<Key, WorkerRow>,
    pub samples: Vec<QueueSample>,
    pub groups: HashMap<String, GroupSighting>,
    /// Observations folded (for the counters).
    pub observations: u64,
}

/// What the fold thread sends the sink.
pub(super) enum SinkItem {
    Batch(Batch),
    /// The stored versions of these keys, after everything sent before.
    Lookup {
        keys: Vec<Key>,
        reply: SyncSender<Result<HashMap<Key, Task>, StoreError>>,
    },
    /// A flush, housekeeping step or audit entry ([`WriterCommand`]'s other variants are never
    /// sent here): run, and answered, after everything sent before is written.
    Barrier(WriterCommand),
    /// Stored running tasks that `cutoffs` may abandon, the earliest started first, at most
    /// `limit`: answered after everything sent before is written (the file is then current).
    RunningBefore {
        cutoffs: Vec<AbandonCutoff>,
        limit: usize,
        reply: SyncSender<Result<Vec<Task>, StoreError>>,
    },
}

/// Batches received and not yet written, merged.
#[derive(Default)]
struct Pending {
    /// Up to which round.
    round: u64,
    /// The last version of each task, and the `updated_at` of its version in the file.
    tasks: HashMap<Key, Versions>,
    transitions: Vec<(i64, Transition)>,
    workers: HashMap<Key, WorkerRow>,
    samples: Vec<QueueSample>,
    groups: HashMap<String, GroupSighting>,
    observations: u64,
    /// Rows to write (tasks + transitions + samples): bounds the set.
    weight: usize,
    /// When the oldest batch of the set arrived.
    since: Option<Instant>,
}

impl Pending {
    fn merge(&mut self, batch: Batch) {
        self.since.get_or_insert_with(Instant::now);
        self.round = self.round.max(batch.round);
        self.weight += batch.tasks.len() + batch.transitions.len() + batch.samples.len();
        for (key, (task, prev)) in batch.tasks {
            match self.tasks.get_mut(&key) {
                // The file still holds the version before the first of these batches.
                Some(entry) => entry.0 = task,
                None => {
                    self.tasks.insert(key, (task, prev));
                }
            }
        }
        self.transitions.extend(batch.transitions);
        self.workers.extend(batch.workers);
        self.samples.extend(batch.samples);
        for (id, seen) in batch.groups {
            match self.groups.get_mut(&id) {
                Some(g) => {
                    g.first = g.first.min(seen.first);
                    g.last = g.last.max(seen.last);
                }
                None => {
                    self.groups.insert(id, seen);
                }
            }
        }
        self.observations += batch.observations;
    }

    fn is_empty(&self) -> bool {
        self.since.is_none()
    }
}

/// Rows a pending set holds before it is written whatever the interval.
const MAX_PENDING_ROWS: usize = 200_000;

pub(super) struct Sink {
    pub conn: Connection,
    pub live: Arc<LiveTail>,
    pub stats: Arc<WriterStats>,
    pub flush_interval: Duration,
    /// The number the next new task takes: one more than the highest stored when the store
    /// opened (only the sink numbers tasks), moved on by each committed write.
    pub next_num: i64,
    /// Test support ([`super::StoreOptions::failing_lookups`]): file lookups still to fail.
    pub failing_lookups: u32,
    /// Test support ([`super::StoreOptions::failing_writes`]): batch writes still to fail.
    pub failing_writes: u32,
    /// The readers' slot for analytic queries (`reader.rs`, `Pool::heavy`), taken to retry a
    /// failed batch alone.
    pub analytic: Arc<tokio::sync::Semaphore>,
    /// When freed heap memory is given back ([`super::heap`]).
    pub trim: super::heap::TrimPolicy,
    /// Where each task deletion is answered: a filter of stored ids rebuilt from the file, or
    /// none (see `seen.rs`).
    pub rebuilt: std::sync::mpsc::Sender<Option<super::seen::SeenKeys>>,
    /// Tasks deleted since the filter was last built.
    pub deleted_since_rebuild: u64,
    /// Deletions below which the filter is never rebuilt.
    pub rebuild_min_deleted: u64,
    /// Where the filter keeps its file (the database's directory).
    pub filter_dir: std::path::PathBuf,
}

impl Sink {
    pub fn run(mut self, rx: Receiver<SinkItem>) {
        let mut pending = Pending::default();
        loop {
            let item = match pending.since {
                None => rx.recv().ok(),
                Some(since) => {
                    match rx.recv_timeout(self.flush_interval.saturating_sub(since.elapsed())) {
                        Ok(item) => Some(item),
                        Err(RecvTimeoutError::Timeout) => {
                            self.write_pending(std::mem::take(&mut pending));
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => None,
                    }
                }
            };
            let Some(item) = item else { break };
            match item {
                SinkItem::Batch(batch) => {
                    pending.merge(batch);
                    // Large enough, whatever the interval; half the fold thread's bound on
                    // what is unwritten, so that it never waits a whole interval.
                    if pending.weight >= MAX_PENDING_ROWS
                        || pending.observations >= super::writer::MAX_UNFLUSHED / 2
                    {
                        self.write_pending(std::mem::take(&mut pending));
                    }
                    continue;
                }
                SinkItem::Lookup { keys, reply } => {
                    // No write first: a task of the pending set is answered from it (its last
                    // version), the others from the file, which holds theirs. The fold thread
                    // waits for the answer; it is gone only when shutting down.
                    let _ = reply.send(self.lookup(&pending, &keys));
                    self.trim.done(keys.len() as u64);
                    continue;
                }
                SinkItem::Barrier(_) | SinkItem::RunningBefore { .. } => {}
            }
            self.write_pending(std::mem::take(&mut pending));
            match item {
                SinkItem::Batch(_) | SinkItem::Lookup { .. } => {}
                SinkItem::RunningBefore {
                    cutoffs,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(self.running_before(&cutoffs, limit));
                }
                // The caller may have stopped waiting (shutdown); the work is done anyway.
                SinkItem::Barrier(WriterCommand::Flush(ack)) => {
                    let _ = ack.send(());
                }
                SinkItem::Barrier(WriterCommand::Maintain { step, reply }) => {
                    let outcome = self.maintain(&step);
                    let deleted = match (&step, &outcome) {
                        (Step::DeleteTasks { .. }, Ok(o)) => Some(o.rows),
                        (Step::DeleteTasks { .. }, Err(_)) => Some(0),
                        _ => None,
                    };
                    let _ = reply.send(outcome);
                    if let Some(deleted) = deleted {
                        let rebuilt = self.rebuild_filter_after(deleted);
                        let _ = self.rebuilt.send(rebuilt);
                    }
                }
                SinkItem::Barrier(WriterCommand::Audit { entry, reply }) => {
                    let _ = reply.send(super::audit::append(&self.conn, entry));
                }
                SinkItem::Barrier(
                    WriterCommand::Observations(_)
                    | WriterCommand::QueueSamples(_)
                    | WriterCommand::Sweep { .. },
                ) => {}
            }
        }
        self.write_pending(pending);
        tracing::debug!("store sink stopped: the fold thread is gone");
    }

    /// Writes the pending set in one transaction (tried twice), then takes it out of the tail.
    fn write_pending(&mut self, pending: Pending) {
        if pending.is_empty() {
            return;
        }
        let span = tracing::debug_span!(
            "store_batch",
            observations = pending.observations,
            tasks = pending.tasks.len(),
            transitions = pending.transitions.len(),
            duration_ms = tracing::field::Empty,
        );
        let _entered = span.enter();
        let started = Instant::now();
        let observations = pending.observations;
        self.live.begin_commit();
        let mut result = self.write(&pending);
        if let Err(e) = &result {
            self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, observations = pending.observations,
                "store batch failed; retrying once, with no analytic query beside it");
            // DuckDB's memory limit is shared by every connection: a report's hash tables can
            // leave a batch without room ("Out of Memory"). The retry waits for the analytic
            // slot (queries of 5-50 ms) and holds it, so none runs beside it.
            let analytic = self.analytic.clone();
            let _alone = futures::executor::block_on(analytic.acquire());
            result = self.write(&pending);
        }
        let s = &self.stats;
        match result {
            Ok((next_num, replaced)) => {
                self.next_num = next_num;
                s.batches.fetch_add(1, Ordering::Relaxed);
                s.task_rows_replaced.fetch_add(replaced, Ordering::Relaxed);
                s.transitions_written
                    .fetch_add(pending.transitions.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                s.batch_errors.fetch_add(1, Ordering::Relaxed);
                s.dropped.fetch_add(pending.observations, Ordering::Relaxed);
                tracing::error!(error = %e, observations = pending.observations,
                    "store batch failed twice; its observations are dropped from the file");
            }
        }
        let max_seq = pending.transitions.last().map_or(i64::MIN, |(s, _)| *s);
        self.live.written(pending.round, max_seq, |key| {
            pending.tasks.get(key).map(|(t, _)| t.state)
        });
        // The fold thread added them before sending them here.
        s.unflushed
            .fetch_sub(pending.observations, Ordering::Relaxed);
        drop(pending);
        self.trim.done(observations);
        span.record("duration_ms", started.elapsed().as_secs_f64() * 1000.0);
    }

    /// A filter of the stored ids, rebuilt once retention has deleted half as many tasks as
    /// remain since it was built (a third of its keys gone); else none.
    fn rebuild_filter_after(&mut self, deleted: u64) -> Option<super::seen::SeenKeys> {
        self.deleted_since_rebuild += deleted;
        if self.deleted_since_rebuild < self.rebuild_min_deleted.max(1) {
            return None;
        }
        let stored: i64 = match self
            .conn
            .query_row("SELECT count(*) FROM task_rows", [], |r| r.get(0))
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "Could not count the stored tasks; the filter of stored ids is kept.");
                return None;
            }
        };
        if self.deleted_since_rebuild.saturating_mul(2) < u64::try_from(stored).unwrap_or(0) {
            return None;
        }
        let started = Instant::now();
        match super::seen::load(&self.conn, &self.filter_dir) {
            Ok((seen, _)) => {
                self.deleted_since_rebuild = 0;
                tracing::info!(
                    tasks = stored,
                    took_ms = started.elapsed().as_millis() as u64,
                    "store sink: rebuilt the filter of stored task ids after retention"
                );
                // The old filter's memory goes back once the fold thread drops it.
                Some(seen)
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not rebuild the filter of stored ids; the old one is kept.");
                None
            }
        }
    }

    /// Runs a housekeeping step.
    fn maintain(&mut self, step: &Step) -> Result<StepOutcome, StoreError> {
        let span =
            tracing::debug_span!("store_maintenance", step = ?step, rows = tracing::field::Empty);
        let _entered = span.enter();
        let started = Instant::now();
        // Counts and rows change: readers holding the file's answers read again.
        self.live.begin_commit();
        let outcome = maintenance::run_step(&mut self.conn, step);
        self.live.end_commit();
        let mut outcome = outcome?;
        // Deletions and compaction free large buffers: give them back.
        self.trim.trim_now();
        outcome.took = started.elapsed();
        span.record("rows", outcome.rows);
        Ok(outcome)
    }

    /// The stored running tasks that `cutoffs` may abandon (started before their worker's
    /// cutoff), earliest first, at most `limit` (one scan of the running rows).
    fn running_before(
        &mut self,
        cutoffs: &[AbandonCutoff],
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        let span = tracing::debug_span!(
            "store_parked_sweep",
            cutoffs = cutoffs.len(),
            found = tracing::field::Empty
        );
        let _entered = span.enter();
        let tx = self.conn.transaction()?;
        {
            let mut app = tx.appender("sweep_cutoffs")?;
            for c in cutoffs {
                app.append_row(duckdb::params![
                    c.broker.as_str(),
                    c.worker.as_deref(),
                    super::rows::opt_ts(c.before),
                ])?;
            }
            app.flush()?;
        }
        let mut found = Vec::new();
        {
            let mut stmt = tx.prepare(&format!(
                "SELECT {} FROM tasks t JOIN sweep_cutoffs c
                     ON t.broker = c.broker AND t.worker IS NOT DISTINCT FROM c.worker
                 WHERE t.state = 'running'
                   AND (c.before IS NULL OR coalesce(t.started_at, t.updated_at) < c.before)
                 ORDER BY coalesce(t.started_at, t.updated_at), t.broker, t.id
                 LIMIT ?",
                prefixed_task_columns("t"),
            ))?;
            let mut rows = stmt.query([i64::try_from(limit).unwrap_or(i64::MAX)])?;
            while let Some(row) = rows.next()? {
                found.push(read_task(row)?);
            }
        }
        tx.execute("DELETE FROM sweep_cutoffs", [])?;
        tx.commit()?;
        span.record("found", found.len());
        Ok(found)
    }

    /// The last versions of `keys`: the pending set's, else the file's (in one query).
    fn lookup(
        &mut self,
        pending: &Pending,
        keys: &[Key],
    ) -> Result<HashMap<Key, Task>, StoreError> {
        // Sized once: a task is ~400 bytes inline, and a table grown by doubling holds the old
        // one beside the new while it rehashes.
        let mut loaded = HashMap::with_capacity(keys.len());
        let mut unique: HashSet<(Broker, &str)> = HashSet::default();
        for key in keys {
            match pending.tasks.get(key) {
                Some((task, _)) => {
                    loaded.insert(key.clone(), Task::clone(task));
                }
                None => {
                    unique.insert((key.0, key.1.as_str()));
                }
            }
        }
        if unique.is_empty() {
            return Ok(loaded);
        }
        if self.failing_lookups > 0 {
            self.failing_lookups -= 1;
            return Err(StoreError::Corrupt("a lookup made to fail (test)".into()));
        }
        let tx = self.conn.transaction()?;
        {
            let mut app = tx.appender("lookup_keys")?;
            for (broker, id) in &unique {
                app.append_row([broker.as_str(), *id])?;
            }
            app.flush()?;
        }
        {
            // No index: one scan of the 16-byte keys finds every missing task at once.
            let mut stmt = tx.prepare(&format!(
                "SELECT {} FROM tasks t JOIN lookup_keys k
                     ON t.broker = k.broker AND t.uid = {} AND t.id = k.id",
                prefixed_task_columns("t"),
                uid_sql("k.id")
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let task = read_task(row)?;
                loaded.insert((task.broker, task.id.clone()), task);
            }
        }
        tx.execute("DELETE FROM lookup_keys", [])?;
        tx.commit()?;
        Ok(loaded)
    }

    /// Writes the pending set in one transaction; returns the next free task number and how
    /// many stored task rows it replaced.
    fn write(&mut self, out: &Pending) -> Result<(i64, u64), StoreError> {
        if self.failing_writes > 0 {
            self.failing_writes -= 1;
            return Err(StoreError::Corrupt(
                "a batch write made to fail (test)".into(),
            ));
        }
        let tx = self.conn.transaction()?;
        let mut next_num = self.next_num;
        let mut replaced = 0;
        // The number of every task of the set: its stored row's, or the next free one.
        let mut nums: HashMap<(Broker, &str), i64> = HashMap::with_capacity(out.tasks.len());
        if !out.tasks.is_empty() {
            // The stored rows of the tasks that have one: deleted, their number and state kept.
            let stored = delete_stored_rows(&tx, out)?;
            replaced = stored.len() as u64;
            let mut counts: HashMap<(Broker, TaskState), i64> = HashMap::new();
            for ((broker, _), (_, state)) in &stored {
                *counts.entry((*broker, *state)).or_insert(0) -= 1;
            }
            {
                let mut app = tx.appender("task_rows")?;
                for (task, _) in out.tasks.values() {
                    let num = match stored.get(&(task.broker, task.id.as_str())) {
                        Some((num, _)) => *num,
                        None => {
                            next_num += 1;
                            next_num - 1
                        }
                    };
                    nums.insert((task.broker, task.id.as_str()), num);
                    *counts.entry((task.broker, task.state)).or_insert(0) += 1;
                    app.append_row(duckdb::appender_params_from_iter(task_row(num, task)))?;
                }
                app.flush()?;
            }
            upsert(
                &tx,
                "INSERT INTO task_counts",
                "ON CONFLICT (broker, state) DO UPDATE SET n = task_counts.n + excluded.n",
                counts
                    .into_iter()
                    .filter(|(_, n)| *n != 0)
                    .map(|((broker, state), n)| {
                        [
                            DbValue::Text(broker.as_str().to_string()),
                            DbValue::Text(state.as_str().to_string()),
                            DbValue::BigInt(n),
                        ]
                    }),
            )?;
        }
        if !out.transitions.is_empty() {
            let mut app = tx.appender("transitions")?;
            for (seq, t) in &out.transitions {
                // Every transition's task changed, so it is in the set with its number.
                let Some(num) = nums.get(&(t.broker, t.task_id.as_str())) else {
                    return Err(StoreError::Corrupt(format!(
                        "a transition of task {:?} without its task in the batch",
                        t.task_id
                    )));
                };
                app.append_row([
                    DbValue::Text(t.broker.as_str().to_string()),
                    DbValue::BigInt(*num),
                    DbValue::Text(t.state.as_str().to_string()),
                    super::rows::opt_ts(Some(t.at)),
                    opt_text(&t.worker),
                    opt_text(&t.detail),
                    DbValue::BigInt(*seq),
                    opt_text(&t.fingerprint),
                ])?;
            }
            app.flush()?;
        }
        upsert(
            &tx,
            "INSERT INTO failure_groups (fingerprint, exception, message, frames, first_seen,
                                         last_seen)",
            "ON CONFLICT (fingerprint) DO UPDATE SET
                 first_seen = least(failure_groups.first_seen, excluded.first_seen),
                 last_seen = greatest(failure_groups.last_seen, excluded.last_seen)",
            out.groups.iter().map(|(id, seen)| {
                [
                    DbValue::Text(id.clone()),
                    opt_text(&seen.group.exception),
                    DbValue::Text(seen.group.message.clone()),
                    DbValue::Text(seen.group.frames.join("\n")),
                    ts(seen.first),
                    ts(seen.last),
                ]
            }),
        )?;
        upsert(
            &tx,
            "INSERT INTO workers (broker, id, hostname, pid, alive, first_seen, last_seen,
                                  online_since)",
            "ON CONFLICT (broker, id) DO UPDATE SET
                 hostname = excluded.hostname, pid = excluded.pid, alive = excluded.alive,
                 first_seen = excluded.first_seen, last_seen = excluded.last_seen,
                 online_since = excluded.online_since",
            out.workers.values().map(|w| {
                [
                    DbValue::Text(w.worker.broker.as_str().to_string()),
                    DbValue::Text(w.worker.id.clone()),
                    opt_text(&w.worker.hostname),
                    w.worker
                        .pid
                        .map_or(DbValue::Null, |p| DbValue::BigInt(i64::from(p))),
                    DbValue::Boolean(w.worker.alive),
                    ts(w.first_seen),
                    ts(w.worker.last_seen),
                    ts(w.worker.online_since),
                ]
            }),
        )?;
        if !out.samples.is_empty() {
            {
                let mut app = tx.appender("queue_samples")?;
                for s in &out.samples {
                    app.append_row(sample_params(s))?;
                }
                app.flush()?;
            }
            let mut latest: HashMap<(Broker, &str), &QueueSample> = HashMap::new();
            for s in &out.samples {
                let e = latest.entry((s.broker, s.name.as_str())).or_insert(s);
                if s.sampled_at >= e.sampled_at {
                    *e = s;
                }
            }
            upsert(
                &tx,
                "INSERT INTO queue_latest (broker, queue, sampled_at, length, delayed, dead, running,
                                           oldest_enqueued_at)",
                "ON CONFLICT (broker, queue) DO UPDATE SET
                     sampled_at = excluded.sampled_at, length = excluded.length, delayed = excluded.delayed,
                     dead = excluded.dead, running = excluded.running,
                     oldest_enqueued_at = excluded.oldest_enqueued_at
                 WHERE excluded.sampled_at >= queue_latest.sampled_at",
                latest.values().map(|s| {
                    let [b, q, at, length, delayed, dead, running] = sample_params(s);
                    let oldest = super::rows::opt_ts(s.oldest_enqueued_at);
                    [b, q, at, length, delayed, dead, running, oldest]
                }),
            )?;
        }
        tx.commit()?;
        Ok((next_num, replaced))
    }
}

/// Rows per upsert statement (each row's values are parameters).
const UPSERT_ROWS: usize = 256;

/// `{head} VALUES (?, ...), ... {tail}` for `rows`, [`UPSERT_ROWS`] at a time: an `INSERT ...
/// ON CONFLICT` costs DuckDB about a millisecond to plan whatever its rows (it is planned again
/// at every execution), so one per row cost a millisecond per worker or queue every flush.
/// The rows' keys must be distinct (DuckDB refuses to update a row twice in one statement).
fn upsert<const N: usize>(
    tx: &duckdb::Transaction<'_>,
    head: &str,
    tail: &str,
    rows: impl Iterator<Item = [DbValue; N]>,
) -> Result<(), StoreError> {
    let one = format!("({})", vec!["?"; N].join(", "));
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let chunk: Vec<[DbValue; N]> = rows.by_ref().take(UPSERT_ROWS).collect();
        let sql = format!(
            "{head} VALUES {} {tail}",
            vec![one.as_str(); chunk.len()].join(", ")
        );
        tx.execute(&sql, duckdb::params_from_iter(chunk.into_iter().flatten()))?;
    }
    Ok(())
}

fn sample_params(s: &QueueSample) -> [DbValue; 7] {
    [
        DbValue::Text(s.broker.as_str().to_string()),
        DbValue::Text(s.name.clone()),
        super::rows::opt_ts(Some(s.sampled_at)),
        DbValue::UBigInt(s.length),
        DbValue::UBigInt(s.delayed),
        DbValue::UBigInt(s.dead),
        DbValue::UBigInt(s.running),
    ]
}

/// The number and stored state of each task of a set whose row was deleted, by the set's key.
type StoredRows<'a> = HashMap<(Broker, &'a str), (i64, TaskState)>;

/// Deletes the stored rows of the set's tasks that have one (`prev` known), each searched
/// within a few `updated_at` ranges around the stored versions' times (one SELECT and one
/// DELETE each); returns each found task's number and stored state, keyed by the set's own key.
fn delete_stored_rows<'a>(
    tx: &duckdb::Transaction<'_>,
    out: &'a Pending,
) -> Result<StoredRows<'a>, StoreError> {
    let mut stored = HashMap::new();
    let times: Vec<i64> = out
        .tasks
        .values()
        .filter_map(|(_, prev)| prev.map(|p| p.timestamp_micros()))
        .collect();
    if times.is_empty() {
        return Ok(stored);
    }
    {
        let mut app = tx.appender("lookup_keys")?;
        for ((broker, id), _) in out.tasks.iter().filter(|(_, (_, prev))| prev.is_some()) {
            app.append_row([broker.as_str(), id.as_str()])?;
        }
        app.flush()?;
    }
    {
        // A SELECT, then a DELETE of what it found: `DELETE ... RETURNING` cost ten times both
        // (measured: 2,000 of 40,000 rows, 20-35 ms against 1.8 + 1.7 ms).
        let mut select = tx.prepare(&format!(
            "SELECT r.num, r.broker, coalesce(r.id_text, r.uid::VARCHAR), r.state
             FROM task_rows r JOIN lookup_keys k ON r.broker = k.broker AND r.uid = {uid}
             WHERE r.updated_at >= ? AND r.updated_at < ?",
            uid = uid_sql("k.id")
        ))?;
        let mut delete = tx.prepare(&format!(
            "DELETE FROM task_rows USING lookup_keys k
             WHERE task_rows.updated_at >= ? AND task_rows.updated_at < ?
               AND task_rows.broker = k.broker AND task_rows.uid = {uid}",
            uid = uid_sql("k.id")
        ))?;
        // A task stored at an unknown time makes the search cover all time (rare: a failed
        // lookup), the others' rows included.
        let unknown = times.contains(&STORED_AT_UNKNOWN.timestamp_micros());
        let ranges = if unknown {
            vec![ALL_TIME]
        } else {
            time_ranges(times)
        };
        for (lo, hi) in ranges {
            let range = [
                DbValue::Timestamp(duckdb::types::TimeUnit::Microsecond, lo),
                DbValue::Timestamp(duckdb::types::TimeUnit::Microsecond, hi),
            ];
            let mut rows = select.query(range.clone())?;
            while let Some(row) = rows.next()? {
                let num: i64 = row.get(0)?;
                let broker = super::rows::parse_broker(&row.get::<_, String>(1)?)?;
                let id: String = row.get(2)?;
                let state = super::rows::parse_state(&row.get::<_, String>(3)?)?;
                if let Some(((b, id), _)) = out.tasks.get_key_value(&(broker, id)) {
                    stored.insert((*b, id.as_str()), (num, state));
                }
            }
            drop(rows);
            delete.execute(range)?;
        }
    }
    tx.execute("DELETE FROM lookup_keys", [])?;
    Ok(stored)
}

/// Two stored versions further apart than this are searched in separate ranges (a retried
/// task stored an hour ago must not make the search scan the hour).
const RANGE_GAP_MICROS: i64 = 60 * 1_000_000;
/// Ranges searched at most (one statement each): the closest are merged beyond.
const MAX_RANGES: usize = 8;

/// `[lo, hi)` ranges (microseconds) holding every one of `times`: clusters of times closer
/// than [`RANGE_GAP_MICROS`], at most [`MAX_RANGES`] of them.
pub(super) fn time_ranges(mut times: Vec<i64>) -> Vec<(i64, i64)> {
    times.sort_unstable();
    times.dedup();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for t in times {
        match ranges.last_mut() {
            Some(last) if t - last.1 <= RANGE_GAP_MICROS => last.1 = t,
            _ => ranges.push((t, t)),
        }
    }
    while ranges.len() > MAX_RANGES {
        let Some(i) = (1..ranges.len()).min_by_key(|&i| ranges[i].0 - ranges[i - 1].1) else {
            break;
        };
        ranges[i - 1].1 = ranges[i].1;
        ranges.remove(i);
    }
    // Stored times are whole microseconds: the end bound is exclusive.
    ranges
        .into_iter()
        .map(|(lo, hi)| (lo, hi.saturating_add(1)))
        .collect()
}

/// A task as a row of `task_rows` (its columns in table order), numbered `num`.
fn task_row(num: i64, task: &Task) -> Vec<DbValue> {
    let (uid, id_text) = task_uid(&task.id);
    let mut row = Vec::with_capacity(21);
    row.push(DbValue::BigInt(num));
    let mut params = task_params(task).into_iter();
    row.extend(params.next()); // broker
    params.next(); // id: as uid and id_text
    row.push(DbValue::Text(uid));
    row.push(id_text.map_or(DbValue::Null, DbValue::Text));
    row.extend(params);
    row
}

/// The 16-byte key of a task id as UUID text, and the id text kept beside it (`None` when the
/// key gives it back): the id itself when it is a canonical lower-case UUID, else the md5 of
/// the text. The same as [`uid_sql`] and [`super::schema::id_text_sql`] compute in SQL.
pub(super) fn task_uid(id: &str) -> (String, Option<String>) {
    if is_canonical_uuid(id) {
        return (id.to_string(), None);
    }
    let digest: [u8; 16] = md5::Md5::digest(id.as_bytes()).into();
    (
        uuid::Uuid::from_bytes(digest).hyphenated().to_string(),
        Some(id.to_string()),
    )
}

/// Whether `id` reads back unchanged through DuckDB's `UUID` type: 8-4-4-4-12 lower-case hex.
fn is_canonical_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}
