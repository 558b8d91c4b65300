//! `cargo bench -p broker-adapters --bench fingerprint`: the cost of fingerprinting one failure
//! (issue #19, failure groups), on the real tracebacks of the captures and on the worst case the
//! input caps allow. Prints the best and the median of 7 runs per case, per failure.

use broker_adapters::fingerprint::fingerprint;
use broker_adapters::{celery, dramatiq};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn fixture(broker: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/{broker}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn time(case: &str, error: Option<&str>, traceback: Option<&str>) {
    const PER_RUN: u32 = 20_000;
    let mut runs: Vec<Duration> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..PER_RUN {
                black_box(fingerprint(black_box(error), black_box(traceback)));
            }
            t.elapsed() / PER_RUN
        })
        .collect();
    runs.sort();
    let bytes = error.map_or(0, str::len) + traceback.map_or(0, str::len);
    println!(
        "{case:<52} {bytes:>8} B   best {:>7.2} µs   median {:>7.2} µs",
        runs[0].as_secs_f64() * 1e6,
        runs[3].as_secs_f64() * 1e6
    );
}

fn main() {
    let meta = celery::result::decode(&fixture("celery", "result_failure_plain.bin"), None)
        .expect("celery result");
    let tb = meta.traceback.expect("traceback");
    let line = celery::result::error_line(&meta.result, Some(&tb));
    time(
        "celery failure (error line + traceback)",
        line.as_deref(),
        Some(&tb),
    );

    let retry = dramatiq::message::decode(&fixture("dramatiq", "retry_copy_dq_1.bin"))
        .expect("dramatiq message");
    time(
        "dramatiq retry (options.traceback)",
        retry.error.as_deref(),
        retry.traceback.as_deref(),
    );
    time(
        "error line only (taskiq, Dramatiq Results)",
        Some("CardDeclined: card declined 1"),
        None,
    );

    let mut deep = String::from("Traceback (most recent call last):\n");
    while deep.len() < 1_000_000 {
        deep.push_str("  File \"/srv/app/tasks.py\", line 12, in recurse\n    recurse()\n");
    }
    deep.push_str("RecursionError: maximum recursion depth exceeded\n");
    time(
        "1 MB RecursionError traceback (16 KiB read)",
        None,
        Some(&deep),
    );

    let noisy = "'x' 0x1f 7c9d4875-a02c-4dcb-b08a-c82e543624e9 \"q\" 12.5 ".repeat(200);
    time(
        "long message of ids and quotes (2 KiB read)",
        Some(&noisy),
        None,
    );
}
