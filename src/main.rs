//! `taskscope`: a sidecar that watches task queues on Redis and keeps their history.
//!
//! # Layout
//! - [`config`]: flags, environment and TOML into validated settings.
//! - [`ingest`]: Redis in (notifications, pub/sub, reads), adapters' observations out.
//! - [`store`]: DuckDB history; one writer thread folds observations with the state machine.
//! - [`http`]: the JSON API and the pages.
//! - [`metrics`]: counters shared by the above.
//! - [`export`]: `taskscope export`, the task list to CSV or Parquet.
//!
//! Exit codes: 0 success, 2 bad usage, 1 any other error (one line saying what to do).

mod config;
mod export;
mod http;
mod ingest;
mod metrics;
mod store;

use anyhow::Context;
use broker_adapters::celery::{CeleryAdapter, CeleryConfig};
use broker_adapters::dramatiq::{DramatiqAdapter, DramatiqConfig};
use broker_adapters::{Adapter, Broker};
use clap::Parser;
use config::{Cli, Command, ServeSettings, UsageError};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{error, info};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = config::apply_config_file(&args) {
        eprintln!("taskscope: {e:#}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(&args);
    init_tracing();
    match cli.command {
        Command::Export(export_args) => match export::run(export_args) {
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
        Command::Serve(serve_args) => {
            let settings = match serve_args.into_settings() {
                Ok(s) => s,
                Err(UsageError(msg)) => {
                    eprintln!("taskscope: {msg}");
                    return ExitCode::from(2);
                }
            };
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TASKSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fred=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn build_adapters(settings: &ServeSettings) -> Vec<Box<dyn Adapter>> {
    settings
        .brokers
        .iter()
        .map(|broker| -> Box<dyn Adapter> {
            match broker {
                Broker::Celery => Box::new(CeleryAdapter::new(CeleryConfig {
                    db: settings.redis_db,
                    queues: settings.celery_queues.clone(),
                    result_url: settings.celery_result_url.clone(),
                })),
                Broker::Dramatiq => Box::new(DramatiqAdapter::new(DramatiqConfig {
                    namespace: settings.dramatiq_namespace.clone(),
                })),
                // config::parse_brokers only lets through brokers of AVAILABLE_BROKERS.
                other => unreachable!("no adapter for {other}"),
            }
        })
        .collect()
}

async fn serve(settings: ServeSettings) -> anyhow::Result<()> {
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
    let task_metrics = http::prometheus::TaskMetrics::default();
    task_metrics.clone().spawn_feed(writer.subscribe());
    let app = http::router(http::AppState {
        task_metrics,
        reader: reader.clone(),
        writer: writer.clone(),
        metrics: metrics.clone(),
        abandon_after: settings.abandon_after,
        auth_token: settings.auth_token.as_deref().map(Arc::from),
    });
    let mut http_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.changed().await;
            })
            .await
    });

    let ingest_cfg = ingest::IngestConfig {
        redis_url: settings.redis_url.clone(),
        redis_db: settings.redis_db,
        config_set: settings.config_set,
        abandon_after: settings.abandon_after,
        sample_every: settings.sample_every,
        reconcile_every: settings.reconcile_every,
        poll_every: settings.poll_every,
        rescan_every: settings.rescan_every,
        celery_enable_events: settings.celery_enable_events,
    };
    let ingest = tokio::spawn(ingest::run(
        ingest_cfg,
        build_adapters(&settings),
        writer.clone(),
        reader,
        metrics,
        shutdown_rx,
    ));

    let ingest_result = tokio::select! {
        _ = shutdown_signal() => {
            info!("Shutting down.");
            None
        }
        r = ingest => Some(r),
    };
    let _ = shutdown_tx.send(true);
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
