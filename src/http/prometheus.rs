//! `GET /metrics`: Prometheus / OpenMetrics text, with the contract's names.
//!
//! Counters that must survive between scrapes (transitions by task, runtimes, waits) live in
//! [`TaskMetrics`], fed by the store writer's transition events; everything else is read at
//! scrape time (queue lengths and workers from the store, ingest counters from [`Metrics`]),
//! so a series that no longer exists disappears.

use super::metric_labels::{self, LabelCap, OTHER};
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
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
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
struct TagLabels {
    tag: String,
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
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

/// Runtime buckets in seconds: from 5 ms to 10 min.
const RUNTIME_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

/// Wait buckets in seconds: from 10 ms to 6 h (a starving queue waits far longer than a task
/// runs).
const WAIT_BUCKETS: [f64; 15] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

/// One histogram's state: per-bucket counts over `bounds` (the last is `+Inf`), sum and count.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn runtime() -> Histogram {
        Histogram::new(&RUNTIME_BUCKETS)
    }

    fn wait() -> Histogram {
        Histogram::new(&WAIT_BUCKETS)
    }

    fn observe(&mut self, seconds: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// Adds another histogram of the same buckets.
    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// Histograms of one metric as a family, encoded from a snapshot at scrape time.
#[derive(Debug)]
struct HistogramFamily<L>(Vec<(L, Histogram)>);

impl<L> prometheus_client::encoding::EncodeMetric for HistogramFamily<L>
where
    L: EncodeLabelSet + std::fmt::Debug + Send + Sync,
{
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            let bounds = h.bounds.iter().copied().chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(h.buckets.iter().copied()).collect();
            encoder
                .encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    h.sum, h.count, &buckets, None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// Per-task counters accumulated from transitions since this process started, with bounded
/// label values (`metric_labels.rs`).
#[derive(Clone)]
pub struct TaskMetrics {
    inner: Arc<Mutex<TaskCounts>>,
    /// The writer's transition events, drained in bursts ([`TaskMetrics::spawn_feed`]).
    feed: Arc<Mutex<Option<broadcast::Receiver<Arc<TransitionEvent>>>>>,
}

/// How often the feed drains the transition events between scrapes: the events wait in the
/// writer's broadcast buffer (`StoreOptions::broadcast_capacity`) meanwhile.
const FEED_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Series of `taskscope_tasks_total` (broker x queue x name x state) with a task name of their
/// own at most: [`LabelCap`] bounds queues and names each, not the pairs of them, and a producer
/// with a queue per tenant running the same task names makes every pair (100 x 100 x 6 states
/// is 60,000 series, which a Prometheus server pays for). Past it a new pair counts under name
/// `other` of its queue, so the series stay below this plus one per queue and state.
const MAX_TASK_SERIES: usize = 5_000;

struct TaskCounts {
    queues: LabelCap,
    names: LabelCap,
    tasks: HashMap<TaskLabels, u64>,
    runtime: HashMap<RuntimeLabels, Histogram>,
    /// Wait before running (`Task::wait_ms` when a task enters `running`), by broker and queue.
    wait: HashMap<QueueLabels, Histogram>,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        TaskMetrics::new(100)
    }
}

impl TaskMetrics {
    /// Counters where at most `max_labels` queues and `max_labels` task names have series of
    /// their own (the busiest); the rest count under `other`.
    pub fn new(max_labels: usize) -> TaskMetrics {
        TaskMetrics {
            inner: Arc::new(Mutex::new(TaskCounts {
                queues: LabelCap::new(max_labels),
                names: LabelCap::new(max_labels),
                tasks: HashMap::new(),
                runtime: HashMap::new(),
                wait: HashMap::new(),
            })),
            feed: Arc::new(Mutex::new(None)),
        }
    }

    /// Counts one transition, as the feed does for each one it drains.
    #[cfg(test)]
    pub fn record(&self, event: &TransitionEvent) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(event);
    }

    /// How many queues or names get series of their own.
    pub fn max_labels(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queues
            .max()
    }

    /// Feeds these metrics from the writer's transition events until the writer stops.
    ///
    /// The events are drained in bursts, every [`FEED_INTERVAL`] and before each scrape
    /// ([`Self::catch_up`]), never one wake-up per transition: waking a task for each of
    /// thousands of transitions a second cost more CPU than counting them (a futex on the
    /// writer's side, a worker thread's wake-up on this side). A scrape still counts every
    /// transition published before it.
    pub fn spawn_feed(self, events: broadcast::Receiver<Arc<TransitionEvent>>) {
        *self.feed.lock().unwrap_or_else(PoisonError::into_inner) = Some(events);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FEED_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !self.catch_up() {
                    return;
                }
            }
        });
    }

    /// Counts every transition published so far; `false` once the writer has stopped.
    pub fn catch_up(&self) -> bool {
        let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(events) = feed.as_mut() else {
            return true;
        };
        let mut counts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match events.try_recv() {
                Ok(event) => counts.record(&event),
                Err(broadcast::error::TryRecvError::Empty) => return true,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "Metrics fell behind the transition feed; taskscope_tasks_total undercounts.");
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    *feed = None;
                    return false;
                }
            }
        }
    }

    /// The counters as metric families, for one scrape.
    fn snapshot(
        &self,
    ) -> (
        Family<TaskLabels, Counter>,
        HistogramFamily<RuntimeLabels>,
        HistogramFamily<QueueLabels>,
    ) {
        let counts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let tasks = Family::<TaskLabels, Counter>::default();
        for (labels, n) in &counts.tasks {
            tasks.get_or_create(labels).inc_by(*n);
        }
        let mut runtime: Vec<_> = counts
            .runtime
            .iter()
            .map(|(l, h)| (l.clone(), h.clone()))
            .collect();
        runtime.sort_by(|a, b| (&a.0.broker, &a.0.name).cmp(&(&b.0.broker, &b.0.name)));
        let mut wait: Vec<_> = counts
            .wait
            .iter()
            .map(|(l, h)| (l.clone(), h.clone()))
            .collect();
        wait.sort_by(|a, b| (&a.0.broker, &a.0.queue).cmp(&(&b.0.broker, &b.0.queue)));
        (tasks, HistogramFamily(runtime), HistogramFamily(wait))
    }
}

impl TaskCounts {
    /// Counts one transition.
    fn record(&mut self, event: &TransitionEvent) {
        let task = &event.task;
        let counts = self;
        let queue = counts
            .queues
            .observe(task.queue.as_deref().unwrap_or("unknown"));
        let name = counts
            .names
            .observe(task.name.as_deref().unwrap_or("unknown"));
        if let Some(demoted) = queue.demoted {
            counts.fold_queue(&demoted);
        }
        if let Some(demoted) = name.demoted {
            counts.fold_name(&demoted);
        }
        let broker = task.broker.as_str().to_string();
        let mut labels = TaskLabels {
            broker: broker.clone(),
            queue: queue.label.clone(),
            name: name.label.clone(),
            state: event.transition.state.as_str().to_string(),
        };
        if counts.tasks.len() >= MAX_TASK_SERIES && !counts.tasks.contains_key(&labels) {
            labels.name = OTHER.to_string();
        }
        *counts.tasks.entry(labels).or_default() += 1;
        if event.transition.state == TaskState::Running {
            if let Some(ms) = task.wait_ms() {
                counts
                    .wait
                    .entry(QueueLabels {
                        broker: broker.clone(),
                        queue: queue.label,
                    })
                    .or_insert_with(Histogram::wait)
                    .observe(ms / 1000.0);
            }
        }
        if matches!(
            event.transition.state,
            TaskState::Success | TaskState::Failure
        ) {
            if let Some(ms) = task.runtime_ms {
                counts
                    .runtime
                    .entry(RuntimeLabels {
                        broker,
                        name: name.label,
                    })
                    .or_insert_with(Histogram::runtime)
                    .observe(ms / 1000.0);
            }
        }
    }

    /// Adds the counts of every series `matches` picks to the series `relabel` names.
    fn fold_counts(
        &mut self,
        matches: impl Fn(&TaskLabels) -> bool,
        relabel: impl Fn(TaskLabels) -> TaskLabels,
    ) {
        let moved: Vec<_> = self
            .tasks
            .iter()
            .filter(|(l, _)| matches(l))
            .map(|(l, n)| (l.clone(), *n))
            .collect();
        for (labels, n) in moved {
            self.tasks.remove(&labels);
            *self.tasks.entry(relabel(labels)).or_default() += n;
        }
    }

    /// Moves the counts and waits of a queue that lost its own series into `other`.
    fn fold_queue(&mut self, queue: &str) {
        self.fold_counts(
            |l| l.queue == queue,
            |l| TaskLabels {
                queue: OTHER.to_string(),
                ..l
            },
        );
        let moved: Vec<_> = self
            .wait
            .iter()
            .filter(|(l, _)| l.queue == queue)
            .map(|(l, h)| (l.clone(), h.clone()))
            .collect();
        for (labels, h) in moved {
            self.wait.remove(&labels);
            self.wait
                .entry(QueueLabels {
                    queue: OTHER.to_string(),
                    ..labels
                })
                .or_insert_with(Histogram::wait)
                .merge(&h);
        }
    }

    /// Moves the counts and runtimes of a task name that lost its own series into `other`.
    fn fold_name(&mut self, name: &str) {
        self.fold_counts(
            |l| l.name == name,
            |l| TaskLabels {
                name: OTHER.to_string(),
                ..l
            },
        );
        let moved: Vec<_> = self
            .runtime
            .iter()
            .filter(|(l, _)| l.name == name)
            .map(|(l, h)| (l.clone(), h.clone()))
            .collect();
        for (labels, h) in moved {
            self.runtime.remove(&labels);
            self.runtime
                .entry(RuntimeLabels {
                    name: OTHER.to_string(),
                    ..labels
                })
                .or_insert_with(Histogram::runtime)
                .merge(&h);
        }
    }
}

/// `taskscope_alert_firing{rule}` (1 while any instance of the rule fires, else 0; every rule
/// has a series) and `taskscope_alert_webhook_failures_total`. Nothing without rules.
fn register_alerts(registry: &mut Registry, alerts: &crate::alerts::AlertBoard) {
    let snap = alerts.snapshot();
    if snap.rules.is_empty() {
        return;
    }
    let firing = Family::<RuleLabels, Gauge>::default();
    for rule in &snap.rules {
        let on = snap
            .instances
            .iter()
            .any(|i| i.rule == rule.name && i.phase == crate::alerts::state::Phase::Firing);
        firing
            .get_or_create(&RuleLabels {
                rule: rule.name.clone(),
            })
            .set(i64::from(on));
    }
    registry.register(
        "taskscope_alert_firing",
        "1 while an alert of the rule fires (any of its queues), else 0",
        firing,
    );
    let failures = Counter::<u64>::default();
    failures.inc_by(alerts.deliveries.failures.load(Ordering::Relaxed));
    registry.register(
        "taskscope_alert_webhook_failures",
        "Alert notifications not delivered (every attempt failed, or the queue was full)",
        failures,
    );
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let abandon_after =
        chrono::Duration::from_std(state.abandon_after).unwrap_or(chrono::Duration::MAX);
    let (queues, workers, engine_memory) = tokio::join!(
        state.reader.queues(),
        state.reader.workers(chrono::Utc::now(), abandon_after),
        state.reader.engine_memory()
    );
    let mut registry = Registry::default();
    state.task_metrics.catch_up();
    let (tasks, runtime, wait) = state.task_metrics.snapshot();
    registry.register(
        "taskscope_tasks",
        "State transitions of tasks, by broker, queue, task name and the state entered",
        tasks,
    );
    registry.register(
        "taskscope_task_runtime_seconds",
        "Runtime of finished tasks",
        runtime,
    );
    registry.register(
        "taskscope_task_wait_seconds",
        "Wait of tasks from enqueueing (or their eta) until a worker started them",
        wait,
    );
    let queue_length = Family::<QueueLabels, Gauge>::default();
    let mut queues: Vec<_> = queues.into_iter().flatten().collect();
    // The longest queues get series of their own, the rest add up under `other`.
    queues.sort_by_key(|q| std::cmp::Reverse(q.length));
    let max_queues = state.task_metrics.max_labels();
    for (i, q) in queues.iter().enumerate() {
        let name = if i < max_queues {
            metric_labels::cut(&q.name)
        } else {
            OTHER
        };
        queue_length
            .get_or_create(&QueueLabels {
                broker: q.broker.as_str().to_string(),
                queue: name.to_string(),
            })
            .inc_by(i64::try_from(q.length).unwrap_or(i64::MAX));
    }
    registry.register(
        "taskscope_queue_length",
        "Messages waiting in a queue at the last sample",
        queue_length,
    );
    registry.register(
        "taskscope_queue_oldest_age_seconds",
        "Age of the oldest message waiting in a queue (from its enqueue time at the last sample)",
        oldest_age(&queues, max_queues, chrono::Utc::now()),
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
    register_alerts(&mut registry, &state.alerts);
    let writer = state.writer.stats();
    let store = [
        (
            "taskscope_store_transitions",
            "Transitions written",
            &writer.transitions_written,
        ),
        (
            "taskscope_store_task_rows_replaced",
            "Stored task rows replaced by a newer version (a task that changed after it was written)",
            &writer.task_rows_replaced,
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
        (
            "taskscope_store_running_parked",
            "Running tasks parked: dropped from memory because more were running than it holds",
            &writer.running_parked,
        ),
    ];
    for (name, help, value) in store {
        let counter = Counter::<u64>::default();
        counter.inc_by(value.load(Ordering::Relaxed));
        registry.register(name, help, counter);
    }
    let running_in_memory = Gauge::<i64>::default();
    running_in_memory
        .set(i64::try_from(writer.running_in_memory.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    registry.register(
        "taskscope_store_running_in_memory",
        "Running tasks held in memory (at most TASKSCOPE_RUNNING_IN_MEMORY, 10,000 by default; the oldest others are parked in the file)",
        running_in_memory,
    );
    register_engine_memory(&mut registry, engine_memory.unwrap_or_default());
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

/// `taskscope_store_engine_memory_bytes{tag}` and `taskscope_store_engine_spilled_bytes{tag}`:
/// what DuckDB's buffer manager holds (bounded by `TASKSCOPE_DUCKDB_MEMORY_MIB`) and spilled.
fn register_engine_memory(registry: &mut Registry, memory: Vec<crate::store::EngineMemory>) {
    let held = Family::<TagLabels, Gauge>::default();
    let spilled = Family::<TagLabels, Gauge>::default();
    for m in memory {
        let labels = TagLabels {
            tag: metric_labels::cut(&m.tag).to_string(),
        };
        held.get_or_create(&labels)
            .set(i64::try_from(m.bytes).unwrap_or(i64::MAX));
        if m.temporary_bytes > 0 {
            spilled
                .get_or_create(&labels)
                .set(i64::try_from(m.temporary_bytes).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "taskscope_store_engine_memory_bytes",
        "Memory DuckDB's buffer manager holds, by DuckDB's tag (bounded by its memory_limit)",
        held,
    );
    registry.register(
        "taskscope_store_engine_spilled_bytes",
        "Bytes DuckDB spilled to temporary files, by tag",
        spilled,
    );
}

/// `taskscope_queue_oldest_age_seconds`: a series per queue whose oldest waiting message is
/// known, capped like the queue lengths (`queues` sorted longest first); the queues past the cap
/// share `other`, which shows the oldest of them.
fn oldest_age(
    queues: &[broker_adapters::QueueSample],
    max_queues: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let family = Family::<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let mut ages: HashMap<QueueLabels, f64> = HashMap::new();
    for (i, q) in queues.iter().enumerate() {
        let Some(ms) = q.oldest_age_ms(now) else {
            continue;
        };
        let name = if i < max_queues {
            metric_labels::cut(&q.name)
        } else {
            OTHER
        };
        let age = ages
            .entry(QueueLabels {
                broker: q.broker.as_str().to_string(),
                queue: name.to_string(),
            })
            .or_insert(0.0);
        *age = age.max(ms / 1000.0);
    }
    for (labels, age) in ages {
        family.get_or_create(&labels).set(age);
    }
    family
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

#[cfg(test)]
mod feed_tests {
    use super::TaskMetrics;
    use crate::store::TransitionEvent;
    use broker_adapters::{Broker, Task, TaskState, Transition};
    use std::sync::Arc;

    fn queued(id: &str) -> Arc<TransitionEvent> {
        let at = chrono::Utc::now();
        let mut task = Task::new(Broker::Rq, id, at);
        task.queue = Some("default".into());
        task.name = Some("jobs.resize".into());
        Arc::new(TransitionEvent {
            transition: Transition {
                broker: Broker::Rq,
                task_id: id.into(),
                state: TaskState::Queued,
                at,
                worker: None,
                detail: None,
                fingerprint: None,
            },
            task: Arc::new(task),
        })
    }

    fn queued_count(metrics: &TaskMetrics) -> u64 {
        let counts = metrics.inner.lock().unwrap();
        counts
            .tasks
            .iter()
            .filter(|(l, _)| l.state == "queued" && l.name == "jobs.resize")
            .map(|(_, n)| *n)
            .sum()
    }

    /// A queue per tenant running the same task names: the pairs get series of their own up to
    /// `MAX_TASK_SERIES`, the rest count under name `other` of their queue; nothing is lost.
    #[test]
    fn queue_and_name_pairs_are_capped_not_only_each_label() {
        let metrics = TaskMetrics::new(100);
        let mut sent = 0u64;
        for q in 0..100 {
            for n in 0..100 {
                let event = queued(&format!("job-{q}-{n}"));
                let mut task = (*event.task).clone();
                task.queue = Some(format!("tenant-{q}"));
                task.name = Some(format!("jobs.task{n}"));
                metrics.record(&TransitionEvent {
                    task: Arc::new(task),
                    transition: event.transition.clone(),
                });
                sent += 1;
            }
        }
        let counts = metrics.inner.lock().unwrap();
        assert!(
            counts.tasks.len() <= super::MAX_TASK_SERIES + 100,
            "{} series",
            counts.tasks.len()
        );
        assert_eq!(counts.tasks.values().sum::<u64>(), sent);
        assert!(counts.tasks.keys().any(|l| l.name == super::OTHER));
    }

    /// The feed counts in bursts (no wake-up per transition), yet a scrape right after a
    /// transition counts it: the scrape drains what was published before it.
    #[tokio::test]
    async fn a_scrape_counts_every_transition_published_before_it() {
        let metrics = TaskMetrics::new(10);
        let (events, rx) = tokio::sync::broadcast::channel(64);
        metrics.clone().spawn_feed(rx);
        for i in 0..3 {
            events.send(queued(&format!("job-{i}"))).unwrap();
        }
        // No waiting for the feed's interval.
        assert!(metrics.catch_up());
        assert_eq!(queued_count(&metrics), 3);
        events.send(queued("job-3")).unwrap();
        drop(events);
        // The last events are counted, then the feed sees the writer gone.
        assert!(!metrics.catch_up());
        assert_eq!(queued_count(&metrics), 4);
    }
}
