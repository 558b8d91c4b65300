//! `GET /metrics`: Prometheus / OpenMetrics text, with the contract's names.
//!
//! Counters that must survive between scrapes (transitions by task, runtimes) live in
//! [`TaskMetrics`], fed by the store writer's transition events; everything else is read at
//! scrape time (queue lengths and workers from the store, ingest counters from [`Metrics`]),
//! so a series that no longer exists disappears.

use super::AppState;
use crate::metrics::{Metrics, Source};
use crate::store::TransitionEvent;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use broker_adapters::TaskState;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    broker: String,
    queue: String,
    name: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    broker: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    broker: String,
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

/// Runtime buckets in seconds: from 5 ms to 10 min.
const RUNTIME_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

fn runtime_histogram() -> Histogram {
    Histogram::new(RUNTIME_BUCKETS)
}

/// Per-task counters accumulated from transitions since this process started.
#[derive(Clone)]
pub struct TaskMetrics {
    tasks: Family<TaskLabels, Counter>,
    runtime: Family<RuntimeLabels, Histogram, fn() -> Histogram>,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        TaskMetrics {
            tasks: Family::default(),
            runtime: Family::new_with_constructor(runtime_histogram),
        }
    }
}

impl TaskMetrics {
    /// Counts one committed transition.
    pub fn record(&self, event: &TransitionEvent) {
        let task = &event.task;
        let unknown = || "unknown".to_string();
        self.tasks
            .get_or_create(&TaskLabels {
                broker: task.broker.as_str().to_string(),
                queue: task.queue.clone().unwrap_or_else(unknown),
                name: task.name.clone().unwrap_or_else(unknown),
                state: event.transition.state.as_str().to_string(),
            })
            .inc();
        if matches!(
            event.transition.state,
            TaskState::Success | TaskState::Failure
        ) {
            if let Some(ms) = task.runtime_ms {
                self.runtime
                    .get_or_create(&RuntimeLabels {
                        broker: task.broker.as_str().to_string(),
                        name: task.name.clone().unwrap_or_else(unknown),
                    })
                    .observe(ms / 1000.0);
            }
        }
    }

    /// Feeds these metrics from the writer's transition events until the writer stops.
    pub fn spawn_feed(self, mut events: broadcast::Receiver<Arc<TransitionEvent>>) {
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => self.record(&event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "Metrics fell behind the transition feed; taskscope_tasks_total undercounts.");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let abandon_after =
        chrono::Duration::from_std(state.abandon_after).unwrap_or(chrono::Duration::MAX);
    let (queues, workers) = tokio::join!(
        state.reader.queues(),
        state.reader.workers(chrono::Utc::now(), abandon_after)
    );
    let mut registry = Registry::default();
    registry.register(
        "taskscope_tasks",
        "State transitions of tasks, by broker, queue, task name and the state entered",
        state.task_metrics.tasks.clone(),
    );
    registry.register(
        "taskscope_task_runtime_seconds",
        "Runtime of finished tasks",
        state.task_metrics.runtime.clone(),
    );
    let queue_length = Family::<QueueLabels, Gauge>::default();
    for q in queues.iter().flatten() {
        queue_length
            .get_or_create(&QueueLabels {
                broker: q.broker.as_str().to_string(),
                queue: q.name.clone(),
            })
            .set(i64::try_from(q.length).unwrap_or(i64::MAX));
    }
    registry.register(
        "taskscope_queue_length",
        "Messages waiting in a queue at the last sample",
        queue_length,
    );
    let alive = Family::<BrokerLabels, Gauge>::default();
    for broker in state.metrics.brokers() {
        // Every watched broker gets a series, 0 when no worker is alive.
        let _ = alive.get_or_create(&BrokerLabels {
            broker: broker.as_str().to_string(),
        });
    }
    for w in workers.iter().flatten().filter(|w| w.alive) {
        alive
            .get_or_create(&BrokerLabels {
                broker: w.broker.as_str().to_string(),
            })
            .inc();
    }
    registry.register(
        "taskscope_workers_alive",
        "Workers heard from within --abandon-after",
        alive,
    );
    register_ingest(&mut registry, &state.metrics);
    register_housekeeping(&mut registry, &state.metrics);
    let writer = state.writer.stats();
    let store = [
        (
            "taskscope_store_transitions",
            "Transitions written",
            &writer.transitions_written,
        ),
        (
            "taskscope_store_batch_errors",
            "Failed attempts to commit a store batch",
            &writer.batch_errors,
        ),
        (
            "taskscope_store_dropped",
            "Observations lost because their batch failed twice",
            &writer.dropped,
        ),
    ];
    for (name, help, value) in store {
        let counter = Counter::<u64>::default();
        counter.inc_by(value.load(Ordering::Relaxed));
        registry.register(name, help, counter);
    }
    let mut body = String::new();
    if let Err(e) = encode(&mut body, &registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The last run of each housekeeping job (from this process or, after a restart, the file).
fn register_housekeeping(registry: &mut Registry, metrics: &Metrics) {
    use std::sync::atomic::AtomicU64;
    let last_run = Family::<JobLabels, Gauge<f64, AtomicU64>>::default();
    let duration = Family::<JobLabels, Gauge<f64, AtomicU64>>::default();
    let rows = Family::<JobLabels, Gauge>::default();
    let runs = Family::<JobLabels, Counter>::default();
    let failures = Family::<JobLabels, Counter>::default();
    for run in metrics.housekeeping() {
        let labels = JobLabels {
            job: run.job.clone(),
        };
        runs.get_or_create(&labels).inc_by(run.runs);
        failures.get_or_create(&labels).inc_by(run.failures);
        let Some(started) = run.started_at else {
            continue;
        };
        last_run
            .get_or_create(&labels)
            .set(started.timestamp_millis() as f64 / 1000.0);
        duration
            .get_or_create(&labels)
            .set(run.duration_ms / 1000.0);
        rows.get_or_create(&labels)
            .set(i64::try_from(run.rows).unwrap_or(i64::MAX));
    }
    registry.register(
        "taskscope_housekeeping_last_run_timestamp_seconds",
        "When each housekeeping job last started (Unix time)",
        last_run,
    );
    registry.register(
        "taskscope_housekeeping_last_duration_seconds",
        "How long each housekeeping job's last run took",
        duration,
    );
    registry.register(
        "taskscope_housekeeping_last_rows",
        "Rows the last run of each housekeeping job deleted, rolled up or down-sampled",
        rows,
    );
    registry.register(
        "taskscope_housekeeping_runs",
        "Housekeeping job runs by this process",
        runs,
    );
    registry.register(
        "taskscope_housekeeping_failures",
        "Housekeeping job runs that failed (retried at the next scheduled time)",
        failures,
    );
}

fn register_ingest(registry: &mut Registry, metrics: &Metrics) {
    let ingest = Family::<SourceLabels, Counter>::default();
    // Every source has a series from the start (0 until it delivers), so the name is always there.
    for source in [Source::Keyspace, Source::Pubsub, Source::Read] {
        let _ = ingest.get_or_create(&SourceLabels {
            source: source.as_str().to_string(),
        });
    }
    for (source, n) in metrics.ingest_events() {
        ingest
            .get_or_create(&SourceLabels {
                source: source.as_str().to_string(),
            })
            .inc_by(n);
    }
    registry.register(
        "taskscope_ingest_events",
        "Notifications, pub/sub messages and read replies ingested",
        ingest,
    );
    let decode = Family::<BrokerLabels, Counter>::default();
    for broker in metrics.brokers() {
        let _ = decode.get_or_create(&BrokerLabels {
            broker: broker.as_str().to_string(),
        });
    }
    for (broker, n) in metrics.decode_errors() {
        decode
            .get_or_create(&BrokerLabels {
                broker: broker.as_str().to_string(),
            })
            .inc_by(n);
    }
    registry.register(
        "taskscope_decode_errors",
        "Payloads skipped because they do not decode",
        decode,
    );
    let connected = Gauge::<i64>::default();
    connected.set(i64::from(metrics.redis_connected()));
    registry.register(
        "taskscope_redis_connected",
        "1 while taskscope is connected to Redis",
        connected,
    );
    let commands = Counter::<u64>::default();
    commands.inc_by(metrics.redis_commands.load(Ordering::Relaxed));
    registry.register(
        "taskscope_redis_commands",
        "Redis commands taskscope issued",
        commands,
    );
}
