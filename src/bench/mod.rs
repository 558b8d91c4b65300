//! `taskscope bench` and `taskscope demo`: the load generator and what runs it.
//!
//! - [`gen`]: task lifecycles written in each broker's own Redis format (pure: commands out).
//! - [`procs`]: the private `redis-server` and the child `taskscope serve`; `/proc` readings.
//! - [`observe`]: the child's HTTP API: readiness, `/api/events` arrivals, the task list.
//! - [`load`]: `taskscope bench load`, the ingest benchmark with a known ground truth.
//! - [`demo`]: `taskscope demo`, a live dashboard in one command.
//! - [`store`]: `taskscope bench store`, a generated history of N tasks, its size on disk, the
//!   latency of every report and task-list route of a real `taskscope serve` on it, and that
//!   server's peak memory (`proc`: its minimal HTTP client).

pub mod demo;
pub mod gen;
pub mod load;
pub mod observe;
mod proc;
pub mod procs;
pub mod store;

/// `taskscope bench`.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Write known task lifecycles in each broker's format to a private Redis, with and without
    /// a child taskscope watching, and report what it ingested: lost or wrong lifecycles, lag,
    /// CPU, memory and the Redis commands it cost.
    Load(Box<load::LoadArgs>),
    /// Generate a history of N tasks in DuckDB, then time every report and task-list route of
    /// a `taskscope serve` on it (p50/p95), and report bytes per task and the server's peak RSS.
    Store(Box<store::StoreBenchArgs>),
}
