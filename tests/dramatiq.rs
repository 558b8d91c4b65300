//! Dramatiq end to end: real workers and producers (tests/python/dramatiq_app.py and
//! dramatiq_produce.py) on a private redis-server, the taskscope binary watching with
//! `--brokers dramatiq`, and per message_id an assertion on what taskscope inferred.
//!
//! Dramatiq has no task events: everything is read from the broker's keys (queues, `.msgs`
//! hashes, ack sets, delay and dead-letter queues, heartbeats) and, when the worker runs the
//! Results middleware (`TS_DRAMATIQ_RESULTS=1`), from the result keys.
//!
//! Needs `scripts/setup.sh` (redis-server, .venv with tests/python/requirements.txt).
//! Each test owns its redis-server, taskscope and worker; at most `TASKSCOPE_TEST_JOBS`
//! (default 2) run at once. Run one: `cargo test --test dramatiq -- failure`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// One scenario's world: redis-server, taskscope (watching it for Dramatiq) and a scratch
/// directory. `namespace` is the RedisBroker namespace its workers and producers use.
struct World {
    namespace: Option<String>,
    // Field order is drop order: taskscope goes before the Redis it watches.
    ts: Taskscope,
    redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World::start(None)
    }

    /// taskscope with `--dramatiq-namespace <ns>`; workers and producers with
    /// `TS_DRAMATIQ_NAMESPACE=<ns>`.
    fn with_namespace(namespace: &str) -> World {
        World::start(Some(namespace))
    }

    fn start(namespace: Option<&str>) -> World {
        let redis = RedisServer::start();
        let dir = db_dir();
        let mut args = vec!["--brokers", "dramatiq"];
        if let Some(ns) = namespace {
            args.extend(["--dramatiq-namespace", ns]);
        }
        let ts = Taskscope::start(&redis.url(), &dir.path().join("t.duckdb"), &args);
        World {
            namespace: namespace.map(str::to_string),
            ts,
            redis,
            _dir: dir,
        }
    }

    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env: Vec<(&str, &str)> = Vec::new();
        if let Some(ns) = &self.namespace {
            env.push(("TS_DRAMATIQ_NAMESPACE", ns.as_str()));
        }
        env.extend_from_slice(extra);
        env
    }

    /// A worker on the default queue with dramatiq_app.py's defaults (no Results middleware).
    fn worker(&self) -> DramatiqWorker {
        self.worker_with(&[])
    }

    fn worker_with(&self, extra: &[(&str, &str)]) -> DramatiqWorker {
        DramatiqWorker::start(&self.redis.url(), &self.env(extra))
    }

    fn produce(&self, kind: &str, n: usize, opts: &DramatiqProduceOpts) -> Vec<String> {
        let mut opts = opts.clone();
        if let Some(ns) = &self.namespace {
            opts.env
                .push(("TS_DRAMATIQ_NAMESPACE".to_string(), ns.clone()));
        }
        dramatiq_produce(&self.redis.url(), kind, n, &opts)
    }
}

const RESULTS: (&str, &str) = ("TS_DRAMATIQ_RESULTS", "1");

fn defaults() -> DramatiqProduceOpts {
    DramatiqProduceOpts::default()
}

fn assert_common(task: &Value, id: &str, name: &str, queue: &str) {
    assert_task_shape(task);
    assert_eq!(task["id"], id, "id: {task}");
    assert_eq!(task["broker"], "dramatiq", "broker: {task}");
    assert_eq!(task["name"], name, "name: {task}");
    assert_eq!(task["queue"], queue, "queue: {task}");
}

fn assert_finished(task: &Value) {
    assert!(task["finished_at"].is_string(), "finished_at unset: {task}");
    assert!(task["updated_at"].is_string(), "updated_at unset: {task}");
    let states = transition_states(task);
    assert_eq!(
        states.last().map(String::as_str),
        task["state"].as_str(),
        "the last transition is not the task's state: {task}"
    );
}

/// `worker` is set and is the broker id of `worker` (a member of `<ns>:__heartbeats__`).
fn assert_worker_is(task: &Value, worker: &DramatiqWorker) {
    let w = task["worker"]
        .as_str()
        .unwrap_or_else(|| panic!("worker unset: {task}"));
    assert!(
        worker.broker_ids.iter().any(|id| id == w),
        "worker {w:?} is not the worker's broker id {:?}: {task}",
        worker.broker_ids
    );
}

/// The values of the Results middleware's records: keys outside any namespace (bare md5 hex),
/// each a one-element list.
fn stored_results(redis: &RedisServer) -> Vec<String> {
    redis
        .cli(&["KEYS", "*"])
        .lines()
        .filter(|k| !k.is_empty() && !k.contains(':'))
        .map(|k| redis.cli(&["LRANGE", k, "0", "0"]))
        .collect()
}

fn is_terminal(task: &Value) -> bool {
    matches!(
        task["state"].as_str(),
        Some("success" | "failure" | "abandoned")
    )
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// add(i, i+1) x3 on a running worker: success, name, queue, arguments.
#[test]
fn success() {
    let _slot = test_slot();
    let w = World::new();
    let _worker = w.worker();
    let ids = w.produce("add", 3, &defaults());
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, id, "add", "default");
        assert_finished(&t);
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
        assert_eq!(t["kwargs"], json!({}), "kwargs: {t}");
        assert!(t["error"].is_null(), "error: {t}");
        assert_eq!(t["retries"], 0, "retries: {t}");
        assert!(t["eta"].is_null(), "eta set without a delay: {t}");
        assert!(
            !transition_states(&t).contains(&"retried".to_string()),
            "never retried: {t}"
        );
    }
    let stats = w.ts.get("/api/stats");
    assert!(
        stats["by_broker"]["dramatiq"].as_u64().unwrap_or(0) >= 3,
        "/api/stats: {stats}"
    );
}

/// fail(1) raises ValueError and has max_retries=0: dead-lettered at once (`default.XQ`).
/// Without Results the error text is nowhere in Redis: only the state is asserted.
#[test]
fn failure() {
    let _slot = test_slot();
    let w = World::new();
    let _worker = w.worker();
    let id = w.produce("fail", 1, &defaults()).remove(0);
    let t = w.ts.wait_state(&id, "failure", LONG);
    assert_common(&t, &id, "fail", "default");
    assert_finished(&t);
    assert_eq!(t["args"], json!([1]), "args: {t}");
    assert_eq!(t["retries"], 0, "retries: {t}");
    assert!(
        !transition_states(&t).contains(&"retried".to_string()),
        "a max_retries=0 failure was never retried: {t}"
    );
}

/// The same with the Results middleware: the stored exception gives the error text.
#[test]
fn failure_with_results() {
    let _slot = test_slot();
    let w = World::new();
    let _worker = w.worker_with(&[RESULTS]);
    let id = w
        .produce(
            "fail",
            1,
            &DramatiqProduceOpts {
                args: Some(json!([3])),
                ..defaults()
            },
        )
        .remove(0);
    // The Python side first: the exception is stored (in Redis) ~1 ms after the dead letter.
    wait_for(
        "the Results middleware to store the exception",
        LONG,
        || {
            let stored = stored_results(&w.redis);
            if stored.iter().any(|r| r.contains("card declined 3")) {
                Ok(())
            } else {
                Err(format!("{stored:?}"))
            }
        },
    );
    let t =
        w.ts.wait_task(&id, "state failure with error set", LONG, |t| {
            t["state"] == "failure" && t["error"].is_string()
        });
    assert_common(&t, &id, "fail", "default");
    assert_finished(&t);
    assert_eq!(t["args"], json!([3]), "args: {t}");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(error.contains("card declined 3"), "error: {t}");
    assert!(!error.contains('\n'), "error must be one line: {t}");
}

/// flaky("k0", 2) fails twice (each retry a copy in the delay queue with the same message_id)
/// then succeeds: one task, retries 2, `retried` among the transitions, final success.
#[test]
fn retried_then_success() {
    let _slot = test_slot();
    let w = World::new();
    let _worker = w.worker();
    let id = w
        .produce(
            "flaky",
            1,
            &DramatiqProduceOpts {
                fail_times: Some(2),
                ..defaults()
            },
        )
        .remove(0);
    let t =
        w.ts.wait_task(&id, "state success with retries == 2", LONG, |t| {
            t["state"] == "success" && t["retries"] == 2
        });
    assert_common(&t, &id, "flaky", "default");
    assert_finished(&t);
    assert_eq!(t["args"], json!(["k0", 2]), "args: {t}");
    let states = transition_states(&t);
    assert!(
        states.iter().any(|s| s == "retried"),
        "no `retried` transition: {t}"
    );
    assert_eq!(states.last().map(String::as_str), Some("success"), "{t}");
    assert!(
        !states.iter().any(|s| s == "failure"),
        "a retried attempt is not a failure: {t}"
    );
    let page = w.ts.get("/api/tasks?name=flaky");
    let rows = page["tasks"].as_array().expect("tasks array");
    assert_eq!(
        rows.iter().filter(|r| r["id"] == id.as_str()).count(),
        1,
        "a retried message keeps one row: {page}"
    );
}

/// Thirty tasks that fail once each, sent with two hundred fast ones to a busy worker: retry
/// copies move through the delay queue and back while the queue churns. Every flaky task ends
/// `success` with one retry and a `retried` transition; every fast one `success`. (A moved-back
/// message taken and finished before any read lists it, which `requeue.rs` settles, did not
/// happen in this test's runs with a real worker; `broker-adapters/tests/dramatiq_settlement.rs`
/// drives it write by write.)
#[test]
fn burst_of_retries_among_fast_tasks_all_succeed_with_one_retry() {
    let _slot = test_slot();
    let w = World::new();
    let _worker = w.worker();
    let flaky = w.produce(
        "flaky",
        30,
        &DramatiqProduceOpts {
            fail_times: Some(1),
            ..defaults()
        },
    );
    let fast = w.produce("add", 200, &defaults());
    for id in &flaky {
        let t =
            w.ts.wait_task(id, "state success with retries == 1", LONG, |t| {
                t["state"] == "success" && t["retries"] == 1
            });
        assert!(
            transition_states(&t).iter().any(|s| s == "retried"),
            "no `retried` transition: {t}"
        );
    }
    for id in &fast {
        w.ts.wait_task(id, "state success", LONG, |t| t["state"] == "success");
    }
}

/// add sent with `--delay 1500` (delay queue `default.DQ`, `options.eta`) to a running worker:
/// `queued` with `eta` (queue `default`, not `default.DQ`) while it waits, then success.
#[test]
fn delayed_message() {
    let _slot = test_slot();
    let w = World::new();
    let _worker = w.worker();
    let sent = Instant::now();
    let id = w
        .produce(
            "add",
            1,
            &DramatiqProduceOpts {
                delay_ms: Some(1500),
                args: Some(json!([20, 22])),
                ..defaults()
            },
        )
        .remove(0);
    // The message is due 1.5 s after it was sent: poll for the queued state with its eta, but
    // stop at an outcome so a missed window reports what taskscope recorded instead.
    let t = w.ts.wait_task(
        &id,
        "state queued with eta set (or an outcome)",
        SHORT,
        |t| (t["state"] == "queued" && t["eta"].is_string()) || is_terminal(t),
    );
    assert!(
        t["state"] == "queued",
        "never seen queued within the {:?} after sending (the delay is 1.5 s): {t}",
        sent.elapsed()
    );
    assert_common(&t, &id, "add", "default");
    assert_eq!(t["args"], json!([20, 22]), "args: {t}");
    assert!(
        t["started_at"].is_null(),
        "started_at on a queued task: {t}"
    );
    let eta = parse_time(&t, "eta");
    if !t["enqueued_at"].is_null() {
        let enqueued = parse_time(&t, "enqueued_at");
        let ahead = eta - enqueued;
        assert!(
            ahead > chrono::Duration::milliseconds(1000)
                && ahead < chrono::Duration::milliseconds(5000),
            "eta should be about 1.5 s after enqueued_at (is {ahead}): {t}"
        );
    }

    let t = w.ts.wait_state(&id, "success", LONG);
    assert_common(&t, &id, "add", "default");
    assert_finished(&t);
    assert_eq!(t["args"], json!([20, 22]), "args: {t}");
    assert_eq!(t["retries"], 0, "a delay is not a retry: {t}");
    let states = transition_states(&t);
    assert_eq!(states.first().map(String::as_str), Some("queued"), "{t}");
    assert!(
        !states.iter().any(|s| s == "retried"),
        "a delayed message was never retried: {t}"
    );
}

/// Messages on a queue no worker consumes (`parked`) stay `queued` while the worker drains
/// `default`; `/api/queues` lists dramatiq/parked with its length.
#[test]
fn parked_queue() {
    let _slot = test_slot();
    let w = World::new();
    let _worker = w.worker();
    let parked = w.produce(
        "add",
        2,
        &DramatiqProduceOpts {
            queue: Some("parked".into()),
            ..defaults()
        },
    );
    // The worker is busy with its own queue meanwhile: the parked messages must not move.
    let busy = w.produce("add", 2, &defaults());
    w.ts.wait_all_state(&busy, "success", LONG);
    for (i, id) in parked.iter().enumerate() {
        let t = w.ts.wait_state(id, "queued", SHORT);
        assert_common(&t, id, "add", "parked");
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
        assert!(t["enqueued_at"].is_string(), "enqueued_at unset: {t}");
        assert!(
            t["started_at"].is_null(),
            "started_at on a queued task: {t}"
        );
        assert!(t["worker"].is_null(), "worker on a queued task: {t}");
        assert!(t["eta"].is_null(), "eta set without a delay: {t}");
        assert_eq!(transition_states(&t), vec!["queued"], "{t}");
    }

    // Queue lengths are sampled (every 5 s by default).
    wait_for(
        "GET /api/queues to show dramatiq queue parked with 2 messages",
        LONG,
        || {
            let q = w.ts.get("/api/queues");
            let found = q["queues"].as_array().and_then(|qs| {
                qs.iter()
                    .find(|q| q["broker"] == "dramatiq" && q["name"] == "parked")
                    .cloned()
            });
            match found {
                Some(p) if p["length"].as_u64().unwrap_or(0) >= 2 => Ok(()),
                _ => Err(q.to_string()),
            }
        },
    );
    // The oldest waiting message's age: known from the broker's data, and growing.
    common::assert_oldest_age_grows(&w.ts, "dramatiq", "parked");
    // Still queued after all that.
    for id in &parked {
        let t = w.ts.task(id).expect("parked task known");
        assert_eq!(t["state"], "queued", "{t}");
    }
}

/// hang() runs; its worker is SIGKILLed (whole process group): once its heartbeat is stale the
/// message is `abandoned` within --abandon-after (5 s) plus slack. A new worker (heartbeat
/// timeout 3 s, maintenance on every call) requeues the dead worker's ack set: the message moves
/// on again from `abandoned` and runs in the new worker.
#[test]
fn abandoned_after_sigkill_then_redelivered() {
    let _slot = test_slot();
    let w = World::new();
    let fast_maintenance = [
        ("TS_DRAMATIQ_HEARTBEAT_TIMEOUT", "3000"),
        ("TS_DRAMATIQ_MAINTENANCE_CHANCE", "1000000"),
    ];
    let mut worker = w.worker_with(&fast_maintenance);
    let id = w.produce("hang", 1, &defaults()).remove(0);
    worker.wait_started(&id, LONG);
    let t = w.ts.wait_state(&id, "running", SHORT);
    assert_common(&t, &id, "hang", "default");
    assert_worker_is(&t, &worker);
    assert!(
        t["started_at"].is_string(),
        "started_at unset on a running task: {t}"
    );

    worker.sigkill();
    let killed = Instant::now();
    let t =
        w.ts.wait_state(&id, "abandoned", Duration::from_secs(5 + 25));
    eprintln!("abandoned {:?} after the SIGKILL", killed.elapsed());
    assert_common(&t, &id, "hang", "default");
    assert_worker_is(&t, &worker);
    let states = transition_states(&t);
    let running = states.iter().position(|s| s == "running");
    let abandoned = states.iter().position(|s| s == "abandoned");
    assert!(
        matches!((running, abandoned), (Some(r), Some(a)) if r < a),
        "transitions should go running -> abandoned: {t}"
    );

    let new_worker = w.worker_with(&fast_maintenance);
    let t = w.ts.wait_task(
        &id,
        "state running or queued again after abandoned",
        LONG,
        |t| {
            let states = transition_states(t);
            let last_abandoned = states.iter().rposition(|s| s == "abandoned");
            (t["state"] == "running" || t["state"] == "queued")
                && last_abandoned.is_some_and(|a| a + 1 < states.len())
        },
    );
    assert_common(&t, &id, "hang", "default");
    new_worker.wait_started(&id, LONG);
    let t = w.ts.wait_state(&id, "running", SHORT);
    assert_worker_is(&t, &new_worker);
}

/// Messages sent while no worker runs are `queued`; once a worker starts they end in success.
/// taskscope is SIGKILLed while a message runs; the worker acknowledges it while taskscope is
/// down (no Results middleware: nothing in Redis remembers the outcome). After the restart the
/// task is settled as a success because its message is gone from every queue, delay queue and
/// dead-letter hash; a message still waiting on a parked queue stays queued.
#[test]
fn restart_mid_stream_settles_what_finished_meanwhile() {
    let _slot = test_slot();
    let mut w = World::new();
    let worker = w.worker();
    let slow = DramatiqProduceOpts {
        seconds: Some(2.0),
        ..defaults()
    };
    let id = w.produce("slow", 1, &slow).remove(0);
    worker.wait_started(&id, LONG);
    w.ts.wait_state(&id, "running", SHORT);
    let parked = DramatiqProduceOpts {
        queue: Some("parked".into()),
        ..defaults()
    };
    let waiting = w.produce("add", 1, &parked).remove(0);
    w.ts.wait_state(&waiting, "queued", SHORT);

    w.ts.kill();
    let redis = &w.redis;
    wait_for("the worker to acknowledge the slow message", LONG, || {
        let n = redis.cli(&["HLEN", "dramatiq:default.msgs"]);
        if n.trim() == "0" {
            Ok(())
        } else {
            Err(n)
        }
    });
    w.ts.restart();
    let t = w.ts.wait_state(&id, "success", SHORT);
    let states = transition_states(&t);
    assert_eq!(
        states.first().map(String::as_str),
        Some("queued"),
        "history kept over the restart: {t}"
    );
    assert!(states.contains(&"running".to_string()), "{t}");
    let t = w.ts.wait_state(&waiting, "queued", SHORT);
    assert_eq!(transition_states(&t), vec!["queued".to_string()], "{t}");
}

#[test]
fn sent_while_no_worker() {
    let _slot = test_slot();
    let w = World::new();
    let ids = w.produce("add", 3, &defaults());
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "queued", SHORT);
        assert_common(&t, id, "add", "default");
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
        assert!(t["enqueued_at"].is_string(), "enqueued_at unset: {t}");
    }
    let _worker = w.worker();
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, id, "add", "default");
        assert_finished(&t);
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
        assert_eq!(
            transition_states(&t).first().map(String::as_str),
            Some("queued"),
            "{t}"
        );
    }
}

/// A worker that is up and idle gets messages: they end in success.
#[test]
fn sent_to_idle_worker() {
    let _slot = test_slot();
    let w = World::new();
    let _worker = w.worker();
    let ids = w.produce("add", 3, &defaults());
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, id, "add", "default");
        assert_finished(&t);
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
    }
}

/// With the Results middleware the return value of add(i, i+1) is the task's `result`.
#[test]
fn results_middleware_result() {
    let _slot = test_slot();
    let w = World::new();
    let _worker = w.worker_with(&[RESULTS]);
    let ids = w.produce("add", 3, &defaults());
    for (i, id) in ids.iter().enumerate() {
        let t =
            w.ts.wait_task(id, "state success with result set", LONG, |t| {
                t["state"] == "success" && !t["result"].is_null()
            });
        assert_common(&t, id, "add", "default");
        assert_finished(&t);
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
        assert!(t["error"].is_null(), "error: {t}");
    }
}

/// RedisBroker namespace `shop` (keys `shop:*`) with `--dramatiq-namespace shop`. The
/// messages are sent before the worker starts: what is tested is the namespace, not the race
/// of an idle worker against the first read of a new queue (`sent_to_idle_worker`; under a
/// loaded CI machine an idle worker may take and finish both within a millisecond).
#[test]
fn custom_namespace() {
    let _slot = test_slot();
    let w = World::with_namespace("shop");
    let ids = w.produce("add", 2, &defaults());
    for id in &ids {
        w.ts.wait_state(id, "queued", LONG);
    }
    let _worker = w.worker();
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, id, "add", "default");
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
    }
    assert_eq!(
        w.redis.cli(&["EXISTS", "dramatiq:__heartbeats__"]),
        "0",
        "nothing used the default namespace"
    );
}

/// The Python side alone (no taskscope): tells a broken environment from a taskscope bug.
mod harness {
    use super::*;

    #[test]
    fn dramatiq_worker_and_producer_work() {
        let _slot = test_slot();
        let redis = RedisServer::start();
        let mut worker = DramatiqWorker::start(&redis.url(), &[]);
        assert_eq!(worker.broker_ids.len(), 1, "{:?}", worker.broker_ids);
        let ids = dramatiq_produce(&redis.url(), "add", 2, &defaults());
        assert_eq!(ids.len(), 2);
        let fail = dramatiq_produce(&redis.url(), "fail", 1, &defaults()).remove(0);
        wait_for(
            "the worker to drain default and dead-letter fail",
            LONG,
            || {
                let pending = redis.cli(&["HLEN", "dramatiq:default.msgs"]);
                let dead = redis.cli(&["HVALS", "dramatiq:default.XQ.msgs"]);
                if pending == "0" && dead.contains(&fail) {
                    Ok(())
                } else {
                    Err(format!("default.msgs: {pending}, XQ.msgs: {dead}"))
                }
            },
        );
        let hang = dramatiq_produce(&redis.url(), "hang", 1, &defaults()).remove(0);
        worker.wait_started(&hang, LONG);
        let acks = format!("dramatiq:__acks__.{}.default", worker.broker_ids[0]);
        assert_eq!(redis.cli(&["SCARD", &acks]), "1", "{acks}");
        worker.sigkill();
    }
}
