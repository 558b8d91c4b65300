//! `GET /api/alerts` and the alerts' part of `/` and `/metrics`: read from the
//! [`AlertBoard`](crate::alerts::AlertBoard) the evaluator publishes; never from the store.

use super::AppState;
use crate::alerts::state::Phase;
use crate::alerts::AlertBoard;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// `GET /api/alerts`: `{"alerts": [{"rule","state","since","value","labels"}...]}` with the
/// firing and resolved instances (firing first), plus `pending` (same shape), `rules`,
/// `webhooks` (delivery counters, the last error with the webhook's host only), `evaluated_at`,
/// `evaluation_ms` (how long the last evaluation took) and `errors` (rules whose data could not be read at the last evaluation).
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(alerts_json(&state.alerts))
}

pub(crate) fn alerts_json(board: &AlertBoard) -> Value {
    let snap = board.snapshot();
    let instance = |i: &crate::alerts::state::Instance| {
        json!({
            "rule": i.rule,
            "state": i.phase.as_str(),
            "since": broker_adapters::rfc3339(&i.since),
            "value": i.value,
            "labels": i.labels,
        })
    };
    let deliveries = &board.deliveries;
    let last_error = deliveries.last_error().map(|e| {
        json!({
            "at": broker_adapters::rfc3339(&e.at),
            "rule": e.rule,
            "host": e.host,
            "error": e.error,
        })
    });
    json!({
        "alerts": snap.instances.iter().filter(|i| i.phase != Phase::Pending).map(instance).collect::<Vec<_>>(),
        "pending": snap.instances.iter().filter(|i| i.phase == Phase::Pending).map(instance).collect::<Vec<_>>(),
        "rules": snap.rules.iter().map(|r| json!({
            "name": r.name,
            "when": r.when.as_str(),
            "over_ms": r.when.has_window().then_some(r.over.as_millis() as u64),
            "above": r.above,
            "below": r.below,
            "for_ms": r.hold.as_millis() as u64,
            "broker": r.broker.map(|b| b.as_str()),
            "queue": r.queue,
            "task": r.task,
            "webhook_host": r.webhook.as_ref().map(|w| w.host()),
        })).collect::<Vec<_>>(),
        "webhooks": {
            "delivered": deliveries.delivered.load(Ordering::Relaxed),
            "failures": deliveries.failures.load(Ordering::Relaxed),
            "retries": deliveries.retries.load(Ordering::Relaxed),
            "last_error": last_error,
        },
        "evaluated_at": snap.evaluated_at.map(|t| broker_adapters::rfc3339(&t)),
        "evaluation_ms": snap.evaluation_ms,
        "errors": snap.errors.iter().map(|(rule, error)| json!({"rule": rule, "error": error})).collect::<Vec<_>>(),
    })
}

/// The overview's alert lines: firing and pending instances, and the last delivery error.
pub(crate) fn overview_lines(board: &AlertBoard) -> templates::AlertsView {
    let snap = board.snapshot();
    templates::AlertsView {
        rules: snap.rules.len(),
        lines: snap
            .instances
            .iter()
            .map(|i| {
                let rule = snap.rules.iter().find(|r| r.name == i.rule);
                templates::AlertLine {
                    rule: i.rule.clone(),
                    state: i.phase.as_str().to_string(),
                    since: i.since,
                    value: rule.map_or_else(
                        || crate::alerts::webhook::round(i.value),
                        |r| with_unit(r.when, i.value),
                    ),
                    when: rule
                        .map(|r| r.when.as_str().to_string())
                        .unwrap_or_default(),
                    above: rule.map(|r| r.above).unwrap_or_default(),
                    labels: i
                        .labels
                        .iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect(),
                    href: rule
                        .map(|r| crate::alerts::page_path(r, &i.labels))
                        .unwrap_or_else(|| "/".into()),
                }
            })
            .collect(),
        delivery_error: board.deliveries.last_error().map(|e| {
            format!(
                "Webhook of rule {:?} to {} failed at {}: {}",
                e.rule,
                e.host,
                broker_adapters::rfc3339(&e.at),
                e.error
            )
        }),
        delivery_failures: board.deliveries.failures.load(Ordering::Relaxed),
    }
}

/// A value as the overview shows it: a rate as a percentage, ages and waits in seconds.
fn with_unit(when: crate::alerts::rules::Condition, value: f64) -> String {
    use crate::alerts::rules::Condition;
    use crate::alerts::webhook::round;
    match when {
        Condition::FailureRate => format!("{}%", round(value * 100.0)),
        Condition::OldestAge | Condition::WaitP95 => format!("{} s", round(value)),
        _ => round(value),
    }
}
