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

/// A delivery tag unique per message, shaped like the UUID kombu puts there: from the send
/// time and a sequence number (the adapters crate draws no random numbers).
pub fn delivery_tag(now: DateTime<Utc>, seq: u64) -> String {
    let nanos = now.timestamp_nanos_opt().unwrap_or_default() as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (nanos >> 32) as u32,
        (nanos >> 16) as u16,
        (nanos & 0xfff) as u16,
        (seq >> 48) as u16 & 0xfff,
        seq & 0xffff_ffff_ffff
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn delivery_tags_are_uuid_shaped_and_differ_per_message() {
        let now = Utc
            .timestamp_opt(1_800_000_000, 123)
            .single()
            .expect("time");
        let a = delivery_tag(now, 1);
        let b = delivery_tag(now, 2);
        assert_ne!(a, b);
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
    }
}
