//! Celery retries under load (issue #13, "Also seen"): passive-mode Celery tasks that retry
//! themselves with `default_retry_delay` (no countdown), in a Redis where the workers of all
//! four brokers are busy and a parked Celery queue holds garbage, with every adapter named
//! explicitly. Each retried task must end `success` with `retries: 2` and two `retried`
//! transitions, as it does in a Redis with Celery alone
//! (`retried_tasks_under_celery_load_alone`).
//!
//! Every other retrying task lives its whole life while taskscope is stopped (SIGSTOP), as a
//! process starved of CPU on a loaded machine is: its messages come and go unseen and only its
//! result records, waiting in Redis's output buffer, tell what happened (before the fix it
//! counted one retry of two).
//!
//! Knobs (environment): `TASKSCOPE_LOAD_RETRYING` (retrying tasks, default 4),
//! `TASKSCOPE_LOAD_PRODUCERS` (producers per broker, default 1), `TASKSCOPE_LOAD_SLOW_MS`
//! (the Celery load is `slow` tasks of that many ms), `TASKSCOPE_LOAD_GARBAGE` (more garbage
//! entries), `TASKSCOPE_LOAD_STALL_MS` (the stall, default 2500), `TASKSCOPE_LOAD_LOG=<dir>`
//! (keep taskscope's log and the tasks there). `TASKSCOPE_LOAD_PUBSUB_LIMIT` sets Redis's
//! `client-output-buffer-limit` (e.g. `pubsub 1kb 1kb 0`): Redis then closes taskscope's
//! subscribers during a stall, the RETRY records are lost with them, and a task that retried
//! twice ends `success` with `retries: 0`: nothing left in Redis says it retried (expected to
//! fail; README, limits).
//!
//! Needs `scripts/setup.sh` (redis-server, .venv with tests/python/requirements.txt).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Retrying tasks per run (`TASKSCOPE_LOAD_RETRYING` to change).
const RETRYING: usize = 4;
/// Producers per broker (`TASKSCOPE_LOAD_PRODUCERS` to change).
const PRODUCERS: usize = 1;
/// How long taskscope is stopped around every other retrying task (`TASKSCOPE_LOAD_STALL_MS`).
const STALL_MS: usize = 2500;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
/// Tasks per producer call of the background load.
const LOAD_BATCH: usize = 10;

/// Background producers: each sends `LOAD_BATCH` tasks per call, again and again, until
/// stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, all_brokers: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let producers = env_or("TASKSCOPE_LOAD_PRODUCERS", PRODUCERS);
        let mut spawn = |f: Box<dyn Fn(&str) + Send + Sync>| {
            let f = Arc::new(f);
            for _ in 0..producers {
                let (stop, url, f) = (stop.clone(), url.to_string(), f.clone());
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        f(&url);
                    }
                }));
            }
        };
        // `TASKSCOPE_LOAD_SLOW_MS`: the Celery load is `slow` tasks of that many ms (a backlog).
        let slow_ms = env_or("TASKSCOPE_LOAD_SLOW_MS", 0);
        spawn(Box::new(move |url| {
            if slow_ms > 0 {
                let opts = ProduceOpts {
                    seconds: Some(slow_ms as f64 / 1000.0),
                    ..ProduceOpts::default()
                };
                produce(url, "slow", LOAD_BATCH, "celery", &opts);
            } else {
                produce(url, "add", LOAD_BATCH, "celery", &ProduceOpts::default());
            }
        }));
        if all_brokers {
            spawn(Box::new(|url| {
                dramatiq_produce(url, "add", LOAD_BATCH, &DramatiqProduceOpts::default());
            }));
            spawn(Box::new(|url| {
                rq_produce(url, "add", LOAD_BATCH, &RqProduceOpts::default());
            }));
            spawn(Box::new(|url| {
                taskiq_produce(url, &TASKIQ_STREAM, "add", LOAD_BATCH, &[]);
            }));
        }
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

const TASKIQ_STREAM: [(&str, &str); 1] = [("TS_TASKIQ_BROKER", "stream")];

/// What Celery itself stored for `id` says the task is done.
fn wait_celery_success(redis: &RedisServer, id: &str) {
    wait_for(
        &format!("Celery to store SUCCESS for {id}"),
        LONG,
        || match redis.celery_result(id) {
            Some(r) if r["status"] == "SUCCESS" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

fn retried_under_load(all_brokers: bool) {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = db_dir();
    let brokers = if all_brokers {
        "celery,dramatiq,rq,taskiq"
    } else {
        "celery"
    };
    let ts = Taskscope::start(&url, &dir.path().join("t.duckdb"), &["--brokers", brokers]);

    // A parked queue (declared by a producer: `_kombu.binding.parked`) holding garbage beside
    // a real message.
    let parked = produce(&url, "add", 1, "parked", &ProduceOpts::default()).remove(0);
    redis.cli(&["LPUSH", "parked", "\u{1}\u{2}not json at all"]);
    redis.cli(&["LPUSH", "parked", r#"{"hello": "not a kombu envelope"}"#]);
    redis.cli(&["LPUSH", "parked", "[1, 2, 3]"]);
    for i in 0..env_or("TASKSCOPE_LOAD_GARBAGE", 0) {
        redis.cli(&["LPUSH", "parked", &format!("garbage {i}")]);
    }

    if let Ok(limit) = std::env::var("TASKSCOPE_LOAD_PUBSUB_LIMIT") {
        redis.cli(&["CONFIG", "SET", "client-output-buffer-limit", &limit]);
    }
    let _celery = CeleryWorker::start(&url, "celery", false, &[]);
    let _others = all_brokers.then(|| {
        (
            DramatiqWorker::start(&url, &[]),
            RqWorker::start(&url, &["default"], &[], &[]),
            taskiq_worker(&url, &TASKIQ_STREAM),
        )
    });
    let load = Load::start(&url, all_brokers);
    // Let the load build up before the retrying tasks go out.
    std::thread::sleep(Duration::from_secs(3));
    let mut ids = Vec::new();
    // Every other retrying task: taskscope is stopped (SIGSTOP) from just before it is sent
    // until `stall` after, as a process starved of CPU on a loaded machine is: the task's
    // messages come and go unseen, its records wait in Redis's output buffer.
    let stall = env_or("TASKSCOPE_LOAD_STALL_MS", STALL_MS);
    let signal = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, &ts.pid().to_string()])
            .status();
    };
    for i in 0..env_or("TASKSCOPE_LOAD_RETRYING", RETRYING) {
        let stalled = stall > 0 && i % 2 == 1;
        if stalled {
            signal("-STOP");
        }
        let key = format!("r{i}");
        ids.extend(produce(
            &url,
            "flaky_default_delay",
            1,
            "celery",
            &ProduceOpts {
                args: Some(json!([key, 2])),
                ..ProduceOpts::default()
            },
        ));
        if stalled {
            std::thread::sleep(Duration::from_millis(stall as u64));
            signal("-CONT");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for id in &ids {
        wait_celery_success(&redis, id);
    }
    drop(load);

    let started = Instant::now();
    let mut wrong = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut t = ts.wait_state(id, "success", LONG);
        // Give the late sources (a delayed read, a re-read of the result) until 2 s after the
        // first task's check to land.
        while t["retries"] != 2 && started.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(50));
            t = ts.task(id).unwrap_or(t);
        }
        let retried = transition_states(&t)
            .iter()
            .filter(|s| *s == "retried")
            .count();
        if t["state"] != "success"
            || t["retries"] != 2
            || retried != 2
            || t["result"] != json!(format!("r{i} ok after 2 retries"))
        {
            wrong.push(t);
        }
    }
    let parked_task = ts.wait_state(&parked, "queued", SHORT);
    assert_eq!(parked_task["queue"], "parked", "{parked_task}");
    if let Some(keep) = std::env::var_os("TASKSCOPE_LOAD_LOG") {
        let path =
            std::path::Path::new(&keep).join(format!("taskscope-{}-{}.log", brokers, redis.port));
        let tasks: Vec<String> = ids
            .iter()
            .filter_map(|id| ts.task(id))
            .map(|t| t.to_string())
            .collect();
        let _ = std::fs::write(
            &path,
            format!(
                "{}\n===== tasks =====\n{}\n",
                ts.log_text(),
                tasks.join("\n")
            ),
        );
        eprintln!("taskscope log: {}", path.display());
    }
    assert!(
        wrong.is_empty(),
        "{} of {} retried tasks are wrong (want success, retries 2, two `retried`):\n{}",
        wrong.len(),
        ids.len(),
        wrong
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// All four adapters, all four brokers' workers busy, garbage in a parked Celery queue.
#[test]
fn retried_tasks_under_load_of_all_brokers() {
    let _slot = test_slot();
    retried_under_load(true);
}

/// The same retrying tasks with Celery alone.
#[test]
fn retried_tasks_under_celery_load_alone() {
    let _slot = test_slot();
    retried_under_load(false);
}
