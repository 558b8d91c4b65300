//! `taskscope demo`: a private `redis-server`, a child `taskscope serve` watching it, and the
//! load generator playing gentle, realistic traffic of all six brokers until Ctrl-C: a rate
//! that swells and ebbs over two minutes against workers of fixed capacity (so backlogs rise
//! and fall), runtimes from 50 ms to 3 s, failures and retries.

// The demo drives its private Redis through the load generator's connection (clippy.toml).
#![allow(clippy::disallowed_types)]

use anyhow::Context;
use fred::prelude::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use taskscope::loadgen::redis::{self as gen_redis, send};
use taskscope::loadgen::sandbox::{self, serve_args, tempdir};
use taskscope::loadgen::{http, Driver, Flavor, Rng};
use tracing::Instrument;

/// `taskscope demo` flags.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// HTTP address of the UI; when its port is taken, the next free one is used.
    #[arg(long, default_value = "127.0.0.1:7979", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Keep the history in this file (default: a temporary file, removed at exit).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Average lifecycles started per second, all brokers together.
    #[arg(long, default_value_t = 6.0)]
    pub rate: f64,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

const FLAVORS: [Flavor; 7] = [
    Flavor::CeleryEvents,
    Flavor::Dramatiq,
    Flavor::Rq,
    Flavor::Taskiq,
    Flavor::Arq,
    Flavor::Bullmq,
    Flavor::Sidekiq,
];
/// Period of the rate's swell and ebb.
const PERIOD_S: f64 = 120.0;
const TICK: Duration = Duration::from_millis(100);

/// The first free port from `addr`'s upwards (20 tries).
fn free_listen(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    for k in 0..20u16 {
        let mut a = addr;
        a.set_port(addr.port().saturating_add(k));
        if std::net::TcpListener::bind(a).is_ok() {
            return Ok(a);
        }
    }
    anyhow::bail!(
        "ports {}..{} are all taken: pass --listen 127.0.0.1:<port>",
        addr.port(),
        addr.port().saturating_add(19)
    )
}

/// Runs the demo until Ctrl-C (or `--duration`).
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number"
    );
    let dir = tempdir()?;
    let redis = sandbox::start_redis(dir.path())?;
    let listen = free_listen(args.listen)?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| dir.path().join("taskscope-demo.duckdb"));
    let log = dir.path().join("taskscope.log");
    let mut serve = serve_args(
        &redis.url(),
        &db,
        &listen.to_string(),
        "celery,dramatiq,rq,taskiq,arq,bullmq,sidekiq",
    );
    serve.extend(["--sample-every".to_string(), "2s".to_string()]);
    let exe = std::env::current_exe().context("cannot find the taskscope binary")?;
    let mut child = sandbox::start_taskscope(&exe, &serve, &log)?;
    let ready = tokio::task::spawn_blocking(move || {
        let outcome = http::wait_ready(&mut child, listen.port(), Duration::from_secs(30));
        (child, outcome)
    });
    let (mut child, outcome) = ready.await.context("the readiness check panicked")?;
    if let Err(e) = outcome {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(e.context(format!("taskscope's log:\n{text}")));
    }
    let client = gen_redis::connect(&redis.url())
        .await
        .context("cannot connect to the private redis-server")?;
    println!(
        "taskscope demo: open http://{listen}  (redis-server on port {}, Ctrl-C to stop)",
        redis.port
    );
    let outcome = drive(&client, &mut child, &args)
        .instrument(tracing::info_span!("demo", port = listen.port()))
        .await;
    println!("taskscope demo: stopping.");
    let _ = client.quit().await;
    child.stop(Duration::from_secs(10));
    drop(redis);
    outcome
}

async fn drive(client: &Client, child: &mut sandbox::Proc, args: &DemoArgs) -> anyhow::Result<()> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut d = Driver::new(seed, &FLAVORS);
    d.retry_delay = Duration::from_secs(5);
    let _ = send(client, d.setup()).await?;
    let started = Instant::now();
    let stop_at = args.duration.map(|d| started + d);
    let per_flavor = args.rate / FLAVORS.len() as f64;
    // Workers keep up on average (1.15x the mean rate), not at the peaks.
    let capacity_per_s = per_flavor * 1.15;
    let mut enqueue_credit: HashMap<Flavor, f64> = HashMap::new();
    let mut worker_credit: HashMap<Flavor, f64> = HashMap::new();
    let mut next = started;
    let mut stop = std::pin::pin!(stop_signal());
    loop {
        if let Ok(Some(status)) = child.child.try_wait() {
            anyhow::bail!("taskscope stopped ({status})");
        }
        let now = Instant::now();
        if stop_at.is_some_and(|s| now >= s) {
            return Ok(());
        }
        let t = now.duration_since(started).as_secs_f64();
        let mut new = Vec::new();
        let mut capacity = HashMap::new();
        for (k, f) in FLAVORS.iter().enumerate() {
            // Each broker swells at its own phase; the first minute starts busy.
            let phase = k as f64 * 0.9;
            let swell = 1.0 + 0.9 * (std::f64::consts::TAU * t / PERIOD_S + phase).sin();
            let credit = enqueue_credit.entry(*f).or_default();
            *credit += per_flavor * swell * TICK.as_secs_f64();
            while *credit >= 1.0 {
                *credit -= 1.0;
                new.push(*f);
            }
            let w = worker_credit.entry(*f).or_default();
            *w += capacity_per_s * TICK.as_secs_f64();
            let whole = w.floor();
            *w -= whole;
            capacity.insert(*f, whole as usize);
        }
        let new: Vec<usize> = new.into_iter().map(|f| d.new_task(f, None)).collect();
        let out = d.tick(
            now,
            &new,
            &|f| capacity.get(&f).copied(),
            &mut |r: &mut Rng| {
                // Mostly quick, a long tail.
                let ms = match r.below(10) {
                    0..=5 => 50 + r.below(400),
                    6..=8 => 500 + r.below(1500),
                    _ => 2000 + r.below(1000),
                };
                Duration::from_millis(ms)
            },
        );
        send(client, out.commands).await?;
        next += TICK;
        let now = Instant::now();
        let wait = next.saturating_duration_since(now);
        if wait.is_zero() {
            next = now;
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Ctrl-C or `SIGTERM`.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
