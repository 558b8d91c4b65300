//! `cargo bench -p broker-adapters --bench decode`: the cost of decoding one Celery event
//! message (kombu envelope, base64 body, the event's JSON) into its observations, on the
//! captures of a real worker: the per-event work of ingest's hottest path (issue #22, the Flower
//! comparison). Prints the best and the median of 7 runs per message, in µs.

use broker_adapters::celery;
use chrono::Utc;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/celery/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn main() {
    const PER_RUN: u32 = 50_000;
    let now = Utc::now();
    for name in [
        "event_task_multi_containing_task_received_with_E.bin",
        "event_task_multi_containing_task_started_with_E.bin",
        "event_task_multi_containing_task_succeeded_with_E.bin",
        "event_task_multi_containing_task_failed_with_E.bin",
        "event_worker_heartbeat_with_E.bin",
    ] {
        let bytes = fixture(name);
        assert!(
            celery::events::observe_message(&bytes, now).is_ok(),
            "{name} decodes"
        );
        let mut runs: Vec<Duration> = (0..7)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..PER_RUN {
                    let _ = black_box(celery::events::observe_message(black_box(&bytes), now));
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
}
