//! `cargo bench -p broker-adapters --bench decode`: the cost of decoding one Celery message on
//! ingest's hottest paths, on the captures of a real worker (issue #22, the Flower
//! comparison): an event message (kombu envelope, base64 body, the event's JSON) into its
//! observations, and a task message as read from a queue (Celery without events: every task's
//! first sign). Prints the best and the median of 7 runs per message, in µs.

use broker_adapters::celery;
use chrono::Utc;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/celery/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Times `decode` on the capture `name` (which it must accept) and prints the figures.
fn time<T, E>(name: &str, decode: impl Fn(&[u8]) -> Result<T, E>) {
    const PER_RUN: u32 = 50_000;
    let bytes = fixture(name);
    assert!(decode(&bytes).is_ok(), "{name} decodes");
    let mut runs: Vec<Duration> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..PER_RUN {
                let _ = black_box(decode(black_box(&bytes)));
            }
            t.elapsed() / PER_RUN
        })
        .collect();
    runs.sort();
    println!(
        "{name:<56} {:>5} B   best {:>6.2} µs   median {:>6.2} µs",
        bytes.len(),
        runs[0].as_secs_f64() * 1e6,
        runs[3].as_secs_f64() * 1e6
    );
}

fn main() {
    let now = Utc::now();
    for name in [
        "event_task_multi_containing_task_received_with_E.bin",
        "event_task_multi_containing_task_started_with_E.bin",
        "event_task_multi_containing_task_succeeded_with_E.bin",
        "event_task_multi_containing_task_failed_with_E.bin",
        "event_worker_heartbeat_with_E.bin",
    ] {
        time(name, |b| celery::events::observe_message(b, now));
    }
    for name in ["queue_message_json.bin", "queue_message_kwargs_unicode.bin"] {
        time(name, celery::message::decode);
    }
}
