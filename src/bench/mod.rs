//! `taskscope bench` and `taskscope demo`: the load generator and what runs it.
//!
//! - [`gen`]: task lifecycles written in each broker's own Redis format (pure: commands out).
//! - [`procs`]: the private `redis-server` and the child `taskscope serve`; `/proc` readings.
//! - [`observe`]: the child's HTTP API: readiness, `/api/events` arrivals, the task list.
//! - [`load`]: `taskscope bench load`, the ingest benchmark with a known ground truth.
//! - [`demo`]: `taskscope demo`, a live dashboard in one command.

pub mod demo;
pub mod gen;
pub mod load;
pub mod observe;
pub mod procs;

/// `taskscope bench`.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Write known task lifecycles in each broker's format to a private Redis, with and without
    /// a child taskscope watching, and report what it ingested: lost or wrong lifecycles, lag,
    /// CPU, memory and the Redis commands it cost.
    Load(Box<load::LoadArgs>),
}
