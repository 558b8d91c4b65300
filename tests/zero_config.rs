//! Zero-config, as users start things: `taskscope serve` with the defaults (`--brokers auto`,
//! no broker flag, the default `--detect-every`) on an empty Redis, and only then the workers
//! and producers. Every task must be found with its final state, name and arguments, and its
//! `running` phase where the broker makes it visible: detection reacts to the broker's first
//! key instead of waiting for its next pass (60 s).

mod common;

use common::{
    arq_produce, arq_worker, bullmq_produce, bullmq_worker, dramatiq_produce, produce, rq_produce,
    taskiq_produce, taskiq_worker, transition_states, wait_for, CeleryWorker, DramatiqProduceOpts,
    DramatiqWorker, ProduceOpts, RedisServer, RqProduceOpts, RqWorker, Taskscope, LONG,
};
use common::{sidekiq_produce, sidekiq_worker};
use serde_json::{json, Value};

/// taskscope with nothing but its Redis and its file (the harness adds `--listen` and
/// `--abandon-after 5s`, which detection does not read).
fn start_defaults(redis: &RedisServer, dir: &tempfile::TempDir) -> Taskscope {
    let ts = Taskscope::start(&redis.url(), &dir.path().join("t.duckdb"), &[]);
    let health = ts.get("/healthz");
    assert_eq!(health["detection"]["mode"], "auto", "{health}");
    assert_eq!(health["brokers"], json!([]), "an empty Redis: {health}");
    ts
}

/// Asserts a task's end: state, broker, name, arguments, and a `running` transition.
fn assert_task(ts: &Taskscope, id: &str, state: &str, name: &str, args: Option<&Value>) -> Value {
    let t = ts.wait_state(id, state, LONG);
    assert_eq!(t["name"], name, "{t}");
    if let Some(args) = args {
        assert_eq!(&t["args"], args, "{t}");
    }
    assert!(
        transition_states(&t).iter().any(|s| s == "running"),
        "the running phase is shown: {t}"
    );
    t
}

/// The detection entry of `broker` in `/healthz`, once its adapter watches.
fn detected(ts: &Taskscope, broker: &str) -> Value {
    wait_for(&format!("{broker} detected and watched"), LONG, || {
        let h = ts.get("/healthz");
        let found = h["detection"]["found"]
            .as_array()
            .and_then(|f| {
                f.iter()
                    .find(|f| f["broker"] == broker && f["watching_after_ms"].is_number())
            })
            .cloned();
        found.ok_or_else(|| h.to_string())
    })
}

#[test]
fn celery_on_a_queue_of_its_own_is_followed_from_its_first_key() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = start_defaults(&redis, &dir);
    let url = redis.url();

    // A worker of queue "jobs" (not Celery's default "celery"), passive: no events.
    let worker = CeleryWorker::start(&url, "jobs", false, &[]);
    // Its first key (the queue's binding) or its first event (`worker-online`), whichever
    // reaches taskscope first.
    let found = detected(&ts, "celery");
    assert!(
        found["via"] == "new-key" || found["via"] == "message",
        "{found}"
    );
    let opts = |args: Value| ProduceOpts {
        args: Some(args),
        ..ProduceOpts::default()
    };
    // Both worker processes busy first, so the next messages wait in the queue where passive
    // mode reads them (a message an idle worker takes at once may go unread: see the README).
    // Busy long enough to outlast the five producer runs below on a loaded machine (each
    // starts a Python interpreter and imports Celery: over a second each under CI load).
    let slow = produce(&url, "slow", 2, "jobs", &opts(json!([10.0])));
    // Synchronised on the worker, not on taskscope: an idle worker takes these at once, and
    // passive mode sees that only if it reads the `unacked` entry in the few ms before the
    // ack (on a loaded CI machine it once did not: see the README on passive mode).
    for id in &slow {
        worker.wait_started(id, LONG);
    }
    let adds: Vec<(String, Value)> = (0..3)
        .map(|i| {
            let args = json!([i, 10 * i]);
            (
                produce(&url, "add", 1, "jobs", &opts(args.clone())).remove(0),
                args,
            )
        })
        .collect();
    let failed = produce(&url, "fail", 1, "jobs", &opts(json!([7]))).remove(0);
    let flaky = produce(&url, "flaky", 1, "jobs", &opts(json!(["k", 2]))).remove(0);

    for id in &slow {
        assert_task(&ts, id, "success", "billing.slow", Some(&json!([10.0])));
    }
    for (id, args) in &adds {
        let t = assert_task(&ts, id, "success", "billing.add", Some(args));
        assert_eq!(t["queue"], "jobs", "{t}");
    }
    let t = assert_task(&ts, &failed, "failure", "billing.fail", Some(&json!([7])));
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("card declined")),
        "{t}"
    );
    let t = ts.wait_task(&flaky, "two retries, then success", LONG, |t| {
        t["state"] == "success" && t["retries"] == 2
    });
    assert_eq!(t["name"], "billing.flaky", "{t}");
    let retried = transition_states(&t)
        .iter()
        .filter(|s| *s == "retried")
        .count();
    assert_eq!(retried, 2, "{t}");
}

#[test]
fn celery_with_events_is_found_from_its_event_fanout() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = start_defaults(&redis, &dir);
    let url = redis.url();

    let _worker = CeleryWorker::start(&url, "celery", true, &[]);
    detected(&ts, "celery");
    let ids = produce(&url, "add", 3, "celery", &ProduceOpts::default());
    for (i, id) in ids.iter().enumerate() {
        let args = json!([i, i + 1]);
        let t = assert_task(&ts, id, "success", "billing.add", Some(&args));
        assert!(
            t["worker"].as_str().is_some_and(|w| w.starts_with("w1@")),
            "{t}"
        );
    }
}

#[test]
fn celery_results_in_another_database_are_found_without_flags() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ts = start_defaults(&redis, &dir);
    let url = redis.url();
    // The most common setup: the broker on database 0, results on database 1.
    let results_url = url.replacen("/0", "/1", 1);
    assert_ne!(results_url, url);
    let env = [("TS_RESULT_URL", results_url.as_str())];
    let _worker = CeleryWorker::start_with_env(&url, "celery", false, &[], &env);
    let opts = ProduceOpts {
        env: vec![("TS_RESULT_URL".into(), results_url.clone())],
        ..ProduceOpts::default()
    };
    let with_results = |kind: &str, n: usize| produce(&url, kind, n, "celery", &opts);
    let first = with_results("add", 4);
    let failed = with_results("fail", 1).remove(0);
    for id in &first {
        let t = ts.wait_state(id, "success", LONG);
        assert_eq!(t["name"], "billing.add", "{t}");
        assert!(
            t["result"].is_number(),
            "the result is read from database 1: {t}"
        );
    }
    let t = ts.wait_state(&failed, "failure", LONG);
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("card declined")),
        "{t}"
    );
    let health = ts.get("/healthz");
    assert!(
        health["detection"]["found"]
            .to_string()
            .contains("celery results in database 1"),
        "{health}"
    );

    // Tasks that finish while taskscope is down are found from database 1 after a restart.
    ts.stop();
    let while_down = with_results("add", 3);
    wait_for("the tasks to finish while taskscope is down", LONG, || {
        let done = while_down
            .iter()
            .filter(|id| {
                redis
                    .cli(&["-n", "1", "EXISTS", &format!("celery-task-meta-{id}")])
                    .trim()
                    == "1"
            })
            .count();
        (done == while_down.len())
            .then_some(())
            .ok_or(format!("{done} done"))
    });
    ts.restart();
    for id in &while_down {
        let t = ts.wait_state(id, "success", LONG);
        assert!(t["result"].is_number(), "{t}");
    }
}

#[test]
fn dramatiq_is_followed_from_its_first_key() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = start_defaults(&redis, &dir);
    let url = redis.url();

    let _worker = DramatiqWorker::start(&url, &[]);
    let found = detected(&ts, "dramatiq");
    assert!(
        found.to_string().contains("dramatiq namespace dramatiq"),
        "{found}"
    );
    let slow_opts = DramatiqProduceOpts {
        seconds: Some(1.0),
        ..DramatiqProduceOpts::default()
    };
    let slow = dramatiq_produce(&url, "slow", 2, &slow_opts);
    let adds: Vec<(String, Value)> = (0..3)
        .map(|i| {
            let args = json!([i, 2 * i]);
            let opts = DramatiqProduceOpts {
                args: Some(args.clone()),
                ..DramatiqProduceOpts::default()
            };
            (dramatiq_produce(&url, "add", 1, &opts).remove(0), args)
        })
        .collect();
    let failed = dramatiq_produce(&url, "fail", 1, &DramatiqProduceOpts::default()).remove(0);
    for id in &slow {
        assert_task(&ts, id, "success", "slow", None);
    }
    // A fast actor's running phase lasts a few milliseconds: shown when a read lands in it.
    for (id, args) in &adds {
        let t = ts.wait_state(id, "success", LONG);
        assert_eq!(t["name"], "add", "{t}");
        assert_eq!(&t["args"], args, "{t}");
    }
    let t = ts.wait_state(&failed, "failure", LONG);
    assert_eq!(t["name"], "fail", "{t}");
}

#[test]
fn rq_is_followed_from_its_first_key() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = start_defaults(&redis, &dir);
    let url = redis.url();

    let _worker = RqWorker::start(&url, &["default"], &[], &[]);
    detected(&ts, "rq");
    let adds: Vec<(String, Value)> = (0..3)
        .map(|i| {
            let args = json!([i, 3 * i]);
            let opts = RqProduceOpts {
                args: Some(args.clone()),
                ..RqProduceOpts::default()
            };
            (rq_produce(&url, "add", 1, &opts).remove(0), args)
        })
        .collect();
    let failed = rq_produce(&url, "fail", 1, &RqProduceOpts::default()).remove(0);
    for (id, args) in &adds {
        assert_task(&ts, id, "success", "rq_app.add", Some(args));
    }
    let t = ts.wait_state(&failed, "failure", LONG);
    assert_eq!(t["name"], "rq_app.fail", "{t}");
}

#[test]
fn arq_is_followed_from_its_first_key() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = start_defaults(&redis, &dir);

    // Its first key: the worker's health check, written as it starts.
    let _worker = arq_worker(redis.port, "WorkerSettings", "arq:queue");
    detected(&ts, "arq");
    let adds: Vec<(String, Value)> = (0..3)
        .map(|i| {
            let args = json!([i, 3 * i]);
            (
                arq_produce(redis.port, &["add", &args.to_string()]).remove(0),
                args,
            )
        })
        .collect();
    let failed = arq_produce(redis.port, &["fail", "[1]"]).remove(0);
    for (id, args) in &adds {
        assert_task(&ts, id, "success", "add", Some(args));
    }
    let t = assert_task(&ts, &failed, "failure", "fail", None);
    assert_eq!(t["error"], "ValueError: card declined 1", "{t}");
}

#[test]
fn bullmq_is_followed_from_its_first_key() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = start_defaults(&redis, &dir);
    let url = redis.url();
    let _worker = bullmq_worker(&url, "emails", "bull", &[]);
    let jobs = json!([{"name": "add", "data": {"x": 1, "y": 2}}, {"name": "fail"}]);
    let ids = bullmq_produce(&url, "emails", "bull", &jobs);
    let found = detected(&ts, "bullmq");
    assert_eq!(found["via"], "new-key", "{found}");
    let t = assert_task(&ts, &ids[0], "success", "add", None);
    assert_eq!(t["kwargs"], json!({"x": 1, "y": 2}), "{t}");
    assert_eq!(t["result"], json!(3), "{t}");
    let t = assert_task(&ts, &ids[1], "failure", "fail", None);
    assert_eq!(t["error"], "boom", "{t}");
}

#[test]
fn sidekiq_is_followed_from_its_first_key() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // The defaults, but for the harness's `--abandon-after 5s`: Sidekiq 6 beats every 5 s.
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--abandon-after", "15s"],
    );
    let health = ts.get("/healthz");
    assert_eq!(health["detection"]["mode"], "auto", "{health}");
    assert_eq!(health["brokers"], json!([]), "an empty Redis: {health}");

    // Its first key: the process's heartbeat (`processes`), written as it starts.
    let _worker = sidekiq_worker(&redis, &["default"], None);
    detected(&ts, "sidekiq");
    // Jobs of 6 s: each outlives a heartbeat (an idle fetcher takes a job inside its push).
    let slow = sidekiq_produce(&redis, None, &["add", "3", "6"]);
    let failed = sidekiq_produce(&redis, None, &["noretry", "no-second-chance"]).remove(0);
    for (i, id) in slow.iter().enumerate() {
        let n = i as u64 + 1;
        assert_task(&ts, id, "success", "AddJob", Some(&json!([n, n, 6.0])));
    }
    let t = assert_task(&ts, &failed, "failure", "NoRetryJob", None);
    assert_eq!(t["error"], "ArgumentError: no-second-chance", "{t}");
}

#[test]
fn taskiq_stream_is_followed_from_its_first_key() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = start_defaults(&redis, &dir);
    let url = redis.url();

    // A stream of its own name; the consumer group is made (empty) before any message.
    let env = [("TS_TASKIQ_QUEUE", "ingest")];
    let _worker = taskiq_worker(&url, &env);
    let ids = taskiq_produce(&url, &env, "add", 3, &[]);
    let failed = taskiq_produce(&url, &env, "fail", 1, &[]).remove(0);
    // A task running long enough for its pending entry to be read.
    let slow = taskiq_produce(&url, &env, "slow", 1, &["--seconds", "1.5"]).remove(0);
    detected(&ts, "taskiq");
    for (i, id) in ids.iter().enumerate() {
        let t = ts.wait_state(id, "success", LONG);
        assert_eq!(t["name"], "taskiq_app:add", "{t}");
        assert_eq!(t["queue"], "ingest", "{t}");
        assert_eq!(t["args"], json!([i, i + 1]), "{t}");
    }
    assert_task(&ts, &slow, "success", "taskiq_app:slow", None);
    let t = ts.wait_state(&failed, "failure", LONG);
    assert_eq!(t["name"], "taskiq_app:fail", "{t}");
}

/// Queues declared after their broker is watched (a worker of a new queue starting later) are
/// followed at once: their first tasks are seen queued, with their names and arguments.
#[test]
fn late_queues_of_watched_brokers_are_followed_at_once() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = start_defaults(&redis, &dir);
    let url = redis.url();

    let _celery = CeleryWorker::start(&url, "celery", false, &[]);
    let _dramatiq = DramatiqWorker::start(&url, &[]);
    let _rq = RqWorker::start(&url, &["default"], &[], &[]);
    for broker in ["celery", "dramatiq", "rq"] {
        detected(&ts, broker);
    }

    // Then workers of queues nobody named start, and tasks go to those queues at once.
    let _jobs = CeleryWorker::start(&url, "jobs", false, &["--hostname", "w2@%h"]);
    let emails = [("TS_DRAMATIQ_QUEUE", "emails")];
    let _emails = DramatiqWorker::start(&url, &emails);
    let _reports = RqWorker::start(&url, &["reports"], &[], &[]);
    // The "jobs" worker busy first (long enough for the next producer run under CI load), so
    // the add waits in its queue (see above).
    let busy = produce(
        &url,
        "slow",
        2,
        "jobs",
        &ProduceOpts {
            args: Some(json!([5.0])),
            ..ProduceOpts::default()
        },
    );
    let celery_args = json!([4, 5]);
    let celery = produce(
        &url,
        "add",
        1,
        "jobs",
        &ProduceOpts {
            args: Some(celery_args.clone()),
            ..ProduceOpts::default()
        },
    )
    .remove(0);
    let dramatiq_args = json!([6, 7]);
    let dramatiq = dramatiq_produce(
        &url,
        "add",
        1,
        &DramatiqProduceOpts {
            args: Some(dramatiq_args.clone()),
            env: vec![("TS_DRAMATIQ_QUEUE".into(), "emails".into())],
            ..DramatiqProduceOpts::default()
        },
    )
    .remove(0);
    let rq_args = json!([8, 9]);
    let rq = rq_produce(
        &url,
        "add",
        1,
        &RqProduceOpts {
            args: Some(rq_args.clone()),
            queue: Some("reports".into()),
            ..RqProduceOpts::default()
        },
    )
    .remove(0);

    // The busy tasks went straight to idle worker processes: without Celery events their only
    // trace before the result is `unacked`, held for milliseconds (see the README), which a
    // loaded machine may read too late. What is shown of them must be right, not complete.
    for id in &busy {
        let t = ts.wait_state(id, "success", LONG);
        assert!(t["name"].is_null() || t["name"] == "billing.slow", "{t}");
    }
    let t = ts.wait_state(&celery, "success", LONG);
    assert_eq!(t["name"], "billing.add", "{t}");
    assert_eq!(t["args"], celery_args, "{t}");
    assert_eq!(t["queue"], "jobs", "{t}");
    // The first message of a queue can come and go before its first notification is read:
    // a fast actor's running phase may be too short to see, a slower one's is not.
    let t = ts.wait_state(&dramatiq, "success", LONG);
    assert_eq!(t["name"], "add", "{t}");
    assert_eq!(t["args"], dramatiq_args, "{t}");
    assert_eq!(t["queue"], "emails", "{t}");
    let slow = dramatiq_produce(
        &url,
        "slow",
        1,
        &DramatiqProduceOpts {
            seconds: Some(0.5),
            env: vec![("TS_DRAMATIQ_QUEUE".into(), "emails".into())],
            ..DramatiqProduceOpts::default()
        },
    )
    .remove(0);
    assert_task(&ts, &slow, "success", "slow", None);
    let t = assert_task(&ts, &rq, "success", "rq_app.add", Some(&rq_args));
    assert_eq!(t["queue"], "reports", "{t}");
}

/// taskiq's `PubSubBroker` leaves no key until a result: its first published message (on the
/// default channel, listened to from the start) starts the adapter, which keeps that message.
#[test]
fn taskiq_pubsub_is_found_from_its_first_message() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = start_defaults(&redis, &dir);
    let url = redis.url();

    let env = [("TS_TASKIQ_BROKER", "pubsub")];
    let _worker = taskiq_worker(&url, &env);
    let add = taskiq_produce(&url, &env, "add", 1, &[]).remove(0);
    let fail = taskiq_produce(&url, &env, "fail", 1, &[]).remove(0);
    let found = detected(&ts, "taskiq");
    assert_eq!(found["via"], "message", "{found}");
    let t = ts.wait_state(&add, "success", LONG);
    assert_eq!(t["name"], "taskiq_app:add", "{t}");
    assert_eq!(t["args"], json!([0, 1]), "{t}");
    assert_eq!(transition_states(&t), vec!["queued", "success"], "{t}");
    let t = ts.wait_state(&fail, "failure", LONG);
    assert_eq!(t["name"], "taskiq_app:fail", "{t}");
}
