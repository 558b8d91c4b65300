//! `--brokers auto` end to end: taskscope starts on an empty Redis watching nothing, real
//! Celery, Dramatiq, RQ and taskiq workers, and BullMQ's Node workers, start in that same
//! database, and taskscope finds each broker from its own keys, starts its adapter (with the
//! Dramatiq namespace, the taskiq stream and the BullMQ queue it found) and follows every
//! broker's tasks.

mod common;

use common::{
    bullmq_produce, bullmq_worker, dramatiq_produce, produce, rq_produce, taskiq_produce,
    taskiq_worker, wait_for, CeleryWorker, DramatiqProduceOpts, DramatiqWorker, ProduceOpts,
    RedisServer, RqProduceOpts, RqWorker, Taskscope, LONG,
};
use serde_json::{json, Value};

fn brokers(health: &Value) -> Vec<String> {
    health["brokers"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn auto_detection_finds_every_broker_sharing_one_redis() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--detect-every", "500ms"],
    );

    // An empty Redis: nothing is watched, and detection says it is looking.
    let health = ts.get("/healthz");
    assert_eq!(health["detection"]["mode"], "auto", "{health}");
    assert!(
        brokers(&health).is_empty(),
        "nothing to watch yet: {health}"
    );
    wait_for("a first detection pass", LONG, || {
        let h = ts.get("/healthz");
        if h["detection"]["passes"].as_u64().unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });

    // Celery, Dramatiq (in a namespace of its own), RQ and taskiq (a stream named "orders")
    // start in the same database.
    let url = redis.url();
    let _celery = CeleryWorker::start(&url, "celery", false, &[]);
    let ns = [("TS_DRAMATIQ_NAMESPACE", "shop")];
    let _dramatiq = DramatiqWorker::start(&url, &ns);
    let _rq = RqWorker::start(&url, &["default"], &[], &[]);
    let taskiq_env = [
        ("TS_TASKIQ_BROKER", "stream"),
        ("TS_TASKIQ_QUEUE", "orders"),
    ];
    let _taskiq = taskiq_worker(&url, &taskiq_env);
    let celery_task = produce(
        &url,
        "add",
        1,
        "celery",
        &ProduceOpts {
            args: Some(json!([2, 3])),
            ..ProduceOpts::default()
        },
    )
    .remove(0);
    let dramatiq_opts = DramatiqProduceOpts {
        env: vec![("TS_DRAMATIQ_NAMESPACE".into(), "shop".into())],
        ..DramatiqProduceOpts::default()
    };
    let dramatiq_message = dramatiq_produce(&url, "add", 1, &dramatiq_opts).remove(0);
    let rq_job = rq_produce(&url, "add", 1, &RqProduceOpts::default()).remove(0);
    let taskiq_task = taskiq_produce(&url, &taskiq_env, "add", 1, &[]).remove(0);
    // And Node: BullMQ under a prefix of its own, found from its events stream.
    let _bullmq = bullmq_worker(&url, "mail", "node", &[]);
    let bullmq_job = bullmq_produce(
        &url,
        "mail",
        "node",
        &json!([{"name": "add", "data": {"x": 1, "y": 2}}]),
    )
    .remove(0);

    let all = ["celery", "dramatiq", "rq", "taskiq", "bullmq"].map(String::from);
    let health = wait_for(
        "all five brokers and the taskiq stream detected",
        LONG,
        || {
            let h = ts.get("/healthz");
            let b = brokers(&h);
            let stream = h["detection"]["found"]
                .to_string()
                .contains("taskiq stream orders");
            if all.iter().all(|x| b.contains(x)) && stream {
                Ok(h)
            } else {
                Err(h.to_string())
            }
        },
    );
    let found = health["detection"]["found"].to_string();
    assert!(
        found.contains("dramatiq namespace shop"),
        "the namespace is learned from the keys: {health}"
    );
    assert!(
        found.contains("taskiq stream orders"),
        "the taskiq stream is found by its messages: {health}"
    );
    assert!(found.contains("_kombu.binding."), "{health}");
    assert!(found.contains("rq prefix rq:"), "{health}");
    assert!(found.contains("bullmq queue node:mail"), "{health}");

    let overview = reqwest::blocking::get(ts.url("/"))
        .and_then(|r| r.text())
        .expect("GET /");
    for broker in &all {
        assert!(
            overview.contains(&format!("{broker} (detected: ")),
            "the overview says {broker} was detected"
        );
    }

    // Tasks of every broker are followed to the end, including those sent before detection.
    for (id, broker) in [
        (&celery_task, "celery"),
        (&dramatiq_message, "dramatiq"),
        (&rq_job, "rq"),
        (&taskiq_task, "taskiq"),
        (&bullmq_job, "bullmq"),
    ] {
        let t = ts.wait_state(id, "success", LONG);
        assert_eq!(t["broker"], broker, "{t}");
    }
    // Its outcome may be read before the catch-up read of the stream names its queue.
    ts.wait_task(&taskiq_task, "success on queue orders", LONG, |t| {
        t["state"] == "success" && t["queue"] == "orders"
    });

    // Later tasks of each are followed live.
    let later = produce(&url, "fail", 1, "celery", &ProduceOpts::default()).remove(0);
    let t = ts.wait_state(&later, "failure", LONG);
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t}");
    let later = dramatiq_produce(&url, "add", 1, &dramatiq_opts).remove(0);
    ts.wait_state(&later, "success", LONG);
    let later = rq_produce(&url, "fail", 1, &RqProduceOpts::default()).remove(0);
    ts.wait_state(&later, "failure", LONG);
    let later = taskiq_produce(&url, &taskiq_env, "fail", 1, &[]).remove(0);
    ts.wait_state(&later, "failure", LONG);

    let log = ts.log_text();
    assert!(
        log.contains("Watching a detected broker"),
        "detection is logged:\n{log}"
    );
}

#[test]
fn listed_brokers_and_given_settings_skip_detection() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");

    // A broker's own setting starts it at once under `auto`, before any of its keys exist.
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("a.duckdb"),
        &["--dramatiq-namespace", "shop"],
    );
    let health = ts.get("/healthz");
    assert_eq!(health["detection"]["mode"], "auto", "{health}");
    assert_eq!(brokers(&health), vec!["dramatiq"], "{health}");
    drop(ts);

    // An explicit list turns detection off.
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("b.duckdb"),
        &["--brokers", "celery"],
    );
    let health = ts.get("/healthz");
    assert_eq!(health["detection"]["mode"], "listed", "{health}");
    assert_eq!(brokers(&health), vec!["celery"], "{health}");
}
