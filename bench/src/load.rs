//! `taskscope-bench load`: drives a known set of lifecycles through a private Redis, once
//! without taskscope (the baseline) and once with a child `taskscope serve` watching, and
//! reports what taskscope made of them (see [`FlavorReport`]).

use crate::observe::{follow_events, Api, Arrivals};
use crate::usage::{self, ProcUsage};
use anyhow::{bail, Context};
use fred::prelude::*;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskscope::loadgen::redis::{self as rio, send};
use taskscope::loadgen::sandbox::{self, serve_args, tempdir, Proc, RedisServer};
use taskscope::loadgen::{Driver, Flavor, Outcome};
use tracing::{info, Instrument};

/// `taskscope-bench load` flags.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Which broker formats to write: a comma list of celery, celery-events, dramatiq, rq,
    /// taskiq, arq, bullmq, sidekiq, or `all`. Each runs on its own, with its own taskscope.
    #[arg(long, default_value = "all", value_name = "LIST")]
    pub broker: String,
    /// Lifecycles started per second, or `max` (as fast as Redis answers the pipelines).
    #[arg(long, default_value = "max", value_name = "N|max")]
    pub rate: String,
    /// Lifecycles per broker.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// How long each (simulated) task runs between its delivery and its outcome: `0s` (the
    /// default) is the harshest case, a payload gone within two pipelines.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub runtime: Duration,
    /// New lifecycles per pipeline at `--rate max`.
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
    /// Generator connections: the lifecycles are split over this many connections, each with
    /// its own pipeline in flight (and `--rate` / N), so that `--rate max` can saturate Redis
    /// rather than one connection's round trips. Lists are shared: a pop may take another
    /// connection's message (final states and retries, the ground truth, name task ids and are
    /// unaffected). taskiq needs 1: the generator picks stream entry ids, which must grow.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// How long to wait, after the last write, for taskscope to show every final state.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Skip the run without taskscope (then no Redis overhead figures).
    #[arg(long)]
    pub no_baseline: bool,
    /// Print the report as JSON (one object) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// On stderr: tasks shown more than 500 ms after their final write (by outcome, a sample
    /// of ids with their transitions) and tasks never shown (by outcome); taskscope's log is
    /// kept in the temporary directory.
    #[arg(long)]
    pub explain: bool,
    /// The taskscope binary to run (the global `--taskscope`).
    #[arg(skip)]
    pub taskscope: std::path::PathBuf,
}

/// Target rate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    Max,
    PerSec(f64),
}

fn parse_rate(s: &str) -> anyhow::Result<Rate> {
    if s == "max" {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate::PerSec(r)),
        _ => bail!("--rate: {s:?} is neither a positive number nor `max`"),
    }
}

/// Parses `--broker`.
pub fn parse_flavors(s: &str) -> anyhow::Result<Vec<Flavor>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            out.extend(Flavor::ALL);
            continue;
        }
        match Flavor::ALL.into_iter().find(|f| f.as_str() == part) {
            Some(f) => out.push(f),
            None => bail!(
                "--broker: unknown {part:?} (celery, celery-events, dramatiq, rq, taskiq, all)"
            ),
        }
    }
    out.dedup();
    if out.is_empty() {
        bail!("--broker: name at least one broker");
    }
    Ok(out)
}

/// Redis's own counters, read with `INFO`.
#[derive(Debug, Clone, Copy, Default)]
struct RedisCounters {
    /// Commands processed, all kinds but `INFO` (the benchmark's own reads).
    commands: u64,
    cpu_seconds: f64,
}

async fn redis_counters(client: &Client) -> anyhow::Result<RedisCounters> {
    let replies = rio::run_commands(
        client,
        vec![
            ("INFO", vec![Value::from("commandstats")]),
            ("INFO", vec![Value::from("cpu")]),
        ],
    )
    .await?;
    let text = |r: Option<&Result<Value, String>>| match r {
        Some(Ok(v)) => v.as_str().map(|s| s.into_owned()).unwrap_or_default(),
        _ => String::new(),
    };
    let stats = text(replies.first());
    let cpu = text(replies.get(1));
    let mut c = RedisCounters::default();
    for line in stats.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if name == "info" {
            continue;
        }
        let calls = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        c.commands += calls;
    }
    for line in cpu.lines() {
        if let Some(v) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            c.cpu_seconds += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(c)
}

/// What one generator run wrote.
struct Generated {
    /// Per task: id, outcome, when its final-state write went out.
    tasks: Vec<(String, Outcome, Option<Instant>)>,
    started: Instant,
    elapsed: Duration,
    /// Redis counters at the last write.
    at_end: RedisCounters,
    command_errors: u64,
}

/// Runs `n` lifecycles of `flavor` at `rate`, split over `clients` (one driver, one pipeline in
/// flight and `rate / clients` each; task ids stay unique: each driver has its own run number).
/// Redis's counters are read on `clients[0]` once every connection is done.
#[allow(clippy::too_many_arguments)]
async fn generate(
    clients: &[Client],
    flavor: Flavor,
    n: usize,
    rate: Rate,
    batch: usize,
    runtime: Duration,
    run: u64,
) -> anyhow::Result<Generated> {
    let k = clients.len().max(1);
    // One task per connection: the drivers build their commands in parallel, not only
    // concurrently (building payloads costs more CPU than waiting for Redis).
    let handles: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let share = n / k + usize::from(i < n % k);
            let rate = match rate {
                Rate::Max => Rate::Max,
                Rate::PerSec(r) => Rate::PerSec(r / k as f64),
            };
            let client = client.clone();
            tokio::spawn(async move {
                generate_one(
                    &client,
                    flavor,
                    share,
                    rate,
                    batch,
                    runtime,
                    run ^ ((i as u64) << 56),
                )
                .await
            })
        })
        .collect();
    let mut parts = Vec::with_capacity(handles.len());
    for h in handles {
        parts.push(h.await.context("a generator connection's task failed")??);
    }
    let mut tasks = Vec::with_capacity(n);
    let mut started: Option<Instant> = None;
    let mut ended: Option<Instant> = None;
    let mut command_errors = 0;
    for p in parts {
        tasks.extend(p.tasks);
        started = Some(started.map_or(p.started, |s| s.min(p.started)));
        let end = p.started + p.elapsed;
        ended = Some(ended.map_or(end, |e| e.max(end)));
        command_errors += p.command_errors;
    }
    let started = started.unwrap_or_else(Instant::now);
    let first = clients.first().context("no generator connection")?;
    Ok(Generated {
        tasks,
        started,
        elapsed: ended.map_or(Duration::ZERO, |e| e.duration_since(started)),
        at_end: redis_counters(first).await?,
        command_errors,
    })
}

/// What one generator connection wrote.
struct Part {
    tasks: Vec<(String, Outcome, Option<Instant>)>,
    started: Instant,
    elapsed: Duration,
    command_errors: u64,
}

/// Runs `n` lifecycles of `flavor` at `rate` on one connection.
async fn generate_one(
    client: &Client,
    flavor: Flavor,
    n: usize,
    rate: Rate,
    batch: usize,
    runtime: Duration,
    run: u64,
) -> anyhow::Result<Part> {
    let mut d = Driver::new(run, &[flavor]);
    if n == 0 {
        return Ok(Part {
            tasks: Vec::new(),
            started: Instant::now(),
            elapsed: Duration::ZERO,
            command_errors: 0,
        });
    }
    let mut errors = 0u64;
    // A consumer group that exists already (BUSYGROUP) is fine.
    let _ = rio::run_commands(client, d.setup()).await?;
    let mut write_at: Vec<Option<Instant>> = Vec::with_capacity(n);
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let mut created = 0usize;
    let mut next_tick = started;
    loop {
        let now = Instant::now();
        let due = match rate {
            Rate::Max => batch,
            Rate::PerSec(r) => {
                ((now.duration_since(started).as_secs_f64() * r) as usize).saturating_sub(created)
            }
        };
        let k = due.min(n - created);
        let new: Vec<usize> = (0..k).map(|_| d.new_task(flavor, None)).collect();
        created += k;
        write_at.resize(d.tasks.len(), None);
        let out = d.tick(now, &new, &|_| None, &mut |_| runtime);
        let sent = Instant::now();
        errors += send(client, out.commands).await?;
        for i in out.finished {
            write_at[i] = Some(sent);
        }
        if created == n && d.open_tasks() == 0 {
            break;
        }
        if rate != Rate::Max {
            next_tick += tick;
            let now = Instant::now();
            if next_tick > now {
                tokio::time::sleep(next_tick - now).await;
            } else {
                next_tick = now;
            }
        }
    }
    let elapsed = started.elapsed();
    if flavor.success_needs_heartbeats() {
        // Live workers go on beating: the heartbeats that show the last jobs finished.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            errors += send(client, d.idle_heartbeats(chrono::Utc::now())).await?;
        }
    }
    let tasks = d
        .tasks
        .iter()
        .zip(write_at)
        .map(|(t, w)| (t.id.clone(), t.outcome, w))
        .collect();
    Ok(Part {
        tasks,
        started,
        elapsed,
        command_errors: errors,
    })
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lag {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn percentiles(mut v: Vec<f64>) -> Lag {
    if v.is_empty() {
        return Lag::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Lag {
        samples: v.len(),
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        max_ms: v[v.len() - 1],
    }
}

/// The figures of one broker's run.
#[derive(Debug, Clone, Serialize)]
pub struct FlavorReport {
    pub broker: String,
    pub tasks: usize,
    pub rate: String,
    pub runtime_ms: f64,
    /// Whether the target requires 0 lost and 0 wrong here.
    pub must_not_lose: bool,
    /// Lifecycles the generator completed per second (with taskscope watching).
    pub generated_per_s: f64,
    /// Lifecycles taskscope showed in a final state per second, first write to last arrival.
    pub ingested_per_s: f64,
    /// Tasks taskscope never showed.
    pub lost: usize,
    /// Tasks shown in another final state or with another retry count than written.
    pub wrong: usize,
    pub wrong_examples: Vec<String>,
    /// From the final-state write to its `transition` event on `/api/events`.
    pub lag: Lag,
    pub taskscope_cpu_seconds: f64,
    pub taskscope_peak_rss_mb: f64,
    /// Commands taskscope counted itself (`/healthz` `redis_commands`) during the run.
    pub taskscope_redis_commands: u64,
    pub taskscope_commands_per_lifecycle: f64,
    /// Round trips (a pipeline counts once): the target's way of counting.
    pub taskscope_round_trips_per_lifecycle: f64,
    /// Redis's `INFO commandstats`: commands with taskscope minus without, per lifecycle.
    pub redis_extra_commands_per_lifecycle: Option<f64>,
    /// Redis CPU seconds while generating, without and with taskscope.
    pub redis_cpu_seconds_baseline: Option<f64>,
    pub redis_cpu_seconds_with: f64,
    pub redis_extra_cpu_pct: Option<f64>,
    /// The same without taskscope but with its keyspace notifications on: their share.
    pub redis_extra_cpu_pct_notifications_only: Option<f64>,
    /// Redis CPU use while generating without taskscope, in % of one core (~100: saturated).
    pub redis_busy_pct_baseline: Option<f64>,
    /// The same with taskscope watching (`INFO cpu` delta over the generator's wall time).
    pub redis_busy_pct_with: f64,
    /// Generator connections (`--connections`).
    pub connections: usize,
    pub baseline_generated_per_s: Option<f64>,
    pub generator_command_errors: u64,
    pub sse_lagged: u64,
    /// Pub/sub messages taskscope dropped and re-read (`/healthz` `lagged_events`) in the run.
    pub taskscope_fell_behind: u64,
    /// The most keyspace notifications that waited for taskscope's prefetcher (since its
    /// start; `/healthz` `subscriber_backlog_max`).
    pub taskscope_subscriber_backlog_max: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub machine: Machine,
    pub runs: Vec<FlavorReport>,
}

/// Where it ran.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub loadavg_before: String,
    pub redis_version: String,
}

/// `taskscope-bench load`.
pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    let flavors = parse_flavors(&args.broker)?;
    let rate = parse_rate(&args.rate)?;
    anyhow::ensure!(args.tasks > 0, "--tasks must be at least 1");
    let dir = tempdir()?;
    let loadavg_before = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let redis = sandbox::start_redis(dir.path())?;
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.connections == 1 || !flavors.contains(&Flavor::Taskiq),
        "--connections: taskiq needs 1 (the generator picks stream entry ids, which must grow \
         across connections)"
    );
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let c = rio::connect(&redis.url())
            .await
            .context("cannot connect to the private redis-server")?;
        clients.push(c);
    }
    let client = clients[0].clone();
    let redis_version = client
        .info::<String>(Some(fred::types::InfoKind::Server))
        .await
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("redis_version:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_default();
    let mut runs = Vec::new();
    for (k, flavor) in flavors.iter().enumerate() {
        info!(broker = flavor.as_str(), "Running the load benchmark.");
        let report = run_flavor(&clients, &redis, dir.path(), *flavor, rate, &args, k as u64)
            .instrument(tracing::info_span!("bench_load", broker = flavor.as_str()))
            .await
            .with_context(|| format!("{} run", flavor.as_str()))?;
        runs.push(report);
    }
    for c in &clients {
        let _ = c.quit().await;
    }
    drop(redis);
    Ok(Report {
        version: env!("CARGO_PKG_VERSION"),
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            loadavg_before,
            redis_version,
        },
        runs,
    })
}

async fn reset(client: &Client) -> anyhow::Result<()> {
    let replies = rio::run_commands(
        client,
        vec![
            ("FLUSHALL", vec![]),
            (
                "CONFIG",
                vec![
                    Value::from("SET"),
                    Value::from("notify-keyspace-events"),
                    Value::from(""),
                ],
            ),
        ],
    )
    .await?;
    if let Some(Err(e)) = replies.into_iter().find(Result::is_err) {
        bail!("cannot reset the private Redis: {e}");
    }
    Ok(())
}

/// One generator run that no taskscope watches: Redis's counters before it, and what it wrote.
async fn unwatched_run(
    clients: &[Client],
    flavor: Flavor,
    rate: Rate,
    args: &LoadArgs,
    seed: u64,
) -> anyhow::Result<(RedisCounters, Generated)> {
    let client = clients.first().context("no generator connection")?;
    let before = redis_counters(client).await?;
    let g = generate(
        clients,
        flavor,
        args.tasks,
        rate,
        args.batch,
        args.runtime,
        seed,
    )
    .await?;
    Ok((before, g))
}

async fn run_flavor(
    clients: &[Client],
    redis: &RedisServer,
    dir: &std::path::Path,
    flavor: Flavor,
    rate: Rate,
    args: &LoadArgs,
    k: u64,
) -> anyhow::Result<FlavorReport> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ k;

    let client = clients.first().context("no generator connection")?;
    // 1. Without taskscope.
    let baseline = if args.no_baseline {
        None
    } else {
        reset(client).await?;
        Some(unwatched_run(clients, flavor, rate, args, seed).await?)
    };

    // 2. With taskscope.
    reset(client).await?;
    let port = sandbox::free_port()?;
    let db = dir.join(format!("bench-{}.duckdb", flavor.as_str()));
    let log = dir.join(format!("taskscope-{}.log", flavor.as_str()));
    let mut child = sandbox::start_taskscope(
        &args.taskscope,
        &serve_args(
            &redis.url(),
            &db,
            &format!("127.0.0.1:{port}"),
            flavor.broker(),
        ),
        &log,
    )?;
    let api = Api::new(format!("http://127.0.0.1:{port}"))?;
    let result = watched_run(clients, &api, &mut child, flavor, rate, args, seed ^ 0xFF).await;
    child.stop(Duration::from_secs(10));
    if args.explain {
        // The run's directory goes with it: its server log is kept (`TASKSCOPE_LOG` sets the
        // level).
        let kept = std::env::temp_dir().join(format!("taskscope-bench-{}.log", flavor.as_str()));
        match std::fs::copy(&log, &kept) {
            Ok(_) => eprintln!("taskscope's log: {}", kept.display()),
            Err(e) => eprintln!("cannot keep taskscope's log {}: {e}", log.display()),
        }
    }
    // 3. Without taskscope but with the keyspace notifications it turned on (still set): how
    // much of its cost to Redis is the notifications themselves.
    let notify_only = if args.no_baseline || result.is_err() {
        None
    } else {
        rio::run_commands(client, vec![("FLUSHALL", vec![])]).await?;
        let (before, g) = unwatched_run(clients, flavor, rate, args, seed).await?;
        Some(g.at_end.cpu_seconds - before.cpu_seconds)
    };
    let (report_parts, usage) = match result {
        Ok(r) => r,
        Err(e) => {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(e.context(format!("taskscope's log ends with:\n{}", tail.join("\n"))));
        }
    };
    let Watched {
        g,
        before,
        at_settle_commands,
        lost,
        wrong,
        wrong_examples,
        lag,
        last_arrival,
        ts_commands,
        ts_round_trips,
        sse_lagged,
        fell_behind,
        backlog_max,
    } = report_parts;
    let n = args.tasks as f64;
    let with_cpu = g.at_end.cpu_seconds - before.cpu_seconds;
    let with_commands = at_settle_commands.saturating_sub(before.commands);
    let (extra_cmds, base_cpu, extra_cpu, busy, base_rate) = match &baseline {
        Some((b, bg)) => {
            let base_commands = bg.at_end.commands.saturating_sub(b.commands);
            let base_cpu = bg.at_end.cpu_seconds - b.cpu_seconds;
            (
                Some((with_commands as f64 - base_commands as f64) / n),
                Some(base_cpu),
                Some(if base_cpu > 0.0 {
                    (with_cpu - base_cpu) / base_cpu * 100.0
                } else {
                    0.0
                }),
                Some(base_cpu / bg.elapsed.as_secs_f64().max(1e-9) * 100.0),
                Some(n / bg.elapsed.as_secs_f64().max(1e-9)),
            )
        }
        None => (None, None, None, None, None),
    };
    let ingest_span = last_arrival
        .map(|t| t.duration_since(g.started))
        .unwrap_or(g.elapsed);
    Ok(FlavorReport {
        broker: flavor.as_str().to_string(),
        tasks: args.tasks,
        rate: args.rate.clone(),
        runtime_ms: args.runtime.as_secs_f64() * 1000.0,
        must_not_lose: flavor.must_not_lose(),
        generated_per_s: n / g.elapsed.as_secs_f64().max(1e-9),
        ingested_per_s: (args.tasks - lost) as f64 / ingest_span.as_secs_f64().max(1e-9),
        lost,
        wrong,
        wrong_examples,
        lag,
        taskscope_cpu_seconds: usage.cpu_seconds,
        taskscope_peak_rss_mb: usage.peak_rss_mb,
        taskscope_redis_commands: ts_commands,
        taskscope_commands_per_lifecycle: ts_commands as f64 / n,
        taskscope_round_trips_per_lifecycle: ts_round_trips as f64 / n,
        redis_extra_commands_per_lifecycle: extra_cmds,
        redis_cpu_seconds_baseline: base_cpu,
        redis_cpu_seconds_with: with_cpu,
        redis_extra_cpu_pct: extra_cpu,
        redis_extra_cpu_pct_notifications_only: match (notify_only, base_cpu) {
            (Some(with_notify), Some(base)) if base > 0.0 => {
                Some((with_notify - base) / base * 100.0)
            }
            _ => None,
        },
        redis_busy_pct_baseline: busy,
        redis_busy_pct_with: with_cpu / g.elapsed.as_secs_f64().max(1e-9) * 100.0,
        connections: args.connections,
        baseline_generated_per_s: base_rate,
        generator_command_errors: g.command_errors,
        sse_lagged,
        taskscope_fell_behind: fell_behind,
        taskscope_subscriber_backlog_max: backlog_max,
    })
}

struct Watched {
    g: Generated,
    before: RedisCounters,
    at_settle_commands: u64,
    lost: usize,
    wrong: usize,
    wrong_examples: Vec<String>,
    lag: Lag,
    last_arrival: Option<Instant>,
    ts_commands: u64,
    ts_round_trips: u64,
    sse_lagged: u64,
    fell_behind: u64,
    backlog_max: u64,
}

async fn watched_run(
    clients: &[Client],
    api: &Api,
    child: &mut Proc,
    flavor: Flavor,
    rate: Rate,
    args: &LoadArgs,
    seed: u64,
) -> anyhow::Result<(Watched, ProcUsage)> {
    let client = clients.first().context("no generator connection")?;
    api.wait_ready(Duration::from_secs(30), child).await?;
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let follower = tokio::spawn(follow_events(api.clone(), arrivals.clone()));
    // Let the start-up scan and the event stream settle before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ts_before = api.redis_commands().await?;
    let (lagged_before, _) = api.lagged_events().await?;
    let before = redis_counters(client).await?;
    let g = generate(
        clients,
        flavor,
        args.tasks,
        rate,
        args.batch,
        args.runtime,
        seed,
    )
    .await?;

    // Wait for every final state on the event stream, then check the task list (which also
    // covers events the stream dropped) until it is right or the deadline passes.
    let deadline = Instant::now() + args.settle;
    let n = g.tasks.len();
    let mut polls = 0u32;
    loop {
        let seen = arrivals.lock().map(|a| a.final_at.len()).unwrap_or(0);
        if seen >= n || Instant::now() > deadline {
            break;
        }
        // The event stream may have dropped some (`lagged`): every second, ask the store.
        polls += 1;
        if polls % 20 == 0 && api.final_tasks().await.unwrap_or(0) >= n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (lost, wrong, wrong_examples) = loop {
        let shown = api.all_tasks().await?;
        let (mut lost, mut wrong, mut examples) = (0, 0, Vec::new());
        for (id, outcome, _) in &g.tasks {
            match shown.get(id) {
                None => lost += 1,
                Some(s) if s.state != outcome.final_state() || s.retries != outcome.retries() => {
                    wrong += 1;
                    if examples.len() < 5 {
                        examples.push(format!(
                            "{id}: shown {} retries {}, written {} retries {}",
                            s.state,
                            s.retries,
                            outcome.final_state(),
                            outcome.retries()
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        if (lost == 0 && wrong == 0) || Instant::now() > deadline {
            if args.explain && lost > 0 {
                let never: Vec<&(String, Outcome, Option<Instant>)> = g
                    .tasks
                    .iter()
                    .filter(|(id, _, _)| !shown.contains_key(id))
                    .collect();
                let some: Vec<&str> = never.iter().take(3).map(|t| t.0.as_str()).collect();
                eprintln!(
                    "lost: {:?} e.g. {some:?}",
                    by_outcome(never.iter().map(|t| t.1))
                );
            }
            break (lost, wrong, examples);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let usage = usage::usage(child.pid())?;
    let ts_after = api.redis_commands().await?;
    let (lagged_after, backlog_max) = api.lagged_events().await?;
    let fell_behind = lagged_after.saturating_sub(lagged_before);
    let ts_commands = ts_after.0.saturating_sub(ts_before.0);
    let ts_round_trips = ts_after.1.saturating_sub(ts_before.1);
    let at_settle = redis_counters(client).await?;
    follower.abort();
    let (lags, last_arrival, late_ids, sse_lagged) = {
        let a = arrivals
            .lock()
            .map_err(|_| anyhow::anyhow!("arrivals lock poisoned"))?;
        // Each task's lag with its index in `g.tasks`.
        let mut timed = Vec::with_capacity(n);
        let mut last_arrival = None::<Instant>;
        for (i, (id, _, written)) in g.tasks.iter().enumerate() {
            if let (Some(w), Some(seen)) = (written, a.final_at.get(id)) {
                timed.push((seen.saturating_duration_since(*w).as_secs_f64() * 1000.0, i));
                last_arrival = Some(last_arrival.map_or(*seen, |l| l.max(*seen)));
            }
        }
        let late_ids = if args.explain {
            late_report(&g.tasks, &timed)
        } else {
            Vec::new()
        };
        let lags: Vec<f64> = timed.into_iter().map(|(ms, _)| ms).collect();
        (lags, last_arrival, late_ids, a.lagged)
    };
    for id in late_ids.iter().take(3) {
        let t = api.get_json(&format!("/api/tasks/{id}")).await?;
        eprintln!("{id}: {}", serde_json::to_string_pretty(&t["transitions"])?);
    }
    Ok((
        Watched {
            g,
            before,
            at_settle_commands: at_settle.commands,
            lost,
            wrong,
            wrong_examples,
            lag: percentiles(lags),
            last_arrival,
            ts_commands,
            ts_round_trips,
            sse_lagged,
            fell_behind,
            backlog_max,
        },
        usage,
    ))
}

/// How many of `outcomes` there are of each, for `--explain`.
fn by_outcome(
    outcomes: impl Iterator<Item = Outcome>,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for o in outcomes {
        *counts.entry(format!("{o:?}")).or_insert(0) += 1;
    }
    counts
}

/// `--explain`: prints the tasks shown more than 500 ms after their final write (`timed`: lag
/// in ms and index in `tasks`), by outcome, with a sample of them; returns the sampled ids
/// (their transitions are printed next).
fn late_report(
    tasks: &[(String, Outcome, Option<Instant>)],
    timed: &[(f64, usize)],
) -> Vec<String> {
    let mut late: Vec<(f64, &str, Outcome)> = timed
        .iter()
        .filter(|(ms, _)| *ms > 500.0)
        .map(|&(ms, i)| (ms, tasks[i].0.as_str(), tasks[i].1))
        .collect();
    late.sort_by(|x, y| x.0.total_cmp(&y.0));
    eprintln!(
        "late (> 500 ms): {} {:?}",
        late.len(),
        by_outcome(late.iter().map(|l| l.2))
    );
    let mut sampled = Vec::new();
    for (ms, id, o) in late.iter().step_by((late.len() / 8).max(1)) {
        eprintln!("  {ms:.0} ms {id} {o:?}");
        sampled.push(id.to_string());
    }
    sampled
}

/// The report as a table.
pub fn print_table(r: &Report) {
    println!(
        "taskscope-bench {} load: {} CPUs, load before {}, redis {}",
        r.version, r.machine.cpus, r.machine.loadavg_before, r.machine.redis_version
    );
    println!(
        "{:<14}{:>6}{:>6}{:>9}{:>9}{:>6}{:>6}{:>8}{:>8}{:>7}{:>8}{:>8}{:>8}{:>10}{:>10}{:>7}{:>7}",
        "broker",
        "tasks",
        "rate",
        "gen/s",
        "ingest/s",
        "lost",
        "wrong",
        "p50 ms",
        "p99 ms",
        "cpu s",
        "rss MB",
        "cmd/lc",
        "rtt/lc",
        "redis+cmd",
        "redis+cpu",
        "busy%",
        "busy%+"
    );
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for x in &r.runs {
        println!(
            "{:<14}{:>6}{:>6}{:>9.0}{:>9.0}{:>6}{:>6}{:>8.1}{:>8.1}{:>7.2}{:>8.1}{:>8.3}{:>8.3}{:>10}{:>9}%{:>7}{:>7.0}",
            x.broker,
            x.tasks,
            x.rate,
            x.generated_per_s,
            x.ingested_per_s,
            x.lost,
            x.wrong,
            x.lag.p50_ms,
            x.lag.p99_ms,
            x.taskscope_cpu_seconds,
            x.taskscope_peak_rss_mb,
            x.taskscope_commands_per_lifecycle,
            x.taskscope_round_trips_per_lifecycle,
            opt(x.redis_extra_commands_per_lifecycle, 3),
            opt(x.redis_extra_cpu_pct, 1),
            opt(x.redis_busy_pct_baseline, 0),
            x.redis_busy_pct_with,
        );
        for e in &x.wrong_examples {
            println!("    wrong: {e}");
        }
        println!(
            "    taskscope's prefetcher had at most {} notifications waiting",
            x.taskscope_subscriber_backlog_max
        );
        if x.taskscope_fell_behind > 0 {
            println!(
                "    taskscope fell behind Redis pub/sub: {} messages dropped and re-read",
                x.taskscope_fell_behind
            );
        }
    }
}
