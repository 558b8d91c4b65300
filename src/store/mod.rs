//! The history of tasks, workers and queues, in one embedded DuckDB file.
//!
//! # Layout
//! - [`open`]: takes the file's lock, migrates the schema, starts the writer thread.
//! - `schema`: versioned migrations and the index policy.
//! - `writer`: [`StoreWriter`], the handle through which everything is written; the writer thread
//!   folds observations with the shared state machine and writes them in batches.
//! - `reader`: [`StoreReader`], every query the HTTP layer, exports and ingest need.
//! - `reports`: the aggregate queries behind `/api/reports/*` and the charts.
//! - `groups`: failure groups (`/api/failures/groups`): counts per fingerprint over a window.
//! - `alert_window`: what alert rules count over a window, per queue.
//! - `export`: streamed CSV and Parquet exports of the task list.
//! - [`maintenance`]: housekeeping's SQL (roll-ups, retention, down-sampling, checkpoints),
//!   run as steps on the writer thread.
//! - [`synthetic`]: generated histories for `taskscope-bench store`.
//! - `rows`: conversions between the model and rows (timestamps, JSON text, cursors).
//!
//! # Architecture invariants
//! - Only this module touches DuckDB. Callers see `broker_adapters` types and plain structs.
//! - One writer thread owns the write connection; everything else sends it commands. Readers
//!   use connections of their own, on `spawn_blocking` threads.
//! - No `Connection` is ever held across an `.await`: a connection is `Send` but not `Sync`, and
//!   a DuckDB call blocks.
//! - One taskscope process per file: DuckDB allows one read-write process, and [`open`] fails
//!   fast when another holds the lock.

// DuckDB lives here and nowhere else (clippy.toml).
#![allow(clippy::disallowed_types)]

mod alert_window;
#[cfg(test)]
mod alert_window_tests;
pub mod audit;
#[cfg(test)]
mod audit_tests;
mod commands;
mod export;
mod groups;
#[cfg(test)]
mod groups_tests;
mod heap;
mod live;
pub mod maintenance;
mod reader;
mod reports;
mod rows;
mod schema;
mod seen;
mod sink;
#[cfg(test)]
mod sink_tests;
pub mod synthetic;
#[cfg(test)]
mod tests;
mod writer;

pub use alert_window::QueueWindow;
pub use audit::{AuditEntry, AuditOutcome, AuditPage, AuditQuery, NewAuditEntry};
pub use export::{
    open_read_only, write_csv_file as export_csv_to, write_parquet as export_parquet, CSV_HEADER,
};
pub use groups::{FailureGroup, GroupState, MAX_GROUPS};
pub use reader::{EngineMemory, StoreReader, TaskQuery};
pub use reports::{NameOrder, NameStats, ReportFilter, ReportRange};
pub use writer::{StoreWriter, TransitionEvent};

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open {path}: the database is locked by another process (another taskscope \
         probably runs on it); stop it or pass a different --db ({source})"
    )]
    Locked {
        path: PathBuf,
        #[source]
        source: duckdb::Error,
    },
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: duckdb::Error,
    },
    #[error("database migration to schema version {version} failed: {source}")]
    Migration {
        version: i32,
        #[source]
        source: duckdb::Error,
    },
    #[error(
        "the database has schema version {found}, newer than this taskscope supports \
         ({supported}): upgrade taskscope or use another --db"
    )]
    TooNew { found: i32, supported: i32 },
    #[error("cannot start the store writer thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("invalid cursor {0:?}: pass the next_cursor of a previous page")]
    BadCursor(String),
    #[error("database query failed: {0}")]
    Query(#[from] duckdb::Error),
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
    #[error("the store writer has stopped")]
    WriterGone,
    #[error(
        "cannot write the filter of stored task ids in {dir} (an unnamed file beside the \
         database): {source}"
    )]
    FilterFile {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    File {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("a store query was cancelled: {0}")]
    Cancelled(String),
    /// Every query slot of a gated reader stayed taken for its whole wait.
    #[error("{0}: too many queries at once; try again in a moment")]
    Busy(&'static str),
}

/// Tuning knobs; [`Default`] suits a sidecar.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Commands the writer's channel holds before `send` waits (back-pressure on ingest).
    pub channel_capacity: usize,
    /// Observations and queue samples the commands in the writer's channel carry at most
    /// before `send` waits (`commands.rs`): what waits there is bounded in memory, not only in
    /// number (a command carries up to a whole ingest batch). 25,000 by default, a little
    /// more than one ingest batch (`INCOMING_BATCH`); the fold thread empties the channel as
    /// fast as it fills unless it waits for the file.
    pub channel_observations: usize,
    /// Tasks the writer keeps in memory to fold observations without reading the database.
    /// Finished tasks are evicted first.
    pub cache_capacity: usize,
    /// Observations the fold thread takes from its channel for one round (one command more
    /// at most, of at most `writer::OBSERVE_CHUNK`): bounds a round's lookup of tasks missing
    /// from memory (a task is ~400 bytes inline). 20,000 by default.
    pub max_batch_observations: usize,
    /// Transition events buffered for slow subscribers (SSE) before they lag. The metrics
    /// feed drains them every 200 ms: 16,384 covers 80k transitions a second.
    pub broadcast_capacity: usize,
    /// Reader connections kept open when idle.
    pub max_idle_readers: usize,
    /// DuckDB's `memory_limit` (its buffer pool: cached blocks, hash tables, sorts) in MiB
    /// (`TASKSCOPE_DUCKDB_MEMORY_MIB`, 64 by default). DuckDB's own default is 80% of the
    /// machine's RAM, which a sidecar must not take: past this limit DuckDB evicts cached
    /// blocks (re-read from the OS page cache) and spills joins and sorts to `<db>.tmp`.
    /// Schema v3 has no ART index, which DuckDB keeps in memory whatever the limit. At 10M
    /// tasks every route ran within 64 MiB alone; `/reports` and the overview run their queries
    /// one after another (they ran out of memory at 64 MiB at once, hence the earlier 128), and
    /// analytic queries of every request run one at a time (`reader.rs`, `Pool::heavy`: four
    /// clients loading `/reports` at once got "Out of Memory" 500s before). The buffer pool
    /// fills up to the limit and stays resident. 32 MiB kept every route of the 10M-task
    /// benchmark, four concurrent `/reports` clients and housekeeping beside them answering,
    /// but not ingest into that history: the sink's lookups and batches ran out of memory
    /// ("failed to pin block", 31.7 of 32 MiB used) with no report running, and 11 batches
    /// in a minute were dropped; at 64, none. A batch write that fails is retried alone
    /// (`sink.rs`). At 24 the 7-day failures report ran out of memory.
    pub memory_limit_mib: usize,
    /// DuckDB's worker `threads` (database-wide; `TASKSCOPE_DUCKDB_THREADS`, 1 by default).
    /// `None` keeps DuckDB's default (one per core). With one, every query runs on the thread
    /// that asked (the sink, a reader): the sink's small transactions no longer hand work to
    /// worker threads and wait for them (~0.08 CPU s per 10k Celery events in those threads
    /// alone), hash tables are not split per thread (less memory), and at 10M tasks the reports
    /// were no slower on this 2-core machine (worst p95 99 ms against 151 ms with two).
    pub threads: Option<usize>,
    /// How often the sink writes what the fold thread has folded and published: the file, and
    /// what a `kill -9` can lose, is at most this far behind the live view (plus one
    /// transaction). `TASKSCOPE_FLUSH_INTERVAL_MS` overrides it (1,000 ms by default).
    pub flush_interval: std::time::Duration,
    /// Test support: how many of the sink's next file lookups fail (as a lookup that ran out
    /// of memory does). Always 0 outside tests.
    #[doc(hidden)]
    pub failing_lookups: u32,
    /// Test support: this many batch writes fail before they touch the file (a batch is
    /// tried twice). Always 0 outside tests.
    #[doc(hidden)]
    pub failing_writes: u32,
    /// Tasks retention must have deleted (and at least half as many as remain) before the
    /// filter of stored ids is rebuilt from the file (`seen.rs`). 100,000 by default.
    pub filter_rebuild_min_deleted: u64,
    /// Running tasks the fold thread keeps in memory at most (`TASKSCOPE_RUNNING_IN_MEMORY`,
    /// 10,000 by default). Running
    /// tasks are otherwise never evicted (the sweep judges them every second), but some never
    /// end as far as Redis tells: Celery with `ignore_result=True` and no events keeps every
    /// task `running` until its workers go away, so between two deploys they would pile up in
    /// memory without bound. Past this many the oldest are kept in the file only
    /// ("parked"): looked up when they change, and swept from the file
    /// (`parked_sweep_interval`).
    pub running_capacity: usize,
    /// How often the sweep also looks for abandoned tasks among the parked ones (a query of
    /// the file's running tasks, ~20-50 ms at 10M stored tasks; 10 s by default), once any
    /// was parked.
    pub parked_sweep_interval: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            channel_capacity: 10_000,
            channel_observations: 25_000,
            cache_capacity: 50_000,
            max_batch_observations: 20_000,
            broadcast_capacity: 16_384,
            max_idle_readers: 4,
            memory_limit_mib: std::env::var("TASKSCOPE_DUCKDB_MEMORY_MIB")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64),
            threads: Some(
                std::env::var("TASKSCOPE_DUCKDB_THREADS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
            ),
            flush_interval: std::time::Duration::from_millis(
                std::env::var("TASKSCOPE_FLUSH_INTERVAL_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1_000),
            ),
            failing_lookups: 0,
            failing_writes: 0,
            filter_rebuild_min_deleted: 100_000,
            running_capacity: std::env::var("TASKSCOPE_RUNNING_IN_MEMORY")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000),
            parked_sweep_interval: std::time::Duration::from_secs(10),
        }
    }
}

/// Why DuckDB could not open `path`: [`StoreError::Locked`] when another process holds the
/// file's lock (DuckDB says "Could not set lock on file ...: Conflicting lock is held in ..."),
/// else [`StoreError::Open`]. Every open of the file (writer, exports) maps errors here.
pub(crate) fn open_error(path: &Path, source: duckdb::Error) -> StoreError {
    let msg = source.to_string();
    if msg.contains("Could not set lock") || msg.contains("Conflicting lock") {
        StoreError::Locked {
            path: path.to_path_buf(),
            source,
        }
    } else {
        StoreError::Open {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Opens (or creates) the database at `path`, migrates it and starts the writer thread.
///
/// The writer thread stops once every [`StoreWriter`] clone is dropped, after writing what was
/// sent; join the handle to be sure everything reached the file.
pub fn open(
    path: &Path,
    opts: StoreOptions,
) -> Result<(StoreWriter, StoreReader, JoinHandle<()>), StoreError> {
    let mut conn = duckdb::Connection::open(path).map_err(|source| open_error(path, source))?;
    // A database-wide setting: every connection cloned below shares it.
    let threads = opts
        .threads
        .map(|n| format!("; SET threads = {}", n.max(1)))
        .unwrap_or_default();
    conn.execute_batch(&format!(
        // DuckDB's allocator keeps freed memory of a finished query for the next one up to
        // this threshold (128 MB by default): a sidecar gives it back. Its background thread
        // returns the rest of what queries freed while taskscope idles: measured at 10M tasks
        // (`taskscope-bench store`), idle RSS 166.1 -> 147.6-149.3 MiB with a 32 MiB limit;
        // with 64 MiB (the default then), 184.5 -> 180.8-182.6 (the pool keeps the blocks the
        // filter load cached: not freed memory); peak unchanged.
        "SET memory_limit = '{}MiB'; SET allocator_flush_threshold = '8MiB'; \
         SET allocator_background_threads = true{threads}",
        opts.memory_limit_mib.max(16),
    ))
    .map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    schema::migrate(&mut conn)?;
    let reader_template = conn.try_clone().map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let live = std::sync::Arc::new(live::LiveTail::default());
    // One analytic query at a time (readers), and a batch write's retry alone (the sink).
    let analytic = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
    let reader = StoreReader::new(
        reader_template,
        opts.max_idle_readers,
        live.clone(),
        analytic.clone(),
    );
    // The filter of stored ids keeps its file beside the database (`seen.rs`).
    let filter_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (writer, handle) = writer::start(conn, &opts, live, filter_dir, analytic)?;
    Ok((writer, reader, handle))
}
