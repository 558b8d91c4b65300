//! `taskscope inspect queues|workers|tasks` (issue #21 point 6): a one-shot look at a Redis
//! where real RQ and Celery producers and an RQ worker have been, with no history file and no
//! taskscope running before; the defaults (`--brokers auto`) find both brokers. Nothing is
//! written to Redis (`notify-keyspace-events` stays as it was). Run: `cargo test --test inspect`.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn inspect(redis_url: &str, args: &[&str]) -> Output {
    Command::new(taskscope_bin())
        .arg("inspect")
        .args(args)
        .args(["--redis", redis_url])
        .env_remove("TASKSCOPE_LOG")
        .output()
        .expect("run taskscope inspect")
}

fn inspect_json(redis_url: &str, args: &[&str]) -> Value {
    let out = inspect(redis_url, &[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "inspect {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inspect {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn queues_workers_and_tasks_of_rq_and_celery_without_a_running_taskscope() {
    let _slot = test_slot();
    let redis = RedisServer::start();
    let url = redis.url();
    // RQ: a live worker on `default` ran two jobs (one failed); three wait on `parked`.
    let worker = RqWorker::start(&url, &["default"], &[], &[]);
    let parked = rq_produce(
        &url,
        "add",
        3,
        &RqProduceOpts {
            queue: Some("parked".into()),
            ..RqProduceOpts::default()
        },
    );
    let ran = rq_produce(&url, "add", 1, &RqProduceOpts::default()).remove(0);
    let failed = rq_produce(
        &url,
        "fail",
        1,
        &RqProduceOpts {
            args: Some(json!([9])),
            ..RqProduceOpts::default()
        },
    )
    .remove(0);
    wait_for("RQ to finish both jobs", Duration::from_secs(30), || {
        let done = redis.cli(&["ZCARD", "rq:finished:default"]);
        let dead = redis.cli(&["ZCARD", "rq:failed:default"]);
        if done.trim() == "1" && dead.trim() == "1" {
            Ok(())
        } else {
            Err(format!("finished {done}, failed {dead}"))
        }
    });
    // Celery: two messages on a queue no worker consumes.
    let celery_parked = produce(&url, "add", 2, "reports", &ProduceOpts::default());
    let notify_before = redis.cli(&["CONFIG", "GET", "notify-keyspace-events"]);

    let queues = inspect_json(&url, &["queues"]);
    let queues = queues["queues"].as_array().expect("queues");
    let find = |broker: &str, name: &str| {
        queues
            .iter()
            .find(|q| q["broker"] == broker && q["name"] == name)
            .unwrap_or_else(|| panic!("no {broker} queue {name} in {queues:?}"))
    };
    assert_eq!(find("rq", "parked")["length"], 3);
    assert!(find("rq", "parked")["oldest_age_ms"].as_f64().is_some());
    assert_eq!(find("rq", "default")["dead"], 1);
    assert_eq!(find("celery", "reports")["length"], 2);

    let workers = inspect_json(&url, &["workers"]);
    let workers = workers["workers"].as_array().expect("workers");
    assert!(
        workers
            .iter()
            .any(|w| w["broker"] == "rq" && w["id"] == worker.name.as_str() && w["alive"] == true),
        "{workers:?}"
    );

    let tasks = inspect_json(&url, &["tasks", "--limit", "100"]);
    let tasks = tasks["tasks"].as_array().expect("tasks");
    let state_of = |id: &str| {
        tasks
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("task {id} not in {tasks:?}"))["state"]
            .clone()
    };
    for id in parked.iter().chain(&celery_parked) {
        assert_eq!(state_of(id), "queued", "{id}");
    }
    assert_eq!(state_of(&ran), "success");
    assert_eq!(state_of(&failed), "failure");
    let failed_task = tasks
        .iter()
        .find(|t| t["id"] == failed.as_str())
        .expect("failed");
    assert!(
        failed_task["error"]
            .as_str()
            .is_some_and(|e| e.contains("ValueError")),
        "{failed_task}"
    );

    let queued_only = inspect_json(&url, &["tasks", "--state", "queued"]);
    let queued: Vec<&str> = queued_only["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id"))
        .collect();
    assert_eq!(queued.len(), 5, "{queued:?}");

    // The table: a header and one line per queue, what came from Redis shown as text.
    let table = inspect(&url, &["queues"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("BROKER  QUEUE"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("rq") && l.contains("parked") && l.contains(" 3 ")),
        "{text}"
    );
    assert!(
        table.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );

    assert_eq!(
        redis.cli(&["CONFIG", "GET", "notify-keyspace-events"]),
        notify_before,
        "inspect must not change Redis's configuration"
    );
}

#[test]
fn unreachable_redis_and_bad_usage_say_what_to_do() {
    let port = free_port();
    let out = inspect(&format!("redis://127.0.0.1:{port}/0"), &["queues"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Redis did not answer"), "{err}");

    let out = inspect("redis://127.0.0.1:6379/0", &["tasks", "--state", "done"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state"));

    let out = inspect("redis://127.0.0.1:6379/0", &["everything"]);
    assert_eq!(out.status.code(), Some(2));
}
