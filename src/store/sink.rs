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
//! A task written for the first time takes the next task number; a changed task's stored row is
//! found by its key within the `updated_at` range of the stored versions (tasks have no index:
//! zone maps skip the other row groups), deleted, and the new version appended with the same
//! number. Transitions are appended with their task's number.

use super::live::LiveTail;
use super::maintenance::{self, Step, StepOutcome};
use super::rows::{opt_text, read_task, task_params, Ts};
use super::schema::{id_text_sql, uid_sql};
use super::writer::{
    prefixed_task_columns, GroupSighting, Key, WorkerRow, WriterCommand, WriterStats,
};
use super::StoreError;
use broker_adapters::{Broker, QueueSample, Task, TaskState, Transition};
use chrono::{DateTime, Utc};
use duckdb::types::Value as DbValue;
use duckdb::Connection;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one fold round changed, in the order it happened.
#[derive(Default)]
pub(super) struct Batch {
    /// The fold round's number (increasing).
    pub round: u64,
    /// The last version of every changed task, with the `updated_at` of the version before the
    /// round (`None`: a new task).
    pub tasks: HashMap<Key, (Arc<Task>, Option<DateTime<Utc>>)>,
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
}

/// Batches received and not yet written, merged.
#[derive(Default)]
struct Pending {
    /// Up to which round.
    round: u64,
    /// The last version of each task, and the `updated_at` of its version in the file.
    tasks: HashMap<Key, (Arc<Task>, Option<DateTime<Utc>>)>,
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
            if let SinkItem::Batch(batch) = item {
                pending.merge(batch);
                if pending.weight >= MAX_PENDING_ROWS {
                    self.write_pending(std::mem::take(&mut pending));
                }
                continue;
            }
            self.write_pending(std::mem::take(&mut pending));
            match item {
                SinkItem::Batch(_) => {}
                SinkItem::Lookup { keys, reply } => {
                    // The fold thread waits for it; it is gone only when shutting down.
                    let _ = reply.send(self.lookup(&keys));
                }
                // The caller may have stopped waiting (shutdown); the work is done anyway.
                SinkItem::Barrier(WriterCommand::Flush(ack)) => {
                    let _ = ack.send(());
                }
                SinkItem::Barrier(WriterCommand::Maintain { step, reply }) => {
                    let _ = reply.send(self.maintain(&step));
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
        self.live.begin_commit();
        let mut result = self.write(&pending);
        if let Err(e) = &result {
            self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, observations = pending.observations,
                "store batch failed; retrying once");
            result = self.write(&pending);
        }
        let s = &self.stats;
        match result {
            Ok(()) => {
                s.batches.fetch_add(1, Ordering::Relaxed);
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
        let written: HashMap<Key, TaskState> = pending
            .tasks
            .iter()
            .map(|(k, (t, _))| (k.clone(), t.state))
            .collect();
        let max_seq = pending.transitions.last().map_or(i64::MIN, |(s, _)| *s);
        self.live.written(pending.round, max_seq, &written);
        // The fold thread added them before sending them here.
        s.unflushed
            .fetch_sub(pending.observations, Ordering::Relaxed);
        span.record("duration_ms", started.elapsed().as_secs_f64() * 1000.0);
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
        super::writer::give_back_freed_memory();
        outcome.took = started.elapsed();
        span.record("rows", outcome.rows);
        Ok(outcome)
    }

    /// The stored versions of `keys`, in one query.
    fn lookup(&mut self, keys: &[Key]) -> Result<HashMap<Key, Task>, StoreError> {
        let mut loaded = HashMap::new();
        if keys.is_empty() {
            return Ok(loaded);
        }
        let unique: HashSet<(Broker, &str)> =
            keys.iter().map(|(b, id)| (*b, id.as_str())).collect();
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

    /// Writes the pending set in one transaction.
    fn write(&mut self, out: &Pending) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        if !out.tasks.is_empty() {
            let mut range: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
            {
                let mut app = tx.appender("staging_tasks")?;
                for (task, prev) in out.tasks.values() {
                    if let Some(p) = *prev {
                        range = Some(range.map_or((p, p), |(lo, hi)| (lo.min(p), hi.max(p))));
                    }
                    let mut row: Vec<DbValue> = task_params(task).into();
                    row.extend([super::rows::opt_ts(*prev), DbValue::Null, DbValue::Null]);
                    app.append_row(duckdb::appender_params_from_iter(row))?;
                }
                app.flush()?;
            }
            if let Some((lo, hi)) = range {
                // Stored times are whole microseconds: `hi` rounded up keeps its row in range.
                let hi = hi + chrono::Duration::microseconds(1);
                tx.execute(
                    &format!(
                        "UPDATE staging_tasks s SET num = r.num, prev_state = r.state
                         FROM task_rows r
                         WHERE r.updated_at >= ? AND r.updated_at < ?
                           AND r.broker = s.broker AND r.uid = {}",
                        uid_sql("s.id")
                    ),
                    duckdb::params![Ts(lo), Ts(hi)],
                )?;
                tx.execute(
                    "DELETE FROM task_rows
                     WHERE updated_at >= ? AND updated_at < ?
                       AND num IN (SELECT num FROM staging_tasks WHERE num IS NOT NULL)",
                    duckdb::params![Ts(lo), Ts(hi)],
                )?;
            }
            tx.execute_batch(&format!(
                "UPDATE staging_tasks SET num = nextval('task_num') WHERE num IS NULL;
                 INSERT INTO task_rows (num, broker, uid, id_text, queue, name, state, args,
                                        kwargs, result, error, traceback, retries, worker, eta,
                                        enqueued_at, started_at, finished_at, runtime_ms,
                                        updated_at, fingerprint)
                 SELECT num, broker, {}, {}, queue, name, state, args, kwargs, result, error,
                        traceback, retries, worker, eta, enqueued_at, started_at, finished_at,
                        runtime_ms, updated_at, fingerprint
                 FROM staging_tasks;
                 INSERT INTO task_counts
                 SELECT broker, state, sum(d) FROM (
                     SELECT broker, state, 1 AS d FROM staging_tasks
                     UNION ALL
                     SELECT broker, prev_state, -1 FROM staging_tasks WHERE prev_state IS NOT NULL)
                 GROUP BY ALL HAVING sum(d) <> 0
                 ON CONFLICT (broker, state) DO UPDATE SET n = task_counts.n + excluded.n;",
                uid_sql("id"),
                id_text_sql("id")
            ))?;
        }
        if !out.transitions.is_empty() {
            {
                let mut app = tx.appender("staging_transitions")?;
                for (seq, t) in &out.transitions {
                    app.append_row([
                        DbValue::Text(t.broker.as_str().to_string()),
                        DbValue::Text(t.task_id.clone()),
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
            // Every transition's task changed, so it is in `staging_tasks` with its number.
            let written = tx.execute(
                "INSERT INTO transitions (broker, task_num, state, occurred_at, worker, detail,
                                          seq, fingerprint)
                 SELECT t.broker, k.num, t.state, t.occurred_at, t.worker, t.detail, t.seq,
                        t.fingerprint
                 FROM staging_transitions t
                 JOIN staging_tasks k ON k.broker = t.broker AND k.id = t.task_id
                 ORDER BY t.seq",
                [],
            )?;
            if written != out.transitions.len() {
                return Err(StoreError::Corrupt(format!(
                    "{} of {} transitions found their task in the batch",
                    written,
                    out.transitions.len()
                )));
            }
            tx.execute("DELETE FROM staging_transitions", [])?;
        }
        if !out.tasks.is_empty() {
            tx.execute("DELETE FROM staging_tasks", [])?;
        }
        if !out.groups.is_empty() {
            let mut stmt = tx.prepare(
                "INSERT INTO failure_groups (fingerprint, exception, message, frames, first_seen,
                                             last_seen)
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (fingerprint) DO UPDATE SET
                     first_seen = least(failure_groups.first_seen, excluded.first_seen),
                     last_seen = greatest(failure_groups.last_seen, excluded.last_seen)",
            )?;
            for (id, seen) in &out.groups {
                stmt.execute(duckdb::params![
                    id,
                    seen.group.exception,
                    seen.group.message,
                    seen.group.frames.join("\n"),
                    Ts(seen.first),
                    Ts(seen.last),
                ])?;
            }
        }
        if !out.workers.is_empty() {
            let mut stmt = tx.prepare(
                "INSERT INTO workers (broker, id, hostname, pid, alive, first_seen, last_seen,
                                      online_since)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (broker, id) DO UPDATE SET
                     hostname = excluded.hostname, pid = excluded.pid, alive = excluded.alive,
                     first_seen = excluded.first_seen, last_seen = excluded.last_seen,
                     online_since = excluded.online_since",
            )?;
            for w in out.workers.values() {
                stmt.execute(duckdb::params![
                    w.worker.broker.as_str(),
                    w.worker.id,
                    w.worker.hostname,
                    w.worker.pid.map(i64::from),
                    w.worker.alive,
                    Ts(w.first_seen),
                    Ts(w.worker.last_seen),
                    Ts(w.worker.online_since),
                ])?;
            }
        }
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
            let mut stmt = tx.prepare(
                "INSERT INTO queue_latest (broker, queue, sampled_at, length, delayed, dead, running,
                                           oldest_enqueued_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (broker, queue) DO UPDATE SET
                     sampled_at = excluded.sampled_at, length = excluded.length, delayed = excluded.delayed,
                     dead = excluded.dead, running = excluded.running,
                     oldest_enqueued_at = excluded.oldest_enqueued_at
                 WHERE excluded.sampled_at >= queue_latest.sampled_at",
            )?;
            for s in latest.values() {
                let [b, q, at, length, delayed, dead, running] = sample_params(s);
                let oldest = super::rows::opt_ts(s.oldest_enqueued_at);
                stmt.execute([b, q, at, length, delayed, dead, running, oldest])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
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
