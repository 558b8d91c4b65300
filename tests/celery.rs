//! Celery end to end: real workers and producers (tests/python) on a private redis-server, the
//! taskscope binary watching, and per task id an assertion on what taskscope inferred.
//!
//! Every scenario runs in both modes:
//! - `passive::*`: Celery defaults, the worker sends no task events (outcomes come from the
//!   result backend, `celery-task-meta-<id>`, and from watching the queues);
//! - `events::*`: the worker runs with `-E` and publishes task events.
//!
//! Needs `scripts/setup.sh` (redis-server, .venv with tests/python/requirements.txt).
//! Each test owns its redis-server, taskscope and worker; at most `TASKSCOPE_TEST_JOBS`
//! (default 2) run at once. Run one: `cargo test --test celery -- passive::failure`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Passive,
    Events,
}

/// One scenario's world: redis-server, taskscope (watching it) and a scratch directory.
struct World {
    mode: Mode,
    // Field order is drop order: taskscope goes before the Redis it watches.
    ts: Taskscope,
    redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(mode: Mode) -> World {
        World::with_args(mode, &[])
    }

    fn with_args(mode: Mode, extra: &[&str]) -> World {
        let redis = RedisServer::start();
        let dir = db_dir();
        // These tests are about the Celery adapter, not detection (tests/detect.rs).
        let args: Vec<&str> = ["--brokers", "celery"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let ts = Taskscope::start(&redis.url(), &dir.path().join("t.duckdb"), &args);
        World {
            mode,
            ts,
            redis,
            _dir: dir,
        }
    }

    /// A worker on `queues`, with `-E` in events mode.
    fn worker(&self, queues: &str) -> CeleryWorker {
        CeleryWorker::start(&self.redis.url(), queues, self.mode == Mode::Events, &[])
    }

    fn produce(&self, kind: &str, n: usize, queue: &str, opts: &ProduceOpts) -> Vec<String> {
        produce(&self.redis.url(), kind, n, queue, opts)
    }
}

fn args(v: Value) -> ProduceOpts {
    ProduceOpts {
        args: Some(v),
        ..ProduceOpts::default()
    }
}

fn assert_common(mode: Mode, task: &Value, id: &str, name: &str, queue: &str) {
    assert_task_shape(task);
    assert_eq!(task["id"], id, "id: {task}");
    assert_eq!(task["broker"], "celery", "broker: {task}");
    if mode == Mode::Passive && task["name"].is_null() && !saw_message(task) {
        // Passive mode learns name, queue and arguments from the message itself. An idle
        // worker pops a message the instant it is pushed and acknowledges it 2-9 ms later; when
        // taskscope's read of `unacked` loses that race (a loaded machine), only the result
        // record is left, which names none of them without `result_extended` (README, limits).
        assert!(
            task["queue"].is_null() && task["args"].is_null(),
            "partial message fields: {task}"
        );
        return;
    }
    assert_eq!(task["name"], name, "name: {task}");
    assert_eq!(task["queue"], queue, "queue: {task}");
}

/// Arguments come from the message: see `assert_common` for when passive mode has none.
fn assert_args(mode: Mode, task: &Value, expected: Value) {
    assert_message_field(mode, task, "args", expected);
}

/// A field only the message carries (`args`, `kwargs`): see `assert_common`.
fn assert_message_field(mode: Mode, task: &Value, field: &str, expected: Value) {
    if mode == Mode::Passive && task[field].is_null() && !saw_message(task) {
        return;
    }
    assert_eq!(task[field], expected, "{field}: {task}");
}

/// Sends one task of `kind` and returns once a worker runs it. Events mode sends it to an idle
/// worker. Passive mode sends it first and starts the worker after taskscope saw it waiting:
/// without events, a message an idle worker takes at once is seen running only if taskscope
/// wins a millisecond race for its `unacked` entry, while a message that waited in its queue
/// is seen leaving it (README, capability table).
fn start_one(w: &World, mode: Mode, kind: &str, opts: &ProduceOpts) -> (CeleryWorker, String) {
    let (worker, id) = match mode {
        Mode::Events => {
            let worker = w.worker("celery");
            let id = w.produce(kind, 1, "celery", opts).remove(0);
            (worker, id)
        }
        Mode::Passive => {
            let id = w.produce(kind, 1, "celery", opts).remove(0);
            w.ts.wait_state(&id, "queued", SHORT);
            (w.worker("celery"), id)
        }
    };
    worker.wait_started(&id, LONG);
    (worker, id)
}

/// Whether taskscope read the task's message (in a queue or in `unacked`).
fn saw_message(task: &Value) -> bool {
    task["transitions"].as_array().is_some_and(|ts| {
        ts.iter().any(|t| {
            t["detail"]
                .as_str()
                .is_some_and(|d| d.contains("in queue") || d.contains("unacked"))
        })
    })
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

fn assert_worker_is(task: &Value, worker: &CeleryWorker) {
    assert_eq!(task["worker"], worker.hostname.as_str(), "worker: {task}");
}

/// Polls `/api/workers` until the worker is listed alive: taskscope hears its heartbeats (sent
/// every 2 s with or without `-E`), so it is watching the broker.
fn wait_worker_alive(ts: &Taskscope, worker: &CeleryWorker) {
    wait_for(
        &format!("GET /api/workers to list {} alive", worker.hostname),
        LONG,
        || {
            let ws = ts.get("/api/workers");
            let alive = ws["workers"].as_array().is_some_and(|list| {
                list.iter().any(|x| {
                    x["broker"] == "celery"
                        && x["alive"] == true
                        && (x["hostname"] == worker.hostname.as_str()
                            || x["id"] == worker.hostname.as_str())
                })
            });
            if alive {
                Ok(())
            } else {
                Err(ws.to_string())
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// add(i, i+1) x3 (+ one msgpack-encoded) on a running worker: success, args, kwargs, result.
fn success(mode: Mode) {
    let w = World::new(mode);
    let worker = w.worker("celery");
    let ids = w.produce("add", 3, "celery", &ProduceOpts::default());
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(mode, &t, id, "billing.add", "celery");
        assert_finished(&t);
        assert_args(mode, &t, json!([i, i + 1]));
        assert_message_field(mode, &t, "kwargs", json!({}));
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
        assert!(t["error"].is_null(), "error: {t}");
        assert_eq!(t["retries"], 0, "retries: {t}");
        // enqueued_at may be null: an idle worker's BRPOP takes the message within the LPUSH,
        // so it is never seen waiting in the list (the message has no send time of its own).
        if mode == Mode::Events {
            assert_worker_is(&t, &worker);
            assert!(t["started_at"].is_string(), "started_at unset: {t}");
            assert!(t["runtime_ms"].is_number(), "runtime_ms unset: {t}");
        }
    }
    let stats = w.ts.get("/api/stats");
    assert!(
        stats["by_state"]["success"].as_u64().unwrap_or(0) >= 3,
        "/api/stats: {stats}"
    );
    assert!(
        stats["by_broker"]["celery"].as_u64().unwrap_or(0) >= 3,
        "/api/stats: {stats}"
    );
}

/// Celery 5.7 with `task_compression` and `result_compression` (zlib): message bodies and
/// result records arrive compressed; taskscope still reads arguments, results and errors.
fn compressed(mode: Mode) {
    let w = World::new(mode);
    let env = [("TS_COMPRESSION", "zlib")];
    let worker =
        CeleryWorker::start_with_env(&w.redis.url(), "celery", mode == Mode::Events, &[], &env);
    let opts = ProduceOpts {
        compression: Some("zlib".into()),
        ..ProduceOpts::default()
    };
    // Sent before the worker consumes (it is up, but taskscope must read the compressed
    // message from the queue or unacked either way).
    let ids = w.produce("add", 2, "celery", &opts);
    let failed = w
        .produce(
            "fail",
            1,
            "celery",
            &ProduceOpts {
                args: Some(json!([7])),
                ..opts
            },
        )
        .remove(0);
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(mode, &t, id, "billing.add", "celery");
        assert_args(mode, &t, json!([i, i + 1]));
        assert_eq!(t["result"], json!(2 * i + 1), "compressed result: {t}");
    }
    let t = w.ts.wait_state(&failed, "failure", LONG);
    assert_eq!(
        t["error"], "ValueError: card declined 7",
        "compressed failure: {t}"
    );
    let health = w.ts.get("/healthz");
    assert_eq!(
        health["decode_errors"], 0,
        "nothing failed to decode: {health}"
    );
    drop(worker);
}

/// The same with the msgpack serializer (content-type application/x-msgpack).
fn success_msgpack(mode: Mode) {
    let w = World::new(mode);
    let _worker = w.worker("celery");
    let opts = ProduceOpts {
        serializer: Some("msgpack".into()),
        ..ProduceOpts::default()
    };
    let ids = w.produce("add", 2, "celery", &opts);
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(mode, &t, id, "billing.add", "celery");
        assert_args(mode, &t, json!([i, i + 1]));
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
    }
}

/// fail(3) raises ValueError('card declined 3'): failure with the error text and traceback.
fn failure(mode: Mode) {
    let w = World::new(mode);
    let _worker = w.worker("celery");
    let id = w.produce("fail", 1, "celery", &args(json!([3]))).remove(0);
    let t = w.ts.wait_state(&id, "failure", LONG);
    assert_common(mode, &t, &id, "billing.fail", "celery");
    assert_finished(&t);
    assert_args(mode, &t, json!([3]));
    let error = t["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error unset: {t}"));
    assert!(error.contains("card declined 3"), "error: {t}");
    assert!(
        error.starts_with("ValueError"),
        "error should name the exception type: {t}"
    );
    assert!(!error.contains('\n'), "error must be one line: {t}");
    let traceback = t["traceback"]
        .as_str()
        .unwrap_or_else(|| panic!("traceback unset: {t}"));
    assert!(traceback.contains("card declined 3"), "traceback: {t}");
    assert_eq!(t["retries"], 0, "retries: {t}");
    assert!(
        !transition_states(&t).contains(&"retried".to_string()),
        "a plain failure was never retried: {t}"
    );
}

/// flaky(key, 2) retries itself twice (countdown 0.5 s) then succeeds: one task row, retries 2,
/// `retried` among the transitions, final success.
fn retried_then_success(mode: Mode) {
    let w = World::new(mode);
    let _worker = w.worker("celery");
    let id = w
        .produce("flaky", 1, "celery", &args(json!(["r1", 2])))
        .remove(0);
    let t =
        w.ts.wait_task(&id, "state success with retries == 2", LONG, |t| {
            t["state"] == "success" && t["retries"] == 2
        });
    assert_common(mode, &t, &id, "billing.flaky", "celery");
    assert_finished(&t);
    assert_args(mode, &t, json!(["r1", 2]));
    assert_eq!(t["result"], "r1 ok after 2 retries", "result: {t}");
    let states = transition_states(&t);
    assert!(
        states.iter().any(|s| s == "retried"),
        "no `retried` transition: {t}"
    );
    assert_eq!(states.last().map(String::as_str), Some("success"), "{t}");
    let page = w.ts.get("/api/tasks?name=billing.flaky");
    let rows = page["tasks"].as_array().expect("tasks array");
    assert_eq!(
        rows.iter().filter(|r| r["id"] == id.as_str()).count(),
        1,
        "a retried task keeps one row: {page}"
    );
}

/// slow(2): runtime_ms measures the execution (>= 1.5 s, < 10 s), started_at < finished_at.
fn slow_runtime(mode: Mode) {
    let w = World::new(mode);
    let opts = ProduceOpts {
        seconds: Some(2.0),
        ..ProduceOpts::default()
    };
    let (_worker, id) = start_one(&w, mode, "slow", &opts);
    let t = w.ts.wait_state(&id, "success", LONG);
    assert_common(mode, &t, &id, "billing.slow", "celery");
    assert_finished(&t);
    assert_eq!(t["result"], json!(2.0), "result: {t}");
    let runtime = t["runtime_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("runtime_ms unset: {t}"));
    assert!(
        (1500.0..10000.0).contains(&runtime),
        "runtime_ms {runtime} is not about 2 s: {t}"
    );
    let started = parse_time(&t, "started_at");
    let finished = parse_time(&t, "finished_at");
    assert!(started < finished, "started_at >= finished_at: {t}");
    if !t["enqueued_at"].is_null() {
        let enqueued = parse_time(&t, "enqueued_at");
        assert!(enqueued <= started, "enqueued_at after started_at: {t}");
    }
}

/// Tasks on a queue no worker consumes (one of them with a countdown) stay `queued`, with the
/// queue name, while the worker drains its own queue; `/api/queues` and the list filters see them.
fn parked_queue(mode: Mode) {
    let w = World::new(mode);
    let _worker = w.worker("celery");
    let parked = w.produce("add", 2, "parked", &ProduceOpts::default());
    let delayed = w
        .produce(
            "add",
            1,
            "parked",
            &ProduceOpts {
                countdown: Some(3600.0),
                args: Some(json!([7, 8])),
                ..ProduceOpts::default()
            },
        )
        .remove(0);
    // The worker is busy with its own queue meanwhile: the parked tasks must not move.
    let busy = w.produce("add", 2, "celery", &ProduceOpts::default());
    w.ts.wait_all_state(&busy, "success", LONG);
    for (i, id) in parked.iter().enumerate() {
        let t = w.ts.wait_state(id, "queued", SHORT);
        assert_common(mode, &t, id, "billing.add", "parked");
        assert_args(mode, &t, json!([i, i + 1]));
        assert!(t["enqueued_at"].is_string(), "enqueued_at unset: {t}");
        assert!(
            t["started_at"].is_null(),
            "started_at set on a queued task: {t}"
        );
        assert!(t["eta"].is_null(), "eta set without countdown: {t}");
        assert_eq!(transition_states(&t), vec!["queued"], "{t}");
    }
    let t = w.ts.wait_state(&delayed, "queued", SHORT);
    assert_common(mode, &t, &delayed, "billing.add", "parked");
    let eta = parse_time(&t, "eta");
    let enqueued = parse_time(&t, "enqueued_at");
    assert!(
        eta - enqueued > chrono::Duration::minutes(50),
        "eta should be about an hour after enqueued_at: {t}"
    );

    let listed = w.ts.get("/api/tasks?state=queued&queue=parked");
    let mut listed_ids: Vec<String> = listed["tasks"]
        .as_array()
        .expect("tasks array")
        .iter()
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .collect();
    listed_ids.sort();
    let mut expected: Vec<String> = parked.iter().cloned().chain([delayed.clone()]).collect();
    expected.sort();
    assert_eq!(
        listed_ids, expected,
        "GET /api/tasks?state=queued&queue=parked: {listed}"
    );

    // Queue lengths are sampled (every 5 s by default).
    wait_for(
        "GET /api/queues to show parked with 3 messages",
        LONG,
        || {
            let q = w.ts.get("/api/queues");
            let found = q["queues"].as_array().and_then(|qs| {
                qs.iter()
                    .find(|q| q["broker"] == "celery" && q["name"] == "parked")
                    .cloned()
            });
            match found {
                Some(p)
                    if p["length"].as_u64().unwrap_or(0) + p["delayed"].as_u64().unwrap_or(0)
                        >= 3 =>
                {
                    Ok(())
                }
                _ => Err(q.to_string()),
            }
        },
    );
}

/// hang() runs; its worker is SIGKILLed (whole process group): the task becomes `abandoned`
/// within --abandon-after (5 s) plus slack, and the worker is no longer alive.
fn abandoned_after_sigkill(mode: Mode) {
    let w = World::new(mode);
    let (mut worker, id) = start_one(&w, mode, "hang", &ProduceOpts::default());
    let t = w.ts.wait_state(&id, "running", SHORT);
    assert_common(mode, &t, &id, "billing.hang", "celery");
    assert!(
        t["started_at"].is_string(),
        "started_at unset on a running task: {t}"
    );
    let hostname = worker.hostname.clone();
    worker.sigkill();
    let killed = Instant::now();
    let t =
        w.ts.wait_state(&id, "abandoned", Duration::from_secs(5 + 25));
    eprintln!("abandoned {:?} after the SIGKILL", killed.elapsed());
    assert_common(mode, &t, &id, "billing.hang", "celery");
    // Without events nothing in Redis names the worker that took a message (the unacked entry
    // does not), so passive mode may not know it; when it does, it must be the right one.
    if mode == Mode::Events || !t["worker"].is_null() {
        assert_eq!(t["worker"], hostname.as_str(), "worker: {t}");
    }
    let states = transition_states(&t);
    let running = states.iter().position(|s| s == "running");
    let abandoned = states.iter().position(|s| s == "abandoned");
    assert!(
        matches!((running, abandoned), (Some(r), Some(a)) if r < a),
        "transitions should go running -> abandoned: {t}"
    );
    wait_for(
        "GET /api/workers to show the killed worker as not alive",
        SHORT,
        || {
            let ws = w.ts.get("/api/workers");
            let found = ws["workers"].as_array().and_then(|list| {
                list.iter()
                    .find(|x| x["hostname"] == hostname.as_str() || x["id"] == hostname.as_str())
                    .cloned()
            });
            match found {
                Some(x) if x["alive"] == false => Ok(()),
                _ => Err(ws.to_string()),
            }
        },
    );
}

/// Tasks sent while no worker runs are `queued`; once a worker starts they end in success.
fn sent_while_no_worker(mode: Mode) {
    let w = World::new(mode);
    let ids = w.produce("add", 3, "celery", &ProduceOpts::default());
    let fail = w.produce("fail", 1, "celery", &args(json!([5]))).remove(0);
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "queued", SHORT);
        assert_common(mode, &t, id, "billing.add", "celery");
        assert_args(mode, &t, json!([i, i + 1]));
    }
    w.ts.wait_state(&fail, "queued", SHORT);
    let _worker = w.worker("celery");
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(mode, &t, id, "billing.add", "celery");
        assert_finished(&t);
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
        assert_eq!(
            transition_states(&t).first().map(String::as_str),
            Some("queued"),
            "{t}"
        );
    }
    let t = w.ts.wait_state(&fail, "failure", LONG);
    assert!(
        t["error"]
            .as_str()
            .unwrap_or_default()
            .contains("card declined 5"),
        "error: {t}"
    );
}

/// A worker that is up and idle (taskscope lists it alive) gets tasks: they end in success.
fn sent_to_idle_worker(mode: Mode) {
    let w = World::new(mode);
    let worker = w.worker("celery");
    wait_worker_alive(&w.ts, &worker);
    let ids = w.produce("add", 3, "celery", &ProduceOpts::default());
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(mode, &t, id, "billing.add", "celery");
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
        if mode == Mode::Events {
            assert_worker_is(&t, &worker);
        }
    }
}

/// Countdown tasks sent to an idle worker: the worker takes each message at once and holds it
/// in `unacked` until its ETA. Held, a task is still `queued` (with its `eta`): it is reported
/// `running` only when it starts, at its ETA (or not at all: a task that runs in a millisecond
/// may go from held to its result between two reads, README *Limits*), then succeeds.
fn countdown_held_by_an_idle_worker(mode: Mode) {
    let w = World::new(mode);
    let worker = w.worker("celery");
    wait_worker_alive(&w.ts, &worker);
    let ids = w.produce(
        "add",
        3,
        "celery",
        &ProduceOpts {
            countdown: Some(4.0),
            ..ProduceOpts::default()
        },
    );
    for id in &ids {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(mode, &t, id, "billing.add", "celery");
        let eta = parse_time(&t, "eta");
        let transitions = t["transitions"].as_array().expect("transitions");
        let at = |tr: &Value| {
            chrono::DateTime::parse_from_rfc3339(tr["at"].as_str().expect("a transition time"))
                .expect("RFC 3339")
        };
        let first = transitions.first().expect("a first transition");
        assert_eq!(first["state"], "queued", "seen waiting first: {t}");
        assert!(at(first) < eta, "seen waiting before its ETA: {t}");
        for started in transitions.iter().filter(|tr| tr["state"] == "running") {
            // Celery starts a due task within its timer's resolution (1 s); one machine's clock.
            assert!(
                at(started) >= eta - chrono::Duration::milliseconds(1000),
                "reported running while its worker held it, {} s before its ETA: {t}",
                (eta - at(started)).num_milliseconds() as f64 / 1000.0
            );
        }
    }
}

/// taskscope is SIGKILLed mid-stream; tasks sent and finished while it is down, and tasks sent
/// after it comes back, all end in their outcome; nothing recorded before the crash is lost.
fn restart_mid_stream(mode: Mode) {
    let mut w = World::new(mode);
    let worker = w.worker("celery");
    let before = w.produce("add", 3, "celery", &ProduceOpts::default());
    w.ts.wait_all_state(&before, "success", LONG);

    w.ts.kill();
    let during = w.produce("add", 3, "celery", &args(json!([20, 22])));
    let during_fail = w.produce("fail", 1, "celery", &args(json!([9]))).remove(0);
    let redis = &w.redis;
    for id in during.iter().chain([&during_fail]) {
        wait_for(
            &format!("Celery to store the result of {id}"),
            LONG,
            || match redis.celery_result(id) {
                Some(r) if r["status"] == "SUCCESS" || r["status"] == "FAILURE" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }

    w.ts.restart();
    // Tasks sent from now on are taken at once by the idle worker: wait until taskscope watches.
    wait_worker_alive(&w.ts, &worker);
    let after = w.produce("add", 2, "celery", &ProduceOpts::default());

    for (i, id) in before.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(mode, &t, id, "billing.add", "celery");
        assert_args(mode, &t, json!([i, i + 1]));
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
        assert!(
            transition_states(&t).contains(&"success".to_string()),
            "transitions lost over the restart: {t}"
        );
    }
    for id in &during {
        // Seen only through the result backend: name and args may be unknown (null).
        let t = w.ts.wait_state(id, "success", LONG);
        assert_task_shape(&t);
        assert_eq!(t["result"], 42, "result: {t}");
    }
    let t = w.ts.wait_state(&during_fail, "failure", LONG);
    assert!(
        t["error"]
            .as_str()
            .unwrap_or_default()
            .contains("card declined 9"),
        "error: {t}"
    );
    for (i, id) in after.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(mode, &t, id, "billing.add", "celery");
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
    }
}

/// Passive mode, hang() tasks with no end Redis would tell (as with `ignore_result=True`):
/// with room for two running tasks in memory, the other four are parked in the file; each is
/// still shown running, and all six are abandoned when their worker is SIGKILLed (the parked
/// ones found by the sweep's query of the file).
#[test]
fn running_tasks_past_the_memory_cap_are_abandoned_with_their_worker() {
    let _slot = test_slot();
    let redis = RedisServer::start();
    let dir = db_dir();
    let ts = Taskscope::start_with_env(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--brokers", "celery"],
        &[("TASKSCOPE_RUNNING_IN_MEMORY", "2")],
    );
    let ids = produce(&redis.url(), "hang", 6, "celery", &ProduceOpts::default());
    for id in &ids {
        ts.wait_state(id, "queued", SHORT);
    }
    let mut worker = CeleryWorker::start(&redis.url(), "celery", false, &["-c", "6"]);
    for id in &ids {
        ts.wait_state(id, "running", LONG);
    }
    let health = ts.get("/healthz");
    assert!(
        health["store"]["running_parked"].as_u64().unwrap_or(0) >= 4
            && health["store"]["running_in_memory"].as_u64().unwrap_or(99) <= 2,
        "four of six running tasks parked: {}",
        health["store"]
    );
    worker.sigkill();
    for id in &ids {
        let t = ts.wait_state(id, "abandoned", Duration::from_secs(5 + 10 + 25));
        assert_eq!(t["name"], "billing.hang", "{t}");
    }
}

macro_rules! scenarios {
    ($mode:expr) => {
        #[test]
        fn success() {
            let _slot = crate::common::test_slot();
            crate::success($mode)
        }
        #[test]
        fn success_msgpack() {
            let _slot = crate::common::test_slot();
            crate::success_msgpack($mode)
        }
        #[test]
        fn failure() {
            let _slot = crate::common::test_slot();
            crate::failure($mode)
        }
        #[test]
        fn compressed() {
            let _slot = crate::common::test_slot();
            crate::compressed($mode)
        }
        #[test]
        fn retried_then_success() {
            let _slot = crate::common::test_slot();
            crate::retried_then_success($mode)
        }
        #[test]
        fn slow_runtime() {
            let _slot = crate::common::test_slot();
            crate::slow_runtime($mode)
        }
        #[test]
        fn parked_queue() {
            let _slot = crate::common::test_slot();
            crate::parked_queue($mode)
        }
        #[test]
        fn abandoned_after_sigkill() {
            let _slot = crate::common::test_slot();
            crate::abandoned_after_sigkill($mode)
        }
        #[test]
        fn sent_while_no_worker() {
            let _slot = crate::common::test_slot();
            crate::sent_while_no_worker($mode)
        }
        #[test]
        fn sent_to_idle_worker() {
            let _slot = crate::common::test_slot();
            crate::sent_to_idle_worker($mode)
        }
        #[test]
        fn countdown_held_by_an_idle_worker() {
            let _slot = crate::common::test_slot();
            crate::countdown_held_by_an_idle_worker($mode)
        }
        #[test]
        fn restart_mid_stream() {
            let _slot = crate::common::test_slot();
            crate::restart_mid_stream($mode)
        }
    };
}

/// Celery defaults: no task events.
mod passive {
    scenarios!(crate::Mode::Passive);
}

/// Workers started with `-E`.
mod events {
    scenarios!(crate::Mode::Events);
}

/// Flags that change how taskscope reads Celery.
mod flags {
    use super::*;

    /// Redis crashes and comes back empty (its `notify-keyspace-events` forgotten): taskscope
    /// reconnects, says so in `/healthz`, turns notifications on again and sees new tasks,
    /// including one parked on a queue (seen only through a keyspace notification or a read).
    #[test]
    fn redis_restart_reconnects_and_restores_notifications() {
        let _slot = test_slot();
        let mut w = World::new(Mode::Passive);
        let before = w
            .produce("add", 1, "parked", &ProduceOpts::default())
            .remove(0);
        w.ts.wait_state(&before, "queued", SHORT);
        assert_ne!(
            w.redis.cli(&["CONFIG", "GET", "notify-keyspace-events"]),
            "notify-keyspace-events\n"
        );

        w.redis.crash_and_restart();
        wait_for(
            "taskscope to reconnect and re-enable notifications",
            LONG,
            || {
                let flags = w.redis.cli(&["CONFIG", "GET", "notify-keyspace-events"]);
                let health = w.ts.get("/healthz");
                if health["redis"] == "connected" && flags.contains('K') {
                    Ok(())
                } else {
                    Err(format!("{health} / {flags:?}"))
                }
            },
        );
        let after = w
            .produce("add", 1, "parked", &args(json!([5, 6])))
            .remove(0);
        let t = w.ts.wait_state(&after, "queued", SHORT);
        assert_eq!(t["args"], json!([5, 6]), "{t}");
        // The task seen before the crash is still there: nothing recorded was lost.
        w.ts.wait_state(&before, "queued", SHORT);
        drop(w.worker("parked"));
    }

    /// Periodic rescans (`--rescan-every`) do not re-read what the live feed already brought
    /// (every result key, each time: a burst that grew with Redis), but every 12th still scans
    /// everything: a result stored without its publish (missed by the feed) is found by it.
    #[test]
    fn periodic_rescans_skip_what_the_live_feed_brought_but_not_forever() {
        let _slot = test_slot();
        let w = World::with_args(Mode::Passive, &["--rescan-every", "1s"]);
        let _worker = w.worker("celery");
        let ids = w.produce("add", 40, "celery", &ProduceOpts::default());
        w.ts.wait_all_state(&ids, "success", LONG);
        let applied = |ts: &Taskscope| {
            ts.get("/healthz")["store"]["observations_applied"]
                .as_u64()
                .unwrap_or(0)
        };
        // Three periodic rescans that skip (every 12th scans everything, and may fall among
        // them: it reads the 40 again).
        let scan_lines = |ts: &Taskscope| -> Vec<String> {
            ts.log_text()
                .lines()
                .filter(|l| l.contains("Scanned Redis"))
                .map(str::to_string)
                .collect()
        };
        let (scans0, applied0) = (scan_lines(&w.ts).len(), applied(&w.ts));
        let window = wait_for("three periodic rescans that skip", LONG, || {
            let lines = scan_lines(&w.ts).split_off(scans0);
            let skipping = lines.iter().filter(|l| l.contains("full=false")).count();
            (skipping >= 3)
                .then_some(lines)
                .ok_or(format!("{skipping} so far"))
        });
        let full = window.iter().filter(|l| l.contains("full=true")).count() as u64;
        let reread = applied(&w.ts) - applied0;
        // A rescan that read the 40 result keys adds 40 observations.
        assert!(
            reread < 40 * (full + 1),
            "{reread} observations in {} rescans ({full} full): the results were read again",
            window.len()
        );

        // A result the feed never brought (stored without its PUBLISH) is found by the
        // rescan that scans everything.
        let missed = "5f0c6f3e-9a51-4a8e-8f3e-2b7d4c1a9e10";
        let record = json!({
            "status": "SUCCESS", "result": 7, "traceback": null, "children": [],
            "date_done": "2026-01-01T00:00:00.000000+00:00", "task_id": missed,
        });
        w.redis.cli(&[
            "SET",
            &format!("celery-task-meta-{missed}"),
            &record.to_string(),
        ]);
        let t = w.ts.wait_state(missed, "success", Duration::from_secs(40));
        assert_eq!(t["result"], 7, "{t}");
    }

    /// `--celery-result-url`: results in database 1, the broker in 0 (a common setup). Results
    /// stored while taskscope was down are found by scanning database 1 after a restart.
    #[test]
    fn celery_result_url_reads_results_in_another_database() {
        let _slot = test_slot();
        let redis = RedisServer::start();
        let results = format!("redis://127.0.0.1:{}/1", redis.port);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ts = Taskscope::start(
            &redis.url(),
            &dir.path().join("t.duckdb"),
            &["--celery-result-url", &results],
        );
        let env = [("TS_RESULT_URL", results.as_str())];
        let _worker = CeleryWorker::start_with_env(&redis.url(), "celery", false, &[], &env);
        let live = produce(&redis.url(), "add", 1, "celery", &args(json!([1, 1]))).remove(0);
        let t = ts.wait_state(&live, "success", LONG);
        assert_eq!(t["result"], 2, "seen live on the result channel: {t}");

        ts.kill();
        let id = produce(&redis.url(), "add", 1, "celery", &args(json!([40, 2]))).remove(0);
        wait_for("Celery to store the result in database 1", LONG, || {
            let raw = redis.cli(&["-n", "1", "GET", &format!("celery-task-meta-{id}")]);
            if raw.contains("SUCCESS") {
                Ok(())
            } else {
                Err(raw)
            }
        });
        assert!(redis.celery_result(&id).is_none(), "nothing in database 0");
        ts.restart();
        let t = ts.wait_state(&id, "success", LONG);
        assert_eq!(
            t["result"], 42,
            "found in database 1 after the restart: {t}"
        );
    }

    /// `--celery-enable-events` turns task events on in a worker started without `-E`.
    #[test]
    fn celery_enable_events_reaches_the_worker() {
        let _slot = test_slot();
        let w = World::with_args(Mode::Passive, &["--celery-enable-events"]);
        let worker = w.worker("celery");
        wait_for(
            "the worker to log that events were enabled remotely",
            LONG,
            || {
                let log = worker.log_text();
                if log.contains("enabled by remote") {
                    Ok(())
                } else {
                    Err(log.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
                }
            },
        );
        let id = w
            .produce("add", 1, "celery", &ProduceOpts::default())
            .remove(0);
        let t = w.ts.wait_state(&id, "success", LONG);
        assert_worker_is(&t, &worker);
    }

    /// `--no-config-set` never touches the Redis configuration and still sees queued tasks
    /// and outcomes (by polling).
    #[test]
    fn no_config_set_polls() {
        let _slot = test_slot();
        let w = World::with_args(Mode::Passive, &["--no-config-set"]);
        let ids = w.produce("add", 2, "celery", &ProduceOpts::default());
        w.ts.wait_all_state(&ids, "queued", LONG);
        let _worker = w.worker("celery");
        let fail = w.produce("fail", 1, "celery", &args(json!([4]))).remove(0);
        w.ts.wait_all_state(&ids, "success", LONG);
        let t = w.ts.wait_state(&fail, "failure", LONG);
        assert!(
            t["error"]
                .as_str()
                .unwrap_or_default()
                .contains("card declined 4"),
            "error: {t}"
        );
        let flags = w.redis.cli(&["CONFIG", "GET", "notify-keyspace-events"]);
        let value = flags.lines().nth(1).unwrap_or_default();
        assert_eq!(
            value, "",
            "--no-config-set changed notify-keyspace-events: {flags:?}"
        );
    }
}

/// The Python side alone (no taskscope): tells a broken environment from a taskscope bug.
mod harness {
    use super::*;

    #[test]
    fn celery_worker_and_producer_work() {
        let _slot = test_slot();
        let redis = RedisServer::start();
        let _worker = CeleryWorker::start(&redis.url(), "celery", false, &[]);
        let ids = produce(&redis.url(), "add", 2, "celery", &ProduceOpts::default());
        let fail = produce(&redis.url(), "fail", 1, "celery", &args(json!([3]))).remove(0);
        for (i, id) in ids.iter().enumerate() {
            let r = wait_for(&format!("the result of {id}"), LONG, || {
                redis.celery_result(id).ok_or_else(|| "none".to_string())
            });
            assert_eq!(r["status"], "SUCCESS", "{r}");
            assert_eq!(r["result"], json!(2 * i + 1), "{r}");
        }
        let r = wait_for("the failure's result", LONG, || {
            redis.celery_result(&fail).ok_or_else(|| "none".to_string())
        });
        assert_eq!(r["status"], "FAILURE", "{r}");
        assert_eq!(r["result"]["exc_type"], "ValueError", "{r}");
    }
}
