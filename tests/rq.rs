//! RQ end to end: real `rq worker` processes (RQ's default forking `Worker`, jobs in
//! tests/python/rq_app.py) and producers (tests/python/rq_produce.py) on a private
//! redis-server, the taskscope binary watching with `--brokers rq`, and per job id an assertion
//! on what taskscope inferred, through the HTTP API.
//!
//! Needs `scripts/setup.sh` (redis-server, .venv with rq pinned in
//! tests/python/requirements.txt). Each test owns its redis-server, taskscope and workers; at
//! most `TASKSCOPE_TEST_JOBS` (default 2) run at once. Run one: `cargo test --test rq -- retry`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// One scenario's world: redis-server, taskscope watching it for RQ, a scratch directory.
struct World {
    // Field order is drop order: taskscope goes before the Redis it watches.
    ts: Taskscope,
    redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(extra: &[&str]) -> World {
        let redis = RedisServer::start();
        let dir = db_dir();
        let mut args = vec!["--brokers", "rq", "--sample-every", "1s"];
        args.extend_from_slice(extra);
        let ts = Taskscope::start(&redis.url(), &dir.path().join("t.duckdb"), &args);
        World {
            ts,
            redis,
            _dir: dir,
        }
    }

    fn worker(&self, queues: &[&str], extra: &[&str]) -> RqWorker {
        RqWorker::start(&self.redis.url(), queues, extra, &[])
    }

    fn produce(&self, kind: &str, n: usize, opts: &RqProduceOpts) -> Vec<String> {
        rq_produce(&self.redis.url(), kind, n, opts)
    }
}

fn on(queue: &str) -> RqProduceOpts {
    RqProduceOpts {
        queue: Some(queue.to_string()),
        ..RqProduceOpts::default()
    }
}

fn assert_common(task: &Value, id: &str, name: &str, queue: &str) {
    assert_task_shape(task);
    assert_eq!(task["id"], id, "id: {task}");
    assert_eq!(task["broker"], "rq", "broker: {task}");
    assert_eq!(task["name"], name, "name: {task}");
    assert_eq!(task["queue"], queue, "queue: {task}");
    assert!(task["enqueued_at"].is_string(), "enqueued_at unset: {task}");
}

fn assert_ran_on(task: &Value, worker: &RqWorker) {
    assert_eq!(task["worker"], worker.name.as_str(), "worker: {task}");
    assert!(task["started_at"].is_string(), "started_at unset: {task}");
    assert!(task["finished_at"].is_string(), "finished_at unset: {task}");
    assert!(task["runtime_ms"].is_number(), "runtime_ms unset: {task}");
    let states = transition_states(task);
    assert_eq!(
        states.last().map(String::as_str),
        task["state"].as_str(),
        "the last transition is not the task's state: {task}"
    );
}

#[test]
fn rq_success_and_failure_with_arguments_results_and_traceback() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let worker = w.worker(&["default"], &[]);
    let adds = w.produce("add", 2, &on("default"));
    let fails = w.produce("fail", 1, &on("default"));
    let charge = w.produce("charge", 1, &on("default"));

    for (i, id) in adds.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, id, "rq_app.add", "default");
        assert_ran_on(&t, &worker);
        let i = i as i64;
        assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
        assert_eq!(t["kwargs"], json!({}), "kwargs: {t}");
        assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
        assert_eq!(t["retries"], 0);
        assert_eq!(t["error"], Value::Null);
    }

    let t =
        w.ts.wait_task(&fails[0], "failure with traceback", LONG, |t| {
            t["state"] == "failure" && t["traceback"].is_string()
        });
    assert_common(&t, &fails[0], "rq_app.fail", "default");
    assert_ran_on(&t, &worker);
    assert_eq!(t["error"], "ValueError: card declined 1", "error: {t}");
    let tb = t["traceback"].as_str().unwrap_or_default();
    assert!(tb.starts_with("Traceback (most recent call last):"), "{tb}");
    assert!(tb.contains("rq_app.py"), "{tb}");
    assert!(
        tb.trim_end().ends_with("ValueError: card declined 1"),
        "{tb}"
    );

    // A custom class in the arguments: the job is there, with its name and null arguments.
    let t = w.ts.wait_state(&charge[0], "success", LONG);
    assert_common(&t, &charge[0], "rq_app.charge", "default");
    assert_eq!(t["args"], Value::Null, "args: {t}");
    assert_eq!(t["result"], "charged 1", "result: {t}");

    // The worker, alive, and the queue. Workers are read from the file, which follows the live
    // view by up to a flush interval: polled.
    let me = wait_worker(&w.ts, worker.name.as_str(), LONG);
    assert_eq!(me["broker"], "rq");
    assert_eq!(me["alive"], true, "{me}");
    wait_for(
        "the default queue sampled with its failed job",
        LONG,
        || {
            let queues = w.ts.get("/api/queues");
            let q = queues["queues"]
                .as_array()
                .and_then(|qs| {
                    qs.iter()
                        .find(|q| q["broker"] == "rq" && q["name"] == "default")
                })
                .cloned();
            match q {
                Some(q) if q["dead"] == 1 && q["length"] == 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
}

#[test]
fn rq_queue_without_workers_keeps_jobs_queued_with_their_arguments() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let ids = w.produce(
        "add",
        3,
        &RqProduceOpts {
            kwargs: Some(json!({"note": "n"})),
            ..on("lonely")
        },
    );
    let json_ids = w.produce(
        "add",
        1,
        &RqProduceOpts {
            args: Some(json!([7, 8])),
            serializer: Some("json".into()),
            ..on("lonely")
        },
    );
    for (i, id) in ids.iter().enumerate() {
        let t = w.ts.wait_state(id, "queued", SHORT);
        assert_common(&t, id, "rq_app.add", "lonely");
        let i = i as i64;
        assert_eq!(t["args"], json!([i, i + 1]), "{t}");
        assert_eq!(t["kwargs"], json!({"note": "n"}), "{t}");
        assert_eq!(t["eta"], Value::Null, "{t}");
        assert_eq!(t["worker"], Value::Null, "{t}");
    }
    let t = w.ts.wait_state(&json_ids[0], "queued", SHORT);
    assert_eq!(t["args"], json!([7, 8]), "JSONSerializer job: {t}");
    wait_for("the lonely queue sampled with 4 jobs", SHORT, || {
        let queues = w.ts.get("/api/queues");
        let found = queues["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .any(|q| q["broker"] == "rq" && q["name"] == "lonely" && q["length"] == 4)
        });
        if found {
            Ok(())
        } else {
            Err(queues.to_string())
        }
    });
    // The oldest waiting message's age: known from the broker's data, and growing.
    common::assert_oldest_age_grows(&w.ts, "rq", "lonely");
}

#[test]
fn rq_retry_on_enqueue_counts_retries_then_fails() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let _worker = w.worker(&["default"], &[]);
    let ids = w.produce(
        "retry_then_fail",
        1,
        &RqProduceOpts {
            retry: Some(2),
            ..on("default")
        },
    );
    let t = w.ts.wait_task(&ids[0], "final failure", LONG, |t| {
        t["state"] == "failure" && t["traceback"].is_string()
    });
    assert_common(&t, &ids[0], "rq_app.retry_then_fail", "default");
    assert_eq!(t["retries"], 2, "retries: {t}");
    assert_eq!(t["error"], "RuntimeError: flaky 0", "{t}");
    let states = transition_states(&t);
    assert!(
        states.iter().filter(|s| *s == "retried").count() >= 1,
        "no retried transition: {states:?}"
    );
}

/// SIGSTOP / SIGCONT to taskscope (a pause: its notifications wait in Redis's buffer).
fn signal_taskscope(ts: &Taskscope, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &ts.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} failed");
}

/// A job retried twice and failed while taskscope was paused: when it resumes, every read of
/// the job hash comes after the fact (`retries_left` 0, status `failed`, nothing left to count
/// down from), but its notifications name the three attempts' execution hashes.
#[test]
fn rq_retries_no_read_saw_are_counted_from_the_attempts_executions() {
    let _slot = test_slot();
    let w = World::new(&[]);
    wait_for("keyspace notifications on", LONG, || {
        let h = w.ts.get("/healthz");
        if h["change_feed"] == "notifications" {
            Ok(())
        } else {
            Err(h["change_feed"].to_string())
        }
    });
    // `/healthz` says `notifications` only once the keyspace patterns are subscribed: an
    // event between the start-up scan and a late subscription would be lost.
    let patterns = w.redis.cli(&["PUBSUB", "NUMPAT"]);
    assert_ne!(patterns.trim(), "0", "no keyspace pattern subscribed yet");
    signal_taskscope(&w.ts, "-STOP");
    let _worker = w.worker(&["default"], &[]);
    let ids = w.produce(
        "retry_then_fail",
        1,
        &RqProduceOpts {
            retry: Some(2),
            ..on("default")
        },
    );
    let key = format!("rq:job:{}", ids[0]);
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("the job to fail for good", LONG, || {
            let status = w.redis.cli(&["HGET", &key, "status"]);
            if status.trim() == "failed" {
                Ok(())
            } else {
                Err(status)
            }
        })
    }));
    signal_taskscope(&w.ts, "-CONT");
    if let Err(e) = failed {
        std::panic::resume_unwind(e);
    }
    let t = w.ts.wait_task(&ids[0], "final failure", LONG, |t| {
        t["state"] == "failure" && t["traceback"].is_string()
    });
    assert_eq!(t["retries"], 2, "retries: {t}");
}

#[test]
fn rq_retry_with_interval_is_retried_with_an_eta_then_fails() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let _worker = w.worker(&["default"], &["--with-scheduler"]);
    let ids = w.produce(
        "retry_then_fail",
        1,
        &RqProduceOpts {
            retry: Some(1),
            retry_interval: Some(3),
            ..on("default")
        },
    );
    // The job hash says `scheduled` a moment before its score in `rq:scheduled:default` is
    // read: the eta follows within that moment, while the retry waits its 3 s.
    let t = w.ts.wait_task(&ids[0], "retried with an eta", LONG, |t| {
        t["state"] == "retried" && t["eta"].is_string()
    });
    assert_eq!(t["retries"], 1, "{t}");
    let t = w.ts.wait_state(&ids[0], "failure", LONG);
    assert_eq!(t["retries"], 1, "{t}");
}

#[test]
fn rq_job_returning_retry_is_retried_twice_then_succeeds() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let _worker = w.worker(&["default"], &[]);
    let ids = w.produce("ask_retry", 1, &on("default"));
    let t = w.ts.wait_state(&ids[0], "success", LONG);
    assert_common(&t, &ids[0], "rq_app.ask_retry", "default");
    assert_eq!(t["retries"], 2, "{t}");
    assert_eq!(t["result"], 0, "{t}");
}

#[test]
fn rq_scheduled_job_is_queued_with_eta_and_runs_only_with_a_scheduler() {
    let _slot = test_slot();
    let w = World::new(&[]);
    // A worker without --with-scheduler never enqueues due jobs.
    let _plain = w.worker(&["default"], &[]);
    let before = chrono::Utc::now();
    let ids = w.produce(
        "add",
        1,
        &RqProduceOpts {
            delay_s: Some(2.0),
            ..on("default")
        },
    );
    let t = w.ts.wait_task(&ids[0], "queued with an eta", SHORT, |t| {
        t["state"] == "queued" && t["eta"].is_string()
    });
    assert_common(&t, &ids[0], "rq_app.add", "default");
    let eta = parse_time(&t, "eta");
    let delay = (eta.with_timezone(&chrono::Utc) - before).num_milliseconds();
    assert!(
        (1_000..=4_000).contains(&delay),
        "eta {eta} is not ~2 s later"
    );
    // Past due, no scheduler: still queued.
    let due = Instant::now() + Duration::from_secs(4);
    while Instant::now() < due {
        let t = w.ts.task(&ids[0]).expect("task");
        assert_eq!(t["state"], "queued", "{t}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let _scheduler = w.worker(&["default"], &["--with-scheduler"]);
    let t = w.ts.wait_state(&ids[0], "success", LONG);
    assert_eq!(t["result"], 1, "{t}");
}

#[test]
fn rq_deferred_job_waits_for_its_dependency() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let first = w.produce(
        "slow",
        1,
        &RqProduceOpts {
            seconds: Some(1.0),
            ..on("default")
        },
    );
    let second = w.produce(
        "add",
        1,
        &RqProduceOpts {
            depends_on: Some(first[0].clone()),
            ..on("default")
        },
    );
    let t = w.ts.wait_state(&second[0], "queued", SHORT);
    assert_common(&t, &second[0], "rq_app.add", "default");
    assert_eq!(t["eta"], Value::Null, "{t}");
    let _worker = w.worker(&["default"], &[]);
    w.ts.wait_state(&first[0], "success", LONG);
    let t = w.ts.wait_state(&second[0], "success", LONG);
    assert_eq!(t["result"], 1, "{t}");
}

#[test]
fn rq_canceled_job_is_a_failure() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let ids = w.produce(
        "add",
        1,
        &RqProduceOpts {
            cancel: true,
            ..on("default")
        },
    );
    let t = w.ts.wait_state(&ids[0], "failure", SHORT);
    assert_common(&t, &ids[0], "rq_app.add", "default");
    assert_eq!(t["error"], "canceled", "{t}");
}

#[test]
fn rq_sigkilled_worker_abandons_its_job_but_a_slow_job_of_a_live_worker_keeps_running() {
    let _slot = test_slot();
    // The harness runs taskscope with --abandon-after 5s.
    let w = World::new(&[]);
    // RQ's default cadence (a heartbeat every 30 s while busy) on the live worker; the doomed
    // one heartbeats every second so the test need not wait half a minute.
    let live = w.worker(&["slow"], &[]);
    let mut doomed = w.worker(&["doomed"], &["--job-monitoring-interval", "1"]);
    let slow = w.produce(
        "slow",
        1,
        &RqProduceOpts {
            seconds: Some(10.0),
            ..on("slow")
        },
    );
    let hang = w.produce("hang", 1, &on("doomed"));
    live.wait_started(&slow[0], SHORT);
    doomed.wait_started(&hang[0], SHORT);
    w.ts.wait_state(&hang[0], "running", SHORT);
    w.ts.wait_state(&slow[0], "running", SHORT);
    doomed.sigkill();
    let killed_at = Instant::now();

    // The slow job stays running (never abandoned) until it succeeds, well past 5 s.
    let t =
        w.ts.wait_task(&slow[0], "success, never abandoned", LONG, |t| {
            assert_ne!(t["state"], "abandoned", "a live worker's slow job: {t}");
            t["state"] == "success"
        });
    assert_ran_on(&t, &live);
    assert!(
        !transition_states(&t).contains(&"abandoned".to_string()),
        "{t}"
    );

    let t = w.ts.wait_state(&hang[0], "abandoned", LONG);
    assert_eq!(t["worker"], doomed.name.as_str(), "{t}");
    assert!(
        killed_at.elapsed() >= Duration::from_secs(5),
        "abandoned before --abandon-after passed"
    );
    let workers = w.ts.get("/api/workers");
    let dead = workers["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|x| x["id"] == doomed.name.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("{workers}"));
    assert_eq!(dead["alive"], false, "{dead}");
}

#[test]
fn rq_custom_key_prefix_is_followed() {
    let _slot = test_slot();
    // RQ's RQ_KEY_PREFIX without the colon (taskscope adds it), from the TOML file's `[rq]`
    // table (`--rq-prefix` and TASKSCOPE_RQ_PREFIX set the same setting).
    let conf = tempfile::Builder::new()
        .prefix("taskscope-conf-")
        .tempdir()
        .expect("tempdir");
    let path = conf.path().join("taskscope.toml");
    std::fs::write(&path, "[rq]\nprefix = \"shop\"\n").expect("write the config file");
    let w = World::new(&["--config", path.to_str().expect("utf-8 path")]);
    let env = [("RQ_KEY_PREFIX", "shop")];
    let worker = RqWorker::start(&w.redis.url(), &["default"], &[], &env);
    let ids = w.produce(
        "add",
        1,
        &RqProduceOpts {
            env: vec![("RQ_KEY_PREFIX".into(), "shop".into())],
            ..on("default")
        },
    );
    assert!(
        !w.redis
            .cli(&["EXISTS", &format!("shop:job:{}", ids[0])])
            .trim()
            .is_empty(),
        "the producer did not write under shop:"
    );
    let t = w.ts.wait_state(&ids[0], "success", LONG);
    assert_common(&t, &ids[0], "rq_app.add", "default");
    assert_ran_on(&t, &worker);
}

#[test]
fn rq_polling_without_keyspace_notifications_sees_every_outcome() {
    let _slot = test_slot();
    // Redis starts with notify-keyspace-events "" and --no-config-set forbids changing it.
    let w = World::new(&["--no-config-set", "--poll-every", "500ms"]);
    let worker = w.worker(&["default"], &[]);
    let adds = w.produce("add", 20, &on("default"));
    let fails = w.produce("fail", 2, &on("default"));
    for (i, id) in adds.iter().enumerate() {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_eq!(t["result"], json!(2 * i + 1), "{t}");
        assert_eq!(t["worker"], worker.name.as_str(), "{t}");
        assert!(t["started_at"].is_string(), "{t}");
    }
    for id in &fails {
        let t = w.ts.wait_task(id, "failure with its error", LONG, |t| {
            t["state"] == "failure" && t["error"].is_string()
        });
        assert!(
            t["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("ValueError: card declined"),
            "{t}"
        );
    }
}

#[test]
fn rq_jobs_that_ran_while_taskscope_was_down_are_found_after_its_restart() {
    let _slot = test_slot();
    let mut w = World::new(&[]);
    let worker = w.worker(&["default"], &[]);
    let first = w.produce("add", 1, &on("default"));
    w.ts.wait_state(&first[0], "success", LONG);
    let slow = w.produce(
        "slow",
        1,
        &RqProduceOpts {
            seconds: Some(1.5),
            ..on("default")
        },
    );
    w.ts.wait_state(&slow[0], "running", SHORT);
    w.ts.kill();
    // While it is down: the running job finishes, others run from start to end.
    let during = w.produce("add", 3, &on("default"));
    wait_for("the jobs to finish in RQ", SHORT, || {
        let done = during.iter().chain(&slow).all(|id| {
            w.redis
                .cli(&["HGET", &format!("rq:job:{id}"), "status"])
                .trim()
                == "finished"
        });
        if done {
            Ok(())
        } else {
            Err("not all finished".into())
        }
    });
    w.ts.restart();
    let t = w.ts.wait_state(&slow[0], "success", LONG);
    assert_ran_on(&t, &worker);
    for id in &during {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_ran_on(&t, &worker);
        assert!(t["args"].is_array(), "{t}");
    }
}

#[test]
fn rq_own_cleanup_of_an_abandoned_job_makes_it_a_failure() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let mut doomed = w.worker(&["default"], &["--job-monitoring-interval", "1"]);
    let hang = w.produce("hang", 1, &on("default"));
    doomed.wait_started(&hang[0], SHORT);
    doomed.sigkill();
    w.ts.wait_state(&hang[0], "abandoned", LONG);
    // RQ cleans a started job up once its `rq:wip:<q>` score (heartbeat expiry, here about
    // 61 s after the last heartbeat) has passed, when a worker starts (and every 10 min).
    wait_for(
        "the abandoned job's wip score to pass",
        Duration::from_secs(90),
        || {
            let now: i64 = w
                .redis
                .cli(&["TIME"])
                .lines()
                .next()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let score: f64 = w
                .redis
                .cli(&["ZRANGE", "rq:wip:default", "0", "0", "WITHSCORES"])
                .lines()
                .nth(1)
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(f64::MAX);
            if (now as f64) > score {
                Ok(())
            } else {
                Err(format!("now {now}, score {score}"))
            }
        },
    );
    let _cleaner = w.worker(&["default"], &[]);
    let t = w.ts.wait_state(&hang[0], "failure", LONG);
    let error = t["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("AbandonedJobError: "), "{t}");
    let states = transition_states(&t);
    assert!(states.contains(&"abandoned".to_string()), "{states:?}");
}

#[test]
fn rq_json_serializer_worker_timeouts_and_result_ttl_zero() {
    let _slot = test_slot();
    let w = World::new(&["--reconcile-every", "1s"]);
    let worker = w.worker(
        &["json"],
        &["--serializer", "rq.serializers.JSONSerializer"],
    );
    let json = |extra: RqProduceOpts| RqProduceOpts {
        serializer: Some("json".into()),
        ..extra
    };
    let ok = w.produce(
        "add",
        1,
        &json(RqProduceOpts {
            args: Some(json!([20, 22])),
            ..on("json")
        }),
    );
    let fail = w.produce("fail", 1, &json(on("json")));
    let t = w.ts.wait_state(&ok[0], "success", LONG);
    assert_ran_on(&t, &worker);
    assert_eq!(t["args"], json!([20, 22]), "{t}");
    assert_eq!(t["result"], 42, "{t}");
    let t =
        w.ts.wait_task(&fail[0], "failure with its error", LONG, |t| {
            t["state"] == "failure" && t["error"].is_string()
        });
    assert_eq!(t["error"], "ValueError: card declined 1", "{t}");

    // The default worker: a job over its timeout fails; a job with result_ttl=0 is deleted
    // by RQ as it succeeds.
    let worker = w.worker(&["default"], &[]);
    let timed_out = w.produce(
        "slow",
        1,
        &RqProduceOpts {
            seconds: Some(30.0),
            timeout: Some(1),
            ..on("default")
        },
    );
    let gone = w.produce(
        "add",
        1,
        &RqProduceOpts {
            result_ttl: Some(0),
            ..on("default")
        },
    );
    let t =
        w.ts.wait_task(&timed_out[0], "failure with its error", LONG, |t| {
            t["state"] == "failure" && t["error"].is_string()
        });
    assert_eq!(t["worker"], worker.name.as_str(), "{t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap_or_default()
            .contains("JobTimeoutException"),
        "{t}"
    );
    w.ts.wait_state(&gone[0], "success", LONG);
}

#[test]
fn rq_stopped_job_is_a_failure() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let worker = w.worker(&["default"], &[]);
    let hang = w.produce("hang", 1, &on("default"));
    worker.wait_started(&hang[0], SHORT);
    w.ts.wait_state(&hang[0], "running", SHORT);
    let code = format!(
        "from redis import Redis; from rq.command import send_stop_job_command; \
         send_stop_job_command(Redis.from_url({:?}), {:?})",
        w.redis.url(),
        hang[0]
    );
    let status = std::process::Command::new(python())
        .args(["-c", &code])
        .status()
        .expect("run python");
    assert!(status.success(), "send_stop_job_command failed");
    let t = w.ts.wait_state(&hang[0], "failure", LONG);
    assert_eq!(t["error"], "stopped", "{t}");
    assert_eq!(t["worker"], worker.name.as_str(), "{t}");
}

/// Jobs that take a few milliseconds (a `SimpleWorker` runs them without forking, back to
/// back; the default worker forks a horse for each): their start and end often reach
/// taskscope in one batch of notifications. Each must still have its worker, start time and
/// runtime, with its name, arguments, queue and result.
#[test]
fn rq_instant_jobs_each_have_their_start_worker_runtime_and_result() {
    let _slot = test_slot();
    let w = World::new(&[]);
    let simple = w.worker(&["simple"], &["--worker-class", "rq.worker.SimpleWorker"]);
    let forking = w.worker(&["default"], &[]);
    let on_simple = w.produce("add", 300, &on("simple"));
    let on_default = w.produce("add", 60, &on("default"));
    for (ids, worker, queue) in [
        (&on_simple, &simple, "simple"),
        (&on_default, &forking, "default"),
    ] {
        for (i, id) in ids.iter().enumerate() {
            let t = w.ts.wait_state(id, "success", LONG);
            assert_common(&t, id, "rq_app.add", queue);
            assert_ran_on(&t, worker);
            let i = i as i64;
            assert_eq!(t["args"], json!([i, i + 1]), "args: {t}");
            assert_eq!(t["result"], json!(2 * i + 1), "result: {t}");
            assert_eq!(t["retries"], 0, "retries: {t}");
            let states = transition_states(&t);
            assert!(
                states.iter().any(|s| s == "running"),
                "no running transition: {t}"
            );
        }
    }
}
