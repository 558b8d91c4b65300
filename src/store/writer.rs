//! The single writer: a `std::thread` that owns the read-write connection, fed by a bounded
//! channel of [`WriterCommand`]s.
//!
//! Each round drains what the channel holds (up to `max_batch_observations`, at most 100 ms,
//! and lingers up to `StoreOptions::writer_linger`, 50 ms, for more once it is empty),
//! folds every observation with the shared state machine (`broker_adapters::state::apply`), in
//! the order they were sent, and writes the outcome in one transaction: the changed tasks (last
//! version of each), their transitions, the workers, the queue samples. Only after the commit
//! does the in-memory state (task cache, running set, workers) move on and are the transitions
//! broadcast, so a failed batch can be retried from scratch and subscribers never see a
//! transition that is not in the file.
//!
//! The writer keeps in memory: a bounded cache of tasks (finished ones are evicted first; a miss
//! costs one batched lookup per round), a Bloom filter of every task key stored (`seen.rs`: a
//! key never stored is not looked up: with no index, a lookup scans the key column), every running task (the
//! sweep judges them without a query) and every worker.

use super::maintenance::{self, Step, StepOutcome};
use super::rows::{opt_text, read_task, task_params, Ts, TASK_COLUMNS};
use super::schema::{id_text_sql, uid_sql};
use super::seen::SeenKeys;
use super::{StoreError, StoreOptions};
use broker_adapters::fingerprint::{fingerprint, Fingerprint};
use broker_adapters::state;
use broker_adapters::{
    Broker, Observation, QueueSample, Task, TaskObservation, TaskState, Transition, Worker,
    WorkerObservation,
};
use chrono::{DateTime, Utc};
use duckdb::types::Value as DbValue;
use duckdb::Connection;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// What the writer thread can be asked to do. Commands are applied in the order they are sent.
#[derive(Debug)]
pub enum WriterCommand {
    /// Fold these observations into tasks and workers.
    Observations(Vec<Observation>),
    /// Append these queue sizes to the backlog history.
    QueueSamples(Vec<QueueSample>),
    /// Abandon the running tasks whose worker died or fell silent (`state::find_abandoned`).
    Sweep {
        now: DateTime<Utc>,
        abandon_after: chrono::Duration,
    },
    /// Answered once everything sent before it is committed (or dropped after a failure).
    Flush(oneshot::Sender<()>),
    /// One housekeeping step, run after the observations sent before it are committed and
    /// before the ones sent after it.
    Maintain {
        step: Step,
        reply: oneshot::Sender<Result<StepOutcome, StoreError>>,
    },
    /// Append an entry to the audit journal (`super::audit`), after the observations sent
    /// before it are committed; answered with the entry and its id.
    Audit {
        entry: super::audit::NewAuditEntry,
        reply: oneshot::Sender<Result<super::audit::AuditEntry, StoreError>>,
    },
}

/// One state change, after it was committed. Sent to [`StoreWriter::subscribe`]rs.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionEvent {
    /// The task right after this transition.
    pub task: Task,
    pub transition: Transition,
}

/// Counters of the writer thread, for `/metrics` and logs.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Task and worker observations folded and committed (including the sweep's).
    pub observations_applied: AtomicU64,
    /// Transitions committed.
    pub transitions_written: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Failed attempts to commit a batch (each batch is tried twice).
    pub batch_errors: AtomicU64,
    /// Observations and samples lost because their batch failed twice.
    pub dropped: AtomicU64,
}

/// The handle through which everything is written. Cheap to clone; the writer thread stops once
/// every clone is dropped.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<WriterCommand>,
    events: broadcast::Sender<Arc<TransitionEvent>>,
    stats: Arc<WriterStats>,
}

impl StoreWriter {
    /// Queues a command; waits while the channel is full (back-pressure).
    pub async fn send(&self, cmd: WriterCommand) -> Result<(), StoreError> {
        self.tx.send(cmd).await.map_err(|_| StoreError::WriterGone)
    }

    pub async fn observe(&self, observations: Vec<Observation>) -> Result<(), StoreError> {
        if observations.is_empty() {
            return Ok(());
        }
        self.send(WriterCommand::Observations(observations)).await
    }

    pub async fn samples(&self, samples: Vec<QueueSample>) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        self.send(WriterCommand::QueueSamples(samples)).await
    }

    pub async fn sweep(
        &self,
        now: DateTime<Utc>,
        abandon_after: chrono::Duration,
    ) -> Result<(), StoreError> {
        self.send(WriterCommand::Sweep { now, abandon_after }).await
    }

    /// Resolves once everything sent before it is committed (or counted as dropped).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(WriterCommand::Flush(tx)).await?;
        rx.await.map_err(|_| StoreError::WriterGone)
    }

    /// Runs one housekeeping step on the writer thread, between ingest batches.
    pub async fn maintain(&self, step: Step) -> Result<StepOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriterCommand::Maintain { step, reply }).await?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Appends `entry` to the audit journal; resolves with its id once committed.
    pub async fn audit(
        &self,
        entry: super::audit::NewAuditEntry,
    ) -> Result<super::audit::AuditEntry, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriterCommand::Audit { entry, reply }).await?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Every committed transition from now on. A subscriber that falls behind by more than
    /// `StoreOptions::broadcast_capacity` events gets `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TransitionEvent>> {
        self.events.subscribe()
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Commands waiting in the channel.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Starts the writer thread on `conn` (already migrated).
pub(super) fn start(
    conn: Connection,
    opts: &StoreOptions,
) -> Result<(StoreWriter, JoinHandle<()>), StoreError> {
    let (tx, rx) = mpsc::channel(opts.channel_capacity.max(1));
    let (events, _) = broadcast::channel(opts.broadcast_capacity.max(1));
    let stats = Arc::new(WriterStats::default());
    let mut writer = Writer {
        conn,
        cache: HashMap::new(),
        seen: SeenKeys::with_expected(0),
        cache_capacity: opts.cache_capacity.max(1),
        running: HashSet::new(),
        workers: HashMap::new(),
        next_seq: 1,
        max_batch: opts.max_batch_observations.max(1),
        linger: opts.writer_linger,
        events: events.clone(),
        stats: stats.clone(),
    };
    writer.load()?;
    let handle = std::thread::Builder::new()
        .name("taskscope-store-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(StoreError::Thread)?;
    Ok((StoreWriter { tx, events, stats }, handle))
}

type Key = (Broker, String);

/// A worker with what only the table keeps.
#[derive(Debug, Clone, PartialEq)]
struct WorkerRow {
    worker: Worker,
    first_seen: DateTime<Utc>,
}

/// The writer thread's state. Changes only after a commit.
struct Writer {
    conn: Connection,
    cache: HashMap<Key, Task>,
    /// Every key stored (a Bloom filter): a key it has never seen is not looked up.
    seen: SeenKeys,
    cache_capacity: usize,
    /// Keys of the tasks in state `running`. Invariant: each is in `cache` (never evicted).
    running: HashSet<Key>,
    workers: HashMap<Key, WorkerRow>,
    /// The `seq` of the next transition.
    next_seq: i64,
    max_batch: usize,
    /// See `StoreOptions::writer_linger`.
    linger: Duration,
    events: broadcast::Sender<Arc<TransitionEvent>>,
    stats: Arc<WriterStats>,
}

/// What one batch changes, before it is committed.
#[derive(Default)]
struct Outcome {
    /// The last version of every changed task.
    tasks: HashMap<Key, Task>,
    transitions: Vec<Transition>,
    /// The task right after each transition, for subscribers.
    events: Vec<TransitionEvent>,
    workers: HashMap<Key, WorkerRow>,
    samples: Vec<QueueSample>,
    /// The failure groups seen in the batch: what each is, first and last time.
    groups: HashMap<String, GroupSighting>,
    applied: u64,
}

/// A failure group as one batch saw it (upserted into `failure_groups`).
struct GroupSighting {
    group: Fingerprint,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

/// How long a round drains the channel before it writes.
const MAX_DRAIN: Duration = Duration::from_millis(100);
// How long a round waits for more commands once the channel is empty (`Writer::linger`), unless
// it holds a flush: each batch is a DuckDB transaction whose fixed cost (statements, commit,
// executor start-up) dwarfs its per-row cost, so a steady trickle of events written as it
// arrives cost about as much CPU per event as Flower (issue #8 profile). A few milliseconds of
// lingering turn a thousand tiny transactions a second into a few dozen.
/// How often a lingering round polls the channel.
const LINGER_POLL: Duration = Duration::from_millis(2);
const MAX_COMMANDS: usize = 10_000;

impl Writer {
    /// Loads what the writer keeps in memory: running tasks, workers, the transition sequence.
    fn load(&mut self) -> Result<(), StoreError> {
        // Staging for upserts: appending here and `INSERT OR REPLACE ... SELECT` is ~60x faster
        // than multi-row `INSERT ... ON CONFLICT DO UPDATE` with bound values (measured: 50k
        // tasks in 0.6 s vs 14 s).
        // `prev_updated_at`: the stored version's time (from memory), which bounds the search for
        // the row it replaces (tasks have no index: zone maps on `updated_at` find it);
        // `num` and `prev_state` are filled from that row.
        let next_num: i64 =
            self.conn
                .query_row("SELECT coalesce(max(num), 0) + 1 FROM task_rows", [], |r| {
                    r.get(0)
                })?;
        self.conn.execute_batch(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS staging_tasks AS
                 SELECT {TASK_COLUMNS}, NULL::TIMESTAMP AS prev_updated_at, NULL::BIGINT AS num,
                        NULL::VARCHAR AS prev_state
                 FROM tasks LIMIT 0;
             CREATE TEMP TABLE IF NOT EXISTS staging_transitions (
                 broker VARCHAR, task_id VARCHAR, state VARCHAR, occurred_at TIMESTAMP,
                 worker VARCHAR, detail VARCHAR, seq BIGINT, fingerprint VARCHAR);
             CREATE TEMP TABLE IF NOT EXISTS lookup_keys (broker VARCHAR, id VARCHAR);
             CREATE OR REPLACE TEMP SEQUENCE task_num START WITH {next_num};"
        ))?;
        let running = {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'running'"
            ))?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(read_task(row)?);
            }
            out
        };
        self.load_seen()?;
        for task in running {
            let key = (task.broker, task.id.clone());
            self.running.insert(key.clone());
            self.cache.insert(key, task);
        }
        let workers = {
            let mut stmt = self.conn.prepare(
                "SELECT broker, id, hostname, pid, alive, first_seen, last_seen, online_since
                 FROM workers",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let broker: String = row.get(0)?;
                let pid: Option<i64> = row.get(3)?;
                out.push(WorkerRow {
                    worker: Worker {
                        broker: super::rows::parse_broker(&broker)?,
                        id: row.get(1)?,
                        hostname: row.get(2)?,
                        pid: pid.and_then(|p| u32::try_from(p).ok()),
                        alive: row.get(4)?,
                        last_seen: super::rows::get_ts_required(row, 6)?,
                        running: 0,
                        online_since: super::rows::get_ts_required(row, 7)?,
                    },
                    first_seen: super::rows::get_ts_required(row, 5)?,
                });
            }
            out
        };
        for w in workers {
            self.workers
                .insert((w.worker.broker, w.worker.id.clone()), w);
        }
        self.next_seq = self.conn.query_row(
            "SELECT coalesce(max(seq), 0) + 1 FROM transitions",
            [],
            |r| r.get(0),
        )?;
        Ok(())
    }

    /// Fills the filter of stored keys from the `tasks` table.
    fn load_seen(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let (count, first, last): (i64, Option<i64>, Option<i64>) = self.conn.query_row(
            "SELECT count(*), min(num), max(num) FROM task_rows",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let mut seen =
            SeenKeys::with_expected(usize::try_from(count).unwrap_or(0).saturating_mul(2));
        // In ranges of task numbers (zone maps find them): DuckDB materialises a query's result,
        // and all ids at once held ~600 MB at 10M tasks.
        const CHUNK: i64 = 250_000;
        let mut stmt = self
            .conn
            .prepare("SELECT broker, id FROM tasks WHERE num >= ? AND num < ?")?;
        let (mut lo, end) = (first.unwrap_or(0), last.unwrap_or(-1));
        while lo <= end {
            let mut rows = stmt.query([lo, lo + CHUNK])?;
            while let Some(row) = rows.next()? {
                let broker: String = row.get(0)?;
                let id: String = row.get(1)?;
                seen.insert(&(super::rows::parse_broker(&broker)?, id));
            }
            lo += CHUNK;
        }
        self.seen = seen;
        tracing::info!(
            tasks = count,
            took_ms = started.elapsed().as_millis() as u64,
            "store writer: loaded the filter of stored task ids"
        );
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::Receiver<WriterCommand>) {
        while let Some(first) = rx.blocking_recv() {
            let started = Instant::now();
            let mut weight = command_weight(&first);
            let mut cmds = vec![first];
            while weight < self.max_batch
                && cmds.len() < MAX_COMMANDS
                && started.elapsed() < MAX_DRAIN.max(self.linger)
                && !matches!(
                    cmds.last(),
                    Some(WriterCommand::Maintain { .. } | WriterCommand::Audit { .. })
                )
            {
                match rx.try_recv() {
                    Ok(cmd) => {
                        weight += command_weight(&cmd);
                        cmds.push(cmd);
                    }
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty)
                        if started.elapsed() < self.linger
                            && !cmds.iter().any(|c| matches!(c, WriterCommand::Flush(_))) =>
                    {
                        std::thread::sleep(LINGER_POLL);
                    }
                    Err(_) => break,
                }
            }
            // Draining stops at a maintenance step: the batch before it, then the step.
            match cmds.pop() {
                Some(WriterCommand::Maintain { step, reply }) => {
                    if !cmds.is_empty() {
                        self.process(cmds, weight.saturating_sub(1));
                    }
                    let outcome = self.maintain(&step);
                    // The caller may have stopped waiting (shutdown); the step is done anyway.
                    let _ = reply.send(outcome);
                }
                Some(WriterCommand::Audit { entry, reply }) => {
                    if !cmds.is_empty() {
                        self.process(cmds, weight.saturating_sub(1));
                    }
                    let _ = reply.send(super::audit::append(&self.conn, entry));
                }
                Some(last) => {
                    cmds.push(last);
                    self.process(cmds, weight);
                }
                None => {}
            }
        }
        tracing::debug!("store writer stopped: every StoreWriter was dropped");
    }

    /// Writes one batch (retried once), then answers the flushes it contained.
    fn process(&mut self, cmds: Vec<WriterCommand>, weight: usize) {
        let (flushes, cmds): (Vec<_>, Vec<_>) = cmds
            .into_iter()
            .partition(|c| matches!(c, WriterCommand::Flush(_)));
        if !cmds.is_empty() {
            let span = tracing::debug_span!(
                "store_batch",
                commands = cmds.len(),
                observations = weight,
                tasks = tracing::field::Empty,
                transitions = tracing::field::Empty,
                duration_ms = tracing::field::Empty,
            );
            let _entered = span.enter();
            let started = Instant::now();
            let mut result = self.try_batch(&cmds);
            if let Err(e) = &result {
                self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, commands = cmds.len(), observations = weight,
                    "store batch failed; retrying once");
                result = self.try_batch(&cmds);
            }
            match result {
                Ok(outcome) => {
                    span.record("tasks", outcome.tasks.len());
                    span.record("transitions", outcome.transitions.len());
                    self.commit_in_memory(outcome);
                }
                Err(e) => {
                    self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .dropped
                        .fetch_add(weight as u64, Ordering::Relaxed);
                    tracing::error!(error = %e, commands = cmds.len(), observations = weight,
                        "store batch failed twice; its observations are dropped");
                }
            }
            span.record("duration_ms", started.elapsed().as_secs_f64() * 1000.0);
        }
        for flush in flushes {
            if let WriterCommand::Flush(ack) = flush {
                // The caller may have given up waiting; nothing to do then.
                let _ = ack.send(());
            }
        }
    }

    /// Runs a housekeeping step; deleted tasks leave the cache too.
    fn maintain(&mut self, step: &Step) -> Result<StepOutcome, StoreError> {
        let span =
            tracing::debug_span!("store_maintenance", step = ?step, rows = tracing::field::Empty);
        let _entered = span.enter();
        let started = Instant::now();
        let mut outcome = maintenance::run_step(&mut self.conn, step)?;
        outcome.took = started.elapsed();
        span.record("rows", outcome.rows);
        if let Step::DeleteTasks { from, to } = step {
            let running = &self.running;
            self.cache.retain(|key, task| {
                running.contains(key) || task.updated_at < *from || task.updated_at >= *to
            });
        }
        Ok(outcome)
    }

    /// Loads, folds and writes one batch in one transaction. Changes nothing in memory.
    fn try_batch(&mut self, cmds: &[WriterCommand]) -> Result<Outcome, StoreError> {
        let loaded = self.load_missing(cmds)?;
        let outcome = self.fold(cmds, &loaded);
        self.write(&outcome, &loaded)?;
        Ok(outcome)
    }

    /// Reads the tasks the batch's observations need that are not in memory, in one query.
    fn load_missing(&mut self, cmds: &[WriterCommand]) -> Result<HashMap<Key, Task>, StoreError> {
        let mut missing: HashSet<(Broker, &str)> = HashSet::new();
        for cmd in cmds {
            if let WriterCommand::Observations(list) = cmd {
                for obs in list {
                    if let Observation::Task(t) = obs {
                        let key = (t.broker, t.task_id.clone());
                        // Never stored: nothing to look up (most new tasks).
                        if !self.cache.contains_key(&key) && self.seen.may_contain(&key) {
                            missing.insert((t.broker, t.task_id.as_str()));
                        }
                    }
                }
            }
        }
        let mut loaded = HashMap::new();
        if missing.is_empty() {
            return Ok(loaded);
        }
        let tx = self.conn.transaction()?;
        {
            let mut app = tx.appender("lookup_keys")?;
            for (broker, id) in &missing {
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

    /// Applies the batch's commands in order on top of memory and `loaded`.
    fn fold(&self, cmds: &[WriterCommand], loaded: &HashMap<Key, Task>) -> Outcome {
        let mut out = Outcome::default();
        for cmd in cmds {
            match cmd {
                WriterCommand::Observations(list) => {
                    for obs in list {
                        match obs {
                            Observation::Task(t) => self.fold_task(&mut out, loaded, t),
                            Observation::Worker(w) => self.fold_worker(&mut out, w),
                        }
                    }
                }
                WriterCommand::QueueSamples(samples) => out.samples.extend(samples.iter().cloned()),
                WriterCommand::Sweep { now, abandon_after } => {
                    let running = self.running_tasks(&out);
                    let workers: Vec<Worker> = self
                        .workers
                        .iter()
                        .filter(|(k, _)| !out.workers.contains_key(*k))
                        .chain(out.workers.iter())
                        .map(|(_, w)| w.worker.clone())
                        .collect();
                    for obs in state::find_abandoned(&running, &workers, *now, *abandon_after) {
                        self.fold_task(&mut out, loaded, &obs);
                    }
                }
                WriterCommand::Flush(_)
                | WriterCommand::Maintain { .. }
                | WriterCommand::Audit { .. } => {}
            }
        }
        out
    }

    fn fold_task(&self, out: &mut Outcome, loaded: &HashMap<Key, Task>, obs: &TaskObservation) {
        let key = (obs.broker, obs.task_id.clone());
        let pending = out.tasks.remove(&key);
        let changed_earlier = pending.is_some();
        let current =
            pending.or_else(|| self.cache.get(&key).or_else(|| loaded.get(&key)).cloned());
        let before_fingerprint = current.as_ref().and_then(|t| t.fingerprint.clone());
        let applied = state::apply(current, obs);
        out.applied += 1;
        // A failure group is seen on a failure or retry with a known error, or when a failed
        // task's error is learned after its failure.
        let seen_at = match &applied.transition {
            Some(t) if t.fingerprint.is_some() => Some(t.at),
            _ if applied.task.state == TaskState::Failure
                && applied.task.fingerprint.is_some()
                && applied.task.fingerprint != before_fingerprint =>
            {
                Some(applied.task.finished_at.unwrap_or(applied.task.updated_at))
            }
            _ => None,
        };
        if let (Some(at), Some(id)) = (seen_at, &applied.task.fingerprint) {
            see_group(out, id, &applied.task, at);
        }
        if let Some(transition) = applied.transition {
            out.transitions.push(transition.clone());
            out.events.push(TransitionEvent {
                task: applied.task.clone(),
                transition,
            });
        }
        if applied.changed || changed_earlier {
            out.tasks.insert(key, applied.task);
        }
    }

    fn fold_worker(&self, out: &mut Outcome, obs: &WorkerObservation) {
        let key = (obs.broker, obs.id.clone());
        let current = out
            .workers
            .get(&key)
            .or_else(|| self.workers.get(&key))
            .cloned();
        out.applied += 1;
        if let Some(next) = apply_worker(current.as_ref(), obs) {
            out.workers.insert(key, next);
        }
    }

    /// The running tasks as of this point of the batch.
    fn running_tasks(&self, out: &Outcome) -> Vec<Task> {
        let mut running: Vec<Task> = self
            .running
            .iter()
            .filter(|k| !out.tasks.contains_key(*k))
            .filter_map(|k| self.cache.get(k).cloned())
            .collect();
        running.extend(
            out.tasks
                .values()
                .filter(|t| t.state == TaskState::Running)
                .cloned(),
        );
        running
    }

    /// Writes the outcome in one transaction. `loaded` (with the cache) holds the stored
    /// version of every changed task that has one.
    ///
    /// Tasks have no index (schema v3): a changed task's stored row is found by its key within
    /// the `updated_at` range of the stored versions (zone maps skip the other row groups),
    /// deleted, and the new version appended with the same `num`; new tasks take the next
    /// number. Transitions are appended with their task's number.
    fn write(&mut self, out: &Outcome, loaded: &HashMap<Key, Task>) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        if !out.tasks.is_empty() {
            let mut range: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
            {
                let mut app = tx.appender("staging_tasks")?;
                for (key, task) in &out.tasks {
                    let prev = self
                        .cache
                        .get(key)
                        .or_else(|| loaded.get(key))
                        .map(|t| t.updated_at);
                    if let Some(p) = prev {
                        range = Some(range.map_or((p, p), |(lo, hi)| (lo.min(p), hi.max(p))));
                    }
                    let mut row: Vec<DbValue> = task_params(task).into();
                    row.extend([super::rows::opt_ts(prev), DbValue::Null, DbValue::Null]);
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
                for (i, t) in out.transitions.iter().enumerate() {
                    app.append_row([
                        DbValue::Text(t.broker.as_str().to_string()),
                        DbValue::Text(t.task_id.clone()),
                        DbValue::Text(t.state.as_str().to_string()),
                        super::rows::opt_ts(Some(t.at)),
                        opt_text(&t.worker),
                        opt_text(&t.detail),
                        DbValue::BigInt(self.next_seq + i as i64),
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

    /// Moves memory on after a commit and tells subscribers.
    fn commit_in_memory(&mut self, out: Outcome) {
        let s = &self.stats;
        s.observations_applied
            .fetch_add(out.applied, Ordering::Relaxed);
        s.transitions_written
            .fetch_add(out.transitions.len() as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        self.next_seq += out.transitions.len() as i64;
        for (key, task) in out.tasks {
            self.seen.insert(&key);
            if task.state == TaskState::Running {
                self.running.insert(key.clone());
            } else {
                self.running.remove(&key);
            }
            self.cache.insert(key, task);
        }
        self.workers.extend(out.workers);
        self.evict();
        for event in out.events {
            // No subscriber is fine: nobody is watching the live view.
            let _ = self.events.send(Arc::new(event));
        }
    }

    /// Keeps the cache under its capacity: finished tasks go first, running tasks never.
    fn evict(&mut self) {
        if self.cache.len() <= self.cache_capacity {
            return;
        }
        let target = self.cache_capacity - self.cache_capacity / 4;
        let mut excess = self.cache.len() - target;
        self.cache.retain(|_, t| {
            if excess > 0 && t.state.is_final() {
                excess -= 1;
                false
            } else {
                true
            }
        });
        let running = &self.running;
        self.cache.retain(|k, _| {
            if excess > 0 && !running.contains(k) {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// Records that the failure group `id` (the fingerprint of `task`'s error) was seen at `at`;
/// what the group is is computed once per batch.
fn see_group(out: &mut Outcome, id: &str, task: &Task, at: DateTime<Utc>) {
    if let Some(seen) = out.groups.get_mut(id) {
        seen.first = seen.first.min(at);
        seen.last = seen.last.max(at);
        return;
    }
    let Some(group) = fingerprint(task.error.as_deref(), task.traceback.as_deref()) else {
        return;
    };
    out.groups.insert(
        id.to_string(),
        GroupSighting {
            group,
            first: at,
            last: at,
        },
    );
}

/// Observations count by their number, other commands as one.
fn command_weight(cmd: &WriterCommand) -> usize {
    match cmd {
        WriterCommand::Observations(v) => v.len().max(1),
        WriterCommand::QueueSamples(v) => v.len().max(1),
        _ => 1,
    }
}

fn prefixed_task_columns(alias: &str) -> String {
    TASK_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
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

/// The worker row after `obs` ([`broker_adapters::worker_state::fold`]), `None` when
/// nothing changed.
fn apply_worker(current: Option<&WorkerRow>, obs: &WorkerObservation) -> Option<WorkerRow> {
    let worker = broker_adapters::worker_state::fold(current.map(|r| &r.worker), obs);
    let first_seen = current.map_or(obs.at, |r| r.first_seen.min(obs.at));
    let next = WorkerRow { worker, first_seen };
    (current != Some(&next)).then_some(next)
}
