//! Sidekiq end to end: real Sidekiq 6.4 processes (Debian's ruby-sidekiq; tests/ruby/app.rb:
//! `AddJob` sleeping as asked, `FailJob` with one retry then dead, `NoRetryJob` with
//! `retry: 0`, `FlakyJob` failing once, retry delays of a second) and producers
//! (tests/ruby/produce.rb) on a private redis-server. taskscope starts first, with its
//! defaults (`--brokers auto`) on an empty Redis, as users start it, except the one test that
//! names `--brokers sidekiq`; every job is asserted through the HTTP API.
//!
//! A job an idle fetcher takes inside the producer's `LPUSH` never sits in Redis (README,
//! *What it sees*): the fast jobs here are sent while every thread is busy with a slow one, so
//! they wait in their list; slow jobs (6 s) always outlive one heartbeat (5 s).
//!
//! Needs `scripts/setup.sh` (redis-server, ruby-sidekiq, ruby-redis-namespace). Run one:
//! `cargo test --test sidekiq -- sigkill`.

mod common;

use common::*;
use serde_json::{json, Value};

/// One scenario's world: redis-server and taskscope watching it.
struct World {
    // Field order is drop order: taskscope goes before the Redis it watches.
    ts: Taskscope,
    redis: RedisServer,
    namespace: Option<&'static str>,
    _dir: tempfile::TempDir,
}

impl World {
    /// taskscope with the defaults (plus `extra`) on an empty Redis.
    fn new(extra: &[&str], namespace: Option<&'static str>) -> World {
        World::with_abandon_after("15s", extra, namespace)
    }

    /// The same with `--abandon-after` given.
    fn with_abandon_after(
        abandon_after: &str,
        extra: &[&str],
        namespace: Option<&'static str>,
    ) -> World {
        let redis = RedisServer::start();
        let dir = db_dir();
        // Sidekiq 6 beats every 5 s: the harness's `--abandon-after 5s` would call a process
        // silent between two heartbeats.
        let mut args = vec!["--sample-every", "1s", "--abandon-after", abandon_after];
        args.extend_from_slice(extra);
        let ts = Taskscope::start(&redis.url(), &dir.path().join("t.duckdb"), &args);
        World {
            ts,
            redis,
            namespace,
            _dir: dir,
        }
    }

    fn worker(&self) -> WorkerProcess {
        sidekiq_worker(&self.redis, &["default", "critical"], self.namespace)
    }

    fn produce(&self, args: &[&str]) -> Vec<String> {
        sidekiq_produce(&self.redis, self.namespace, args)
    }

    fn one(&self, args: &[&str]) -> String {
        self.produce(args).remove(0)
    }

    /// The identity of the only Sidekiq process.
    fn identity(&self) -> String {
        let key = match self.namespace {
            Some(ns) => format!("{ns}:processes"),
            None => "processes".to_string(),
        };
        self.redis.cli(&["SMEMBERS", &key]).trim().to_string()
    }
}

fn assert_common(t: &Value, name: &str, queue: &str) {
    assert_task_shape(t);
    assert_eq!(t["broker"], "sidekiq", "{t}");
    assert_eq!(t["name"], name, "{t}");
    assert_eq!(t["queue"], queue, "{t}");
    assert!(t["enqueued_at"].is_string(), "enqueued_at: {t}");
    let states = transition_states(t);
    assert_eq!(
        states.last().map(String::as_str),
        t["state"].as_str(),
        "{t}"
    );
}

#[test]
fn sidekiq_found_with_defaults_success_burst_failure_retry_scheduled_and_custom_queue() {
    let _slot = test_slot();
    let w = World::new(&[], None);
    let _worker = w.worker();
    let identity = w.identity();

    // Five slow jobs take the five threads; each outlives a heartbeat, so its work hash shows it.
    let slow = w.produce(&["add", "5", "6"]);
    for id in &slow {
        let t = w.ts.wait_state(id, "running", LONG);
        assert_eq!(t["worker"], identity.as_str(), "{t}");
        assert!(t["started_at"].is_string(), "{t}");
    }
    // Meanwhile a burst of fast jobs waits in the lists, on both queues.
    let burst = w.produce(&["add", "20", "0"]);
    let critical = w.produce(&["add", "3", "0", "critical"]);
    let fail = w.one(&["fail", "card-declined-3"]);
    let noretry = w.one(&["noretry", "no-second-chance"]);
    let flaky = w.one(&["flaky", "t1"]);
    let scheduled = w.one(&["in", "2"]);

    for id in &slow {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, "AddJob", "default");
        assert_eq!(t["args"][2], json!(6.0), "{t}");
        assert!(detail_of(&t, "success").contains("no work hash"), "{t}");
    }
    for id in &burst {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, "AddJob", "default");
        assert_eq!(t["args"][2], json!(0.0), "{t}");
        assert_eq!(t["error"], Value::Null, "{t}");
        let states = transition_states(&t);
        assert_eq!(states.first().map(String::as_str), Some("queued"), "{t}");
        assert!(states.iter().any(|s| s == "running"), "{t}");
        assert!(
            !states.iter().any(|s| s == "retried" || s == "failure"),
            "{t}"
        );
    }
    for id in &critical {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, "AddJob", "critical");
    }

    // Retried once (retry: 1), then dead.
    let t = w.ts.wait_state(&fail, "failure", LONG);
    assert_common(&t, "FailJob", "default");
    assert_eq!(t["error"], "ArgumentError: card-declined-3", "{t}");
    assert_eq!(t["retries"], 1, "{t}");
    assert!(transition_states(&t).iter().any(|s| s == "retried"), "{t}");
    let tb = t["traceback"].as_str().unwrap_or_default();
    assert!(tb.contains("app.rb"), "backtrace: 5 kept: {t}");

    // retry: 0: dead at once.
    let t = w.ts.wait_state(&noretry, "failure", LONG);
    assert_common(&t, "NoRetryJob", "default");
    assert_eq!(t["error"], "ArgumentError: no-second-chance", "{t}");
    assert_eq!(t["retries"], 0, "{t}");

    // Fails once, succeeds on its retry: never success before the retry.
    let t = w.ts.wait_state(&flaky, "success", LONG);
    assert_common(&t, "FlakyJob", "default");
    assert_eq!(t["retries"], 1, "{t}");
    let states = transition_states(&t);
    let retried = states.iter().position(|s| s == "retried").expect("retried");
    assert!(!states[..retried].iter().any(|s| s == "success"), "{t}");

    // perform_in(2): queued with an eta 2 s after its creation, then run.
    let t = w.ts.wait_state(&scheduled, "success", LONG);
    assert_common(&t, "AddJob", "default");
    let wait = parse_time(&t, "eta") - parse_time(&t, "enqueued_at");
    assert!((1_900..=2_100).contains(&wait.num_milliseconds()), "{t}");

    // The worker is the process.
    let me = wait_worker(&w.ts, identity.as_str(), LONG);
    assert_eq!(me["broker"], "sidekiq", "{me}");
    assert_eq!(me["alive"], true, "{me}");
    wait_for("the critical queue sampled", LONG, || {
        let q = w.ts.get("/api/queues");
        let found = q["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .any(|q| q["broker"] == "sidekiq" && q["name"] == "critical")
        });
        found.then_some(()).ok_or_else(|| q.to_string())
    });
}

#[test]
fn sidekiq_sigkilled_process_leaves_its_job_abandoned_and_lost() {
    let _slot = test_slot();
    let w = World::with_abandon_after("12s", &[], None);
    let mut worker = w.worker();
    let identity = w.identity();
    let id = w.one(&["add", "1", "60"]);
    worker.wait_started(&id, LONG);
    let t = w.ts.wait_state(&id, "running", LONG);
    assert_eq!(t["worker"], identity.as_str(), "{t}");
    worker.sigkill();
    let t = w.ts.wait_state(&id, "abandoned", LONG);
    assert!(detail_of(&t, "abandoned").contains(&identity), "{t}");
    // BasicFetch kept the job only in the process's memory: it is nowhere in Redis.
    assert_eq!(w.redis.cli(&["LLEN", "queue:default"]), "0");
    assert_eq!(w.redis.cli(&["ZCARD", "retry"]), "0");
    assert_eq!(w.redis.cli(&["ZCARD", "dead"]), "0");
}

#[test]
fn sidekiq_named_with_brokers_sidekiq_and_a_namespace_reads_jobs_waiting_for_a_process() {
    let _slot = test_slot();
    let w = World::new(
        &["--brokers", "sidekiq", "--sidekiq-namespace", "app"],
        Some("app"),
    );
    // No process yet: the jobs wait in `app:queue:default`.
    let waiting = w.produce(&["add", "3", "0"]);
    for id in &waiting {
        let t = w.ts.wait_state(id, "queued", LONG);
        assert_common(&t, "AddJob", "default");
    }
    wait_for("default sampled: 3 waiting", LONG, || {
        let q = w.ts.get("/api/queues");
        let found = q["queues"].as_array().and_then(|qs| {
            qs.iter()
                .find(|q| q["broker"] == "sidekiq" && q["name"] == "default")
                .cloned()
        });
        match found {
            Some(q) if q["length"] == 3 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_oldest_age_grows(&w.ts, "sidekiq", "default");
    let _worker = w.worker();
    for id in &waiting {
        let t = w.ts.wait_state(id, "success", LONG);
        let states = transition_states(&t);
        assert_eq!(states.first().map(String::as_str), Some("queued"), "{t}");
        assert!(states.iter().any(|s| s == "running"), "{t}");
    }
}

/// Jobs pushed before any Sidekiq process ever ran, taskscope started first with the defaults:
/// the `queues` set alone is no evidence (too common a name), the job JSON waiting in
/// `queue:default` is; the jobs are listed waiting, then run once a process starts.
#[test]
fn sidekiq_jobs_pushed_before_any_process_are_found_from_their_queue_list() {
    let _slot = test_slot();
    let w = World::new(&[], None);
    let waiting = w.produce(&["add", "2", "0"]);
    let found = wait_for("sidekiq detected", LONG, || {
        let h = w.ts.get("/healthz");
        let found = h["detection"]["found"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["broker"] == "sidekiq").cloned());
        found.ok_or_else(|| format!("{h}"))
    });
    assert_eq!(found["key"], "queue:default", "{found}");
    for id in &waiting {
        let t = w.ts.wait_state(id, "queued", LONG);
        assert_eq!(t["name"], "AddJob", "{t}");
    }
    let _worker = w.worker();
    for id in &waiting {
        w.ts.wait_state(id, "success", LONG);
    }
}

#[test]
fn sidekiq_namespace_is_found_with_defaults() {
    let _slot = test_slot();
    let w = World::new(&[], Some("shop"));
    let _worker = w.worker();
    let identity = w.identity();
    // Slow jobs: an idle process takes a job inside its push (README, What it sees).
    let slow = w.produce(&["add", "2", "6", "critical"]);
    let dead = w.one(&["noretry", "namespaced"]);
    for id in &slow {
        let t = w.ts.wait_state(id, "success", LONG);
        assert_common(&t, "AddJob", "critical");
        assert!(
            t["transitions"]
                .as_array()
                .is_some_and(|tr| tr.iter().any(|x| x["worker"] == identity.as_str())),
            "{t}"
        );
    }
    let t = w.ts.wait_state(&dead, "failure", LONG);
    assert_eq!(t["error"], "ArgumentError: namespaced", "{t}");
    let health = w.ts.get("/healthz");
    assert!(
        health.to_string().contains("sidekiq namespace shop"),
        "{health}"
    );
}
