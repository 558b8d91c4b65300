//! How the BullMQ adapter settles each job, driven end to end against the in-memory Redis
//! (`support/`): BullMQ 6's script writes (`support/bullmq_worker.rs`) on a captured job hash
//! (`tests/fixtures/bullmq/lifecycles.json`), the keyspace notifications they cause (the
//! events stream's `xadd`, a lock's `expired`), and every read the adapter asks for.
//!
//! Settlement paths (the adapter's module docs): the events stream (`added`/`waiting`/
//! `delayed` queued, `active` running with the hash's `pb`, `completed`/`failed` the outcome,
//! `waiting prev=active` a retry); `abandoned` when the job's lock expires, then `stalled`; a
//! trimmed stream makes reconciliation read the `active` list and the newest finished jobs.

mod support;

use broker_adapters::bullmq::layout::QueueName;
use broker_adapters::bullmq::{BullmqAdapter, BullmqConfig, HASH_READ_DEFER_MS};
use broker_adapters::{ReadRequest, TaskState};
use chrono::Duration;
use support::bullmq_worker::{self as bw, task_id, WORKER};
use support::driver::Driver;
use support::fake_redis::FakeRedis;

const JOB: &str = "1";

fn driver() -> Driver<BullmqAdapter> {
    Driver::new(BullmqAdapter::new(BullmqConfig {
        queues: vec![QueueName::new(bw::PREFIX, bw::QUEUE)],
    }))
}

/// One script call's writes, their notifications, then a little time.
fn step<T>(d: &mut Driver<BullmqAdapter>, write: impl FnOnce(&mut FakeRedis) -> T) -> T {
    let out = write(&mut d.redis);
    d.deliver();
    d.advance(5);
    out
}

fn add(d: &mut Driver<BullmqAdapter>, attempts: u32) {
    let now = d.now;
    step(d, |r| bw::add(r, JOB, attempts, 0, now));
}

fn take(d: &mut Driver<BullmqAdapter>, worker: &str) {
    let now = d.now;
    let job = step(d, |r| bw::take(r, worker, now));
    assert_eq!(job.as_deref(), Some(JOB));
}

fn finish(d: &mut Driver<BullmqAdapter>, outcome: Result<&str, &str>) {
    let now = d.now;
    step(d, |r| bw::finish(r, JOB, outcome, now));
}

/// Time enough for the job hash reads the adapter defers, then a round of the loop.
fn past_deferred_reads(d: &mut Driver<BullmqAdapter>) {
    d.advance(HASH_READ_DEFER_MS);
    d.pump(Vec::new());
}

/// How many reads brought the job's hash: its own `HMGET`, or a `SORT_RO` of its queue's
/// lists and sets (the tests that count run one job).
fn hash_reads(d: &Driver<BullmqAdapter>, id: &str) -> usize {
    d.reads
        .iter()
        .filter(|r| match r {
            ReadRequest::HMGet { key, .. } => key == id,
            ReadRequest::SortGet { .. } => true,
            _ => false,
        })
        .count()
}

#[test]
fn job_added_active_on_its_worker_then_completed() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 1);
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.name.as_deref(), Some("add"));
    take(&mut d, WORKER);
    assert_eq!(d.state(&id), TaskState::Running);
    // A job running past the deferral is read for its worker (and its data).
    past_deferred_reads(&mut d);
    assert_eq!(d.task(&id).worker.as_deref(), Some(WORKER));
    assert!(d.task(&id).kwargs.is_some(), "{:?}", d.task(&id));
    finish(&mut d, Ok("5"));
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.result, Some(serde_json::json!(5)));
    assert_eq!(t.retries, 0);
    assert_eq!(
        hash_reads(&d, &id),
        1,
        "read while it ran, not again at its end"
    );
}

/// A job queued, run and completed within the deferral: its hash is read once, at its end,
/// for everything the stream does not carry (data, worker, enqueue time).
#[test]
fn fast_job_is_read_once_at_its_end_with_its_data_and_worker() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 1);
    assert_eq!(d.state(&id), TaskState::Queued);
    take(&mut d, WORKER);
    finish(&mut d, Ok("5"));
    past_deferred_reads(&mut d);
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.worker.as_deref(), Some(WORKER));
    assert!(t.kwargs.is_some(), "{t:?}");
    assert!(t.enqueued_at.is_some(), "{t:?}");
    assert_eq!(hash_reads(&d, &id), 1);
}

/// Many jobs run and finished between two reads of the stream: one `SORT_RO` of `completed`
/// and one of `failed` bring all their hashes (data, worker), never one read per job.
#[test]
fn jobs_finished_together_are_read_with_one_command_per_set() {
    let mut d = driver();
    let now = d.now;
    let ids: Vec<String> = (1..=40).map(|n| n.to_string()).collect();
    for id in &ids {
        bw::add(&mut d.redis, id, 1, 0, now);
    }
    for id in &ids {
        let taken = bw::take(&mut d.redis, WORKER, now);
        assert_eq!(taken.as_deref(), Some(id.as_str()));
        let n: u32 = id.parse().expect("id");
        let outcome = if n.is_multiple_of(4) {
            Err("boom")
        } else {
            Ok("5")
        };
        bw::finish(&mut d.redis, id, outcome, now);
    }
    d.deliver_batch();
    for id in &ids {
        let t = d.task(&task_id(id));
        let n: u32 = id.parse().expect("id");
        let want = if n.is_multiple_of(4) {
            TaskState::Failure
        } else {
            TaskState::Success
        };
        assert_eq!(t.state, want, "{t:?}");
        assert_eq!(t.worker.as_deref(), Some(WORKER), "{t:?}");
        assert!(t.kwargs.is_some(), "{t:?}");
    }
    let sorts: Vec<&str> = d
        .reads
        .iter()
        .filter_map(|r| match r {
            ReadRequest::SortGet { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sorts.len(), 2, "{sorts:?}");
    let hmgets = d
        .reads
        .iter()
        .filter(|r| matches!(r, ReadRequest::HMGet { .. }))
        .count();
    assert_eq!(hmgets, 0);
}

/// A Redis that refuses `SORT_RO` (older than 7.0, an ACL): the jobs of the refused read are
/// read one by one, and so is every job from then on; nothing is lost.
#[test]
fn a_refused_sort_ro_falls_back_to_one_hmget_per_job() {
    let mut d = driver();
    d.redis.refuse_sort_ro = true;
    let now = d.now;
    let run = |d: &mut Driver<BullmqAdapter>, ids: &[String]| {
        for id in ids {
            bw::add(&mut d.redis, id, 1, 0, now);
        }
        for id in ids {
            assert_eq!(
                bw::take(&mut d.redis, WORKER, now).as_deref(),
                Some(id.as_str())
            );
            bw::finish(&mut d.redis, id, Ok("5"), now);
        }
        d.deliver_batch();
        for id in ids {
            let t = d.task(&task_id(id));
            assert_eq!(t.state, TaskState::Success, "{t:?}");
            assert_eq!(t.worker.as_deref(), Some(WORKER), "{t:?}");
            assert!(t.kwargs.is_some(), "{t:?}");
        }
    };
    let first: Vec<String> = (1..=5).map(|n| n.to_string()).collect();
    run(&mut d, &first);
    let sorts = |d: &Driver<BullmqAdapter>| {
        d.reads
            .iter()
            .filter(|r| matches!(r, ReadRequest::SortGet { .. }))
            .count()
    };
    assert_eq!(sorts(&d), 1, "asked once");
    let second: Vec<String> = (6..=10).map(|n| n.to_string()).collect();
    run(&mut d, &second);
    assert_eq!(sorts(&d), 1, "never asked again");
}

/// A job still queued after the deferral is read for its data; its end reads it again for its
/// worker, once.
#[test]
fn job_queued_past_the_deferral_shows_its_data_while_it_waits() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 1);
    assert_eq!(hash_reads(&d, &id), 0);
    past_deferred_reads(&mut d);
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Queued);
    assert!(t.kwargs.is_some(), "{t:?}");
    take(&mut d, WORKER);
    finish(&mut d, Ok("5"));
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.worker.as_deref(), Some(WORKER));
    assert_eq!(hash_reads(&d, &id), 2);
}

#[test]
fn job_failed_for_good_carries_its_reason() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 1);
    take(&mut d, WORKER);
    finish(&mut d, Err("boom x"));
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Failure);
    assert!(t.error.as_deref().unwrap_or_default().contains("boom x"));
}

/// `attempts: 2`, no backoff: the failed attempt goes back to `wait` (`waiting prev=active`),
/// the second attempt completes.
#[test]
fn retried_job_then_completed_counts_one_retry() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 2);
    take(&mut d, WORKER);
    step(&mut d, |r| bw::retry(r, JOB, "flaky first attempt"));
    assert_eq!(d.state(&id), TaskState::Retried);
    take(&mut d, WORKER);
    assert_eq!(d.state(&id), TaskState::Running);
    finish(&mut d, Ok("5"));
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}

/// `delay`: queued with its due time as `eta`, then promoted, run, completed.
#[test]
fn delayed_job_is_queued_with_its_eta() {
    let mut d = driver();
    let id = task_id(JOB);
    let now = d.now;
    step(&mut d, |r| bw::add(r, JOB, 1, 500, now));
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(
        t.eta.map(|e| e.timestamp_millis()),
        Some((now + Duration::milliseconds(500)).timestamp_millis())
    );
    d.advance(500);
    step(&mut d, |r| bw::promote(r, JOB));
    take(&mut d, WORKER);
    finish(&mut d, Ok("5"));
    assert_eq!(d.state(&id), TaskState::Success);
}

/// The worker dies: its lock expires (abandoned), the stalled checker moves the job back to
/// `wait`, another worker runs it to completion.
#[test]
fn job_whose_lock_expired_is_abandoned_then_run_again() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 1);
    take(&mut d, WORKER);
    d.advance(bw::LOCK_MS);
    d.deliver();
    assert_eq!(d.state(&id), TaskState::Abandoned);
    step(&mut d, |r| bw::move_stalled(r, JOB));
    assert_eq!(d.state(&id), TaskState::Abandoned);
    take(&mut d, "w2");
    past_deferred_reads(&mut d);
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.worker.as_deref(), Some("w2"));
    assert_eq!(t.retries, 0, "a stall is not an attempt");
    finish(&mut d, Ok("5"));
    assert_eq!(d.state(&id), TaskState::Success);
}

/// A live worker extends its lock: a long job is never abandoned.
#[test]
fn long_job_with_its_lock_extended_keeps_running() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 1);
    take(&mut d, WORKER);
    for _ in 0..8 {
        d.advance(bw::LOCK_MS / 2);
        step(&mut d, |r| bw::extend_lock(r, JOB));
    }
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Running);
}

/// Every notification lost: reconciliation reads the stream and settles the job.
#[test]
fn reconciliation_alone_reads_the_stream_and_settles() {
    let mut d = driver();
    let id = task_id(JOB);
    let now = d.now;
    bw::add(&mut d.redis, JOB, 1, 0, now);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Queued);
    bw::take(&mut d.redis, WORKER, now);
    bw::finish(&mut d.redis, JOB, Err("boom x"), now);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Failure);
}

/// A gap while the job runs; it completes unseen; reconciliation settles it.
#[test]
fn job_completed_during_a_gap_is_settled_after_it() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 1);
    take(&mut d, WORKER);
    d.gap();
    let now = d.now;
    bw::finish(&mut d.redis, JOB, Ok("5"), now);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Success);
}

/// `removeOnComplete`: the whole job runs and its hash is deleted before the loop reads
/// anything: recorded from the stream alone.
#[test]
fn job_removed_on_complete_before_any_read_is_recorded_from_the_stream() {
    let mut d = driver();
    let id = task_id(JOB);
    let now = d.now;
    bw::add(&mut d.redis, JOB, 1, 0, now);
    bw::take(&mut d.redis, WORKER, now);
    bw::finish(&mut d.redis, JOB, Ok("5"), now);
    d.redis.del(&id);
    d.deliver_batch();
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.name.as_deref(), Some("add"));
}

/// The events stream is trimmed past what was read while notifications were lost: the
/// reconciliation sees the gap in the stream and reads the job's hash.
#[test]
fn events_trimmed_while_unseen_are_recovered_from_the_job_hash() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 1);
    let now = d.now;
    bw::take(&mut d.redis, WORKER, now);
    bw::finish(&mut d.redis, JOB, Ok("5"), now);
    bw::add(&mut d.redis, "2", 1, 0, now);
    d.redis.xtrim("bull:q1:events", 1);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Success);
}

/// `attempts: 2` with a backoff: the failed attempt goes to `delayed` right after `active`
/// (a retry, its error the attempt's reason), is promoted when due, and completes.
#[test]
fn retried_with_backoff_then_completed() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 2);
    take(&mut d, WORKER);
    let now = d.now;
    step(&mut d, |r| {
        bw::retry_with_backoff(r, JOB, "flaky first attempt", 1_000, now)
    });
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Retried);
    assert_eq!(t.retries, 1);
    assert!(t
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("flaky first attempt"));
    d.advance(1_000);
    step(&mut d, |r| bw::promote(r, JOB));
    take(&mut d, WORKER);
    finish(&mut d, Ok("5"));
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}

/// A worker whose event loop stalled past its lock's life: the lock expires (abandoned), yet
/// the worker finishes the job: its completion settles the task.
#[test]
fn job_abandoned_by_its_lock_then_completed_by_its_worker_is_a_success() {
    let mut d = driver();
    let id = task_id(JOB);
    add(&mut d, 1);
    take(&mut d, WORKER);
    d.advance(bw::LOCK_MS);
    d.deliver();
    assert_eq!(d.state(&id), TaskState::Abandoned);
    finish(&mut d, Ok("5"));
    assert_eq!(d.state(&id), TaskState::Success);
}
