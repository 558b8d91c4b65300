//! Alerts (`[[alert]]` rules of the config file): evaluated on their own tokio task every
//! `--alert-interval`, from the store's reads (never from the ingest loop), with notices posted
//! to webhooks by a delivery task of their own.
//!
//! # Layout
//! - `rules`: the TOML rules, validated at start.
//! - `evaluate`: what each condition reads and how it becomes a value per queue.
//! - `state`: the pure state machine (pending, firing, resolved; `for`; hysteresis; one
//!   notice per change).
//! - `webhook`: bodies (Slack or generic JSON) and delivery with timeouts and retries.
//!
//! State lives in memory: a restart starts every alert inactive (an alert still true fires,
//! and notifies, again).
//!
//! Nothing here may block ingest or the store writer: reads go through the store's reader pool
//! (`spawn_blocking`), deliveries through a bounded queue the evaluator never waits on.

pub mod evaluate;
pub mod rules;
pub mod state;
pub mod webhook;

use chrono::{DateTime, Utc};
use state::{Instance, Phase, Tracker};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use taskscope::store::StoreReader;

pub use rules::AlertRule;

/// The evaluator's settings.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub rules: Vec<AlertRule>,
    pub every: Duration,
    /// How `alive` is judged for `no_worker` (as `/api/workers` does).
    pub abandon_after: Duration,
    /// The start of the links in notifications (`http://127.0.0.1:7979`).
    pub public_url: String,
}

/// What the pages, `/api/alerts` and `/metrics` read: the rules, the instances as of the last
/// evaluation, and delivery counters. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AlertBoard {
    inner: Arc<Mutex<BoardState>>,
    pub deliveries: Arc<webhook::DeliveryStats>,
}

#[derive(Debug, Default, Clone)]
pub struct BoardState {
    /// Every rule, in config order.
    pub rules: Vec<AlertRule>,
    /// Pending, firing and recently resolved instances.
    pub instances: Vec<Instance>,
    pub evaluated_at: Option<DateTime<Utc>>,
    /// How long the last evaluation took (its store reads, mostly), in ms.
    pub evaluation_ms: Option<f64>,
    /// Rules whose data could not be read at the last evaluation, with why.
    pub errors: Vec<(String, String)>,
}

impl AlertBoard {
    pub fn new(rules: Vec<AlertRule>) -> AlertBoard {
        AlertBoard {
            inner: Arc::new(Mutex::new(BoardState {
                rules,
                ..BoardState::default()
            })),
            deliveries: Arc::default(),
        }
    }

    pub fn snapshot(&self) -> BoardState {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(
        &self,
        tracker: &Tracker,
        at: DateTime<Utc>,
        took: Duration,
        errors: Vec<(String, String)>,
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut instances: Vec<Instance> = tracker.instances().cloned().collect();
        // Firing first, then pending, then resolved; newest change first within each.
        instances.sort_by(|a, b| {
            let rank = |p: Phase| match p {
                Phase::Firing => 0,
                Phase::Pending => 1,
                Phase::Resolved => 2,
            };
            rank(a.phase)
                .cmp(&rank(b.phase))
                .then(b.since.cmp(&a.since))
                .then(a.rule.cmp(&b.rule))
        });
        inner.instances = instances;
        inner.evaluated_at = Some(at);
        inner.evaluation_ms = Some(took.as_secs_f64() * 1000.0);
        inner.errors = errors;
    }
}

/// The taskscope page about an instance: its queue's tasks, or the failure groups.
pub fn page_path(rule: &AlertRule, labels: &state::Labels) -> String {
    use rules::Condition;
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    match rule.when {
        Condition::NewFailureGroup | Condition::FailureRate | Condition::Failures => {
            "/failures".to_string()
        }
        _ => match (labels.get("broker"), labels.get("queue")) {
            (Some(b), Some(q)) if !q.is_empty() => {
                format!("/tasks?broker={}&queue={}", enc(b), enc(q))
            }
            _ => "/queues".to_string(),
        },
    }
}

/// Starts the evaluator (and the delivery task); both end at shutdown.
pub fn spawn(
    settings: AlertSettings,
    reader: StoreReader,
    board: AlertBoard,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (outbox, delivery) =
        webhook::spawn(webhook::DeliveryPolicy::default(), board.deliveries.clone())?;
    Ok(tokio::spawn(async move {
        let mut tracker = Tracker::default();
        let started = Utc::now();
        let mut tick = tokio::time::interval(settings.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            evaluate_once(&settings, &reader, &board, &mut tracker, &outbox, started).await;
        }
        drop(outbox);
        // Notices already queued get a moment to leave.
        let _ = tokio::time::timeout(Duration::from_secs(2), delivery).await;
    }))
}

/// One evaluation of every rule at the current time.
async fn evaluate_once(
    settings: &AlertSettings,
    reader: &StoreReader,
    board: &AlertBoard,
    tracker: &mut Tracker,
    outbox: &webhook::Outbox,
    started: DateTime<Utc>,
) {
    let now = Utc::now();
    let started_at = std::time::Instant::now();
    let mut snapshot = evaluate::Snapshot {
        fresh_since: Some(started),
        ..evaluate::Snapshot::default()
    };
    let mut errors = Vec::new();
    let mut deliveries = Vec::new();
    for rule in &settings.rules {
        let data = match evaluate::read(rule, reader, &mut snapshot, now, settings.abandon_after)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(rule = %rule.name, error = %e, "Alert rule not evaluated: its data could not be read.");
                errors.push((rule.name.clone(), e.to_string()));
                continue;
            }
        };
        let readings = evaluate::readings(rule, &data, now);
        for notice in tracker.observe(rule, readings, now) {
            tracing::info!(
                rule = %notice.rule,
                state = notice.phase.as_str(),
                value = notice.value,
                labels = ?notice.labels,
                "Alert {}.",
                notice.phase.as_str()
            );
            if let Some(hook) = &rule.webhook {
                let page = format!(
                    "{}{}",
                    settings.public_url.trim_end_matches('/'),
                    page_path(rule, &notice.labels)
                );
                deliveries.push(webhook::Delivery {
                    webhook: hook.clone(),
                    rule: rule.name.clone(),
                    body: webhook::body(rule, hook.format, &notice, &page),
                });
            }
        }
    }
    // Published before anything is sent: whoever gets a notification finds it in
    // `/api/alerts` and `/metrics` already.
    board.publish(tracker, now, started_at.elapsed(), errors);
    for delivery in deliveries {
        outbox.send(delivery);
    }
}
