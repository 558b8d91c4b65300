//! `kill -9` of `taskscope serve` mid-traffic, then a restart on the same DuckDB file: the file
//! opens (not corrupt), and every task of the run reaches its right final state, re-derived by
//! reconciliation from what Redis still holds (Celery's result records, RQ's job hashes and
//! results) for what the crash lost and for what ran while taskscope was down.
//!
//! Only what a user sees is asserted (`/healthz`, `/api/tasks/{id}`), never how the store writes:
//! the file may lag the live view by up to a flush interval. What the file must have kept is what
//! the live view showed well before the crash ([`FILE_LAG_BOUND`]): those Celery tasks come back
//! with their name, which only their message carried (a result record has no name).
//!
//! Real parts: a private redis-server, a real Celery worker (passive mode, results in Redis) and
//! a real RQ worker, tasks sent by tests/python/produce.py and rq_produce.py from a thread that
//! keeps sending before, during and after the crash, the taskscope binary SIGKILLed
//! (`Child::kill`) and restarted. Run: `cargo test --test crash_recovery`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Tasks of each kind per round of traffic.
const PER_KIND: usize = 6;
/// How long the slow task of each round runs (its result is this number).
const SLOW_SECONDS: f64 = 1.5;
/// How far the file may lag what the live view shows: the flush interval (1 s) with a
/// generous margin for a loaded machine. A task shown final longer ago than this before the
/// crash must survive it whole.
const FILE_LAG_BOUND: Duration = Duration::from_secs(5);

/// What a task sent by the test must end as.
#[derive(Debug, Clone)]
struct Expected {
    broker: &'static str,
    /// The task's name as its message gives it.
    name: &'static str,
    state: &'static str,
    /// `result` for a success, the start of `error` for a failure.
    outcome: Value,
}

/// One round of traffic: Celery successes, failures and a slow task, the same of RQ (one
/// producer process each); the ids with what each must end as.
fn one_round(redis_url: &str) -> Vec<(String, Expected)> {
    // produce.py and rq_produce.py's default arguments: add(i, i + 1), fail(i + 1).
    let success = |broker, name, i: usize| Expected {
        broker,
        name,
        state: "success",
        outcome: json!(2 * i + 1),
    };
    let failure = |broker, name, i: usize| Expected {
        broker,
        name,
        state: "failure",
        outcome: json!(format!("ValueError: card declined {}", i + 1)),
    };
    let celery = ProduceOpts::default();
    let rq = RqProduceOpts::default();
    let mut sent = Vec::new();
    for (i, id) in produce(redis_url, "add", PER_KIND, "celery", &celery)
        .into_iter()
        .enumerate()
    {
        sent.push((id, success("celery", "billing.add", i)));
    }
    for (i, id) in produce(redis_url, "fail", PER_KIND, "celery", &celery)
        .into_iter()
        .enumerate()
    {
        sent.push((id, failure("celery", "billing.fail", i)));
    }
    for (i, id) in rq_produce(redis_url, "add", PER_KIND, &rq)
        .into_iter()
        .enumerate()
    {
        sent.push((id, success("rq", "rq_app.add", i)));
    }
    for (i, id) in rq_produce(redis_url, "fail", PER_KIND, &rq)
        .into_iter()
        .enumerate()
    {
        sent.push((id, failure("rq", "rq_app.fail", i)));
    }
    // One slow task of each: likely running when the crash comes, finished while down.
    let slow = |broker, name| Expected {
        broker,
        name,
        state: "success",
        outcome: json!(SLOW_SECONDS),
    };
    let celery_slow = ProduceOpts {
        seconds: Some(SLOW_SECONDS),
        ..ProduceOpts::default()
    };
    for id in produce(redis_url, "slow", 1, "celery", &celery_slow) {
        sent.push((id, slow("celery", "billing.slow")));
    }
    let rq_slow = RqProduceOpts {
        seconds: Some(SLOW_SECONDS),
        ..RqProduceOpts::default()
    };
    for id in rq_produce(redis_url, "slow", 1, &rq_slow) {
        sent.push((id, slow("rq", "rq_app.slow")));
    }
    sent
}

/// Whether Redis holds the task's final state (the worker is done with it).
fn final_in_redis(redis: &RedisServer, id: &str, e: &Expected) -> bool {
    match e.broker {
        "celery" => redis
            .celery_result(id)
            .is_some_and(|r| r["status"] == "SUCCESS" || r["status"] == "FAILURE"),
        _ => {
            let status = redis.cli(&["HGET", &format!("rq:job:{id}"), "status"]);
            matches!(status.trim(), "finished" | "failed")
        }
    }
}

/// Whether the task as taskscope shows it is the expected final state with its outcome.
fn ended_right(t: &Value, e: &Expected) -> bool {
    if t["state"] != e.state || t["broker"] != e.broker {
        return false;
    }
    match e.state {
        "success" => t["result"] == e.outcome,
        _ => t["error"]
            .as_str()
            .zip(e.outcome.as_str())
            .is_some_and(|(error, start)| error.starts_with(start)),
    }
}

#[test]
fn kill_9_mid_traffic_then_restart_rederives_every_final_state_from_redis() {
    let _slot = test_slot();
    let redis = RedisServer::start();
    let dir = db_dir();
    let db = dir.path().join("crash.duckdb");
    let mut ts = Taskscope::start(&redis.url(), &db, &["--brokers", "celery,rq"]);
    let _celery = CeleryWorker::start(&redis.url(), "celery", false, &[]);
    let _rq = RqWorker::start(&redis.url(), &["default"], &[], &[]);

    // Traffic from a thread, round after round until told to stop; each round's ids are
    // handed over as soon as it is sent.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds_done = Arc::new(AtomicUsize::new(0));
    let (sent_tx, sent_rx) = mpsc::channel::<Vec<(String, Expected)>>();
    let producer = {
        let (url, stop, rounds_done) = (redis.url(), stop.clone(), rounds_done.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let sent = one_round(&url);
                rounds_done.fetch_add(1, Ordering::SeqCst);
                if sent_tx.send(sent).is_err() {
                    return;
                }
            }
        })
    };
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let receive = |expected: &mut HashMap<String, Expected>| {
        while let Ok(sent) = sent_rx.try_recv() {
            expected.extend(sent);
        }
    };

    // Celery tasks the live view shows in their final state (when first seen so).
    let mut shown_final: HashMap<String, Instant> = HashMap::new();
    let look = |expected: &HashMap<String, Expected>, shown: &mut HashMap<String, Instant>| {
        for (id, e) in expected {
            if e.broker == "celery"
                && !shown.contains_key(id)
                && ts.task(id).is_some_and(|t| ended_right(&t, e))
            {
                shown.insert(id.clone(), Instant::now());
            }
        }
    };
    wait_for(
        "a round of Celery tasks to be shown final, then more traffic",
        LONG,
        || {
            receive(&mut expected);
            look(&expected, &mut shown_final);
            let old_enough = shown_final
                .values()
                .filter(|at| at.elapsed() > FILE_LAG_BOUND)
                .count();
            if old_enough >= 2 * PER_KIND && rounds_done.load(Ordering::SeqCst) >= 2 {
                Ok(())
            } else {
                Err(format!(
                    "{} sent, {} Celery tasks shown final ({old_enough} longer than \
                     {FILE_LAG_BOUND:?} ago), {} rounds sent",
                    expected.len(),
                    shown_final.len(),
                    rounds_done.load(Ordering::SeqCst)
                ))
            }
        },
    );
    let survivors: Vec<String> = shown_final
        .iter()
        .filter(|(_, at)| at.elapsed() > FILE_LAG_BOUND)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        !producer.is_finished(),
        "the traffic stopped before the crash"
    );
    let rounds_at_crash = rounds_done.load(Ordering::SeqCst);
    ts.crash(); // SIGKILL at once

    // While it is down: the round in progress ends and a whole round more runs.
    wait_for(
        "a whole round to be sent while taskscope is down",
        LONG,
        || {
            receive(&mut expected);
            if rounds_done.load(Ordering::SeqCst) >= rounds_at_crash + 2 {
                Ok(())
            } else {
                Err(format!(
                    "{} rounds sent",
                    rounds_done.load(Ordering::SeqCst)
                ))
            }
        },
    );
    stop.store(true, Ordering::SeqCst);
    producer.join().expect("the producer thread");
    receive(&mut expected);
    wait_for("the workers to finish every task (Redis)", LONG, || {
        let pending = expected
            .iter()
            .filter(|(id, e)| !final_in_redis(&redis, id, e))
            .count();
        if pending == 0 {
            Ok(())
        } else {
            Err(format!(
                "{pending} of {} not final in Redis",
                expected.len()
            ))
        }
    });

    // Restart on the same file: it opens and serves.
    ts.restart();
    let health = ts.get("/healthz");
    assert_eq!(health["redis"], "connected", "{health}");

    // Every task of the run ends right, per id.
    let deadline = Instant::now() + LONG;
    let mut pending: Vec<&String> = expected.keys().collect();
    let mut last_seen: HashMap<&String, Option<Value>> = HashMap::new();
    loop {
        pending.retain(|id| {
            let t = ts.task(id);
            let right = t.as_ref().is_some_and(|t| ended_right(t, &expected[*id]));
            last_seen.insert(id, t);
            !right
        });
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let wrong: Vec<String> = pending
        .iter()
        .map(|id| {
            format!(
                "{id}: expected {:?}, shown {:?}",
                expected[*id], last_seen[id]
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} tasks did not reach their final state within {LONG:?} of the restart:\n{}",
        wrong.len(),
        expected.len(),
        wrong.join("\n")
    );

    // What the live view showed longer than FILE_LAG_BOUND before the crash is whole in the
    // file: Celery's result record (no `result_extended`) has no name, only the message had.
    for id in &survivors {
        let t = ts.task(id).expect("a survivor is shown");
        assert_eq!(t["name"], expected[id].name, "{t}");
    }
    eprintln!(
        "crash_recovery: {} tasks, {} rounds ({} before the crash), {} Celery tasks shown final \
         more than {FILE_LAG_BOUND:?} before it",
        expected.len(),
        rounds_done.load(Ordering::SeqCst),
        rounds_at_crash,
        survivors.len()
    );
}
