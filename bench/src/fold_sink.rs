//! `taskscope-bench fold-sink`: the CPU of the store's fold and sink threads alone, in this
//! process, on Celery-like lifecycles (no Redis, no HTTP).
//!
//! Each step stands for one flush interval: `--per-step` new tasks are queued, the previous
//! step's are received and started (two `running` observations), the step before's succeed;
//! then a flush writes the step in one transaction. CPU is read per thread from
//! `/proc/self/task` (`taskscope-fold`, `taskscope-sink`, the rest), and reported per 10k
//! observations, with the wall time of each flush (the sink's transaction).

use anyhow::Context;
use broker_adapters::{Broker, Observation, TaskEvent, TaskObservation};
use chrono::{DateTime, Duration, Utc};
use clap::Args;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use taskscope::store::{self, StoreOptions};

/// `taskscope-bench fold-sink`.
#[derive(Debug, Args)]
pub struct FoldSinkArgs {
    /// Tasks in all.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// New tasks per step (one flush each).
    #[arg(long, default_value_t = 1_000)]
    pub per_step: usize,
    /// Observations per command sent to the writer (as one ingest batch).
    #[arg(long, default_value_t = 200)]
    pub chunk: usize,
    /// The DuckDB file (created; an existing one is opened and added to).
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// Afterwards, check the file: one row and one number per task, counts equal to the rows,
    /// every transition's task there (e.g. on a file an older taskscope wrote).
    #[arg(long)]
    pub check: bool,
}

/// Each check's SQL answers 0 when the file is consistent.
const CHECKS: &[(&str, &str)] = &[
    (
        "tasks sharing a number",
        "SELECT (count(*) - count(DISTINCT num))::VARCHAR FROM task_rows",
    ),
    (
        "tasks stored twice",
        "SELECT (count(*) - count(DISTINCT (broker, uid)))::VARCHAR FROM task_rows",
    ),
    (
        "task_counts off from the rows",
        "SELECT coalesce(sum(abs(coalesce(c.n, 0) - coalesce(r.n, 0))), 0)::VARCHAR
         FROM task_counts c
         FULL JOIN (SELECT broker, state, count(*) AS n FROM task_rows GROUP BY ALL) r
           USING (broker, state)",
    ),
    (
        "transitions without their task",
        "SELECT count(*)::VARCHAR FROM transitions t
         LEFT JOIN task_rows k ON k.num = t.task_num WHERE k.num IS NULL",
    ),
];

/// CPU seconds of each thread of this process by name.
fn thread_cpu() -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let Some(end) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[end + 2..].split_whitespace().collect();
        let ticks: f64 = fields
            .get(11)
            .and_then(|u| u.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
        let name = match comm.trim() {
            n @ ("taskscope-fold" | "taskscope-sink") => n.to_string(),
            _ => "other".to_string(),
        };
        *out.entry(name).or_insert(0.0) += ticks / 100.0;
    }
    out
}

fn observation(id: usize, at: DateTime<Utc>, event: TaskEvent) -> Observation {
    let mut o = TaskObservation::new(
        Broker::Celery,
        taskscope::loadgen::uuid_id(7, id as u64),
        at,
        event,
        "event",
    );
    match event {
        TaskEvent::Queued => {
            o.fields.name = Some("bench.tasks.add".into());
            o.fields.queue = Some("celery".into());
            o.fields.args = Some(json!([id, 2]));
            o.fields.kwargs = Some(json!({}));
        }
        TaskEvent::Running => o.fields.worker = Some("celery@bench".into()),
        TaskEvent::Succeeded => o.fields.result = Some(json!(id + 2)),
        _ => {}
    }
    Observation::Task(o)
}

pub fn run(args: FoldSinkArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let opts = StoreOptions {
        flush_interval: std::time::Duration::from_secs(3600),
        ..StoreOptions::default()
    };
    let (writer, reader, handle) = store::open(&args.db, opts)
        .with_context(|| format!("cannot open {}", args.db.display()))?;
    let start = Utc::now() - Duration::hours(1);
    let per_step = args.per_step.max(1);
    let steps = args.tasks.div_ceil(per_step) + 3;
    let before = thread_cpu();
    let started = Instant::now();
    let mut flush_ms = Vec::new();
    let mut observations = 0usize;
    runtime.block_on(async {
        for step in 0..steps {
            let at = start + Duration::milliseconds(step as i64 * 1000);
            let mut obs = Vec::new();
            let ids = |s: usize| (s * per_step)..((s + 1) * per_step).min(args.tasks);
            if step >= 3 {
                for id in ids(step - 3) {
                    obs.push(observation(id, at, TaskEvent::Succeeded));
                }
            }
            if step >= 1 && step - 1 < steps - 3 {
                for id in ids(step - 1) {
                    obs.push(observation(id, at, TaskEvent::Running));
                    obs.push(observation(id, at, TaskEvent::Running));
                }
            }
            if step < steps - 3 {
                for id in ids(step) {
                    obs.push(observation(id, at, TaskEvent::Queued));
                }
            }
            observations += obs.len();
            let mut obs = obs.into_iter().peekable();
            while obs.peek().is_some() {
                let chunk: Vec<Observation> = obs.by_ref().take(args.chunk.max(1)).collect();
                writer.observe(chunk).await?;
            }
            let t = Instant::now();
            writer.flush().await?;
            flush_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::Ok(())
    })?;
    let wall = started.elapsed();
    let after = thread_cpu();
    if args.check {
        let mut failed = Vec::new();
        runtime.block_on(async {
            for (what, sql) in CHECKS {
                let answer = reader.column_for_test(sql).await;
                println!("check: {what}: {}", answer.join(","));
                if answer != ["0"] {
                    failed.push(*what);
                }
            }
            let rows = reader
                .column_for_test("SELECT count(*)::VARCHAR FROM task_rows")
                .await;
            let transitions = reader
                .column_for_test("SELECT count(*)::VARCHAR FROM transitions")
                .await;
            println!(
                "check: {} tasks, {} transitions",
                rows.join(","),
                transitions.join(",")
            );
        });
        anyhow::ensure!(failed.is_empty(), "the file is inconsistent: {failed:?}");
    }
    drop(writer);
    if handle.join().is_err() {
        anyhow::bail!("the store's writer thread panicked");
    }
    drop(reader);
    let per10k = |name: &str| {
        (after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0)) * 10_000.0
            / observations.max(1) as f64
    };
    flush_ms.sort_by(f64::total_cmp);
    let p50 = flush_ms.get(flush_ms.len() / 2).copied().unwrap_or(0.0);
    println!(
        "fold-sink: {observations} observations, {} tasks, {steps} flushes in {:.2} s",
        args.tasks,
        wall.as_secs_f64()
    );
    println!(
        "CPU-s per 10k observations: fold {:.4}  sink {:.4}  other {:.4}",
        per10k("taskscope-fold"),
        per10k("taskscope-sink"),
        per10k("other")
    );
    println!(
        "flush wall ms: p50 {:.1}  max {:.1}",
        p50,
        flush_ms.last().copied().unwrap_or(0.0)
    );
    Ok(())
}
