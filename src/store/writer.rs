//! The writer: two `std::thread`s fed by a bounded channel of [`WriterCommand`]s.
//!
//! - The **fold thread** (this file) owns the live state: a cache of tasks (the running ones up
//!   to `StoreOptions::running_capacity`, the oldest others parked in the file, the other open
//!   ones up to `StoreOptions::cache_capacity`, the most recently finished ones up to a fifth of
//!   it), a Bloom filter of every task key ever stored (`seen.rs`), the
//!   workers, the transition sequence. Each round it drains what the channel holds (no waiting),
//!   folds every observation in order with the shared state machine
//!   (`broker_adapters::state::apply`), then at once moves its memory on, puts the changes in the
//!   live tail (`live.rs`, which readers merge over the file), publishes the transitions to
//!   subscribers (`/api/events`, metrics) and hands the round's changes to the sink. A task it
//!   does not hold but may have stored is looked up through the sink (one query per round,
//!   after everything sent before it is written).
//! - The **sink thread** (`sink.rs`) owns the DuckDB connection and writes those changes once
//!   per flush interval (`StoreOptions::flush_interval`), in one transaction.
//!
//! So the live view is never behind the file, and the file is at most one flush interval (plus
//! one transaction) behind the live view: that is what a `kill -9` can lose, and reconciliation
//! re-derives it from Redis on restart wherever Redis still holds it. Flushes, housekeeping
//! steps and audit entries go through both threads in order: each sees everything sent before
//! it written.

use super::commands::{CommandSender, Queued};
use super::live::{LiveTail, TailChange};
use super::maintenance::{Step, StepOutcome};
use super::rows::{read_task, TASK_COLUMNS};
use super::seen::SeenKeys;
use super::sink::{Batch, Sink, SinkItem, STORED_AT_UNKNOWN};
use super::{StoreError, StoreOptions};
use broker_adapters::fingerprint::{fingerprint, Fingerprint};
use broker_adapters::state;
use broker_adapters::{
    Broker, Observation, QueueSample, Task, TaskObservation, TaskState, Transition, Worker,
    WorkerObservation,
};
use chrono::{DateTime, Utc};
use duckdb::Connection;
// foldhash (seeded per process): keys come from Redis, so not an unseeded hash; SipHash was a
// tenth of the fold thread's CPU.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, oneshot};

/// What the writer thread can be asked to do. Commands are applied in the order they are sent.
#[derive(Debug)]
pub enum WriterCommand {
    /// Fold these observations into tasks and workers.
    Observations(Vec<Observation>),
    /// Append these queue sizes to the backlog history.
    QueueSamples(Vec<QueueSample>),
    /// Abandon the running tasks whose worker died or fell silent (the rules of
    /// `state::find_abandoned`, applied as `state::AbandonCutoffs`).
    Sweep {
        now: DateTime<Utc>,
        abandon_after: chrono::Duration,
    },
    /// Answered once everything sent before it is written to the file (or dropped after a
    /// failure).
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

/// One state change, as soon as it is folded (before the file holds it). Sent to
/// [`StoreWriter::subscribe`]rs.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionEvent {
    /// The task right after this transition (shared with the fold thread's cache, the live
    /// tail and the sink when it is the round's last version of the task).
    pub task: Arc<Task>,
    pub transition: Transition,
}

/// Counters of the writer thread, for `/metrics` and logs.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Task and worker observations folded (including the sweep's).
    pub observations_applied: AtomicU64,
    /// Observations folded and published but not yet written to the file.
    pub unflushed: AtomicU64,
    /// Milliseconds the fold thread waited for the sink because the file was
    /// [`MAX_UNFLUSHED`] observations behind (back-pressure on ingest).
    pub throttled_ms: AtomicU64,
    /// Transitions committed.
    pub transitions_written: AtomicU64,
    /// Stored task rows replaced by a newer version (deleted, then appended again): a task whose
    /// state changed after its row reached the file. Each costs DuckDB a scan of the key column
    /// and in-memory delete information for its row group (until a checkpoint rewrites it).
    pub task_rows_replaced: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Failed attempts to commit a batch (each batch is tried twice).
    pub batch_errors: AtomicU64,
    /// Observations and samples lost because their batch failed twice.
    pub dropped: AtomicU64,
    /// Keys in the filter of stored task ids (rebuilt after retention: see `seen.rs`).
    pub filter_keys: AtomicU64,
    /// Running tasks held in memory (at most `StoreOptions::running_capacity`).
    pub running_in_memory: AtomicU64,
    /// Running tasks parked: dropped from memory, the oldest first, because more than
    /// `StoreOptions::running_capacity` were running (kept in the file, swept from there).
    pub running_parked: AtomicU64,
}

/// The handle through which everything is written. Cheap to clone; the writer thread stops once
/// every clone is dropped.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    tx: CommandSender,
    events: broadcast::Sender<Arc<TransitionEvent>>,
    stats: Arc<WriterStats>,
}

impl StoreWriter {
    /// Queues a command; waits while the channel is full (back-pressure).
    pub async fn send(&self, cmd: WriterCommand) -> Result<(), StoreError> {
        self.tx.send(cmd).await.map_err(|_| StoreError::WriterGone)
    }

    /// Queues observations, in commands of at most [`OBSERVE_CHUNK`]: a fold round, and the
    /// lookup of its tasks missing from memory, stay bounded whatever a caller hands over.
    pub async fn observe(&self, mut observations: Vec<Observation>) -> Result<(), StoreError> {
        while observations.len() > OBSERVE_CHUNK {
            let rest = observations.split_off(OBSERVE_CHUNK);
            self.send(WriterCommand::Observations(observations)).await?;
            observations = rest;
        }
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

    /// Every transition from now on, as soon as it is folded. A subscriber that falls behind by more than
    /// `StoreOptions::broadcast_capacity` events gets `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TransitionEvent>> {
        self.events.subscribe()
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Commands waiting in the channel.
    pub fn backlog(&self) -> usize {
        self.tx.commands_waiting()
    }

    /// Observations and queue samples the waiting commands carry (at most
    /// `StoreOptions::channel_observations`).
    pub fn backlog_observations(&self) -> usize {
        self.tx.observations_waiting()
    }

    /// Whether the writer thread is gone (nothing will drain the channel).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Starts the fold and sink threads on `conn` (already migrated). The handle is the fold
/// thread's; it ends after the sink has written everything.
pub(super) fn start(
    conn: Connection,
    opts: &StoreOptions,
    live: Arc<LiveTail>,
    filter_dir: std::path::PathBuf,
    analytic: Arc<tokio::sync::Semaphore>,
) -> Result<(StoreWriter, JoinHandle<()>), StoreError> {
    let (tx, rx) = super::commands::channel(opts.channel_capacity, opts.channel_observations);
    let (events, _) = broadcast::channel(opts.broadcast_capacity.max(1));
    let stats = Arc::new(WriterStats::default());
    let (sink_tx, sink_rx) = std::sync::mpsc::sync_channel(SINK_CHANNEL);
    let (rebuilt_tx, rebuilt_rx) = std::sync::mpsc::channel();
    let cache_capacity = opts.cache_capacity.max(1);
    let mut writer = Writer {
        cache: HashMap::new(),
        seen: SeenKeys::with_expected(&filter_dir, 0)?,
        cache_capacity,
        finished_capacity: (cache_capacity / 5).max(1),
        finished: VecDeque::new(),
        running: HashSet::new(),
        workers: HashMap::new(),
        next_seq: 1,
        round: 0,
        max_batch: opts.max_batch_observations.max(1),
        events: events.clone(),
        stats: stats.clone(),
        live: live.clone(),
        sink: sink_tx,
        rebuilt: rebuilt_rx,
        awaiting_rebuilds: 0,
        journal: Vec::new(),
        spare_tasks: HashMap::new(),
        running_capacity: opts.running_capacity.max(1),
        parked_sweep_interval: opts.parked_sweep_interval,
        running_in_file: false,
        last_parked_sweep: None,
    };
    writer.load(&conn, &filter_dir)?;
    // Loading the filter of stored ids allocates and frees one string per stored task.
    super::heap::give_back_freed_memory();
    // Tasks are numbered after the highest stored number, in order of first write.
    let next_num: i64 =
        conn.query_row("SELECT coalesce(max(num), 0) + 1 FROM task_rows", [], |r| {
            r.get(0)
        })?;
    let sink = Sink {
        conn,
        live,
        stats: stats.clone(),
        flush_interval: opts.flush_interval,
        next_num,
        failing_lookups: opts.failing_lookups,
        failing_writes: opts.failing_writes,
        analytic,
        trim: Default::default(),
        rebuilt: rebuilt_tx,
        deleted_since_rebuild: 0,
        rebuild_min_deleted: opts.filter_rebuild_min_deleted,
        filter_dir,
    };
    let sink_handle = std::thread::Builder::new()
        .name("taskscope-sink".into())
        .spawn(move || sink.run(sink_rx))
        .map_err(StoreError::Thread)?;
    let handle = std::thread::Builder::new()
        .name("taskscope-fold".into())
        .spawn(move || {
            writer.run(rx);
            if sink_handle.join().is_err() {
                tracing::error!("the store sink thread panicked");
            }
        })
        .map_err(StoreError::Thread)?;
    Ok((StoreWriter { tx, events, stats }, handle))
}

pub(super) type Key = (Broker, String);

/// A worker with what only the table keeps.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct WorkerRow {
    pub worker: Worker,
    pub first_seen: DateTime<Utc>,
}

/// The fold thread's state.
struct Writer {
    /// Shared with the live tail and the sink (one copy of each task version).
    cache: HashMap<Key, Arc<Task>>,
    /// Every key stored or sent to the sink (a Bloom filter): a key it has never seen is not
    /// looked up.
    seen: SeenKeys,
    /// Tasks `cache` holds at most, running ones aside.
    cache_capacity: usize,
    /// Finished tasks `cache` holds at most (the most recently finished).
    finished_capacity: usize,
    /// Keys of tasks in the order they finished (some may have moved on since).
    finished: VecDeque<Key>,
    /// Keys of the tasks in state `running`. Invariant: each is in `cache` (never evicted).
    running: HashSet<Key>,
    workers: HashMap<Key, WorkerRow>,
    /// The `seq` of the next transition.
    next_seq: i64,
    /// The number of the last fold round.
    round: u64,
    max_batch: usize,
    events: broadcast::Sender<Arc<TransitionEvent>>,
    stats: Arc<WriterStats>,
    live: Arc<LiveTail>,
    sink: SyncSender<SinkItem>,
    /// The sink's answer to each forwarded task deletion: a filter rebuilt from the file, or
    /// none.
    rebuilt: std::sync::mpsc::Receiver<Option<SeenKeys>>,
    /// Task deletions forwarded and not answered yet.
    awaiting_rebuilds: usize,
    /// Keys inserted into `seen` while a deletion is unanswered: a filter rebuilt from the
    /// file lacks those still on their way to it.
    journal: Vec<Key>,
    /// The previous round's table of changed tasks, emptied, for the next round: a table
    /// allocated each round (and grown from empty, ~log2(n) rehashes) cost ~15 % of this
    /// thread's CPU (perf, Celery events at 2,000/s: `reserve_rehash`, and glibc's
    /// `malloc_consolidate` run by the large allocation).
    spare_tasks: HashMap<Key, Changed>,
    /// Running tasks `running` holds at most; past it the oldest are parked (`park_running`).
    running_capacity: usize,
    /// How often the sweep reads parked running tasks from the file.
    parked_sweep_interval: std::time::Duration,
    /// The file may hold running tasks that memory does not (some were parked, or more were
    /// stored than loaded at start). Never reset: finding out costs the query it would save.
    running_in_file: bool,
    /// When the sweep last read parked tasks, and whether that read hit its limit.
    last_parked_sweep: Option<(Instant, bool)>,
}

/// Parked running tasks one sweep reads from the file at most (the next sweep reads on).
const PARKED_SWEEP_LIMIT: usize = 10_000;

/// The largest table of a round's changed tasks kept for the next round (~0.5 MB; steady rounds
/// hold tens to hundreds of tasks); a bigger one (a burst, a start-up scan's round) is given
/// back rather than kept for good.
const SPARE_TASKS_CAPACITY: usize = 1 << 12;

/// What one round changes.
#[derive(Default)]
struct Outcome {
    /// Every changed task.
    tasks: HashMap<Key, Changed>,
    /// Transitions with their `seq`.
    transitions: Vec<(i64, Transition)>,
    /// The task right after each transition, for subscribers.
    events: Vec<TransitionEvent>,
    workers: HashMap<Key, WorkerRow>,
    samples: Vec<QueueSample>,
    /// The failure groups seen in the round: what each is, first and last time.
    groups: HashMap<String, GroupSighting>,
    applied: u64,
}

/// A task's state and `updated_at` before a round changed it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Prior {
    /// Its last version before the round (cache or file): state and `updated_at`.
    Known(TaskState, DateTime<Utc>),
    /// It may have a stored version, which could not be read (the lookup failed twice): the
    /// sink replaces whatever row the file holds for it.
    Unknown,
}

/// What a fold round needed from the file: the stored versions it read, and the keys whose
/// stored versions could not be read.
struct Loaded {
    tasks: HashMap<Key, Task>,
    unknown: HashSet<Key>,
    /// Keys of `tasks` read for the sweep: running tasks kept only in the file that the
    /// sweep's cutoffs may abandon.
    parked: Vec<Key>,
}

/// A task a round changed.
struct Changed {
    /// Its last version (shared with the round's last event of the task).
    task: Arc<Task>,
    /// The state and time of its version before the round (`None`: new).
    prior: Option<Prior>,
    /// Its transitions of the round with their `seq`, for the live tail.
    transitions: Vec<(i64, Transition)>,
}

/// A failure group as one batch saw it (upserted into `failure_groups`).
pub(super) struct GroupSighting {
    pub group: Fingerprint,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

/// Observations folded but not yet written past which the fold thread waits for the sink
/// ([`Writer::wait_for_sink`]): under 2 s of the fastest ingest measured (~30k observations a
/// second; the sink writes at half of it, whatever its interval), ~30 MB of pending versions.
/// At 100,000 the folded tasks held 57.6 MB of the heap at a catch-up's peak (a heap profile of
/// `bench/sink_stall.sh`).
pub(super) const MAX_UNFLUSHED: u64 = 50_000;

/// Observations one command carries at most ([`StoreWriter::observe`] splits larger vectors).
pub const OBSERVE_CHUNK: usize = 5_000;

/// Rounds the sink's channel holds before the fold thread waits for it (back-pressure: the
/// file cannot fall further behind).
const SINK_CHANNEL: usize = 256;
const MAX_COMMANDS: usize = 10_000;

impl Writer {
    /// Loads what the writer keeps in memory: running tasks, workers, the transition sequence.
    fn load(&mut self, conn: &Connection, filter_dir: &std::path::Path) -> Result<(), StoreError> {
        // The keys the sink looks up (tasks not in memory) or replaces (their stored rows),
        // appended here and joined: one scan finds them all.
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS lookup_keys (broker VARCHAR, id VARCHAR);",
        )?;
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS sweep_cutoffs
                 (broker VARCHAR, worker VARCHAR, before TIMESTAMP);",
        )?;
        // The most recently started running tasks, up to the capacity (one more tells whether
        // the file holds others: they are parked from the start).
        let running = {
            let mut stmt = conn.prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'running'
                 ORDER BY coalesce(started_at, updated_at) DESC LIMIT ?"
            ))?;
            let limit = i64::try_from(self.running_capacity).unwrap_or(i64::MAX - 1) + 1;
            let mut rows = stmt.query([limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(read_task(row)?);
            }
            if out.len() > self.running_capacity {
                out.truncate(self.running_capacity);
                self.running_in_file = true;
                tracing::info!(
                    loaded = out.len(),
                    "store: more tasks are running than memory keeps; the oldest stay in the file (swept from there)"
                );
            }
            out
        };
        self.load_seen(conn, filter_dir)?;
        for task in running {
            let key = (task.broker, task.id.clone());
            self.running.insert(key.clone());
            self.cache.insert(key, Arc::new(task));
        }
        self.stats
            .running_in_memory
            .store(self.running.len() as u64, Ordering::Relaxed);
        let workers = {
            let mut stmt = conn.prepare(
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
        self.next_seq = conn.query_row(
            "SELECT coalesce(max(seq), 0) + 1 FROM transitions",
            [],
            |r| r.get(0),
        )?;
        Ok(())
    }

    /// Fills the filter of stored keys from the `tasks` table.
    fn load_seen(&mut self, conn: &Connection, dir: &std::path::Path) -> Result<(), StoreError> {
        let started = Instant::now();
        let (seen, count) = super::seen::load(conn, dir)?;
        self.seen = seen;
        self.publish_filter_keys();
        tracing::info!(
            tasks = count,
            took_ms = started.elapsed().as_millis() as u64,
            filter_bytes = self.seen.bytes(),
            "store writer: loaded the filter of stored task ids"
        );
        Ok(())
    }

    fn publish_filter_keys(&self) {
        self.stats
            .filter_keys
            .store(self.seen.len() as u64, Ordering::Relaxed);
    }

    /// Takes the filters the sink rebuilt after task deletions: each gets the keys inserted
    /// since the first deletion still answered, then replaces the filter.
    fn take_rebuilt_filters(&mut self) {
        while let Ok(rebuilt) = self.rebuilt.try_recv() {
            self.awaiting_rebuilds = self.awaiting_rebuilds.saturating_sub(1);
            if let Some(mut seen) = rebuilt {
                for key in &self.journal {
                    seen.insert(key);
                }
                tracing::info!(
                    keys_before = self.seen.len(),
                    keys_after = seen.len(),
                    filter_bytes = seen.bytes(),
                    "store writer: the filter of stored task ids was rebuilt after retention"
                );
                self.seen = seen;
                self.publish_filter_keys();
            }
            if self.awaiting_rebuilds == 0 {
                self.journal = Vec::new();
            }
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        while let Some(first) = rx.blocking_recv() {
            // What the channel holds now, no waiting: folding is cheap, the file is the sink's.
            let mut weight = command_weight(&first.cmd);
            let mut room = Vec::new();
            room.extend(first.room);
            let mut cmds = vec![first.cmd];
            while weight < self.max_batch && cmds.len() < MAX_COMMANDS {
                match rx.try_recv() {
                    Ok(queued) => {
                        weight += command_weight(&queued.cmd);
                        room.extend(queued.room);
                        cmds.push(queued.cmd);
                    }
                    Err(_) => break,
                }
            }
            self.take_rebuilt_filters();
            // Folding commands go in rounds; the others go to the sink between them, in order.
            let mut round: Vec<WriterCommand> = Vec::new();
            for cmd in cmds {
                match cmd {
                    WriterCommand::Sweep { .. } if self.running_in_file => {
                        // The sweep's read of parked tasks (before its round folds) needs the
                        // workers as of the sweep: what came before it is folded first.
                        self.fold_round(std::mem::take(&mut round));
                        round.push(cmd);
                    }
                    WriterCommand::Observations(_)
                    | WriterCommand::QueueSamples(_)
                    | WriterCommand::Sweep { .. } => round.push(cmd),
                    barrier => {
                        self.fold_round(std::mem::take(&mut round));
                        self.forward(barrier);
                    }
                }
            }
            self.fold_round(round);
            // Folded (and, past `MAX_UNFLUSHED`, waited for): room for more in the channel.
            drop(room);
        }
        tracing::debug!("store writer stopped: every StoreWriter was dropped");
    }

    /// Sends a flush, housekeeping step or audit entry to the sink.
    fn forward(&mut self, cmd: WriterCommand) {
        if let WriterCommand::Maintain { step, .. } = &cmd {
            match step {
                Step::DeleteWorkers { before } => {
                    self.workers.retain(|_, w| w.worker.last_seen >= *before);
                }
                Step::DeleteTasks { from, to } => {
                    // The sink answers with a rebuilt filter, or none (`take_rebuilt_filters`).
                    self.awaiting_rebuilds += 1;
                    let running = &self.running;
                    self.cache.retain(|key, task| {
                        running.contains(key) || task.updated_at < *from || task.updated_at >= *to
                    });
                }
                _ => {}
            }
        }
        // The sink is gone only after a panic: the caller's reply channel then says so.
        let _ = self.sink.send(SinkItem::Barrier(cmd));
    }

    /// Folds one round, publishes it and hands it to the sink.
    fn fold_round(&mut self, cmds: Vec<WriterCommand>) {
        if cmds.is_empty() {
            return;
        }
        let span = tracing::debug_span!(
            "store_fold",
            commands = cmds.len(),
            transitions = tracing::field::Empty,
        );
        let _entered = span.enter();
        let missing = self.missing_keys(&cmds);
        let looked_up = self.look_up(&missing).or_else(|first| {
            self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %first, "store lookup of tasks not in memory failed; trying once more");
            self.look_up(&missing)
        });
        let loaded = match looked_up {
            Ok(tasks) => Loaded {
                tasks,
                unknown: HashSet::new(),
                parked: Vec::new(),
            },
            Err(e) => {
                // Folded as new, and written over whatever version the file holds (never
                // beside it: one row per task). What only the file knew (a name, args) is lost
                // from these tasks; counted and logged.
                self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, tasks = missing.len(),
                    "store lookup of tasks not in memory failed twice; they are folded as new and replace their stored rows");
                Loaded {
                    tasks: HashMap::new(),
                    unknown: missing,
                    parked: Vec::new(),
                }
            }
        };
        let mut loaded = loaded;
        if let Some((now, abandon_after)) = last_sweep(&cmds) {
            self.read_parked(&mut loaded, now, abandon_after);
        }
        let spare = std::mem::take(&mut self.spare_tasks);
        let outcome = self.fold(&cmds, &loaded, spare);
        span.record("transitions", outcome.transitions.len());
        self.publish(outcome);
    }

    /// For a round that sweeps, once any running task was parked and at most every
    /// `parked_sweep_interval` (at once again after a read that hit its limit): the parked
    /// running tasks the sweep's cutoffs may abandon, read from the file into `loaded`.
    fn read_parked(
        &mut self,
        loaded: &mut Loaded,
        now: DateTime<Utc>,
        abandon_after: chrono::Duration,
    ) {
        if !self.running_in_file {
            return;
        }
        if self
            .last_parked_sweep
            .is_some_and(|(at, full)| !full && at.elapsed() < self.parked_sweep_interval)
        {
            return;
        }
        let workers = self.workers.values().map(|w| &w.worker);
        let cutoffs = state::AbandonCutoffs::new(workers, now, abandon_after);
        self.last_parked_sweep = Some((Instant::now(), false));
        if cutoffs.is_empty() {
            return;
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let query = SinkItem::RunningBefore {
            cutoffs: cutoffs.iter().cloned().collect(),
            limit: PARKED_SWEEP_LIMIT,
            reply,
        };
        if self.sink.send(query).is_err() {
            return;
        }
        match answer.recv() {
            Ok(Ok(tasks)) => {
                self.last_parked_sweep = Some((Instant::now(), tasks.len() >= PARKED_SWEEP_LIMIT));
                for task in tasks {
                    let key = (task.broker, task.id.clone());
                    if self.cache.contains_key(&key) {
                        continue;
                    }
                    loaded.parked.push(key.clone());
                    loaded.tasks.entry(key).or_insert(task);
                }
            }
            Ok(Err(e)) => {
                self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "store: reading parked running tasks for the sweep failed; the next sweep tries again");
            }
            Err(_) => {}
        }
    }

    /// Moves memory on, fills the live tail, tells subscribers and sends the round to the sink.
    fn publish(&mut self, mut out: Outcome) {
        self.wait_for_sink();
        self.round += 1;
        let round = self.round;
        let s = &self.stats;
        s.observations_applied
            .fetch_add(out.applied, Ordering::Relaxed);
        s.unflushed.fetch_add(out.applied, Ordering::Relaxed);
        if let Some((seq, _)) = out.transitions.last() {
            self.next_seq = seq + 1;
        }
        // One shared copy of each changed task for the cache, the live tail, the sink and the
        // round's last event of the task.
        let mut tasks = Vec::with_capacity(out.tasks.len());
        let mut transitions = Vec::with_capacity(out.tasks.len());
        for (key, changed) in out.tasks.drain() {
            let Changed {
                task,
                prior,
                transitions: of_task,
            } = changed;
            if self.awaiting_rebuilds > 0 {
                // Every key, even one the filter may hold: deleted by the step under way and
                // changed again, it is written only after the rebuild read the file.
                self.journal.push(key.clone());
            }
            self.seen.insert(&key);
            if task.state == TaskState::Running {
                self.running.insert(key.clone());
            } else {
                self.running.remove(&key);
            }
            if task.state.is_final() {
                self.finished.push_back(key.clone());
            }
            self.cache.insert(key.clone(), task.clone());
            tasks.push((key, (task, prior)));
            transitions.push(of_task);
        }
        if out.tasks.capacity() <= SPARE_TASKS_CAPACITY {
            self.spare_tasks = std::mem::take(&mut out.tasks);
        }
        self.publish_filter_keys();
        self.live.put_round(
            round,
            tasks
                .iter()
                .zip(transitions)
                .map(|((key, (task, prior)), transitions)| TailChange {
                    key,
                    task,
                    prior_state: match prior {
                        Some(Prior::Known(state, _)) => Some(*state),
                        _ => None,
                    },
                    transitions,
                }),
            &out.samples,
        );
        let tasks = tasks
            .into_iter()
            .map(|(key, (task, prior))| {
                let stored_at = prior.map(|p| match p {
                    Prior::Known(_, at) => at,
                    Prior::Unknown => STORED_AT_UNKNOWN,
                });
                (key, (task, stored_at))
            })
            .collect();
        self.workers
            .extend(out.workers.iter().map(|(k, w)| (k.clone(), w.clone())));
        self.evict();
        self.park_running();
        self.stats
            .running_in_memory
            .store(self.running.len() as u64, Ordering::Relaxed);
        for event in out.events {
            // No subscriber is fine: nobody is watching the live view.
            let _ = self.events.send(Arc::new(event));
        }
        let batch = Batch {
            round,
            tasks,
            transitions: out.transitions,
            workers: out.workers,
            samples: out.samples,
            groups: out.groups,
            observations: out.applied,
        };
        if self.sink.send(SinkItem::Batch(batch)).is_err() {
            self.stats.dropped.fetch_add(out.applied, Ordering::Relaxed);
            tracing::error!("the store sink is gone; a round is not written");
        }
    }

    /// Waits while the file is more than [`MAX_UNFLUSHED`] observations behind the live view.
    ///
    /// The sink writes at its own pace; when it is slower than ingest (a slow disk, a long
    /// housekeeping step, a machine out of CPU), what it has not written waits in memory (its
    /// pending set, the live tail). Without this bound that memory grew without limit (a
    /// one-hour soak on an overloaded machine reached 7 GB). Waiting here fills the command
    /// channel, then ingest waits, its forwarding queue fills, and past that it counts lagged
    /// events and resynchronises from Redis: memory stays bounded, and what Redis still holds is
    /// re-derived.
    fn wait_for_sink(&self) {
        let unflushed = || self.stats.unflushed.load(Ordering::Relaxed);
        if unflushed() <= MAX_UNFLUSHED {
            return;
        }
        let started = Instant::now();
        while unflushed() > MAX_UNFLUSHED {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let waited = started.elapsed();
        self.stats
            .throttled_ms
            .fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
        if waited >= std::time::Duration::from_secs(1) {
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                limit = MAX_UNFLUSHED,
                "The store file fell behind the live view; ingest waited for it."
            );
        }
    }

    /// The keys of the round's tasks that are not in memory but may be in the file.
    fn missing_keys(&self, cmds: &[WriterCommand]) -> HashSet<Key> {
        let mut missing: HashSet<Key> = HashSet::new();
        for cmd in cmds {
            if let WriterCommand::Observations(list) = cmd {
                for obs in list {
                    if let Observation::Task(t) = obs {
                        let key = (t.broker, t.task_id.clone());
                        // Never stored: nothing to look up (most new tasks).
                        if !self.cache.contains_key(&key) && self.seen.may_contain(&key) {
                            missing.insert(key);
                        }
                    }
                }
            }
        }
        missing
    }

    /// The last versions of `keys` (the sink's pending ones, else the file's), in one query run
    /// by the sink after everything sent before.
    fn look_up(&mut self, keys: &HashSet<Key>) -> Result<HashMap<Key, Task>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.sink
            .send(SinkItem::Lookup {
                keys: keys.iter().cloned().collect(),
                reply,
            })
            .map_err(|_| StoreError::WriterGone)?;
        answer.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// Applies the batch's commands in order on top of memory and `loaded`.
    /// `tasks` is the previous round's emptied table of changed tasks (see
    /// [`Writer::spare_tasks`]).
    fn fold(
        &self,
        cmds: &[WriterCommand],
        loaded: &Loaded,
        mut tasks: HashMap<Key, Changed>,
    ) -> Outcome {
        let observations: usize = cmds
            .iter()
            .map(|cmd| match cmd {
                WriterCommand::Observations(list) => list.len(),
                _ => 0,
            })
            .sum();
        tasks.reserve(observations);
        let mut out = Outcome {
            tasks,
            ..Outcome::default()
        };
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
                    let workers = self
                        .workers
                        .iter()
                        .filter(|(k, _)| !out.workers.contains_key(*k))
                        .chain(out.workers.iter())
                        .map(|(_, w)| &w.worker);
                    let cutoffs = state::AbandonCutoffs::new(workers, *now, *abandon_after);
                    if cutoffs.is_empty() {
                        continue;
                    }
                    let abandoned: Vec<TaskObservation> = self
                        .running_tasks(&out, loaded)
                        .filter_map(|task| cutoffs.abandon(task, *now))
                        .collect();
                    for obs in &abandoned {
                        self.fold_task(&mut out, loaded, obs);
                    }
                }
                WriterCommand::Flush(_)
                | WriterCommand::Maintain { .. }
                | WriterCommand::Audit { .. } => {}
            }
        }
        out
    }

    fn fold_task(&self, out: &mut Outcome, loaded: &Loaded, obs: &TaskObservation) {
        let key = (obs.broker, obs.task_id.clone());
        let (current, prior, changed_earlier, mut transitions) = match out.tasks.remove(&key) {
            // Its event of this round holds it too: only then is it copied.
            Some(c) => (
                Some(Arc::unwrap_or_clone(c.task)),
                c.prior,
                true,
                c.transitions,
            ),
            None => {
                let current = match self.cache.get(&key) {
                    Some(task) => Some(Task::clone(task)),
                    None => loaded.tasks.get(&key).cloned(),
                };
                let prior = match &current {
                    Some(t) => Some(Prior::Known(t.state, t.updated_at)),
                    None if loaded.unknown.contains(&key) => Some(Prior::Unknown),
                    None => None,
                };
                (current, prior, false, Vec::new())
            }
        };
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
        let task = Arc::new(applied.task);
        if let Some(transition) = applied.transition {
            let seq = self.next_seq + out.transitions.len() as i64;
            out.transitions.push((seq, transition.clone()));
            transitions.push((seq, transition.clone()));
            out.events.push(TransitionEvent {
                task: task.clone(),
                transition,
            });
        }
        if applied.changed || changed_earlier {
            out.tasks.insert(
                key,
                Changed {
                    task,
                    prior,
                    transitions,
                },
            );
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

    /// The running tasks as of this point of the batch: those in memory, and the parked ones
    /// `loaded` read for the sweep.
    fn running_tasks<'a>(
        &'a self,
        out: &'a Outcome,
        loaded: &'a Loaded,
    ) -> impl Iterator<Item = &'a Task> + 'a {
        let in_memory = self
            .running
            .iter()
            .filter(|k| !out.tasks.contains_key(*k))
            .filter_map(|k| self.cache.get(k).map(|t| &**t));
        let changed = out
            .tasks
            .values()
            .filter(|c| c.task.state == TaskState::Running)
            .map(|c| &*c.task);
        let parked = loaded
            .parked
            .iter()
            .filter(|k| !out.tasks.contains_key(*k) && !self.cache.contains_key(*k))
            .filter_map(|k| loaded.tasks.get(k));
        in_memory.chain(changed).chain(parked)
    }

    /// Keeps the cache to what is live: the most recently finished tasks up to
    /// `finished_capacity`, then every task up to `cache_capacity` (finished first, running
    /// never). An evicted task costs one lookup if it changes again.
    fn evict(&mut self) {
        while self.finished.len() > self.finished_capacity {
            let Some(key) = self.finished.pop_front() else {
                break;
            };
            if self.cache.get(&key).is_some_and(|t| t.state.is_final()) {
                self.cache.remove(&key);
            }
        }
        if self.cache.len() <= self.cache_capacity {
            // Evictions leave room a table never gives back by itself.
            if self.cache.capacity() > 4 * self.cache.len().max(1024) {
                self.cache.shrink_to(2 * self.cache.len());
            }
            return;
        }
        let target = self.cache_capacity - self.cache_capacity / 4;
        let mut excess = self.cache.len() - target;
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

    /// Keeps at most `running_capacity` running tasks in memory: past it, parks the oldest
    /// (by start) down to three quarters of it. Each is in the file or the sink's pending set
    /// already (every change goes there); it is looked up when it changes again, and swept from
    /// the file ([`Writer::read_parked`]).
    fn park_running(&mut self) {
        if self.running.len() <= self.running_capacity {
            return;
        }
        let target = self.running_capacity - self.running_capacity / 4;
        let mut by_start: Vec<(DateTime<Utc>, &Key)> = self
            .running
            .iter()
            .filter_map(|k| {
                self.cache
                    .get(k)
                    .map(|t| (t.started_at.unwrap_or(t.updated_at), k))
            })
            .collect();
        let excess = by_start.len().saturating_sub(target);
        if excess == 0 {
            return;
        }
        by_start.select_nth_unstable(excess - 1);
        let parked: Vec<Key> = by_start[..excess]
            .iter()
            .map(|(_, k)| (*k).clone())
            .collect();
        for key in &parked {
            self.running.remove(key);
            self.cache.remove(key);
        }
        self.running_in_file = true;
        let before = self
            .stats
            .running_parked
            .fetch_add(parked.len() as u64, Ordering::Relaxed);
        if before == 0 {
            tracing::warn!(
                running = self.running.len() + parked.len(),
                kept = self.running.len(),
                "More tasks are running than taskscope keeps in memory; the oldest are kept in the \
                 file only (swept from there every {:?}; TASKSCOPE_RUNNING_IN_MEMORY sets how many \
                 are kept). Tasks that never report an end (Celery with ignore_result and no \
                 events) stay running until their workers go away.",
                self.parked_sweep_interval
            );
        }
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

/// The time and abandonment delay of the round's last sweep, if it has one.
fn last_sweep(cmds: &[WriterCommand]) -> Option<(DateTime<Utc>, chrono::Duration)> {
    cmds.iter().rev().find_map(|cmd| match cmd {
        WriterCommand::Sweep { now, abandon_after } => Some((*now, *abandon_after)),
        _ => None,
    })
}

/// Observations and samples count by their number, other commands as one.
fn command_weight(cmd: &WriterCommand) -> usize {
    super::commands::carried(cmd).max(1)
}

pub(super) fn prefixed_task_columns(alias: &str) -> String {
    TASK_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The worker row after `obs` ([`broker_adapters::worker_state::fold`]), `None` when
/// nothing changed.
fn apply_worker(current: Option<&WorkerRow>, obs: &WorkerObservation) -> Option<WorkerRow> {
    let worker = broker_adapters::worker_state::fold(current.map(|r| &r.worker), obs);
    let first_seen = current.map_or(obs.at, |r| r.first_seen.min(obs.at));
    let next = WorkerRow { worker, first_seen };
    (current != Some(&next)).then_some(next)
}

#[cfg(test)]
mod observe_tests {
    use super::*;
    use broker_adapters::TaskEvent;

    #[tokio::test]
    async fn a_large_vector_goes_to_the_fold_thread_in_commands_of_a_chunk_at_most() {
        let (tx, mut rx) = super::super::commands::channel(100, 1_000_000);
        let (events, _) = broadcast::channel(1);
        let writer = StoreWriter {
            tx,
            events,
            stats: Arc::default(),
        };
        let obs = Observation::Task(TaskObservation::new(
            Broker::Celery,
            "t",
            Utc::now(),
            TaskEvent::Queued,
            "queue",
        ));
        writer
            .observe(vec![obs; 2 * OBSERVE_CHUNK + 1])
            .await
            .expect("the channel has room");
        drop(writer);
        let mut sizes = Vec::new();
        while let Some(queued) = rx.recv().await {
            if let WriterCommand::Observations(list) = queued.cmd {
                sizes.push(list.len());
            }
        }
        assert_eq!(sizes, [OBSERVE_CHUNK, OBSERVE_CHUNK, 1]);
    }
}
