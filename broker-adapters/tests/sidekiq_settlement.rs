//! How the Sidekiq adapter settles each job, driven end to end against the in-memory Redis
//! (`support/`): Sidekiq 6.4's writes (`support/sidekiq_worker.rs`) on captured job JSON and
//! process hashes (`tests/fixtures/sidekiq/`), the keyspace notifications they cause, and every
//! read the adapter asks for, answered from the fake's state.
//!
//! Settlement paths (the adapter's module docs): `queued` in a queue list or `schedule`;
//! `running` once taken from a list (no worker) or in a process's work hash (that process);
//! `retried` in `retry`; `failure` in `dead`; `success` inferred once every live process has
//! beaten enough times since the take without the job anywhere; `abandoned` by the sweep when
//! its process falls silent.

mod support;

use broker_adapters::sidekiq::{SidekiqAdapter, SidekiqConfig};
use broker_adapters::TaskState;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use support::driver::Driver;
use support::fake_redis::FakeRedis;
use support::sidekiq_worker::{self as sw, IDENTITY};

const JID: &str = "375d1e16ae521809c1f10aad";

struct Run {
    d: Driver<SidekiqAdapter>,
    started: DateTime<Utc>,
}

impl Run {
    fn new() -> Run {
        let d = Driver::new(SidekiqAdapter::new(SidekiqConfig::default()));
        let started = d.now;
        let mut run = Run { d, started };
        run.beat(&[]);
        run
    }

    /// One command group's writes, their notifications, then a little time.
    fn step<T>(&mut self, write: impl FnOnce(&mut FakeRedis) -> T) -> T {
        let out = write(&mut self.d.redis);
        self.d.deliver();
        self.d.advance(5);
        out
    }

    /// A heartbeat [`sw::BEAT_MS`] after the last, `running` in the work hash.
    fn beat(&mut self, running: &[&Value]) {
        let (started, now) = (self.started, self.d.now);
        self.step(|r| sw::heartbeat(r, started, running, now));
        self.d.advance(sw::BEAT_MS);
    }

    fn job(&self) -> Value {
        sw::job(JID, self.d.now)
    }

    fn state(&self) -> TaskState {
        self.d.state(JID)
    }
}

/// Taken, seen running in the work hash, gone from it and from everywhere: a success after
/// the next heartbeat.
#[test]
fn job_seen_running_then_gone_from_everywhere_is_a_success() {
    let mut run = Run::new();
    let job = run.job();
    run.step(|r| sw::push(r, &job));
    let t = run.d.task(JID);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.name.as_deref(), Some("AddJob"));
    assert_eq!(t.queue.as_deref(), Some(sw::QUEUE));
    let taken = run.step(sw::fetch).unwrap();
    assert_eq!(run.state(), TaskState::Running);
    run.beat(&[&taken]);
    assert_eq!(run.d.task(JID).worker.as_deref(), Some(IDENTITY));
    run.beat(&[]);
    run.beat(&[]);
    assert_eq!(run.state(), TaskState::Success);
    assert_eq!(run.d.task(JID).worker.as_deref(), Some(IDENTITY));
}

/// A fast job never in a work hash: a success once the process has beaten twice since the take.
#[test]
fn fast_job_is_a_success_after_two_heartbeats() {
    let mut run = Run::new();
    let job = run.job();
    run.step(|r| sw::push(r, &job));
    run.step(sw::fetch);
    run.beat(&[]);
    assert_eq!(
        run.state(),
        TaskState::Running,
        "one heartbeat is not enough"
    );
    run.beat(&[]);
    assert_eq!(run.state(), TaskState::Success);
}

/// A failure with retries left (`retry`), the poller's requeue, the second try succeeds.
#[test]
fn retried_job_then_success_counts_one_retry() {
    let mut run = Run::new();
    let job = run.job();
    run.step(|r| sw::push(r, &job));
    let taken = run.step(sw::fetch).unwrap();
    let now = run.d.now;
    let member = run.step(|r| sw::fail_to_retry(r, &taken, 0, 1.0, now));
    let t = run.d.task(JID);
    assert_eq!(t.state, TaskState::Retried);
    assert_eq!(t.retries, 1);
    assert!(t
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("ArgumentError"));
    run.beat(&[]);
    run.beat(&[]);
    assert_eq!(run.state(), TaskState::Retried, "in retry: not a success");
    run.step(|r| sw::requeue(r, "retry", &member));
    // Waiting again for its second try: a retry waiting shows as `retried` (the state
    // machine's rule for a `queued` of attempt > 0).
    assert_eq!(run.state(), TaskState::Retried);
    assert_eq!(
        run.d.observations_of(JID).last().map(|o| o.event),
        Some(broker_adapters::TaskEvent::Queued)
    );
    run.step(sw::fetch);
    assert_eq!(run.state(), TaskState::Running);
    run.beat(&[]);
    run.beat(&[]);
    let t = run.d.task(JID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}

/// Retries exhausted (or `retry: 0`): `dead`, a failure with the error.
#[test]
fn dead_job_is_a_failure() {
    let mut run = Run::new();
    let job = run.job();
    run.step(|r| sw::push(r, &job));
    let taken = run.step(sw::fetch).unwrap();
    let now = run.d.now;
    run.step(|r| sw::fail_to_dead(r, &taken, 0, now));
    let t = run.d.task(JID);
    assert_eq!(t.state, TaskState::Failure);
    assert!(t
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("card-declined-3"));
    run.beat(&[]);
    run.beat(&[]);
    assert_eq!(run.state(), TaskState::Failure);
}

/// `perform_in`: queued with its `eta` in `schedule`; the poller pushes it when due.
#[test]
fn scheduled_job_is_queued_with_its_eta_then_runs() {
    let mut run = Run::new();
    let job = run.job();
    let at = run.d.now + Duration::seconds(600);
    let member = run.step(|r| sw::schedule(r, &job, at));
    let t = run.d.task(JID);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.eta.map(|e| e.timestamp()), Some(at.timestamp()));
    run.d.advance(600_000);
    run.step(|r| sw::requeue(r, "schedule", &member));
    run.step(sw::fetch);
    run.beat(&[]);
    run.beat(&[]);
    assert_eq!(run.state(), TaskState::Success);
}

/// The process is SIGKILLed with the job in its work hash: its heartbeats stop, its keys
/// expire, the sweep abandons the job (BasicFetch lost it with the process).
#[test]
fn job_of_a_killed_process_is_abandoned() {
    let mut run = Run::new();
    let job = run.job();
    run.step(|r| sw::push(r, &job));
    let taken = run.step(sw::fetch).unwrap();
    run.beat(&[&taken]);
    assert_eq!(run.d.task(JID).worker.as_deref(), Some(IDENTITY));
    run.d.advance(61_000);
    run.d.deliver();
    assert!(!run.d.redis.exists(IDENTITY), "the process hash expired");
    run.d.reconcile();
    run.d.sweep(60_000);
    assert_eq!(run.state(), TaskState::Abandoned);
}

/// Every notification lost: reconciliation reads the queues, `retry`, `dead` and the
/// processes, and finds the job's failure.
#[test]
fn reconciliation_alone_finds_the_job_and_its_failure() {
    let mut run = Run::new();
    let job = run.job();
    sw::push(&mut run.d.redis, &job);
    run.d.lose_notifications();
    run.d.reconcile();
    assert_eq!(run.state(), TaskState::Queued);
    let taken = sw::fetch(&mut run.d.redis).unwrap();
    let now = run.d.now;
    sw::fail_to_dead(&mut run.d.redis, &taken, 0, now);
    run.d.lose_notifications();
    run.d.reconcile();
    assert_eq!(run.state(), TaskState::Failure);
}

/// A job taken inside the producer's `LPUSH` (a blocked `BRPOP` is served first) never sits
/// in Redis: it is seen only in a work hash, then inferred a success like any other.
#[test]
fn job_never_listed_is_seen_in_a_work_hash_then_succeeds() {
    let mut run = Run::new();
    let job = run.job();
    sw::push(&mut run.d.redis, &job);
    let taken = sw::fetch(&mut run.d.redis).unwrap();
    run.d.deliver_batch();
    run.beat(&[&taken]);
    assert_eq!(run.state(), TaskState::Running);
    assert_eq!(run.d.task(JID).worker.as_deref(), Some(IDENTITY));
    run.beat(&[]);
    run.beat(&[]);
    assert_eq!(run.state(), TaskState::Success);
}

/// A second process was SIGKILLed (its hash expired, its name left in `processes`, as
/// Sidekiq cleans that set lazily): the success of a job taken by the live one is still
/// inferred from the live one's heartbeats.
#[test]
fn a_dead_process_does_not_hold_back_the_success_of_a_live_ones_job() {
    let mut run = Run::new();
    let other = "vm:19999:0123456789ab";
    let (started, now) = (run.started, run.d.now);
    run.step(|r| sw::heartbeat_of(r, other, started, &[], now));
    run.d.advance(61_000);
    run.d.deliver();
    assert!(
        !run.d.redis.exists(other),
        "the other process's hash expired"
    );
    run.beat(&[]);
    let job = run.job();
    run.step(|r| sw::push(r, &job));
    run.step(sw::fetch);
    run.beat(&[]);
    run.beat(&[]);
    run.d.reconcile();
    run.beat(&[]);
    assert_eq!(run.state(), TaskState::Success);
}
