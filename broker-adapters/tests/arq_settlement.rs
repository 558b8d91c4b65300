//! How the arq adapter settles each job, driven end to end against the in-memory Redis
//! (`support/`): arq 0.28's writes (`support/arq_worker.rs`) on captured JSON records
//! (`tests/fixtures/arq/`), the keyspace notifications they cause (TTL expiries included), and
//! every read the adapter asks for, answered from the fake's state.
//!
//! Settlement paths (the adapter's module docs): `queued` from the job definition and the
//! queue's sorted set (a later score is an `eta`); `running` while `arq:in-progress:<id>`
//! exists; the outcome from `arq:result:<id>`; `retried` when the in-progress key goes without a
//! result while the definition stays; `abandoned` when the in-progress key *expires*.

mod support;

use broker_adapters::arq::{ArqAdapter, ArqConfig};
use broker_adapters::{TaskEvent, TaskState};
use chrono::Duration;
use support::arq_worker::{self as aw, Outcome};
use support::driver::Driver;
use support::fake_redis::FakeRedis;

const ID: &str = "c3c6d0f5a19644f68a0f52f3d31ef617";

fn driver() -> Driver<ArqAdapter> {
    let mut d = Driver::new(ArqAdapter::new(ArqConfig::default()));
    let now = d.now;
    step(&mut d, |r| aw::health_check(r, now));
    d
}

/// One transaction's writes, their notifications, then a little time.
fn step<T>(d: &mut Driver<ArqAdapter>, write: impl FnOnce(&mut FakeRedis) -> T) -> T {
    let out = write(&mut d.redis);
    d.deliver();
    d.advance(5);
    out
}

fn enqueue(d: &mut Driver<ArqAdapter>) -> chrono::DateTime<chrono::Utc> {
    let now = d.now;
    step(d, |r| aw::enqueue(r, ID, now, now));
    now
}

/// Two jobs' whole runs, each pipeline's notifications in one batch (as a busy loop gets
/// them): the statuses a batch asks for are one `MGET` for both jobs, and none when the batch
/// wrote the results; the states are the same.
#[test]
fn batched_runs_read_statuses_together_and_not_when_the_result_is_in_the_batch() {
    const ID2: &str = "d4d7e1a6b2a755a79b1a63a4e42fa728";
    let mut d = driver();
    let now = d.now;
    d.redis.take_events();
    aw::enqueue(&mut d.redis, ID, now, now);
    aw::enqueue(&mut d.redis, ID2, now, now);
    d.deliver_batch();
    d.advance(5);
    let status_reads = |d: &Driver<ArqAdapter>| {
        d.reads
            .iter()
            .filter(|r| matches!(r, broker_adapters::ReadRequest::MGet(k) if k.len() >= 4))
            .count()
    };
    let before = status_reads(&d);
    let (t1, t2) = (aw::start(&mut d.redis, ID), aw::start(&mut d.redis, ID2));
    d.deliver_batch();
    assert_eq!(d.state(ID), TaskState::Running);
    assert_eq!(d.state(ID2), TaskState::Running);
    assert_eq!(status_reads(&d), before + 1, "{:?}", d.reads);
    d.advance(600);
    let end = d.now;
    aw::finish(&mut d.redis, ID, now, now, end, t1, Outcome::Success);
    aw::finish(&mut d.redis, ID2, now, now, end, t2, Outcome::Success);
    d.deliver_batch();
    assert_eq!(d.state(ID), TaskState::Success);
    assert_eq!(d.state(ID2), TaskState::Success);
    assert_eq!(status_reads(&d), before + 1, "{:?}", d.reads);
}

#[test]
fn job_queued_running_then_success_from_its_result() {
    let mut d = driver();
    let enqueued = enqueue(&mut d);
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.name.as_deref(), Some("add"));
    assert_eq!(t.queue.as_deref(), Some(aw::QUEUE));
    let started = d.now;
    let tries = step(&mut d, |r| aw::start(r, ID));
    assert_eq!(d.state(ID), TaskState::Running);
    d.advance(600);
    let now = d.now;
    step(&mut d, |r| {
        aw::finish(r, ID, enqueued, started, now, tries, Outcome::Success)
    });
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.result, Some(serde_json::json!(3)));
    assert_eq!(t.retries, 0);
    let mut firsts = Vec::new();
    for e in d.events_of(ID) {
        if !firsts.contains(&e) {
            firsts.push(e);
        }
    }
    assert_eq!(
        firsts,
        [TaskEvent::Queued, TaskEvent::Running, TaskEvent::Succeeded]
    );
}

#[test]
fn job_failure_from_its_result() {
    let mut d = driver();
    let enqueued = enqueue(&mut d);
    let started = d.now;
    let tries = step(&mut d, |r| aw::start(r, ID));
    let now = d.now;
    step(&mut d, |r| {
        aw::finish(r, ID, enqueued, started, now, tries, Outcome::Failure)
    });
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Failure);
    assert!(t.error.is_some());
}

/// `_defer_by=3600`: the queue score is the due time, the job's `eta`.
#[test]
fn deferred_job_is_queued_with_its_eta() {
    let mut d = driver();
    let now = d.now;
    let due = now + Duration::seconds(3_600);
    step(&mut d, |r| aw::enqueue(r, ID, now, due));
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(
        t.eta.map(|e| e.timestamp_millis()),
        Some(due.timestamp_millis())
    );
}

/// `Retry`: the in-progress key goes, the definition stays; the next try succeeds (try 2).
#[test]
fn retried_job_then_success_counts_one_retry() {
    let mut d = driver();
    let enqueued = enqueue(&mut d);
    step(&mut d, |r| aw::start(r, ID));
    step(&mut d, |r| aw::retry(r, ID, 1_000));
    assert_eq!(d.state(ID), TaskState::Retried);
    d.advance(1_000);
    let started = d.now;
    let tries = step(&mut d, |r| aw::start(r, ID));
    assert_eq!(tries, 2);
    assert_eq!(d.state(ID), TaskState::Running);
    let now = d.now;
    step(&mut d, |r| {
        aw::finish(r, ID, enqueued, started, now, tries, Outcome::Success)
    });
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}

/// The worker dies mid-try: the in-progress key expires (its `expired` event), the job is
/// abandoned; another worker runs it again (try 2) and it succeeds.
#[test]
fn job_whose_in_progress_key_expired_is_abandoned_then_rerun() {
    let mut d = driver();
    let enqueued = enqueue(&mut d);
    step(&mut d, |r| aw::start(r, ID));
    d.advance(aw::IN_PROGRESS_MS);
    d.deliver();
    assert_eq!(d.state(ID), TaskState::Abandoned);
    let started = d.now;
    let tries = step(&mut d, |r| aw::start(r, ID));
    assert_eq!(d.state(ID), TaskState::Running);
    let now = d.now;
    step(&mut d, |r| {
        aw::finish(r, ID, enqueued, started, now, tries, Outcome::Success)
    });
    assert_eq!(d.state(ID), TaskState::Success);
}

/// Every notification lost: reconciliation finds the job and, later, its outcome.
#[test]
fn reconciliation_alone_finds_the_job_and_its_outcome() {
    let mut d = driver();
    let now = d.now;
    aw::enqueue(&mut d.redis, ID, now, now);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Queued);
    let tries = aw::start(&mut d.redis, ID);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Running);
    aw::finish(&mut d.redis, ID, now, now, now, tries, Outcome::Failure);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Failure);
}

/// A gap while the job runs; it ends unseen; the reconciliation after it settles it.
#[test]
fn job_ended_during_a_gap_is_settled_after_it() {
    let mut d = driver();
    let enqueued = enqueue(&mut d);
    let started = d.now;
    let tries = step(&mut d, |r| aw::start(r, ID));
    d.gap();
    let now = d.now;
    aw::finish(
        &mut d.redis,
        ID,
        enqueued,
        started,
        now,
        tries,
        Outcome::Success,
    );
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Success);
}

/// The whole job runs between the loop's reads: its definition is deleted before the `set`
/// notification's read; the result alone tells the job.
#[test]
fn job_run_before_its_definition_was_read_is_known_by_its_result() {
    let mut d = driver();
    let now = d.now;
    aw::enqueue(&mut d.redis, ID, now, now);
    let tries = aw::start(&mut d.redis, ID);
    aw::finish(&mut d.redis, ID, now, now, now, tries, Outcome::Success);
    d.deliver_batch();
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.name.as_deref(), Some("add"));
}

/// The definition's read is answered after the worker ran the job.
#[test]
fn read_overtaken_by_the_run_still_settles() {
    let mut d = driver();
    let now = d.now;
    aw::enqueue(&mut d.redis, ID, now, now);
    d.deliver_outrun(|r| {
        let tries = aw::start(r, ID);
        aw::finish(r, ID, now, now, now, tries, Outcome::Success);
    });
    assert_eq!(d.state(ID), TaskState::Success);
}
