//! arq end to end: real `arq` workers (tests/python/arq_app.py: `job_timeout` 2 s,
//! `max_tries` 3, aborts allowed, health checks every 5 s) and producers
//! (tests/python/arq_produce.py, `ArqRedis.enqueue_job`) on a private redis-server. taskscope
//! starts first, with its defaults (`--brokers auto`) on an empty Redis, as users start it,
//! except the one test that names `--brokers arq`; every task is asserted through the HTTP API.
//!
//! Needs `scripts/setup.sh` (redis-server, .venv with arq pinned in
//! tests/python/requirements.txt). Run one: `cargo test --test arq -- abort`.

mod common;

use common::*;
use serde_json::{json, Value};

/// One scenario's world: redis-server and taskscope watching it.
struct World {
    // Field order is drop order: taskscope goes before the Redis it watches.
    ts: Taskscope,
    redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl World {
    /// taskscope with the defaults (plus `extra`) on an empty Redis.
    fn new(extra: &[&str]) -> World {
        let redis = RedisServer::start();
        let dir = db_dir();
        let mut args = vec!["--sample-every", "1s"];
        args.extend_from_slice(extra);
        let ts = Taskscope::start(&redis.url(), &dir.path().join("t.duckdb"), &args);
        World {
            ts,
            redis,
            _dir: dir,
        }
    }

    fn worker(&self, settings: &str, queue: &str) -> WorkerProcess {
        arq_worker(self.redis.port, settings, queue)
    }

    fn produce(&self, args: &[&str]) -> Vec<String> {
        arq_produce(self.redis.port, args)
    }

    fn one(&self, args: &[&str]) -> String {
        self.produce(args).remove(0)
    }
}

fn assert_common(t: &Value, name: &str, queue: &str) {
    assert_finished_task(t, "arq", name, queue);
}

#[test]
fn arq_found_with_defaults_success_failure_retry_deferred_timeout_and_abort() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let worker = w.worker("WorkerSettings", "arq:queue");
    let add = w.one(&["add", "[1, 2]"]);
    let fail = w.one(&["fail", "[3]"]);
    let flaky = w.one(&["flaky", "[2]"]);
    let exhausted = w.one(&["flaky", "[10]"]);
    let timeout = w.one(&["slow", "[5]"]);
    let deferred = w.one(&["--defer-by", "3", "add", "[5, 6]"]);
    let unique = w.one(&["--job-id", "invoice-42", "add", "[7, 8]"]);
    let long = w.one(&["slow", "[1.8]"]);

    let t = w.ts.wait_state(&add, "success", LONG);
    assert_common(&t, "add", "arq:queue");
    assert_eq!(t["args"], json!([1, 2]), "{t}");
    assert_eq!(t["kwargs"], json!({"note": null}), "{t}");
    assert_eq!(t["result"], json!(3), "{t}");
    assert_eq!(t["retries"], 0, "{t}");
    assert_eq!(t["error"], Value::Null, "{t}");

    let t = w.ts.wait_state(&fail, "failure", LONG);
    assert_common(&t, "fail", "arq:queue");
    assert_eq!(t["error"], "ValueError: card declined 3", "{t}");

    // `Retry` once: a retried transition, then success on the second try.
    let t = w.ts.wait_state(&flaky, "success", LONG);
    assert_common(&t, "flaky", "arq:queue");
    assert_eq!(t["retries"], 1, "{t}");
    assert_eq!(t["result"], json!(2), "{t}");
    assert!(transition_states(&t).iter().any(|s| s == "retried"), "{t}");

    // `Retry` every time: failure past max_tries (3), after three tries.
    let t = w.ts.wait_state(&exhausted, "failure", LONG);
    assert_eq!(
        t["error"], "JobExecutionFailed: max 3 retries exceeded",
        "{t}"
    );
    assert_eq!(t["retries"], 3, "{t}");

    let t = w.ts.wait_state(&timeout, "failure", LONG);
    assert_common(&t, "slow", "arq:queue");
    assert_eq!(t["error"], "TimeoutError", "{t}");
    assert_eq!(detail_of(&t, "failure"), "timed out", "{t}");
    assert!(
        t["runtime_ms"].as_f64().is_some_and(|ms| ms >= 1_900.0),
        "{t}"
    );

    // Deferred by 3 s: queued with an eta 3 s after its enqueueing, run after it.
    let t = w.ts.wait_state(&deferred, "success", LONG);
    assert_common(&t, "add", "arq:queue");
    assert!(t["eta"].is_string(), "eta: {t}");
    let wait = parse_time(&t, "eta") - parse_time(&t, "enqueued_at");
    assert!((2_900..=3_100).contains(&wait.num_milliseconds()), "{t}");
    assert!(parse_time(&t, "started_at") >= parse_time(&t, "eta"), "{t}");

    // A unique job id (`_job_id`) is the task's id.
    let t = w.ts.wait_state(&unique, "success", LONG);
    assert_eq!(t["id"], "invoice-42", "{t}");
    assert_eq!(t["result"], json!(15), "{t}");

    // Abort a running job: failure, "aborted".
    let t = w.ts.wait_state(&long, "success", LONG);
    assert_common(&t, "slow", "arq:queue");
    let victim = w.one(&["slow", "[1.9]"]);
    worker.wait_started(&victim, LONG);
    w.ts.wait_state(&victim, "running", LONG);
    w.produce(&["abort", &victim]);
    let t = w.ts.wait_state(&victim, "failure", LONG);
    assert_eq!(t["error"], "CancelledError", "{t}");
    assert_eq!(detail_of(&t, "failure"), "aborted", "{t}");

    // The queue, sampled; the worker from the queue's health check.
    wait_for("arq:queue sampled empty", LONG, || {
        let q = w.ts.get("/api/queues");
        let found = q["queues"].as_array().and_then(|qs| {
            qs.iter()
                .find(|q| q["broker"] == "arq" && q["name"] == "arq:queue")
                .cloned()
        });
        match found {
            Some(q) if q["length"] == 0 && q["delayed"] == 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let me = wait_worker(&w.ts, "arq:queue:health-check", LONG);
    assert_eq!(me["broker"], "arq", "{me}");
    assert_eq!(me["alive"], true, "{me}");
}

#[test]
fn arq_sigkilled_worker_leaves_its_job_abandoned_until_another_worker_reruns_it() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let mut worker = w.worker("WorkerSettings", "arq:queue");
    let id = w.one(&["slow", "[1.5]"]);
    worker.wait_started(&id, LONG);
    w.ts.wait_state(&id, "running", LONG);
    worker.sigkill();
    // arq's in-progress key lives job_timeout + 10 s (12 s here); its expiry is the signal.
    let t = w.ts.wait_state(&id, "abandoned", LONG);
    assert!(detail_of(&t, "abandoned").contains("expired"), "{t}");
    // The job is still in the queue: a new worker runs it again, on its second try.
    let _again = w.worker("WorkerSettings", "arq:queue");
    let t = w.ts.wait_state(&id, "success", LONG);
    assert_eq!(t["retries"], 1, "{t}");
    // The rerun shows `running` again (once per try number read: the counter is `INCR`ed a
    // moment after the in-progress key is set).
    let states = transition_states(&t);
    assert_eq!(states[..3], ["queued", "running", "abandoned"], "{t}");
    assert_eq!(states[3], "running", "{t}");
    assert_eq!(states.last().map(String::as_str), Some("success"), "{t}");
    assert!(!states[3..].iter().any(|s| s == "abandoned"), "{t}");
}

#[test]
fn arq_custom_queue_with_the_json_serializer_is_found_with_defaults() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let _worker = w.worker("JsonWorkerSettings", "billing");
    let on = |f: &str, args: &str| w.one(&["--queue", "billing", "--serializer", "json", f, args]);
    let add = on("add", "[2, 3]");
    let fail = on("fail", "[4]");
    let flaky = on("flaky", "[2]");

    let t = w.ts.wait_state(&add, "success", LONG);
    assert_common(&t, "add", "billing");
    assert_eq!(t["args"], json!([2, 3]), "{t}");
    assert_eq!(t["result"], json!(5), "{t}");
    // An exception does not serialize to JSON: arq stores its own words.
    let t = w.ts.wait_state(&fail, "failure", LONG);
    assert_common(&t, "fail", "billing");
    assert_eq!(t["error"], "unable to serialize result", "{t}");
    let t = w.ts.wait_state(&flaky, "success", LONG);
    assert_eq!(t["retries"], 1, "{t}");
    wait_for("the billing queue sampled", LONG, || {
        let q = w.ts.get("/api/queues");
        let found = q["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .any(|q| q["broker"] == "arq" && q["name"] == "billing")
        });
        found.then_some(()).ok_or_else(|| q.to_string())
    });
}

#[test]
fn arq_named_with_brokers_arq_reads_msgpack_jobs_waiting_for_a_worker() {
    let _slot = test_slot();
    let w = World::new(&["--brokers", "arq", "--arq-queues", "emails"]);
    let on = |args: &[&str]| {
        let mut all = vec!["--queue", "emails", "--serializer", "msgpack"];
        all.extend_from_slice(args);
        w.produce(&all)
    };
    // No worker yet: the jobs wait, one of them deferred by a minute.
    let waiting = on(&["--count", "3", "add", "[1, 1]"]);
    let later = on(&["--defer-by", "60", "add", "[9, 9]"]).remove(0);
    for id in &waiting {
        let t = w.ts.wait_state(id, "queued", LONG);
        assert_eq!(t["queue"], "emails", "{t}");
        assert_eq!(t["args"], json!([1, 1]), "{t}");
        assert_eq!(t["eta"], Value::Null, "{t}");
    }
    let t =
        w.ts.wait_task(&later, "queued with an eta", LONG, |t| t["eta"].is_string());
    assert_eq!(t["name"], "add", "{t}");
    wait_for("emails sampled: 3 waiting, 1 deferred", LONG, || {
        let q = w.ts.get("/api/queues");
        let found = q["queues"].as_array().and_then(|qs| {
            qs.iter()
                .find(|q| q["broker"] == "arq" && q["name"] == "emails")
                .cloned()
        });
        match found {
            Some(q) if q["length"] == 3 && q["delayed"] == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let _worker = w.worker("MsgpackWorkerSettings", "emails");
    for id in &waiting {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, "add", "emails");
        assert_eq!(t["result"], json!(2), "{t}");
    }
    assert_eq!(w.ts.task(&later).expect("listed")["state"], "queued");
}

#[test]
fn arq_cron_jobs_are_tasks_that_finish_without_a_result() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let _worker = w.worker("CronWorkerSettings", "arq:queue");
    // `cron(tick, second=every second)`: unique ids `cron:tick:<run ms>`, keep_result 0.
    let tick = wait_for("a cron run finished", LONG, || {
        let list = w.ts.get("/api/tasks?name=cron:tick&state=success");
        list["tasks"]
            .as_array()
            .and_then(|ts| ts.first().cloned())
            .ok_or_else(|| list.to_string())
    });
    let id = tick["id"].as_str().unwrap_or_default().to_string();
    assert!(id.starts_with("cron:tick:"), "{tick}");
    let t = w.ts.task(&id).expect("listed");
    assert_eq!(t["broker"], "arq", "{t}");
    assert_eq!(t["queue"], "arq:queue", "{t}");
    assert!(transition_states(&t).iter().any(|s| s == "running"), "{t}");
    assert!(detail_of(&t, "success").contains("keep_result=0"), "{t}");
    assert_eq!(t["result"], Value::Null, "{t}");
}
