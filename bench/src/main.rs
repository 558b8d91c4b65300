//! `taskscope-bench`: the benchmarks of taskscope, kept out of the product binary.
//!
//! # Layout
//! - [`load`]: `taskscope-bench load`, the ingest benchmark with a known ground truth: task
//!   lifecycles from the shared load generator (`taskscope::loadgen`) on a private Redis, with
//!   and without a child `taskscope serve` watching.
//! - [`observe`]: that child's HTTP API: readiness, `/api/events` arrivals, the task list.
//! - [`store`]: `taskscope-bench store`, a generated history of N tasks
//!   (`taskscope::store::synthetic`), its size on disk, the latency of every report and
//!   task-list route of a real `taskscope serve` on it, and that server's peak memory.
//! - [`fold_sink`]: `taskscope-bench fold-sink`, the CPU of the store's fold and sink threads
//!   alone, in process.
//! - [`usage`]: CPU seconds and peak RSS of a child, from `/proc`.
//!
//! Both commands run the `taskscope` binary they are given (`--taskscope`), by default the one
//! built beside this binary: `cargo build --release` first, so the product measured is the
//! current one.
//!
//! Exit codes: 0 success, 2 bad usage, 1 any other error (one line saying what to do).

// Tooling: the benchmarks talk to Redis and read DuckDB files directly (clippy.toml).
#![allow(clippy::disallowed_types)]

mod fold_sink;
mod load;
mod observe;
mod store;
mod usage;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "taskscope-bench", version, about)]
struct Cli {
    /// The taskscope binary to measure (default: `taskscope` beside this binary, e.g.
    /// `target/release/taskscope`).
    #[arg(long, global = true, env = "TASKSCOPE_BIN", value_name = "PATH")]
    taskscope: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write known task lifecycles in each broker's format to a private Redis, with and without
    /// a child taskscope watching, and report what it ingested: lost or wrong lifecycles, lag,
    /// CPU, memory and the Redis commands it cost.
    Load(Box<load::LoadArgs>),
    /// Generate a history of N tasks in DuckDB, then time every report and task-list route of
    /// a `taskscope serve` on it (p50/p95), and report bytes per task and the server's peak RSS.
    Store(Box<store::StoreBenchArgs>),
    /// The CPU of the store's fold and sink threads alone, in this process, on Celery-like
    /// lifecycles written one flush per step.
    FoldSink(Box<fold_sink::FoldSinkArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TASKSCOPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fred=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::FoldSink(args) = cli.command {
        return match fold_sink::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("taskscope-bench: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let outcome = taskscope_binary(cli.taskscope).and_then(|exe| match cli.command {
        Command::Store(args) => store::run(&exe, *args),
        Command::Load(args) => run_load(exe, *args),
        Command::FoldSink(_) => Ok(()),
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskscope-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_load(exe: PathBuf, mut args: load::LoadArgs) -> anyhow::Result<()> {
    args.taskscope = exe;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let json = args.json;
    let report = runtime.block_on(load::run(args))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        load::print_table(&report);
    }
    Ok(())
}

/// The taskscope binary to run: `--taskscope`, else `taskscope` beside this binary.
fn taskscope_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find this binary's directory")?
            .with_file_name("taskscope"),
    };
    anyhow::ensure!(
        path.is_file(),
        "no taskscope binary at {}: build it first (`cargo build --release`) or pass \
         --taskscope PATH",
        path.display()
    );
    Ok(path)
}
