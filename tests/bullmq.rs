//! BullMQ end to end: real bullmq 6.7.6 workers and producers (`tests/node/worker.js`,
//! `producer.js`) on a private redis-server. taskscope starts first, with its defaults
//! (`--brokers auto`) on an empty Redis, as users start it, except the one test that names
//! `--brokers bullmq`; every task is asserted through the HTTP API.
//!
//! Needs `scripts/setup.sh` (redis-server, node, `npm ci` in tests/node). Run one:
//! `cargo test --test bullmq -- stalled`.

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

    fn produce(&self, queue: &str, prefix: &str, jobs: Value) -> Vec<String> {
        bullmq_produce(&self.redis.url(), queue, prefix, &jobs)
    }

    fn worker(&self, queue: &str, prefix: &str, env: &[(&str, &str)]) -> WorkerProcess {
        bullmq_worker(&self.redis.url(), queue, prefix, env)
    }

    /// The queue's sample, once `pred` holds for it.
    fn queue_sample(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("queue {name} sampled as expected"), LONG, || {
            let q = self.ts.get("/api/queues");
            let found = q["queues"].as_array().and_then(|qs| {
                qs.iter()
                    .find(|q| q["broker"] == "bullmq" && q["name"] == name)
                    .cloned()
            });
            match found {
                Some(q) if pred(&q) => Ok(q),
                other => Err(format!("{other:?}")),
            }
        })
    }
}

fn assert_common(t: &Value, name: &str, queue: &str) {
    assert_finished_task(t, "bullmq", name, queue);
}

#[test]
fn bullmq_found_with_defaults_every_kind_of_job_waits_then_runs() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let q = "bull:jobs";
    // No worker yet: everything waits, and the queue's lengths show it.
    let ids = w.produce(
        "jobs",
        "bull",
        json!([
            {"name": "add", "data": {"x": 2, "y": 3}},
            {"name": "fail", "data": {"why": "declined"}},
            {"name": "flaky", "opts": {"attempts": 2, "backoff": {"type": "fixed", "delay": 300}}},
            {"name": "flaky", "opts": {"attempts": 3}},
            {"name": "add", "data": {"x": 1, "y": 1}, "opts": {"delay": 2500}},
            {"name": "add", "data": {"x": 10, "y": 0}, "opts": {"priority": 5}},
            {"name": "add", "data": {"x": 20, "y": 0}, "opts": {"priority": 1}},
            {"name": "add", "data": {"x": 7, "y": 7}, "opts": {"removeOnComplete": true}},
        ]),
    );
    let [add, fail, backoff, no_backoff, delayed, low, high, removed] =
        <[String; 8]>::try_from(ids).expect("8 ids");
    let flow = w.produce(
        "jobs",
        "bull",
        json!([{"flow": {"name": "add", "data": {"x": 100, "y": 1},
                         "children": [{"name": "add", "data": {"x": 1, "y": 2}}]}}]),
    );
    // A job still queued shows its data (its hash is read once it has waited a second).
    let t = w.ts.wait_task(&add, "queued with its data", LONG, |t| {
        t["state"] == "queued" && !t["kwargs"].is_null()
    });
    assert_eq!(t["kwargs"], json!({"x": 2, "y": 3}), "{t}");
    let t = w.ts.wait_task(&delayed, "queued with an eta", LONG, |t| {
        t["state"] == "queued" && t["eta"].is_string()
    });
    let wait = parse_time(&t, "eta") - parse_time(&t, "enqueued_at");
    assert!((2_400..=2_600).contains(&wait.num_milliseconds()), "{t}");
    w.ts.wait_state(&flow[0], "queued", LONG);
    // 5 waiting, 2 prioritized, the flow's child (its parent waits for it, uncounted); the
    // delayed one; no worker.
    w.queue_sample(q, |s| {
        s["length"] == 8 && s["delayed"] == 1 && s["running"] == 0
    });

    let _worker = w.worker("jobs", "bull", &[("WORKER_NAME", "w1")]);
    let t = w.ts.wait_state(&add, "success", LONG);
    assert_common(&t, "add", q);
    assert_eq!(t["result"], json!(5), "{t}");
    assert_eq!(t["worker"], "w1", "{t}");
    assert_eq!(t["retries"], 0, "{t}");

    let t = w.ts.wait_state(&fail, "failure", LONG);
    assert_common(&t, "fail", q);
    assert_eq!(t["error"], "boom declined", "{t}");
    assert!(
        t["traceback"]
            .as_str()
            .is_some_and(|tb| tb.contains("worker.js")),
        "{t}"
    );
    assert_eq!(t["retries"], 0, "{t}");

    // A failed attempt with attempts left, with and without backoff: retried, then success.
    for id in [&backoff, &no_backoff] {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, "flaky", q);
        assert_eq!(t["retries"], 1, "{t}");
        assert_eq!(t["result"], "recovered", "{t}");
        assert!(transition_states(&t).iter().any(|s| s == "retried"), "{t}");
    }

    let t = w.ts.wait_state(&delayed, "success", LONG);
    assert_common(&t, "add", q);
    assert!(parse_time(&t, "started_at") >= parse_time(&t, "eta"), "{t}");

    // Priorities: the one with priority 1 ran before the one with 5.
    let hi = w.ts.wait_state(&high, "success", LONG);
    let lo = w.ts.wait_state(&low, "success", LONG);
    assert_eq!(hi["result"], json!(20), "{hi}");
    assert!(
        parse_time(&hi, "finished_at") <= parse_time(&lo, "started_at"),
        "{hi}\n{lo}"
    );

    // removeOnComplete: the job hash is gone at once; the events stream recorded it.
    let t = w.ts.wait_state(&removed, "success", LONG);
    assert_common(&t, "add", q);
    assert_eq!(t["result"], json!(14), "{t}");
    let job_key = removed.clone();
    assert_eq!(w.redis.cli(&["EXISTS", &job_key]).trim(), "0");

    // The flow: the child, then its parent.
    let child = w.ts.wait_state(&flow[1], "success", LONG);
    let parent = w.ts.wait_state(&flow[0], "success", LONG);
    assert_eq!(child["result"], json!(3), "{child}");
    assert_eq!(parent["result"], json!(101), "{parent}");
    assert!(
        parse_time(&child, "finished_at") <= parse_time(&parent, "started_at"),
        "{child}\n{parent}"
    );
    w.queue_sample(q, |s| {
        s["length"] == 0 && s["delayed"] == 0 && s["dead"] == 1
    });
    // The worker, from its connection's name in CLIENT LIST.
    let me = wait_worker(&w.ts, "bull:jobs:w1", LONG);
    assert_eq!(me["broker"], "bullmq", "{me}");
    assert_eq!(me["alive"], true, "{me}");
}

#[test]
fn bullmq_sigkilled_worker_leaves_its_job_abandoned_until_another_worker_reruns_it() {
    let _slot = test_slot();
    let w = World::new(&[]);
    // A custom prefix, found with the defaults; short locks so the test takes seconds.
    let quick = [("LOCK_MS", "2000"), ("STALLED_MS", "1000")];
    let mut doomed = w.worker(
        "stall",
        "shop",
        &[quick[0], quick[1], ("WORKER_NAME", "doomed")],
    );
    let id = w
        .produce(
            "stall",
            "shop",
            json!([{"name": "sleep", "data": {"ms": 3000}}]),
        )
        .remove(0);
    doomed.wait_started(&id, LONG);
    let t = w.ts.wait_state(&id, "running", LONG);
    assert_eq!(t["queue"], "shop:stall", "{t}");
    doomed.sigkill();
    // Its lock expires (2 s): abandoned.
    let t = w.ts.wait_state(&id, "abandoned", LONG);
    assert!(detail_of(&t, "abandoned").contains("lock"), "{t}");
    // Its connection is gone from CLIENT LIST: offline.
    wait_for("the doomed worker offline", LONG, || {
        let workers = w.ts.get("/api/workers");
        let doomed = workers["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|x| x["id"] == "shop:stall:doomed").cloned());
        match doomed {
            Some(d) if d["alive"] == false => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // Another worker's stalled check moves it back to wait, and runs it again.
    let _rescuer = w.worker(
        "stall",
        "shop",
        &[quick[0], quick[1], ("WORKER_NAME", "rescuer")],
    );
    let t = w.ts.wait_state(&id, "success", LONG);
    assert_common(&t, "sleep", "shop:stall");
    assert_eq!(t["retries"], 0, "a stall is not an attempt: {t}");
    assert_eq!(t["worker"], "rescuer", "{t}");
    assert_eq!(t["result"], "slept", "{t}");
    let states = transition_states(&t);
    assert_eq!(
        states,
        ["queued", "running", "abandoned", "running", "success"],
        "{t}"
    );
}

#[test]
fn bullmq_named_with_brokers_bullmq_follows_the_queues_given() {
    let _slot = test_slot();
    let w = World::new(&["--brokers", "bullmq", "--bullmq-queues", "app:orders"]);
    let health = w.ts.get("/healthz");
    assert_eq!(health["brokers"], json!(["bullmq"]), "{health}");
    let ids = w.produce(
        "orders",
        "app",
        json!([{"name": "add", "data": {"x": 1, "y": 1}}, {"name": "fail"}]),
    );
    w.ts.wait_state(&ids[0], "queued", LONG);
    w.queue_sample("app:orders", |s| s["length"] == 2);
    // The oldest waiting job's age, from its `added` event.
    assert_oldest_age_grows(&w.ts, "bullmq", "app:orders");
    let _worker = w.worker("orders", "app", &[]);
    let t = w.ts.wait_state(&ids[0], "success", LONG);
    assert_common(&t, "add", "app:orders");
    assert_eq!(t["result"], json!(2), "{t}");
    let t = w.ts.wait_state(&ids[1], "failure", LONG);
    assert_common(&t, "fail", "app:orders");
    assert_eq!(t["error"], "boom", "{t}");
}

#[test]
fn bullmq_job_scheduler_runs_are_tasks_of_their_own() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let _worker = w.worker("cron", "bull", &[]);
    // `upsertJobScheduler` every 300 ms: each run is a job `repeat:<scheduler>:<ms>`.
    let first = w
        .produce(
            "cron",
            "bull",
            json!([{"scheduler": "tick", "repeat": {"every": 300},
                    "name": "add", "data": {"x": 4, "y": 4}}]),
        )
        .remove(0);
    assert!(first.starts_with("bull:cron:repeat:tick:"), "{first}");
    let runs = wait_for("three scheduled runs succeeded", LONG, || {
        let list = w.ts.get("/api/tasks?broker=bullmq&state=success");
        let runs: Vec<Value> = list["tasks"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .filter(|t| {
                        t["id"]
                            .as_str()
                            .is_some_and(|id| id.starts_with("bull:cron:repeat:tick:"))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if runs.len() >= 3 {
            Ok(runs)
        } else {
            Err(list.to_string())
        }
    });
    for run in runs {
        let id = run["id"].as_str().unwrap_or_default();
        let t = w.ts.task(id).expect("listed");
        assert_common(&t, "add", "bull:cron");
        assert_eq!(t["result"], json!(8), "{t}");
    }
}

#[test]
fn bullmq_restarted_taskscope_catches_up_even_past_a_trimmed_events_stream() {
    let _slot = test_slot();
    let mut w = World::new(&[]);
    let _worker = w.worker("trim", "bull", &[]);
    let seen = w
        .produce(
            "trim",
            "bull",
            json!([{"name": "add", "data": {"x": 1, "y": 1}}]),
        )
        .remove(0);
    w.ts.wait_state(&seen, "success", LONG);
    // taskscope down while 150 jobs run, their events stream trimmed to about 20 entries
    // (`maxLenEvents`, `MAXLEN ~`: whole stream nodes of 100 go): most of their events are lost.
    w.ts.stop();
    let jobs: Vec<Value> = (0..150)
        .map(|n| json!({"name": "add", "data": {"x": n, "y": 1000}}))
        .collect();
    let ids = bullmq_produce_env(
        &w.redis.url(),
        "trim",
        "bull",
        &Value::Array(jobs),
        &[("MAX_LEN_EVENTS", "20")],
    );
    wait_for("the worker to finish the 150 jobs", LONG, || {
        let done = w.redis.cli(&["ZCARD", "bull:trim:completed"]);
        (done.trim() == "151").then_some(()).ok_or(done)
    });
    let kept: usize = w
        .redis
        .cli(&["XLEN", "bull:trim:events"])
        .trim()
        .parse()
        .expect("XLEN");
    assert!(kept < 300, "trimmed: {kept} of 600 events kept");
    // Restarted: the stream's window and the queue's sets tell every job's end.
    w.ts.restart();
    for (n, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_eq!(t["result"], json!(n + 1000), "{t}");
        assert_eq!(t["name"], "add", "{t}");
        assert_eq!(t["kwargs"], json!({"x": n, "y": 1000}), "{t}");
    }
}

/// `/metrics`' decode errors, all kinds and brokers.
fn decode_errors(ts: &Taskscope) -> u64 {
    let text = reqwest::blocking::get(ts.url("/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("taskscope_decode_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn bullmq_hostile_hashes_and_events_cost_decode_errors_never_a_crash() {
    let _slot = test_slot();
    let w = World::new(&["--max-payload-bytes", "65536"]);
    let _worker = w.worker("jobs", "bull", &[]);
    let before = w
        .produce(
            "jobs",
            "bull",
            json!([{"name": "add", "data": {"x": 1, "y": 1}}]),
        )
        .remove(0);
    w.ts.wait_state(&before, "success", LONG);
    // In queue `bull:hostile`, which no worker serves: a job whose data nests 60,000 deep, one
    // whose data is over --max-payload-bytes, an event naming no job, a result that is not JSON.
    let deep = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
    let huge = format!("\"{}\"", "x".repeat(100_000));
    let cli = |args: &[&str]| w.redis.cli(args);
    cli(&[
        "HSET",
        "bull:hostile:1",
        "name",
        "deep",
        "data",
        &deep,
        "timestamp",
        "1796000000000",
    ]);
    cli(&[
        "HSET",
        "bull:hostile:2",
        "name",
        "huge",
        "data",
        &huge,
        "timestamp",
        "1796000000000",
    ]);
    for entry in [
        vec!["event", "added", "jobId", "1", "name", "deep"],
        vec!["event", "added", "jobId", "2", "name", "huge"],
        vec!["event", "completed", "returnvalue", "1"],
        vec!["event", "added", "jobId", "3", "name", "odd"],
        vec![
            "event",
            "completed",
            "jobId",
            "3",
            "returnvalue",
            "{oops",
            "prev",
            "active",
        ],
    ] {
        let mut args = vec!["XADD", "bull:hostile:events", "*"];
        args.extend(entry);
        cli(&args);
    }
    let t = w.ts.wait_state("bull:hostile:1", "queued", LONG);
    assert_eq!(t["name"], "deep", "{t}");
    assert_eq!(t["kwargs"], Value::Null, "{t}");
    let t = w.ts.wait_state("bull:hostile:2", "queued", LONG);
    assert_eq!(t["name"], "huge", "{t}");
    let t = w.ts.wait_state("bull:hostile:3", "success", LONG);
    assert_eq!(t["result"], Value::Null, "{t}");
    // The deep data, the event without a job, the result: one decode error each (the huge
    // data is counted by the ingest layer, which never read it).
    wait_for("the decode errors counted", LONG, || {
        let n = decode_errors(&w.ts);
        (n >= 3).then_some(n).ok_or(format!("{n} counted"))
    });
    // Still serving, and the neighbours right.
    let after = w
        .produce(
            "jobs",
            "bull",
            json!([{"name": "add", "data": {"x": 2, "y": 2}}]),
        )
        .remove(0);
    let t = w.ts.wait_state(&after, "success", LONG);
    assert_eq!(t["result"], json!(4), "{t}");
}

#[test]
fn bullmq_rate_limited_queue_runs_each_job_once_at_its_pace() {
    let _slot = test_slot();
    let w = World::new(&[]);
    // `limiter: {max: 1, duration: 400}`: one job per 400 ms, two slots idle meanwhile.
    let _worker = w.worker(
        "limited",
        "bull",
        &[
            ("LIMIT_MAX", "1"),
            ("LIMIT_MS", "400"),
            ("CONCURRENCY", "2"),
        ],
    );
    let jobs: Vec<Value> = (0..3)
        .map(|n| json!({"name": "add", "data": {"x": n, "y": 1}}))
        .collect();
    let ids = w.produce("limited", "bull", Value::Array(jobs));
    let done = w.ts.wait_all_state(&ids, "success", LONG);
    for (n, t) in done.iter().enumerate() {
        assert_common(t, "add", "bull:limited");
        assert_eq!(t["retries"], 0, "rate limiting is not a retry: {t}");
        assert_eq!(t["result"], json!(n + 1), "{t}");
    }
    for pair in done.windows(2) {
        let gap = parse_time(&pair[1], "started_at") - parse_time(&pair[0], "started_at");
        assert!(gap.num_milliseconds() >= 300, "{}\n{}", pair[0], pair[1]);
    }
}

/// Jobs that finish together are each shown whole (data, worker, result), their hashes read
/// by set (`SORT_RO ... GET` through the bounded-read script, which this Redis accepts), not
/// with one `HMGET` each.
#[test]
fn bullmq_jobs_finished_together_are_shown_whole_from_one_read_per_set() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let jobs: Vec<Value> = (0..200)
        .map(|n| json!({"name": "add", "data": {"x": n, "y": 1}}))
        .collect();
    let ids = w.produce("burst", "bull", Value::Array(jobs));
    let _worker = w.worker(
        "burst",
        "bull",
        &[("WORKER_NAME", "wb"), ("CONCURRENCY", "50")],
    );
    for (n, id) in ids.iter().enumerate() {
        let t =
            w.ts.wait_task(id, "success with its data and worker", LONG, |t| {
                t["state"] == "success" && t["worker"] == "wb" && !t["kwargs"].is_null()
            });
        assert_common(&t, "add", "bull:burst");
        assert_eq!(t["kwargs"], json!({"x": n, "y": 1}), "{t}");
        assert_eq!(t["result"], json!(n + 1), "{t}");
    }
    let stats = w.redis.cli(&["INFO", "commandstats"]);
    let sort_ro = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("cmdstat_sort_ro:"))
        .unwrap_or_else(|| panic!("no SORT_RO ran:\n{stats}"));
    assert!(!sort_ro.starts_with("calls=0,"), "{sort_ro}");
    assert!(
        sort_ro.contains("rejected_calls=0,failed_calls=0"),
        "{sort_ro}"
    );
}
