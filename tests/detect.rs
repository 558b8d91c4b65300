//! `--brokers auto` end to end: taskscope starts on an empty Redis watching nothing, real
//! workers of several brokers start in that same database, and taskscope finds each broker
//! from its own keys, starts its adapter (with the namespace it found) and follows its tasks.

mod common;

use common::{
    dramatiq_produce, produce, wait_for, CeleryWorker, DramatiqProduceOpts, DramatiqWorker,
    ProduceOpts, RedisServer, Taskscope, LONG,
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

    // Celery and Dramatiq (in a namespace of its own) start in the same database.
    let _celery = CeleryWorker::start(&redis.url(), "celery", false, &[]);
    let ns = [("TS_DRAMATIQ_NAMESPACE", "shop")];
    let _dramatiq = DramatiqWorker::start(&redis.url(), &ns);
    let celery_task = produce(
        &redis.url(),
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
    let dramatiq_message = dramatiq_produce(&redis.url(), "add", 1, &dramatiq_opts).remove(0);

    let health = wait_for("both brokers detected", LONG, || {
        let h = ts.get("/healthz");
        let b = brokers(&h);
        if b.contains(&"celery".to_string()) && b.contains(&"dramatiq".to_string()) {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    });
    let found = health["detection"]["found"].to_string();
    assert!(
        found.contains("dramatiq namespace shop"),
        "the namespace is learned from the keys: {health}"
    );
    assert!(found.contains("_kombu.binding."), "{health}");

    let overview = reqwest::blocking::get(ts.url("/"))
        .and_then(|r| r.text())
        .expect("GET /");
    assert!(
        overview.contains("celery (detected: ") && overview.contains("dramatiq (detected: "),
        "the overview says what was detected"
    );

    // Tasks of both are followed to the end, including the one sent before detection.
    let c = ts.wait_state(&celery_task, "success", LONG);
    assert_eq!(c["broker"], "celery");
    let d = ts.wait_state(&dramatiq_message, "success", LONG);
    assert_eq!(d["broker"], "dramatiq");
    assert_eq!(d["queue"], "default");

    // A later task of each is followed live.
    let later = produce(&redis.url(), "fail", 1, "celery", &ProduceOpts::default()).remove(0);
    let t = ts.wait_state(&later, "failure", LONG);
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t}");
    let later = dramatiq_produce(&redis.url(), "add", 1, &dramatiq_opts).remove(0);
    ts.wait_state(&later, "success", LONG);

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
