//! Celery remote-control messages taskscope may broadcast (only with `--celery-enable-events`):
//! `enable_events`, what Flower sends so task events flow without restarting workers with `-E`.
//! A kombu fanout message on the `celery.pidbox` exchange, published on `/<db>.celery.pidbox`.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::json;

/// The channel and payload of an `enable_events` broadcast to every worker.
/// `delivery_tag` must be unique per message (a UUID).
pub fn enable_events(db: u32, delivery_tag: &str, now: DateTime<Utc>) -> (String, Vec<u8>) {
    broadcast(db, "enable_events", delivery_tag, now)
}

fn broadcast(db: u32, method: &str, delivery_tag: &str, now: DateTime<Utc>) -> (String, Vec<u8>) {
    let body = json!({
        "method": method,
        "arguments": {},
        "destination": null,
        "pattern": null,
        "matcher": null,
    });
    let body = base64::engine::general_purpose::STANDARD.encode(body.to_string());
    // Expire it like celery's own broadcasts do, so a worker starting late ignores it.
    let expires = now.timestamp_millis() as f64 / 1000.0 + 1.0;
    let envelope = json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1, "expires": expires},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
        },
    });
    (
        format!("/{db}.celery.pidbox"),
        envelope.to_string().into_bytes(),
    )
}
