//! `taskscope`: a sidecar that watches task queues on Redis and keeps their history.
//!
//! # Layout
//! - [`config`]: flags, environment and TOML into validated settings.
//! - [`brokers`]: the broker registry: each broker's settings, detection rules and adapter.
//! - [`ingest`]: Redis in (notifications, pub/sub, reads), adapters' observations out.
//! - [`store`]: DuckDB history; one writer thread folds observations with the state machine.
//! - [`http`]: the JSON API and the pages.
//! - [`metrics`]: counters shared by the above.
//! - [`alerts`]: `[[alert]]` rules evaluated on a schedule, webhooks.
//! - [`export`]: `taskscope export`, the task list to CSV or Parquet.
//! - [`inspect`]: `taskscope inspect`, a one-shot look at the brokers in Redis.
//! - [`demo`]: `taskscope demo`, a live dashboard fed by the load generator.
//!
//! `store` and the load generator live in the package's library (`src/lib.rs`), which the
//! benchmarks (`bench/`, package `taskscope-bench`) share.
//!
//! Exit codes: 0 success, 2 bad usage, 1 any other error (one line saying what to do).

/// jemalloc for the whole process (see `Cargo.toml`); its unprefixed `malloc` also serves the
/// C and C++ libraries linked in.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start (`MALLOC_CONF` in the environment overrides them):
/// freed pages go back to the system within about a second, by a background thread even when
/// taskscope is idle, and two arenas serve the process's few busy threads. With jemalloc's
/// defaults (8 arenas on 2 cores, 10 s decay) the Flower comparison's peak RSS was 158.9 MiB;
/// with these 132.3 (glibc: 129.7-134.1), the CPU gain kept.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[export_name = "malloc_conf"]
static JEMALLOC_CONF: JemallocConf =
    JemallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2".as_ptr());

/// A C string for jemalloc (`const char *malloc_conf`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);
// SAFETY: it points to a static, immutable byte string.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe impl Sync for JemallocConf {}

mod actions;
mod alerts;
mod brokers;
mod config;
mod demo;
mod export;
#[cfg(all(feature = "heap-profile", target_os = "linux", target_env = "gnu"))]
mod heap_profile;
mod housekeeping;
mod http;
mod ingest;
mod inspect;
mod metrics;
mod purge;

use taskscope::store;

use anyhow::Context;
use clap::Parser;
use config::{Cli, Command, HousekeepingCmd, ServeSettings, UsageError};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{error, info};

/// SCAN pages (of 1000 keys) per kind of scan per detection pass: 100k keys a pass.
const DETECT_PAGES_PER_PASS: usize = 100;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = config::apply_config_file(&args) {
        eprintln!("taskscope: {e:#}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(&args);
    // A one-shot command's output is what it prints: only errors go to stderr by default.
    init_tracing(
        if matches!(cli.command, Command::Inspect(_) | Command::Purge(_)) {
            "error"
        } else {
            "info,fred=warn"
        },
    );
    match cli.command {
        Command::Housekeeping(args) => housekeeping_once(args),
        Command::Export(export_args) => match export::run(*export_args) {
            Ok(n) => {
                info!(tasks = n, "Exported.");
                ExitCode::SUCCESS
            }
            Err(export::ExportError::Usage(msg)) => {
                eprintln!("taskscope: {msg}");
                ExitCode::from(2)
            }
            Err(export::ExportError::Other(e)) => {
                eprintln!("taskscope: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Demo(args) => run_async(demo::run(*args)),
        Command::Inspect(args) => {
            let runtime = match async_runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(inspect::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(inspect::InspectError::Usage(msg)) => {
                    eprintln!("taskscope: {msg}");
                    ExitCode::from(2)
                }
                Err(inspect::InspectError::Other(e)) => {
                    eprintln!("taskscope: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Purge(args) => {
            let runtime = match async_runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(purge::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(purge::PurgeError::Usage(msg)) => {
                    eprintln!("taskscope: {msg}");
                    ExitCode::from(2)
                }
                Err(purge::PurgeError::Other(e)) => {
                    eprintln!("taskscope: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Serve(serve_args) => {
            let settings = match serve_args.into_settings() {
                Ok(s) => s,
                Err(UsageError(msg)) => {
                    eprintln!("taskscope: {msg}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match async_runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    eprintln!("taskscope: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Runs a subcommand's future on a fresh runtime; errors print one line and exit 1.
fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("taskscope: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskscope: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `taskscope housekeeping`: runs the jobs once on a file no `serve` holds, prints each.
fn housekeeping_once(args: Box<HousekeepingCmd>) -> ExitCode {
    let args = *args;
    use housekeeping::jobs::{Context, Job};
    let settings = match args.housekeeping.into_settings() {
        Ok(s) => s,
        Err(UsageError(msg)) => {
            eprintln!("taskscope: {msg}");
            return ExitCode::from(2);
        }
    };
    let mut jobs = Vec::new();
    for name in args.jobs.iter().map(|j| j.trim()).filter(|j| !j.is_empty()) {
        match Job::ALL.into_iter().find(|j| j.as_str() == name) {
            Some(job) => jobs.push(job),
            None => {
                eprintln!(
                    "taskscope: --jobs: unknown job {name:?} (rollup, retention, compaction)"
                );
                return ExitCode::from(2);
            }
        }
    }
    if jobs.is_empty() {
        jobs = Job::ALL.to_vec();
    }
    if !args.db.exists() {
        eprintln!(
            "taskscope: {} does not exist: pass the --db that taskscope serve writes",
            args.db.display()
        );
        return ExitCode::from(1);
    }
    let runtime = match async_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let (writer, reader, writer_thread) =
            store::open(&args.db, store::StoreOptions::default())?;
        let cx = Context {
            writer: &writer,
            reader: &reader,
            db_path: args.db.clone(),
            policy: &settings.policy,
        };
        let mut failed = false;
        for job in jobs {
            match housekeeping::run_job(job, &cx, None, args.dry_run).await {
                Ok(report) => println!(
                    "{job}{}: {}",
                    if args.dry_run { " (dry run)" } else { "" },
                    report.detail
                ),
                Err(e) => {
                    failed = true;
                    println!("{job}: failed: {e}");
                }
            }
        }
        writer.flush().await?;
        drop(writer);
        drop(reader);
        let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        anyhow::ensure!(!failed, "some housekeeping jobs failed (see above)");
        if args.rewrite {
            let (before, after) = store::maintenance::rewrite(&args.db)?;
            println!(
                "rewrite: {} -> {}",
                housekeeping::jobs::human_bytes(before),
                housekeeping::jobs::human_bytes(after)
            );
        }
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskscope: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The multi-threaded tokio runtime, or the exit code after saying why it cannot start.
fn async_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("taskscope: cannot start the async runtime: {e}");
            ExitCode::from(1)
        })
}

/// Logs to stderr, filtered by `TASKSCOPE_LOG` (e.g. `debug`), else by `default`.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TASKSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(settings: ServeSettings) -> anyhow::Result<()> {
    // Before any decoding: every decoder reads the budget from here.
    broker_adapters::limits::Limits::configure(settings.decode_limits);
    let (writer, reader, writer_thread) =
        store::open(&settings.db_path, store::StoreOptions::default())?;
    info!(db = %settings.db_path.display(), "Opened the history.");
    let metrics = Arc::new(metrics::Metrics::default());
    metrics.set_brokers(settings.brokers.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another process using it? pass --listen)",
                settings.listen
            )
        })?;
    info!(address = %settings.listen, "Serving the UI and API on http://{}.", settings.listen);
    if settings.auth_token.is_none() && !settings.listen.ip().is_loopback() {
        tracing::warn!(
            address = %settings.listen,
            "INSECURE: serving task arguments and results without --auth-token on an address \
             reachable beyond this machine (--insecure-listen). Set --auth-token unless a proxy \
             or a private network guards this port."
        );
    }
    let actions = actions::Actions::start(
        settings.actions.clone(),
        &settings.redis_url,
        settings.redis_db,
        settings.max_payload_bytes,
    )
    .await?
    .with_sidekiq_namespace(
        settings
            .registry
            .namespace(broker_adapters::Broker::Sidekiq)
            .as_deref(),
    )
    .with_sanitizer(ingest::sanitize::Sanitizer::new(
        settings.max_value_bytes,
        settings.redact_keys.clone(),
    ))
    .with_detection(metrics.clone());
    if actions.enabled() {
        tracing::warn!(
            names = %settings.actions.allow_names.join(","),
            identity = settings.actions.trusted_user_header.as_deref().unwrap_or("token"),
            "Write actions are enabled (--allow-actions): taskscope may enqueue, retry, delete, \
             purge and revoke tasks; every action is journaled in /audit."
        );
    }
    let task_metrics = http::prometheus::TaskMetrics::new(settings.metrics_max_labels);
    task_metrics.clone().spawn_feed(writer.subscribe());
    let alert_board = alerts::AlertBoard::new(settings.alerts.rules.clone());
    let app = http::router(
        http::AppState::new(
            reader.clone(),
            writer.clone(),
            metrics.clone(),
            settings.abandon_after,
            task_metrics,
            http::Access {
                auth_token: settings.auth_token.clone(),
                hosts: http::auth::HostPolicy {
                    listen: Some(settings.listen),
                    allowed: settings.allowed_hosts.clone(),
                },
                max_queries: settings.max_http_queries,
                base_path: settings.base_path.clone(),
                ..http::Access::default()
            },
            http::limits::HttpLimits {
                request_timeout: settings.request_timeout,
                max_sse_clients: settings.max_sse_clients,
                ..http::limits::HttpLimits::default()
            },
            shutdown_rx.clone(),
        )
        .with_alerts(alert_board.clone())
        .with_actions(actions),
    );
    let alert_task = if settings.alerts.rules.is_empty() {
        None
    } else {
        info!(
            rules = settings.alerts.rules.len(),
            every = ?settings.alerts.every,
            "Evaluating alert rules."
        );
        Some(alerts::spawn(
            settings.alerts.clone(),
            reader.clone(),
            alert_board,
            shutdown_rx.clone(),
        )?)
    };
    let server = tokio::spawn(http::server::serve(
        listener,
        app,
        http::server::ServerOptions::default(),
        shutdown_rx.clone(),
    ));

    let (ingest_cfg, adapters, auto) = ingest_parts(&settings);
    let housekeeping = housekeeping::spawn(
        settings.housekeeping.clone(),
        writer.clone(),
        reader.clone(),
        settings.db_path.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    );
    #[cfg(all(feature = "heap-profile", target_os = "linux", target_env = "gnu"))]
    heap_profile::spawn_dump_on_signal();
    let ingest = ingest::spawn(
        ingest_cfg,
        adapters,
        auto,
        writer.clone(),
        reader,
        metrics,
        shutdown_rx,
    )?;

    let ingest_result = tokio::select! {
        _ = shutdown_signal() => {
            info!("Shutting down.");
            None
        }
        r = ingest => Some(r),
    };
    let _ = shutdown_tx.send(true);
    // A job mid-run stops at its next step; its work so far is committed and idempotent.
    housekeeping.abort();
    let _ = housekeeping.await;
    if let Some(task) = alert_task {
        let _ = task.await;
    }
    if let Some(result) = ingest_result {
        result.context("the ingest task panicked")??;
    }
    server.await.context("the HTTP task panicked")??;
    if let Err(e) = writer.flush().await {
        error!(error = %e, "Could not flush the last writes.");
    }
    drop(writer);
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    info!("Stopped.");
    Ok(())
}

/// What the ingest pipeline is started with, from the settings: its knobs, the adapters of the
/// brokers given, and auto-detection (`--brokers auto`). Shared by `serve` and `inspect`.
fn ingest_parts(
    settings: &ServeSettings,
) -> (
    ingest::IngestConfig,
    Vec<Box<dyn broker_adapters::Adapter>>,
    Option<ingest::AutoDetect>,
) {
    let ingest_cfg = ingest::IngestConfig {
        redis_url: settings.redis_url.clone(),
        redis_db: settings.redis_db,
        config_set: settings.config_set,
        abandon_after: settings.abandon_after,
        sample_every: settings.sample_every,
        reconcile_every: settings.reconcile_every,
        poll_every: settings.poll_every,
        rescan_every: settings.rescan_every,
        max_payload_bytes: settings.max_payload_bytes,
        sanitizer: ingest::sanitize::Sanitizer::new(
            settings.max_value_bytes,
            settings.redact_keys.clone(),
        ),
    };
    let adapters = settings
        .brokers
        .iter()
        .filter_map(|b| settings.registry.build_adapter(*b, &[]))
        .collect();
    let auto = settings.detect_every.map(|every| {
        info!(every = ?every, "Looking for {} keys in Redis (--brokers auto).", brokers::names_for_humans());
        let registry = settings.registry.clone();
        ingest::AutoDetect {
            options: ingest::detect::DetectOptions {
                every,
                pages_per_pass: DETECT_PAGES_PER_PASS,
                rules: Arc::new(settings.registry.key_rules()),
                redis_url: settings.redis_url.clone(),
                db: settings.redis_db,
            },
            factory: Box::new(move |broker, detected| registry.build_adapter(broker, detected)),
        }
    });
    (ingest_cfg, adapters, auto)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
