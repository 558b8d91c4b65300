//! Housekeeping end to end: `taskscope serve` runs the jobs on a seconds-level schedule and
//! reports them on `/`, `/healthz` and `/metrics`; `taskscope housekeeping` runs them once on a
//! stopped instance's file (dry run, real run, rewrite) and refuses a file in use.

mod common;

use common::{taskscope_bin, wait_for, RedisServer, Taskscope, LONG};
use std::process::Command;

fn housekeeping(db: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(taskscope_bin())
        .arg("housekeeping")
        .arg("--db")
        .arg(db)
        .args(extra)
        .output()
        .expect("run taskscope housekeeping");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn scheduled_jobs_are_reported_and_the_one_shot_command_runs_them() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.duckdb");
    let mut ts = Taskscope::start(
        &redis.url(),
        &db,
        &["--brokers", "celery", "--housekeeping", "* * * * * *"],
    );
    let health = wait_for("every job to have run", LONG, || {
        let h = ts.get("/healthz");
        let runs = h["housekeeping"].as_array().cloned().unwrap_or_default();
        let ran = runs
            .iter()
            .filter(|r| r["last_run"].is_string() && r["error"].is_null())
            .count();
        if ran == 3 {
            Ok(h)
        } else {
            Err(h["housekeeping"].to_string())
        }
    });
    assert!(
        health["housekeeping"]
            .to_string()
            .contains("checkpointed: "),
        "{health}"
    );
    let metrics = reqwest::blocking::get(ts.url("/metrics"))
        .and_then(|r| r.text())
        .expect("GET /metrics");
    for job in ["rollup", "retention", "compaction"] {
        assert!(
            metrics.contains(&format!(
                "taskscope_housekeeping_last_run_timestamp_seconds{{job=\"{job}\"}}"
            )),
            "{metrics}"
        );
    }
    let overview = reqwest::blocking::get(ts.url("/"))
        .and_then(|r| r.text())
        .expect("GET /");
    assert!(overview.contains("Housekeeping") && overview.contains("checkpointed"));

    // While serve holds the file, the one-shot command says so.
    let (code, _, err) = housekeeping(&db, &["--dry-run"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("locked by another process"), "{err}");

    ts.stop();
    let (code, out, err) = housekeeping(&db, &["--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("retention (dry run): would delete 0 tasks"),
        "{out}"
    );
    assert!(
        out.contains("compaction (dry run): would checkpoint"),
        "{out}"
    );
    let (code, out, err) = housekeeping(&db, &["--jobs", "retention,compaction", "--rewrite"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("rollup:"), "only the jobs asked for: {out}");
    assert!(out.contains("retention: rolled up"), "{out}");
    assert!(out.contains("rewrite: "), "{out}");
    let (code, _, err) = housekeeping(&db, &["--jobs", "vacuum"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = housekeeping(&db, &["--housekeeping", "*/5 * * * *"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("seconds field"), "{err}");
}

#[test]
fn payloads_are_redacted_and_truncated_before_they_are_stored() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--brokers", "dramatiq", "--max-value-bytes", "300"],
    );
    // No worker: the message waits in the queue, as a producer wrote it.
    let big: Vec<String> = (0..100).map(|i| format!("row-{i}")).collect();
    let id = common::dramatiq_produce(
        &redis.url(),
        "add",
        1,
        &common::DramatiqProduceOpts {
            args: Some(serde_json::json!([big, 2])),
            kwargs: Some(
                serde_json::json!({"note": "hello", "db": {"Password": "hunter2"},
                "api_token": "t0k3n"}),
            ),
            ..Default::default()
        },
    )
    .remove(0);
    let task = ts.wait_state(&id, "queued", LONG);
    assert_eq!(
        task["kwargs"],
        serde_json::json!({"note": "hello", "db": {"Password": "[redacted]"},
            "api_token": "[redacted]"}),
        "{task}"
    );
    assert_eq!(
        task["args"],
        serde_json::json!(["[truncated: list of 100 items]", 2]),
        "{task}"
    );
    let raw = redis.cli(&["HGETALL", "dramatiq:default.msgs"]);
    assert!(raw.contains("hunter2"), "Redis itself is untouched: {raw}");
}
