//! taskiq end to end: real `taskiq worker` processes and producers (tests/python/taskiq_app.py
//! and taskiq_produce.py, taskiq 0.13.0 + taskiq-redis 1.2.4) on a private redis-server, the
//! taskscope binary watching with `--brokers taskiq`, and per task id an assertion on what
//! taskscope inferred through the HTTP API.
//!
//! Stream mode is read without joining the workers' consumer group (XRANGE, XPENDING, XINFO);
//! list mode from the list's contents; outcomes from the result backend's records.
//!
//! Needs `scripts/setup.sh` (redis-server, .venv with tests/python/requirements.txt).
//! Each test owns its redis-server, taskscope and workers; at most `TASKSCOPE_TEST_JOBS`
//! (default 2) run at once. Run one: `cargo test --test taskiq -- sigkill`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// One scenario's world: redis-server, taskscope watching it for taskiq, the scenario's
/// taskiq_app.py configuration, and a scratch directory.
struct World {
    env: Vec<(&'static str, &'static str)>,
    // Field order is drop order: taskscope goes before the Redis it watches.
    ts: Taskscope,
    redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(env: &[(&'static str, &'static str)], extra_args: &[&str]) -> World {
        let redis = RedisServer::start();
        let dir = db_dir();
        let mut args = vec![
            "--brokers",
            "taskiq",
            "--reconcile-every",
            "1s",
            "--sample-every",
            "1s",
        ];
        args.extend_from_slice(extra_args);
        let ts = Taskscope::start(&redis.url(), &dir.path().join("t.duckdb"), &args);
        World {
            env: env.to_vec(),
            ts,
            redis,
            _dir: dir,
        }
    }

    /// A taskiq worker with this scenario's configuration (see [`TaskiqWorker::start`]).
    fn worker(&self) -> WorkerProcess {
        taskiq_worker(&self.redis.url(), &self.env)
    }

    /// Sends `n` tasks of `kind` with taskiq_produce.py; their task ids in order.
    fn produce(&self, kind: &str, n: usize, extra: &[&str]) -> Vec<String> {
        taskiq_produce(&self.redis.url(), &self.env, kind, n, extra)
    }
}

const STREAM_JSON: [(&str, &str); 1] = [("TS_TASKIQ_BROKER", "stream")];

fn assert_common(task: &Value, id: &str, name: &str, queue: &str) {
    assert_task_shape(task);
    assert_eq!(task["id"], id, "id: {task}");
    assert_eq!(task["broker"], "taskiq", "broker: {task}");
    assert_eq!(task["name"], format!("taskiq_app:{name}"), "name: {task}");
    assert_eq!(task["queue"], queue, "queue: {task}");
}

fn assert_finished(task: &Value) {
    assert!(task["finished_at"].is_string(), "finished_at: {task}");
    assert!(task["enqueued_at"].is_string(), "enqueued_at: {task}");
}

/// add and fail on one worker: successes with their return values, a failure with the
/// exception's one-line error.
fn success_and_failure(w: &World, queue: &str) {
    let _worker = w.worker();
    let adds = w.produce("add", 3, &[]);
    let fail = w.produce("fail", 1, &[]).remove(0);
    for (i, id) in adds.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, id, "add", queue);
        assert_finished(&t);
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
        assert_eq!(t["kwargs"], json!({}), "kwargs: {t}");
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
        assert!(t["error"].is_null(), "error: {t}");
        assert_eq!(t["retries"], 0, "retries: {t}");
    }
    let t = w.ts.wait_state(&fail, "failure", LONG);
    assert_common(&t, &fail, "fail", queue);
    assert_finished(&t);
    assert_eq!(t["args"], json!([1]), "args: {t}");
    assert_eq!(t["error"], "CardDeclined: card declined 1", "error: {t}");
    assert!(
        t["traceback"]
            .as_str()
            .is_some_and(|tb| tb.contains("taskiq_app.CardDeclined")),
        "traceback: {t}"
    );
    assert_eq!(t["retries"], 0, "retries: {t}");
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// RedisStreamBroker, JSON messages, the default pickled results.
#[test]
fn stream_json_messages_pickled_results() {
    let _slot = test_slot();
    let w = World::new(&STREAM_JSON, &[]);
    success_and_failure(&w, "taskiq");
    let stats = w.ts.get("/api/stats");
    assert!(
        stats["by_broker"]["taskiq"].as_u64().unwrap_or(0) >= 4,
        "/api/stats: {stats}"
    );
}

/// RedisStreamBroker with the msgpack serializer and JSON results under a prefix, on a queue
/// that is not the default.
#[test]
fn stream_msgpack_messages_json_results_with_prefix() {
    let _slot = test_slot();
    let w = World::new(
        &[
            ("TS_TASKIQ_BROKER", "stream"),
            ("TS_TASKIQ_SERIALIZER", "msgpack"),
            ("TS_TASKIQ_RESULTS", "json"),
            ("TS_TASKIQ_RESULT_PREFIX", "res"),
            ("TS_TASKIQ_QUEUE", "billing"),
        ],
        &[
            "--taskiq-queues",
            "billing",
            "--taskiq-result-prefix",
            "res",
        ],
    );
    success_and_failure(&w, "billing");
}

/// A stream queue taskscope was not told about (`--taskiq-queues` left at `taskiq`) is found
/// from its first `xadd` and watched like a configured one.
#[test]
fn stream_on_an_unconfigured_queue_is_discovered() {
    let _slot = test_slot();
    let w = World::new(
        &[
            ("TS_TASKIQ_BROKER", "stream"),
            ("TS_TASKIQ_QUEUE", "orders"),
        ],
        &[],
    );
    let _worker = w.worker();
    let ids = w.produce("add", 2, &[]);
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, id, "add", "orders");
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
    }
}

/// ListQueueBroker with msgpack results: tasks sent while no worker runs wait `queued` in the
/// list (and are counted); a worker then takes them and the results tell the outcome.
#[test]
fn list_broker_queued_then_outcomes() {
    let _slot = test_slot();
    let w = World::new(
        &[
            ("TS_TASKIQ_BROKER", "list"),
            ("TS_TASKIQ_RESULTS", "msgpack"),
        ],
        &[],
    );
    let adds = w.produce("add", 2, &[]);
    let fail = w.produce("fail", 1, &[]).remove(0);
    for id in adds.iter().chain([&fail]) {
        let t = w.ts.wait_state(id, "queued", LONG);
        assert!(t["queue"] == "taskiq", "queue: {t}");
    }
    wait_for("the list's length in /api/queues", LONG, || {
        let q = w.ts.get("/api/queues");
        let found = q["queues"].as_array().and_then(|qs| {
            qs.iter()
                .find(|q| q["broker"] == "taskiq" && q["name"] == "taskiq")
        });
        match found {
            Some(q) if q["length"] == 3 => Ok(()),
            _ => Err(q.to_string()),
        }
    });
    let _worker = w.worker();
    for (i, id) in adds.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, id, "add", "taskiq");
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
        let states = transition_states(&t);
        assert_eq!(states.first().map(String::as_str), Some("queued"), "{t}");
    }
    let t = w.ts.wait_state(&fail, "failure", LONG);
    assert_common(&t, &fail, "fail", "taskiq");
    assert_eq!(t["error"], "CardDeclined: card declined 1", "error: {t}");
}

/// SimpleRetryMiddleware: flaky fails once, is re-sent with the same task id and `_retries`
/// 1, then succeeds; flaky failing every time ends in failure after max_retries=3 attempts.
#[test]
fn retry_middleware_retried_then_final() {
    let _slot = test_slot();
    let w = World::new(&STREAM_JSON, &[]);
    let _worker = w.worker();
    let ok = w.produce("flaky", 1, &["--fail-times", "1"]).remove(0);
    let bad = w.produce("flaky", 1, &["--fail-times", "9"]).remove(0);

    let t = w.ts.wait_state(&ok, "success", LONG);
    assert_common(&t, &ok, "flaky", "taskiq");
    assert_eq!(t["retries"], 1, "retries: {t}");
    assert_eq!(t["result"], "ok after 1", "result: {t}");
    assert!(
        transition_states(&t).contains(&"retried".to_string()),
        "a retried state before success: {t}"
    );

    let t = w.ts.wait_state(&bad, "failure", LONG);
    assert_common(&t, &bad, "flaky", "taskiq");
    assert_eq!(t["retries"], 2, "three attempts, two retries: {t}");
    assert_eq!(t["error"], "ValueError: flaky k0 attempt 2", "error: {t}");
    let retried = transition_states(&t)
        .iter()
        .filter(|s| *s == "retried")
        .count();
    assert_eq!(retried, 2, "two retried transitions: {t}");
}

/// SimpleRetryMiddleware with `no_result_on_retry=False`: every failed attempt writes its
/// result record (same key) after the retry's message; the task still ends in one success.
#[test]
fn retry_with_intermediate_results_kept() {
    let _slot = test_slot();
    let w = World::new(
        &[
            ("TS_TASKIQ_BROKER", "stream"),
            ("TS_TASKIQ_RETRY", "simple-keep"),
        ],
        &[],
    );
    let _worker = w.worker();
    let id = w.produce("flaky", 1, &["--fail-times", "2"]).remove(0);
    let t = w.ts.wait_state(&id, "success", LONG);
    assert_common(&t, &id, "flaky", "taskiq");
    assert_eq!(t["retries"], 2, "retries: {t}");
    assert_eq!(t["result"], "ok after 2", "result: {t}");
    assert!(t["error"].is_null(), "no error on a success: {t}");
    let states = transition_states(&t);
    assert!(
        !states.contains(&"failure".to_string()),
        "a retried attempt's error record is not a failure: {t}"
    );
    assert_eq!(states.iter().filter(|s| *s == "retried").count(), 2, "{t}");
}

/// PubSubBroker: `queued` when published, the outcome from the result records.
#[test]
fn pubsub_broker_published_then_outcomes() {
    let _slot = test_slot();
    let w = World::new(&[("TS_TASKIQ_BROKER", "pubsub")], &[]);
    let _worker = w.worker();
    let add = w.produce("add", 1, &[]).remove(0);
    let fail = w.produce("fail", 1, &[]).remove(0);
    let t = w.ts.wait_state(&add, "success", LONG);
    assert_common(&t, &add, "add", "taskiq");
    assert_eq!(t["result"], json!(1), "result: {t}");
    assert_eq!(transition_states(&t), vec!["queued", "success"], "{t}");
    let t = w.ts.wait_state(&fail, "failure", LONG);
    assert_common(&t, &fail, "fail", "taskiq");
    assert_eq!(t["error"], "CardDeclined: card declined 1", "error: {t}");
}

/// Pub/sub tasks published and finished in the same instant (a fast worker, a loaded
/// machine): each publication reaches taskscope before its result, because messages and
/// keyspace events come on one connection in Redis's order and a message goes to the loop
/// before the reads of the keys written after it. Two connections (messages on one, the
/// result's notification on the other) let the result overtake the message: the task went
/// straight to `success` and the late `queued` was only a filled-in field.
#[test]
fn pubsub_publication_is_seen_before_an_immediate_result() {
    let _slot = test_slot();
    let w = World::new(&[], &[]);
    let message = |id: &str| {
        json!({"task_id": id, "task_name": "taskiq_app:add", "labels": {}, "labels_types": {},
               "args": [1, 2], "kwargs": {}})
        .to_string()
    };
    let result = json!({"is_err": false, "log": null, "return_value": 3,
                        "execution_time": 0.001, "labels": {}, "error": null})
    .to_string();
    let pair = |id: &str| {
        vec![
            vec!["PUBLISH".to_string(), "taskiq".into(), message(id)],
            vec!["SET".to_string(), id.to_string(), result.clone()],
        ]
    };
    // Subscribed once a published task is seen (one more probe every poll until then).
    let mut probes = Vec::new();
    wait_for("taskscope to see a published task", LONG, || {
        let probe = format!("{:032x}", 0xfeed_0000_u64 + probes.len() as u64);
        pipeline(w.redis.port, &pair(&probe));
        probes.push(probe);
        match probes.iter().any(|p| w.ts.task(p).is_some()) {
            true => Ok(()),
            false => Err(format!("none of {} probes seen", probes.len())),
        }
    });
    // Ids as taskiq makes them (uuid4 hex): a result key is read on its notification even
    // before its task is known.
    let ids: Vec<String> = (0..200)
        .map(|i| format!("{:032x}", 0xb0_0000 + i))
        .collect();
    let commands: Vec<Vec<String>> = ids.iter().flat_map(|id| pair(id)).collect();
    pipeline(w.redis.port, &commands);
    let mut out_of_order = Vec::new();
    for t in w.ts.wait_all_state(&ids, "success", LONG) {
        if transition_states(&t) != ["queued", "success"] {
            out_of_order.push(t);
        }
    }
    assert!(
        out_of_order.is_empty(),
        "{} of {} tasks without `queued` before `success`, e.g. {}",
        out_of_order.len(),
        ids.len(),
        out_of_order[0]
    );
}

/// Sends `commands` to Redis in one write (a pipeline, as a producer's client sends them) and
/// waits for every reply.
fn pipeline(port: u16, commands: &[Vec<String>]) {
    use std::io::{Read, Write};
    let mut out = Vec::new();
    for args in commands
        .iter()
        .chain([&vec!["ECHO".to_string(), "end-of-pipe".into()]])
    {
        out.extend(format!("*{}\r\n", args.len()).into_bytes());
        for a in args {
            out.extend(format!("${}\r\n", a.len()).into_bytes());
            out.extend(a.as_bytes());
            out.extend(b"\r\n");
        }
    }
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to Redis");
    conn.write_all(&out).expect("write the pipeline");
    let mut replies = Vec::new();
    let mut buf = [0u8; 65536];
    while !replies.ends_with(b"end-of-pipe\r\n") {
        let n = conn.read(&mut buf).expect("read the replies");
        assert!(n > 0, "Redis closed the connection");
        replies.extend_from_slice(&buf[..n]);
    }
}

/// A worker SIGKILLed while it runs a task: the entry stays in its consumer's pending list and
/// the consumer falls silent; after `--abandon-after` (5 s here) the task is `abandoned`. A new
/// worker (idle_timeout 2 s) claims the entry with `XAUTOCLAIM` after its next non-empty read:
/// the task runs again, on the new consumer.
#[test]
fn sigkilled_worker_abandoned_then_claimed() {
    let _slot = test_slot();
    let mut w = World::new(&[("TS_TASKIQ_BROKER", "stream")], &[]);
    let mut worker = w.worker();
    let id = w.produce("hang", 1, &[]).remove(0);
    worker.wait_started(&id, LONG);
    let t = w.ts.wait_state(&id, "running", SHORT);
    assert_common(&t, &id, "hang", "taskiq");
    let consumer = t["worker"].as_str().unwrap_or_default().to_string();
    assert!(!consumer.is_empty(), "the consumer name as worker: {t}");
    assert!(t["started_at"].is_string(), "started_at: {t}");
    // Workers are read from the history file, up to a flush interval behind the task's state.
    wait_worker(&w.ts, &consumer, SHORT);

    worker.sigkill();
    let t =
        w.ts.wait_state(&id, "abandoned", Duration::from_secs(5 + 25));
    assert_eq!(t["worker"], consumer.as_str(), "worker: {t}");
    let states = transition_states(&t);
    let running = states.iter().position(|s| s == "running");
    let abandoned = states.iter().position(|s| s == "abandoned");
    assert!(
        matches!((running, abandoned), (Some(r), Some(a)) if r < a),
        "running -> abandoned: {t}"
    );

    w.env.push(("TS_TASKIQ_IDLE_TIMEOUT", "2000"));
    let new_worker = w.worker();
    // taskiq reclaims only after a read that returned messages.
    let nudge = w.produce("add", 1, &[]).remove(0);
    w.ts.wait_state(&nudge, "success", LONG);
    new_worker.wait_started(&id, LONG);
    let t =
        w.ts.wait_task(&id, "running again on another consumer", LONG, |t| {
            t["state"] == "running" && t["worker"] != consumer.as_str()
        });
    let states = transition_states(&t);
    assert_eq!(states.last().map(String::as_str), Some("running"), "{t}");
    assert!(states.contains(&"abandoned".to_string()), "{t}");
}

/// taskscope is SIGKILLed while a task runs and others are sent and finished meanwhile; after
/// its restart the stream and the result records tell every outcome.
#[test]
fn restart_of_taskscope_settles_what_finished_meanwhile() {
    let _slot = test_slot();
    let mut w = World::new(&STREAM_JSON, &[]);
    let worker = w.worker();
    let slow = w.produce("slow", 1, &["--seconds", "2"]).remove(0);
    worker.wait_started(&slow, LONG);
    w.ts.wait_state(&slow, "running", SHORT);
    w.ts.kill();
    let unseen = w.produce("add", 2, &[]);
    let fail = w.produce("fail", 1, &[]).remove(0);
    for id in unseen.iter().chain([&slow, &fail]) {
        wait_for("the result record", LONG, || {
            match w.redis.cli(&["EXISTS", id]).as_str() {
                "1" => Ok(()),
                other => Err(other.to_string()),
            }
        });
    }
    w.ts.restart();
    let t = w.ts.wait_state(&slow, "success", LONG);
    assert_eq!(t["result"], json!(2.0), "{t}");
    for (i, id) in unseen.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, id, "add", "taskiq");
        assert_eq!(t["result"], json!(2 * i + 1), "{t}");
    }
    let t = w.ts.wait_state(&fail, "failure", LONG);
    assert_eq!(t["error"], "CardDeclined: card declined 1", "{t}");
}

/// Tasks sent to a stream no worker reads stay `queued` and are counted in the queue's length.
#[test]
fn stream_without_worker_stays_queued() {
    let _slot = test_slot();
    let w = World::new(&STREAM_JSON, &[]);
    let ids = w.produce("add", 2, &[]);
    for id in &ids {
        let t = w.ts.wait_state(id, "queued", LONG);
        assert_common(&t, id, "add", "taskiq");
        assert!(t["started_at"].is_null(), "started_at: {t}");
    }
    wait_for("the stream's length in /api/queues", LONG, || {
        let q = w.ts.get("/api/queues");
        let found = q["queues"].as_array().and_then(|qs| {
            qs.iter()
                .find(|q| q["broker"] == "taskiq" && q["name"] == "taskiq")
        });
        match found {
            Some(q) if q["length"] == 2 && q["running"] == 0 => Ok(()),
            _ => Err(q.to_string()),
        }
    });
    // The oldest waiting message's age: known from the broker's data, and growing.
    common::assert_oldest_age_grows(&w.ts, "taskiq", "taskiq");
    // Still queued after the reconciliations that sampled the queue (nothing took them).
    for id in &ids {
        let t = w.ts.task(id).unwrap_or_default();
        assert_eq!(t["state"], "queued", "{t}");
    }
}

/// No result backend: taskiq acknowledges successes and failures alike, so an acknowledged
/// entry with no result record anywhere in Redis is settled as an assumed success.
#[test]
fn stream_without_result_backend_settles_acknowledged_as_success() {
    let _slot = test_slot();
    let w = World::new(
        &[
            ("TS_TASKIQ_BROKER", "stream"),
            ("TS_TASKIQ_RESULTS", "none"),
        ],
        &[],
    );
    let _worker = w.worker();
    let id = w.produce("add", 1, &[]).remove(0);
    let t = w.ts.wait_state(&id, "success", LONG);
    assert_common(&t, &id, "add", "taskiq");
    assert!(t["result"].is_null(), "no result stored: {t}");
    let detail = t["transitions"]
        .as_array()
        .and_then(|ts| ts.last())
        .map(|x| x["detail"].to_string())
        .unwrap_or_default();
    assert!(detail.contains("assumed"), "the detail says so: {t}");
}

// ---------------------------------------------------------------------------------------------
// Two brokers in one app (issue #20): tests/python/taskiq_two_brokers.py

/// The two-broker app's world: a `RedisStreamBroker` on `ingest` (SimpleRetryMiddleware) and a
/// `ListQueueBroker` on `lq`, each with a JSON `RedisAsyncResultBackend` (prefix per `env`),
/// and taskscope started with `taskscope_args` (explicit flags here; the default-mode variants
/// pass none).
struct TwoBrokers {
    env: Vec<(&'static str, &'static str)>,
    ts: Taskscope,
    redis: RedisServer,
    _dir: tempfile::TempDir,
}

/// What a user who names everything gives: both queues and the (shared) result prefix.
const TWO_BROKERS_EXPLICIT: [&str; 6] = [
    "--brokers",
    "taskiq",
    "--taskiq-queues",
    "ingest,lq",
    "--taskiq-result-prefix",
    "results",
];

impl TwoBrokers {
    fn new(env: &[(&'static str, &'static str)], taskscope_args: &[&str]) -> TwoBrokers {
        let redis = RedisServer::start();
        let dir = db_dir();
        let mut args = vec!["--reconcile-every", "1s", "--sample-every", "1s"];
        args.extend_from_slice(taskscope_args);
        let ts = Taskscope::start(&redis.url(), &dir.path().join("t.duckdb"), &args);
        TwoBrokers {
            env: env.to_vec(),
            ts,
            redis,
            _dir: dir,
        }
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(python());
        taskiq_env(&mut cmd, &self.redis.url(), &self.env);
        cmd
    }

    /// `taskiq worker taskiq_two_brokers:<broker>_broker --workers 1`, once it listens.
    fn worker(&self, broker: &str) -> WorkerProcess {
        let dir = tempfile::Builder::new()
            .prefix("taskscope-taskiq-")
            .tempdir()
            .expect("tempdir");
        let mut cmd = self.command();
        cmd.args(["-m", "taskiq", "worker"])
            .arg(format!("taskiq_two_brokers:{broker}_broker"))
            .args(["--workers", "1"]);
        spawn_taskiq_worker(cmd, dir)
    }

    /// Sends `n` tasks of `kind` (add, flaky, slow) through `broker` (stream, list).
    fn produce(&self, broker: &str, kind: &str, n: usize, extra: &[&str]) -> Vec<String> {
        let mut cmd = self.command();
        cmd.arg(python_dir().join("taskiq_two_brokers.py"))
            .args([broker, kind, "--n", &n.to_string()])
            .args(extra);
        let out = cmd.output().expect("run taskiq_two_brokers.py");
        assert!(
            out.status.success(),
            "taskiq_two_brokers.py {broker} {kind} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ids: Vec<String> = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("taskiq_two_brokers.py printed no JSON list ({e}): {stdout}")
        });
        assert_eq!(ids.len(), n, "ids: {stdout}");
        ids
    }
}

fn assert_two_brokers_task(task: &Value, id: &str, name: &str, queue: &str) {
    assert_task_shape(task);
    assert_eq!(task["id"], id, "id: {task}");
    assert_eq!(task["broker"], "taskiq", "broker: {task}");
    assert_eq!(
        task["name"],
        format!("taskiq_two_brokers:{name}"),
        "name: {task}"
    );
    assert_eq!(task["queue"], queue, "queue: {task}");
}

/// Stream and list brokers of one app, prefixed JSON results, a retry through the middleware:
/// every task ends with its outcome, name, arguments and queue.
fn stream_and_list_brokers_with_prefixed_results(w: &TwoBrokers) {
    let _stream = w.worker("stream");
    let _list = w.worker("list");
    let stream_adds = w.produce("stream", "add", 3, &[]);
    let list_adds = w.produce("list", "add", 3, &[]);
    let flaky = w
        .produce("stream", "flaky", 1, &["--fail-times", "1"])
        .remove(0);
    for (i, id) in stream_adds.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_two_brokers_task(&t, id, "add", "ingest");
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
    }
    for (i, id) in list_adds.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
        assert_eq!(t["broker"], "taskiq", "broker: {t}");
    }
    let t = w.ts.wait_state(&flaky, "success", LONG);
    assert_two_brokers_task(&t, &flaky, "flaky", "ingest");
    assert_eq!(t["retries"], 1, "retries: {t}");
    assert_eq!(t["result"], "ok after 1", "result: {t}");
    assert!(
        transition_states(&t).contains(&"retried".to_string()),
        "a retried state before success: {t}"
    );
}

#[test]
fn two_brokers_stream_and_list_with_prefixed_json_results() {
    let _slot = test_slot();
    let w = TwoBrokers::new(&[], &TWO_BROKERS_EXPLICIT);
    stream_and_list_brokers_with_prefixed_results(&w);
}

/// Two result backends in one app, one prefixed (`results`, the stream broker's) and one
/// bare (the list broker's): both are read, with `--taskiq-result-prefix` naming only the
/// prefixed one.
#[test]
fn two_result_backends_prefixed_and_bare_are_both_read() {
    let _slot = test_slot();
    let w = TwoBrokers::new(
        &[("TS_TASKIQ_LIST_RESULT_PREFIX", "-")],
        &TWO_BROKERS_EXPLICIT,
    );
    stream_and_list_brokers_with_prefixed_results(&w);
}

/// A list task running longer than `--abandon-after` (5 s) while the broker's only known
/// workers, the stream consumers, are gone: nothing says anything about the list worker, so
/// the task is never `abandoned`, and it ends `success` when its result is written. It waits
/// in the list first (no list worker yet), so taskscope sees it taken (`running`, no worker).
fn long_list_task_is_never_abandoned(w: &TwoBrokers) {
    let mut stream = w.worker("stream");
    let add = w.produce("stream", "add", 1, &[]).remove(0);
    w.ts.wait_state(&add, "success", LONG);
    wait_for("a stream consumer in /api/workers", LONG, || {
        let workers = w.ts.get("/api/workers");
        let any = workers["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().any(|x| x["broker"] == "taskiq"));
        if any {
            Ok(())
        } else {
            Err(workers.to_string())
        }
    });
    stream.sigkill();
    let slow = w.produce("list", "slow", 1, &["--seconds", "12"]).remove(0);
    w.ts.wait_state(&slow, "queued", LONG);
    let list = w.worker("list");
    list.wait_started(&slow, LONG);
    let t = w.ts.wait_state(&slow, "running", SHORT);
    assert!(t["worker"].is_null(), "a list worker has no name: {t}");
    let t = w.ts.wait_state(&slow, "success", LONG);
    assert_two_brokers_task(&t, &slow, "list_slow", "lq");
    assert_eq!(t["result"], json!(12.0), "result: {t}");
    let states = transition_states(&t);
    assert!(
        !states.contains(&"abandoned".to_string()),
        "no abandoned transition: {t}"
    );
    assert_eq!(states, vec!["queued", "running", "success"], "{t}");
}

#[test]
fn list_task_longer_than_abandon_after_ends_success_never_abandoned() {
    let _slot = test_slot();
    let w = TwoBrokers::new(&[], &TWO_BROKERS_EXPLICIT);
    long_list_task_is_never_abandoned(&w);
}

/// The same two-broker app with taskscope's defaults (no `--brokers`, no queue, no prefix):
/// the stream, the `results` prefix and the list are found on their own.
#[test]
fn two_brokers_found_without_flags() {
    let _slot = test_slot();
    let w = TwoBrokers::new(&[], &[]);
    stream_and_list_brokers_with_prefixed_results(&w);
    let found = w.ts.get("/healthz")["detection"]["found"].to_string();
    assert!(found.contains("taskiq stream ingest"), "{found}");
}

/// A list task longer than `--abandon-after`, with the defaults: the list is found while the
/// task waits in it, and the task ends `success` without `abandoned`.
#[test]
fn long_list_task_found_without_flags_is_never_abandoned() {
    let _slot = test_slot();
    let w = TwoBrokers::new(&[], &[]);
    long_list_task_is_never_abandoned(&w);
}

/// An idle `ListQueueBroker` worker takes every message inside the `LPUSH`: the list never
/// holds one to sample. With the defaults, its pushes followed by new result keys give it away
/// (detection's list correlator), and every task still gets its outcome.
#[test]
fn idle_list_worker_found_by_timing_without_flags() {
    let _slot = test_slot();
    let w = TwoBrokers::new(&[], &[]);
    let _list = w.worker("list");
    let mut ids = Vec::new();
    let found = wait_for("the list found by timing", LONG, || {
        ids.extend(w.produce("list", "add", 1, &[]));
        let found = w.ts.get("/healthz")["detection"]["found"].to_string();
        if found.contains("taskiq list lq") {
            Ok(found)
        } else {
            Err(format!("{} tasks sent: {found}", ids.len()))
        }
    });
    eprintln!("found after {} tasks: {found}", ids.len());
    assert!(ids.len() <= 10, "found after {} tasks: {found}", ids.len());
    for id in &ids {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_eq!(t["broker"], "taskiq", "{t}");
    }
}
