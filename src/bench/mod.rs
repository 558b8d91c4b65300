//! `taskscope bench ...`: benchmarks that ship with the binary, so their figures can be
//! reproduced anywhere taskscope runs.
//!
//! - [`store`]: `taskscope bench store`, a generated history of N tasks, its size on disk, the
//!   latency of every report and task-list route of a real `taskscope serve` on it, and that
//!   server's peak memory.
//! - `proc`: the helpers both need: child processes (a private `redis-server`, `serve`), a
//!   minimal HTTP client, `/proc` readings.

mod proc;
pub mod store;

use clap::{Args, Subcommand};

/// `taskscope bench`.
#[derive(Debug, Args)]
pub struct BenchCmd {
    #[command(subcommand)]
    pub kind: BenchKind,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchKind {
    /// Generate a history of N tasks in DuckDB, then time every report and task-list route of
    /// a `taskscope serve` on it (p50/p95), and report bytes per task and the server's peak RSS.
    Store(store::StoreBenchArgs),
}

/// Runs a benchmark; the error is the one line `main` prints.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd.kind {
        BenchKind::Store(args) => store::run(args),
    }
}
