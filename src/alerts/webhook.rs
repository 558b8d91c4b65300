//! Webhook delivery: notices become JSON bodies ([`body`], pure) that one task posts in order,
//! each with a timeout and retries with backoff. The evaluator hands deliveries over a bounded
//! queue and never waits: a full queue drops the delivery (counted as a failure), so a dead
//! receiver costs notifications, never evaluations and never ingest.
//!
//! Only a webhook's host is ever logged or shown: Slack webhook URLs are secrets.

use super::rules::{AlertRule, Webhook, WebhookFormat};
use super::state::{Notice, Phase};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// How deliveries are attempted.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Per attempt: connect, send and read the answer.
    pub timeout: Duration,
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// The wait before the second attempt, doubled before each next one.
    pub backoff: Duration,
    /// Deliveries waiting at most; more are dropped and counted.
    pub queue: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Duration::from_secs(2),
            queue: 256,
        }
    }
}

/// One body for one webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook: Webhook,
    pub rule: String,
    pub body: Value,
}

/// What `/api/alerts`, `/` and `/metrics` tell about deliveries.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    /// Deliveries given up (every attempt failed) or dropped (queue full):
    /// `taskscope_alert_webhook_failures_total`.
    pub failures: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    last_error: Mutex<Option<DeliveryError>>,
}

/// The last failure, for the alerts UI.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryError {
    pub at: DateTime<Utc>,
    pub rule: String,
    /// The webhook's host only.
    pub host: String,
    pub error: String,
}

impl DeliveryStats {
    pub fn last_error(&self) -> Option<DeliveryError> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failed(&self, delivery: &Delivery, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            rule = %delivery.rule,
            host = %delivery.webhook.host(),
            %error,
            "Alert webhook not delivered."
        );
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(DeliveryError {
            at: Utc::now(),
            rule: delivery.rule.clone(),
            host: delivery.webhook.host(),
            error,
        });
    }
}

/// The evaluator's end of the delivery queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Delivery>,
    stats: Arc<DeliveryStats>,
}

impl Outbox {
    /// Queues `delivery` without waiting; a full queue drops it (logged and counted).
    pub fn send(&self, delivery: Delivery) {
        if let Err(e) = self.tx.try_send(delivery) {
            let (mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d)) = e;
            self.stats.failed(
                &d,
                "the delivery queue is full (the receiver is too slow)".into(),
            );
        }
    }
}

/// Starts the delivery task; it ends when every [`Outbox`] is dropped.
pub fn spawn(
    policy: DeliveryPolicy,
    stats: Arc<DeliveryStats>,
) -> anyhow::Result<(Outbox, tokio::task::JoinHandle<()>)> {
    let client = reqwest::Client::builder()
        .timeout(policy.timeout)
        .connect_timeout(policy.timeout)
        .user_agent(concat!("taskscope/", env!("CARGO_PKG_VERSION")))
        // A redirect could carry the body somewhere the rule did not name.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let (tx, mut rx) = mpsc::channel::<Delivery>(policy.queue.max(1));
    let outbox = Outbox {
        tx,
        stats: stats.clone(),
    };
    let task = tokio::spawn(async move {
        while let Some(delivery) = rx.recv().await {
            deliver(&client, &policy, &stats, &delivery).await;
        }
    });
    Ok((outbox, task))
}

/// Posts one delivery, retrying with backoff.
async fn deliver(
    client: &reqwest::Client,
    policy: &DeliveryPolicy,
    stats: &DeliveryStats,
    delivery: &Delivery,
) {
    let mut wait = policy.backoff;
    let attempts = policy.attempts.max(1);
    for attempt in 1..=attempts {
        let error = match client
            .post(delivery.webhook.url.clone())
            .json(&delivery.body)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(resp) => format!("HTTP {}", resp.status()),
            // Without the URL: reqwest's errors name it.
            Err(e) if e.is_timeout() => format!("timed out after {:?}", policy.timeout),
            Err(e) if e.is_connect() => "could not connect".to_string(),
            Err(e) => format!("request failed: {}", e.without_url()),
        };
        if attempt == attempts {
            stats.failed(
                delivery,
                format!("{error} (attempt {attempt} of {attempts})"),
            );
            return;
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            rule = %delivery.rule,
            host = %delivery.webhook.host(),
            %error,
            attempt,
            "Alert webhook failed; retrying."
        );
        tokio::time::sleep(wait).await;
        wait = wait.saturating_mul(2);
    }
}

/// The body of `notice` for `rule`'s webhook. `page` is the taskscope page about it.
pub fn body(rule: &AlertRule, format: WebhookFormat, notice: &Notice, page: &str) -> Value {
    let state = notice.phase.as_str();
    match format {
        WebhookFormat::Json => json!({
            "rule": notice.rule,
            "state": state,
            "when": rule.when.as_str(),
            "value": notice.value,
            "above": rule.above,
            "labels": notice.labels,
            "since": broker_adapters::rfc3339(&notice.since),
            "url": page,
        }),
        WebhookFormat::Slack => {
            let labels = notice
                .labels
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| format!("{k}={}", slack_escape(v)))
                .collect::<Vec<_>>()
                .join(", ");
            let head = match notice.phase {
                Phase::Firing => ":rotating_light: FIRING",
                _ => ":white_check_mark: RESOLVED",
            };
            json!({
                "text": format!(
                    "{head} *{}*: {} = {} (above {}){} since {} <{}|open taskscope>",
                    slack_escape(&notice.rule),
                    rule.when.as_str(),
                    round(notice.value),
                    rule.above,
                    if labels.is_empty() { String::new() } else { format!(" [{labels}]") },
                    broker_adapters::rfc3339(&notice.since),
                    page,
                )
            })
        }
    }
}

/// Slack's three control characters (`&`, `<`, `>`), escaped as its docs ask.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A value as people read it: at most 3 decimals.
pub fn round(v: f64) -> String {
    let r = (v * 1000.0).round() / 1000.0;
    if r.fract() == 0.0 && r.abs() < 1e15 {
        format!("{}", r as i64)
    } else {
        format!("{r}")
    }
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
