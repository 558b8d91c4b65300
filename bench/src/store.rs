//! `taskscope-bench store`: how big and how fast the history is at N tasks.
//!
//! 1. Generates N tasks into a new DuckDB file with `store::synthetic` (or reuses one with
//!    `--reuse`), checkpoints it and reports its size and bytes per task.
//! 2. Starts a private `redis-server` and a real `taskscope serve` on the file (`--taskscope`),
//!    then times every report route, `/api/stats` and `/api/tasks` with each filter and a
//!    cursor page, over HTTP, `--runs` times each after one warm-up: p50, p95 and max.
//! 3. Reads the server's peak RSS (`VmHWM`) once every route has run.
//!
//! With `--json` the figures are one JSON object on stdout (what CI's smoke test checks).

use crate::usage;
use anyhow::{bail, Context};
use chrono::Utc;
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use taskscope::loadgen::http;
use taskscope::loadgen::sandbox::{self, Proc};
use taskscope::store::synthetic;

/// Targets from issue #8, printed beside the figures.
const TARGET_REPORT_P95_MS: f64 = 100.0;
const TARGET_BYTES_PER_TASK: f64 = 100.0;
const TARGET_RSS_BYTES: u64 = 150 * 1024 * 1024;

/// `taskscope-bench store`.
#[derive(Debug, Args)]
pub struct StoreBenchArgs {
    /// How many tasks to generate.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// The DuckDB file to create (it must not exist, unless `--reuse`). Kept afterwards.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// Time the routes on an existing file made by an earlier run instead of generating.
    #[arg(long)]
    pub reuse: bool,
    /// Timed requests per route (after one warm-up request).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// The history's time span, ending now.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub span: std::time::Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One timed route.
struct Timing {
    name: String,
    path: String,
    samples_ms: Vec<f64>,
    bytes: usize,
    /// Counted against the reports target.
    report: bool,
    /// A route that failed (status and body): the run goes on and says so.
    error: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Timing {
    fn failed(name: &str, path: &str, report: bool, answer: &http::Answer) -> Timing {
        Timing {
            name: name.to_string(),
            path: path.to_string(),
            samples_ms: Vec::new(),
            bytes: 0,
            report,
            error: Some(format!(
                "status {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )),
        }
    }

    fn json(&self) -> Value {
        if let Some(e) = &self.error {
            return json!({
                "name": self.name, "path": self.path, "report": self.report, "error": e,
            });
        }
        let mut s = self.samples_ms.clone();
        s.sort_by(f64::total_cmp);
        json!({
            "name": self.name,
            "path": self.path,
            "report": self.report,
            "p50_ms": round2(percentile(&s, 50.0)),
            "p95_ms": round2(percentile(&s, 95.0)),
            "max_ms": round2(s.last().copied().unwrap_or(0.0)),
            "response_bytes": self.bytes,
        })
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn get_json(port: u16, path: &str) -> anyhow::Result<Value> {
    let a = http::get(port, path)?;
    if a.status != 200 {
        bail!(
            "GET {path}: status {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    serde_json::from_slice(&a.body).with_context(|| format!("GET {path}: not JSON"))
}

/// Times `path`: one warm-up, then `runs` requests.
fn time_route(
    port: u16,
    name: &str,
    path: &str,
    runs: usize,
    report: bool,
) -> anyhow::Result<Timing> {
    let _span = tracing::info_span!("route", name).entered();
    let warm = http::get(port, path)?;
    if warm.status != 200 {
        return Ok(Timing::failed(name, path, report, &warm));
    }
    let mut samples_ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let a = http::get(port, path)?;
        samples_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if a.status != 200 {
            return Ok(Timing::failed(name, path, report, &a));
        }
    }
    Ok(Timing {
        name: name.to_string(),
        path: path.to_string(),
        samples_ms,
        bytes: warm.body.len(),
        report,
        error: None,
    })
}

/// The routes to time: `(name, path, counts as a report)`. Ids, a cursor and a substring come
/// from the first page of the task list.
fn routes(port: u16) -> anyhow::Result<Vec<(String, String, bool)>> {
    let first = get_json(port, "/api/tasks?limit=50")?;
    let cursor = first["next_cursor"].as_str().unwrap_or("").to_string();
    let id = first["tasks"][0]["id"]
        .as_str()
        .unwrap_or("none")
        .to_string();
    let prefix: String = id.chars().take(8).collect();
    let mut out: Vec<(String, String, bool)> = Vec::new();
    let mut add = |name: &str, path: String, report: bool| out.push((name.into(), path, report));
    for (suffix, query) in [
        ("1h", ""),
        ("24h", "?range=24h"),
        ("7d", "?range=7d"),
        ("30d", "?range=30d"),
    ] {
        for report in [
            "backlog",
            "runtime",
            "wait",
            "failures",
            "throughput",
            "names",
        ] {
            add(
                &format!("reports/{report} {suffix}"),
                format!("/api/reports/{report}{query}"),
                true,
            );
        }
    }
    add("stats", "/api/stats".into(), true);
    add("stats since=1h", "/api/stats?since=1h".into(), true);
    add("queues", "/api/queues".into(), false);
    add("workers", "/api/workers".into(), false);
    add("tasks", "/api/tasks?limit=50".into(), false);
    add(
        "tasks broker",
        "/api/tasks?broker=dramatiq&limit=50".into(),
        false,
    );
    add(
        "tasks state",
        "/api/tasks?state=failure&limit=50".into(),
        false,
    );
    add(
        "tasks name",
        "/api/tasks?name=myapp.tasks.send_email&limit=50".into(),
        false,
    );
    add(
        "tasks broker+state+name",
        "/api/tasks?broker=celery&state=failure,retried&name=myapp.tasks.charge_card&limit=50"
            .into(),
        false,
    );
    add(
        "tasks since/until",
        "/api/tasks?since=2h&until=1h&limit=50".into(),
        false,
    );
    add(
        "tasks since=7d state",
        "/api/tasks?since=7d&state=abandoned&limit=50".into(),
        false,
    );
    add(
        "tasks q (common)",
        "/api/tasks?q=example.com&limit=50".into(),
        false,
    );
    add(
        "tasks q (id prefix)",
        format!("/api/tasks?q={}&limit=50", encode(&prefix)),
        false,
    );
    add(
        "tasks q since=24h",
        format!("/api/tasks?q={}&since=24h&limit=50", encode(&prefix)),
        false,
    );
    if !cursor.is_empty() {
        add(
            "tasks page 2 (cursor)",
            format!("/api/tasks?limit=50&cursor={}", encode(&cursor)),
            false,
        );
    }
    add("task detail", format!("/api/tasks/{}", encode(&id)), false);
    add("page /", "/".into(), false);
    add("page /reports", "/reports".into(), false);
    add("page /tasks", "/tasks".into(), false);
    Ok(out)
}

/// Waits until the server's writer has been idle for 2 s: at start, ingest reconciles the open
/// tasks and the abandon sweep settles the generated `running` tasks whose workers are silent,
/// which writes; timing during that would measure the writer, not the reads.
fn settle(port: u16) -> anyhow::Result<()> {
    let written = || -> anyhow::Result<(u64, u64)> {
        let h = get_json(port, "/healthz")?;
        let w = &h["store"];
        Ok((
            w["transitions_written"].as_u64().unwrap_or(0),
            w["backlog"].as_u64().unwrap_or(0),
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = written()?;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = written()?;
        if now != last || now.1 > 0 {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(2) {
            return Ok(());
        }
    }
    bail!("the server's writer did not settle within 10 minutes")
}

/// Runs `taskscope-bench store` against the taskscope binary `exe`.
pub fn run(exe: &Path, args: StoreBenchArgs) -> anyhow::Result<()> {
    let span = chrono::Duration::from_std(args.span).context("--span is too long")?;
    let human = !args.json;
    let generated = if args.reuse {
        if !args.db.exists() {
            bail!(
                "--reuse: {} does not exist; run without --reuse first",
                args.db.display()
            );
        }
        None
    } else {
        if args.db.exists() {
            bail!(
                "{} exists: pass --reuse to time it again, or a new --db path",
                args.db.display()
            );
        }
        let started = Instant::now();
        let g = synthetic::generate(&args.db, args.tasks, Utc::now(), span, |done| {
            if human {
                eprintln!(
                    "generated {done} of {} tasks ({:.0?})",
                    args.tasks,
                    started.elapsed()
                );
            }
        })?;
        Some(g)
    };
    let file_bytes = std::fs::metadata(&args.db)?.len();
    let wal = args.db.with_extension("duckdb.wal");
    let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);

    // A private Redis and a real server on the file.
    let scratch = sandbox::tempdir()?;
    let redis = sandbox::start_redis(scratch.path())?;
    let redis_port = redis.port;
    let http_port = sandbox::free_port()?;
    let serve_started = Instant::now();
    let child = Command::new(exe)
        .args(["serve", "--db"])
        .arg(&args.db)
        .args([
            "--redis",
            &format!("redis://127.0.0.1:{redis_port}/0"),
            "--listen",
            &format!("127.0.0.1:{http_port}"),
            "--brokers",
            "celery",
            // No housekeeping while timing: once a year, and nothing is old enough to drop.
            "--housekeeping",
            "0 0 0 1 1 *",
            "--retention",
            "365d",
        ])
        .env("TASKSCOPE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start taskscope serve")?;
    let mut serve = Proc { child };
    http::wait_http(&mut serve, http_port, "/healthz", Duration::from_secs(300))?;
    let startup = serve_started.elapsed();
    settle(http_port)?;
    let rss_idle = usage::status_bytes(serve.pid(), "VmRSS").unwrap_or(0);
    let stats = get_json(http_port, "/api/stats")?;
    let tasks_served: u64 = stats["by_state"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);

    let mut timings = Vec::new();
    for (name, path, report) in routes(http_port)? {
        let t = time_route(http_port, &name, &path, args.runs, report)?;
        if let (true, Some(e)) = (human, &t.error) {
            eprintln!("{name:<28} FAILED {e}");
        } else if human {
            let j = t.json();
            eprintln!(
                "{:<28} p50 {:>9.2} ms  p95 {:>9.2} ms  max {:>9.2} ms",
                name, j["p50_ms"], j["p95_ms"], j["max_ms"]
            );
        }
        timings.push(t);
    }
    let pid = serve.pid();
    let peak_rss = usage::status_bytes(pid, "VmHWM").unwrap_or(0);
    let rss_end = usage::status_bytes(pid, "VmRSS").unwrap_or(0);
    let cpu = usage::cpu_seconds(pid).unwrap_or(0.0);
    let rss_by_mapping = usage::rss_by_mapping(pid);
    let engine_bytes = engine_memory_bytes(http_port);
    serve.stop(Duration::from_secs(30));

    let tasks = generated.as_ref().map(|g| g.tasks).unwrap_or(tasks_served);
    let bytes_per_task = file_bytes as f64 / tasks.max(1) as f64;
    let failed: Vec<&str> = timings
        .iter()
        .filter(|t| t.error.is_some())
        .map(|t| t.name.as_str())
        .collect();
    let report_p95 = timings
        .iter()
        .filter(|t| t.report)
        .map(|t| t.json()["p95_ms"].as_f64().unwrap_or(f64::INFINITY))
        .fold(0.0, f64::max);
    let report_p95_default = timings
        .iter()
        .filter(|t| t.report && (t.name.ends_with(" 1h") || t.name.starts_with("stats")))
        .map(|t| t.json()["p95_ms"].as_f64().unwrap_or(f64::INFINITY))
        .fold(0.0, f64::max);
    let out = json!({
        "failed_routes": failed,
        "tasks": tasks,
        "tasks_served": tasks_served,
        "transitions": generated.as_ref().map(|g| g.transitions),
        "queue_samples": generated.as_ref().map(|g| g.queue_samples),
        "generate_seconds": generated.as_ref().map(|g| round2(g.elapsed.as_secs_f64())),
        "file_bytes": file_bytes,
        "wal_bytes": wal_bytes,
        "bytes_per_task": round2(bytes_per_task),
        "runs": args.runs,
        "routes": timings.iter().map(Timing::json).collect::<Vec<_>>(),
        "serve": {
            "startup_seconds": round2(startup.as_secs_f64()),
            "rss_idle_bytes": rss_idle,
            "rss_end_bytes": rss_end,
            "peak_rss_bytes": peak_rss,
            "rss_end_by_mapping": rss_by_mapping
                .iter()
                .map(|(name, bytes)| json!({"mapping": name, "bytes": bytes}))
                .collect::<Vec<_>>(),
            "engine_memory_end_bytes": engine_bytes,
            "cpu_seconds": round2(cpu),
        },
        "summary": {
            // null when a report route failed.
            "report_p95_max_ms": report_p95.is_finite().then_some(report_p95),
            "report_p95_max_default_window_ms":
                report_p95_default.is_finite().then_some(report_p95_default),
            "targets": {
                "report_p95_ms": TARGET_REPORT_P95_MS,
                "bytes_per_task": TARGET_BYTES_PER_TASK,
                "peak_rss_bytes": TARGET_RSS_BYTES,
            },
            "met": {
                "report_p95": report_p95 < TARGET_REPORT_P95_MS,
                "report_p95_default_window": report_p95_default < TARGET_REPORT_P95_MS,
                "bytes_per_task": bytes_per_task <= TARGET_BYTES_PER_TASK,
                "peak_rss": peak_rss < TARGET_RSS_BYTES,
            },
        },
    });
    if !failed.is_empty() && human {
        println!("FAILED routes: {}", failed.join(", "));
    }
    if args.json {
        println!("{out}");
    } else {
        let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
        println!(
            "tasks {tasks}, file {:.1} MiB = {:.1} bytes/task (target <= {TARGET_BYTES_PER_TASK})",
            mib(file_bytes),
            bytes_per_task
        );
        if let Some(g) = &generated {
            println!(
                "generated in {:.1?}: {} transitions, {} queue samples",
                g.elapsed, g.transitions, g.queue_samples
            );
        }
        println!(
            "reports p95: worst {report_p95:.1} ms, worst on the default 1h window {report_p95_default:.1} ms (target < {TARGET_REPORT_P95_MS})"
        );
        println!(
            "serve: started in {:.1?}, idle RSS {:.1} MiB, peak RSS {:.1} MiB (target < {:.0} MiB), {:.1} CPU s",
            startup,
            mib(rss_idle),
            mib(peak_rss),
            mib(TARGET_RSS_BYTES),
            cpu
        );
        let parts: Vec<String> = rss_by_mapping
            .iter()
            .take(6)
            .map(|(name, bytes)| format!("{name} {:.1}", mib(*bytes)))
            .collect();
        println!(
            "RSS at the end, MiB: {} (of the anonymous memory, DuckDB's buffer manager holds {:.1})",
            parts.join(", "),
            mib(engine_bytes)
        );
    }
    Ok(())
}

/// What DuckDB's buffer manager holds, summed over its tags (`/metrics`
/// `taskscope_store_engine_memory_bytes`); 0 when the scrape fails.
fn engine_memory_bytes(port: u16) -> u64 {
    let Ok(answer) = http::get(port, "/metrics") else {
        return 0;
    };
    String::from_utf8_lossy(&answer.body)
        .lines()
        .filter(|l| l.starts_with("taskscope_store_engine_memory_bytes"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
