//! CI smoke run of `taskscope-bench store` (issue #8): a 20k-task history generated, served by a
//! real `taskscope serve` and timed route by route in seconds, so the benchmark cannot rot. It
//! checks that every figure of the JSON is there and that every route answered, not the figures
//! themselves (CI machines vary); `README.md#performance` has the real numbers.

mod common;

use serde_json::Value;
use std::process::Command;

#[test]
fn bench_store_smoke_reports_every_figure() {
    let _slot = common::test_slot();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bench.duckdb");
    let out = Command::new(common::bench_bin())
        .args(["store", "--tasks", "20000", "--runs", "2", "--json", "--db"])
        .arg(&db)
        .env("TASKSCOPE_LOG", "error")
        .output()
        .expect("run taskscope-bench store");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench store failed: {stderr}");
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    assert_eq!(json["tasks"], 20_000);
    assert_eq!(json["tasks_served"], 20_000, "the server sees every task");
    let transitions = json["transitions"].as_u64().expect("transitions");
    assert!(
        (50_000..=70_000).contains(&transitions),
        "~3 per task: {transitions}"
    );
    assert!(json["queue_samples"].as_u64().expect("queue_samples") > 0);
    assert!(json["file_bytes"].as_u64().expect("file_bytes") > 0);
    assert!(json["bytes_per_task"].as_f64().expect("bytes_per_task") > 0.0);
    assert_eq!(json["failed_routes"], serde_json::json!([]), "{json}");
    for field in ["peak_rss_bytes", "rss_idle_bytes", "rss_end_bytes"] {
        assert!(
            json["serve"][field].as_u64().expect(field) > 0,
            "{field}: {json}"
        );
    }
    let routes = json["routes"].as_array().expect("routes");
    for name in [
        "reports/backlog 1h",
        "reports/runtime 1h",
        "reports/failures 1h",
        "reports/throughput 1h",
        "reports/names 30d",
        "stats",
        "tasks",
        "tasks q (id prefix)",
        "tasks page 2 (cursor)",
        "task detail",
        "page /reports",
    ] {
        let r = routes
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no route {name:?} in {json}"));
        for f in ["p50_ms", "p95_ms", "max_ms"] {
            assert!(r[f].as_f64().is_some(), "{name}: {f} in {r}");
        }
        assert!(r["response_bytes"].as_u64().unwrap_or(0) > 0, "{name}: {r}");
    }
    let summary = &json["summary"];
    assert!(summary["report_p95_max_ms"].as_f64().is_some(), "{summary}");
    for f in ["report_p95", "bytes_per_task", "peak_rss"] {
        assert!(summary["met"][f].is_boolean(), "{f}: {summary}");
    }
}
