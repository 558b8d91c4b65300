//! `cargo bench --bench sanitize`: how long the ingest sanitizer takes to cut large results to
//! `--max-value-bytes` (64 KiB, the default). Prints the best and the median of 7 runs per case.
//!
//! The sanitizer lives in the binary crate; it is included here by path (it needs only
//! `broker-adapters` and `serde_json`).

#[path = "../src/ingest/sanitize.rs"]
// Its unit tests are compiled here too, without their harness.
#[allow(dead_code, unused_imports)]
mod sanitize;

use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MAX: usize = 65_536;

fn time(case: &str, make: impl Fn() -> Value) {
    let mut runs: Vec<Duration> = (0..7)
        .map(|_| {
            let mut v = make();
            let t = Instant::now();
            sanitize::truncate_value(&mut v, MAX);
            let took = t.elapsed();
            assert!(
                serde_json::to_vec(&v)
                    .map(|b| b.len())
                    .unwrap_or(usize::MAX)
                    <= MAX
            );
            took
        })
        .collect();
    runs.sort();
    println!(
        "{case:<58} best {:>8.2} ms   median {:>8.2} ms",
        runs[0].as_secs_f64() * 1e3,
        runs[3].as_secs_f64() * 1e3
    );
}

fn main() {
    println!("truncate_value to {MAX} bytes (7 runs each)");
    time("list(range(1_000_000))", || {
        json!((0..1_000_000).collect::<Vec<u32>>())
    });
    time("1,000,000 strings of 20 bytes", || {
        json!(vec!["abcdefghijklmnopqrst"; 1_000_000])
    });
    time("dict of 200,000 keys", || {
        Value::Object(
            (0..200_000)
                .map(|i| (format!("key{i:07}"), json!(i)))
                .collect(),
        )
    });
    time("1,000 lists of 1,000 numbers", || {
        json!(vec![(0..1000).collect::<Vec<u32>>(); 1000])
    });
    time("10,000 strings of 1,000 bytes (string cuts)", || {
        json!(vec!["x".repeat(1000); 10_000])
    });
    time("one 8 MB string", || json!("y".repeat(8 << 20)));
}
