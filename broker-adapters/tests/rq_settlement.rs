//! How the RQ adapter settles each job, driven end to end against the in-memory Redis
//! (`support/`): RQ 3's real writes (`support/rq_worker.rs`) on captured job hashes and results
//! entries (`tests/fixtures/rq/`), the keyspace notifications they cause, and every read the
//! adapter asks for, answered from the fake's state.
//!
//! Settlement paths (the adapter's module docs): every state from the job hash (`queued`,
//! `started` with its worker, `finished`/`failed`/`stopped`), the outcome's details from the
//! newest results entry; `retried` from a job waiting again after an attempt (retries counted
//! from execution ids, `retries_left`); `abandoned` from an `rq:wip` member past its deadline
//! (and the shared sweep from worker heartbeats), then RQ's own cleanup; a job whose hash is
//! gone when reconciliation looks for it succeeded (`result_ttl`).

mod support;

use broker_adapters::rq::{RqAdapter, RqConfig};
use broker_adapters::{TaskEvent, TaskState};
use chrono::{DateTime, Utc};
use support::driver::Driver;
use support::fake_redis::FakeRedis;
use support::rq_worker::{self as rw, End};

const ID: &str = "6a0f5c2e-1b3d-4e7f-8a9b-0c1d2e3f4a5b";
const W: &str = "58bfc04e55154252a80fb0eacfaca8b3";
const EXEC1: &str = "bf2e51d89e3d42419689f4ad000e777f";
const EXEC2: &str = "a789a88f294842778fae09fe239d23c1";

fn driver() -> Driver<RqAdapter> {
    let mut d = Driver::new(RqAdapter::new(RqConfig::default()));
    let now = d.now;
    step(&mut d, |r| rw::heartbeat(r, W, now, now));
    d
}

/// One pipeline's writes, their notifications, then a little time.
fn step<T>(d: &mut Driver<RqAdapter>, write: impl FnOnce(&mut FakeRedis) -> T) -> T {
    let out = write(&mut d.redis);
    d.deliver();
    d.advance(5);
    out
}

fn enqueue(d: &mut Driver<RqAdapter>, retries_left: Option<u32>) {
    let now = d.now;
    step(d, |r| rw::enqueue(r, ID, now, retries_left));
}

/// Dequeued and started by `W` as execution `exec`; when it started.
fn start(d: &mut Driver<RqAdapter>, exec: &str) -> DateTime<Utc> {
    let now = d.now;
    let id = step(d, |r| rw::dequeue_and_start(r, W, exec, now));
    assert_eq!(id.as_deref(), Some(ID));
    now
}

fn end(d: &mut Driver<RqAdapter>, exec: &str, started: DateTime<Utc>, how: End) {
    let now = d.now;
    step(d, |r| rw::end(r, ID, W, exec, started, now, how));
}

/// One pipeline's writes, their notifications delivered as one batch of the ingest loop (as
/// a transaction's notifications mostly arrive), then a little time.
fn batch<T>(d: &mut Driver<RqAdapter>, write: impl FnOnce(&mut FakeRedis) -> T) -> T {
    let out = write(&mut d.redis);
    d.deliver_batch();
    d.advance(5);
    out
}

/// The reads of job `id`'s own keys so far: (hash reads, results reads).
fn job_reads(d: &Driver<RqAdapter>, id: &str) -> (usize, usize) {
    let hash = format!("rq:job:{id}");
    let results = format!("rq:results:{id}");
    let n = |key: &str| d.reads.iter().filter(|r| r.key() == key).count();
    (n(&hash), n(&results))
}

/// Each pipeline's notifications in one batch: the hash is read once (at the enqueue; a
/// stopped job's once more at its end), the start is told by the execution and the worker key of
/// its transaction, the end by the results entry (read with the batch's other entries): two
/// reads per success, all the same states, worker, value and times.
#[test]
fn batched_lifecycle_reads_the_hash_once_and_the_results_once() {
    for how in [End::Finished, End::Failed, End::Stopped] {
        let mut d = driver();
        let now = d.now;
        batch(&mut d, |r| rw::enqueue(r, ID, now, None));
        assert_eq!(d.state(ID), TaskState::Queued);
        assert_eq!(d.task(ID).name.as_deref(), Some("rq_app.add"));
        let now = d.now;
        batch(&mut d, |r| rw::dequeue_and_start(r, W, EXEC1, now));
        assert_eq!(d.state(ID), TaskState::Running);
        assert_eq!(d.task(ID).worker.as_deref(), Some(W));
        assert_eq!(job_reads(&d, ID), (1, 0), "{:?}", d.reads);
        d.advance(1_000);
        let ended = d.now;
        batch(&mut d, |r| rw::end(r, ID, W, EXEC1, now, ended, how));
        // A stopped job's hash is read once more: its status tells it from a failure (RQ
        // writes both results entries with type 2; a stopped one's `exc_string` is no
        // traceback).
        let hash_reads = if how == End::Stopped { 2 } else { 1 };
        assert_eq!(job_reads(&d, ID), (hash_reads, 1), "{how:?}: {:?}", d.reads);
        let t = d.task(ID);
        assert_eq!(t.worker.as_deref(), Some(W));
        assert_eq!(t.retries, 0);
        match how {
            End::Finished => {
                assert_eq!(t.state, TaskState::Success);
                assert_eq!(t.result, Some(serde_json::json!(5)));
            }
            End::Failed => {
                assert_eq!(t.state, TaskState::Failure);
                assert!(t
                    .traceback
                    .as_deref()
                    .unwrap_or_default()
                    .contains("Traceback"));
            }
            End::Stopped => {
                assert_eq!(t.state, TaskState::Failure);
                assert_eq!(t.error.as_deref(), Some("stopped"));
            }
        }
        let mut firsts = Vec::new();
        for e in d.events_of(ID) {
            if !firsts.contains(&e) {
                firsts.push(e);
            }
        }
        assert_eq!(
            firsts[..2],
            [TaskEvent::Queued, TaskEvent::Running],
            "{how:?}"
        );
    }
}

/// A batch that holds an attempt's end without a results entry (a `Retry`) reads the hash:
/// the retry and then the next attempt are counted as when every notification is read.
#[test]
fn batched_retry_reads_the_hash_and_counts_the_retry() {
    let mut d = driver();
    let now = d.now;
    batch(&mut d, |r| rw::enqueue(r, ID, now, Some(2)));
    let now = d.now;
    batch(&mut d, |r| rw::dequeue_and_start(r, W, EXEC1, now));
    let now = d.now;
    batch(&mut d, |r| rw::retry(r, ID, W, EXEC1, 1, now));
    assert_eq!(d.state(ID), TaskState::Retried);
    assert_eq!(d.task(ID).retries, 1);
    assert_eq!(job_reads(&d, ID), (2, 0), "{:?}", d.reads);
    // The requeue and the second start in one batch: the attempt's end sends to the hash.
    let now = d.now;
    let started = batch(&mut d, |r| {
        rw::dequeue_and_start(r, W, EXEC2, now);
        now
    });
    assert_eq!(d.state(ID), TaskState::Running);
    assert_eq!(d.task(ID).retries, 1);
    let ended = d.now;
    batch(&mut d, |r| {
        rw::end(r, ID, W, EXEC2, started, ended, End::Finished)
    });
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
    assert_eq!(job_reads(&d, ID), (2, 1), "{:?}", d.reads);
}

/// Without the worker key in the start's transaction, the hash is read for the worker.
#[test]
fn batched_start_without_its_worker_key_reads_the_hash() {
    let mut d = driver();
    let now = d.now;
    batch(&mut d, |r| rw::enqueue(r, ID, now, None));
    let now = d.now;
    batch(&mut d, |r| {
        rw::dequeue_and_start(r, W, EXEC1, now);
        let kept = r
            .take_events()
            .into_iter()
            .filter(|e| e.key != format!("rq:worker:{W}:executions"))
            .collect();
        r.put_events(kept);
    });
    assert_eq!(d.state(ID), TaskState::Running);
    assert_eq!(d.task(ID).worker.as_deref(), Some(W));
    assert_eq!(job_reads(&d, ID), (2, 0), "{:?}", d.reads);
}

#[test]
fn job_queued_started_on_its_worker_then_finished_with_its_return_value() {
    let mut d = driver();
    enqueue(&mut d, None);
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.name.as_deref(), Some("rq_app.add"));
    assert_eq!(t.queue.as_deref(), Some(rw::QUEUE));
    let started = start(&mut d, EXEC1);
    assert_eq!(d.state(ID), TaskState::Running);
    assert_eq!(d.task(ID).worker.as_deref(), Some(W));
    d.advance(1_000);
    end(&mut d, EXEC1, started, End::Finished);
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 0);
    assert_eq!(t.worker.as_deref(), Some(W));
    assert_eq!(t.result, Some(serde_json::json!(5)));
    // The job hash read on the status `hset` and the results entry (its `xadd` comes last)
    // settle it (the start only fills what is unknown).
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
fn failed_job_has_the_traceback_of_its_results_entry() {
    let mut d = driver();
    enqueue(&mut d, None);
    let started = start(&mut d, EXEC1);
    end(&mut d, EXEC1, started, End::Failed);
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Failure);
    assert!(t
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("ValueError"));
    assert!(t
        .traceback
        .as_deref()
        .unwrap_or_default()
        .contains("Traceback"));
}

#[test]
fn stopped_job_is_a_failure_saying_stopped() {
    let mut d = driver();
    enqueue(&mut d, None);
    let started = start(&mut d, EXEC1);
    end(&mut d, EXEC1, started, End::Stopped);
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Failure);
    assert_eq!(t.error.as_deref(), Some("stopped"));
}

/// `Retry(max=2)`: the first attempt fails, the job waits again (`retried`), the second
/// attempt succeeds: one retry.
#[test]
fn retried_job_counts_its_attempts() {
    let mut d = driver();
    enqueue(&mut d, Some(2));
    start(&mut d, EXEC1);
    let now = d.now;
    step(&mut d, |r| rw::retry(r, ID, W, EXEC1, 1, now));
    assert_eq!(d.state(ID), TaskState::Retried);
    assert_eq!(d.task(ID).retries, 1);
    let started = start(&mut d, EXEC2);
    assert_eq!(d.state(ID), TaskState::Running);
    end(&mut d, EXEC2, started, End::Finished);
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}

/// Both attempts run between two reads of the job hash (a loop that lagged behind): the
/// execution hashes' notifications still tell two attempts apart.
#[test]
fn retry_between_two_reads_is_counted_from_the_executions() {
    let mut d = driver();
    enqueue(&mut d, Some(2));
    let t0 = d.now;
    rw::dequeue_and_start(&mut d.redis, W, EXEC1, t0);
    rw::retry(&mut d.redis, ID, W, EXEC1, 1, t0);
    rw::dequeue_and_start(&mut d.redis, W, EXEC2, t0);
    rw::end(&mut d.redis, ID, W, EXEC2, t0, t0, End::Finished);
    d.deliver_batch();
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}

/// The worker is SIGKILLed while running the job: its `rq:wip` member's deadline passes (plus
/// the skew margin) and reconciliation abandons the job; RQ's own cleanup then fails it.
#[test]
fn job_of_a_killed_worker_is_abandoned_then_failed_by_rq_cleanup() {
    let mut d = driver();
    enqueue(&mut d, None);
    start(&mut d, EXEC1);
    d.advance(60_000);
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Running, "its deadline is not past");
    d.advance(61_000);
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Abandoned);
    let now = d.now;
    step(&mut d, |r| rw::cleanup_abandoned(r, ID, EXEC1, now));
    assert_eq!(d.state(ID), TaskState::Failure);
}

/// The same death seen by the shared sweep: a busy worker's heartbeat is due 30 s after the
/// last (its 90 s TTL less 60 s), and sampling reads it; once the key has expired nothing
/// renews it, and `--abandon-after` (30 s here) counts from that due time.
#[test]
fn job_of_a_silent_worker_is_abandoned_by_the_sweep() {
    let mut d = driver();
    enqueue(&mut d, None);
    start(&mut d, EXEC1);
    d.advance(50_000);
    d.sample();
    d.sweep(30_000);
    assert_eq!(d.state(ID), TaskState::Running, "due 30 s in, silent 20 s");
    d.advance((rw::WORKER_TTL_S - 50) * 1000 + 5_000);
    d.deliver();
    assert!(!d.redis.exists(&format!("rq:worker:{W}")), "expired");
    d.sample();
    d.sweep(30_000);
    assert_eq!(d.state(ID), TaskState::Abandoned);
}

/// A live worker's long job is never abandoned: each heartbeat renews its TTL.
#[test]
fn long_job_of_a_live_worker_is_not_abandoned() {
    let mut d = driver();
    let birth = d.now;
    enqueue(&mut d, None);
    start(&mut d, EXEC1);
    for _ in 0..10 {
        d.advance(30_000);
        let now = d.now;
        step(&mut d, |r| rw::heartbeat(r, W, birth, now));
        d.sweep(30_000);
    }
    assert_eq!(d.state(ID), TaskState::Running);
}

/// Every notification lost: reconciliation finds the queue (`rq:queues`), the job in its
/// list, then in the finished registry, and its outcome.
#[test]
fn reconciliation_alone_finds_the_job_and_its_outcome() {
    let mut d = driver();
    let now = d.now;
    rw::enqueue(&mut d.redis, ID, now, None);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Queued);
    rw::dequeue_and_start(&mut d.redis, W, EXEC1, now);
    rw::end(&mut d.redis, ID, W, EXEC1, now, now, End::Failed);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Failure);
    assert!(d.task(ID).traceback.is_some());
}

/// A gap while the job runs; it ends unseen; the reconciliation after it settles it.
#[test]
fn job_ended_during_a_gap_is_settled_after_it() {
    let mut d = driver();
    enqueue(&mut d, None);
    let started = start(&mut d, EXEC1);
    d.gap();
    let now = d.now;
    rw::end(&mut d.redis, ID, W, EXEC1, started, now, End::Finished);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Success);
}

/// The enqueue's reads are answered after an idle worker ran the job: the first read of the
/// hash finds it finished; the notifications of the run come after.
#[test]
fn read_overtaken_by_the_whole_run_still_settles_once() {
    let mut d = driver();
    let now = d.now;
    rw::enqueue(&mut d.redis, ID, now, None);
    d.deliver_outrun(|r| {
        rw::dequeue_and_start(r, W, EXEC1, now);
        rw::end(r, ID, W, EXEC1, now, now, End::Finished);
    });
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 0);
    assert_eq!(t.worker.as_deref(), Some(W));
}

/// The job succeeded unseen and its hash expired (`result_ttl`) before reconciliation read it:
/// a job hash gone is a success.
#[test]
fn job_whose_hash_expired_before_it_was_read_is_a_success() {
    let mut d = driver();
    enqueue(&mut d, None);
    let started = start(&mut d, EXEC1);
    let now = d.now;
    rw::end(&mut d.redis, ID, W, EXEC1, started, now, End::Finished);
    d.lose_notifications();
    d.advance(rw::RESULT_TTL_S * 1000 + 1);
    assert!(!d.redis.exists(&rw::job_key(ID)));
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Success);
}

/// `enqueue_in(600 s)`: queued (status `scheduled`) with its due time from the `scheduled`
/// registry as `eta`; the scheduler enqueues it when due; it runs and finishes.
#[test]
fn scheduled_job_is_queued_with_its_eta_then_runs() {
    let mut d = driver();
    let now = d.now;
    let due = now + chrono::Duration::seconds(600);
    step(&mut d, |r| rw::enqueue_at(r, ID, now, due));
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.eta.map(|e| e.timestamp()), Some(due.timestamp()));
    d.advance(600_000);
    let now = d.now;
    step(&mut d, |r| rw::enqueue_scheduled(r, ID, now));
    assert_eq!(d.state(ID), TaskState::Queued);
    let started = start(&mut d, EXEC1);
    end(&mut d, EXEC1, started, End::Finished);
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 0);
}

/// A `Retry(max=1)` job of a killed worker: abandoned at its `rq:wip` deadline; RQ's cleanup
/// then retries it (back to `queued`, one retry less); it runs again and finishes.
#[test]
fn abandoned_job_retried_by_rq_cleanup_runs_again() {
    let mut d = driver();
    enqueue(&mut d, Some(1));
    start(&mut d, EXEC1);
    d.advance(121_000);
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Abandoned);
    let now = d.now;
    step(&mut d, |r| {
        r.zrem(&format!("rq:wip:{}", rw::QUEUE), &format!("{ID}:{EXEC1}"));
        rw::retry(r, ID, W, EXEC1, 0, now);
    });
    assert_eq!(d.state(ID), TaskState::Retried);
    let started = start(&mut d, EXEC2);
    assert_eq!(d.state(ID), TaskState::Running);
    end(&mut d, EXEC2, started, End::Finished);
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}

/// The job hash reads that went out on their own (`HMGET`) and as `SORT_RO`s of a queue or
/// registry, so far.
fn hash_read_commands(d: &Driver<RqAdapter>) -> (usize, Vec<String>) {
    use broker_adapters::ReadRequest;
    let hmgets = d
        .reads
        .iter()
        .filter(|r| matches!(r, ReadRequest::HMGet { key, .. } if key.starts_with("rq:job:")))
        .count();
    let sorts = d
        .reads
        .iter()
        .filter_map(|r| match r {
            ReadRequest::SortGet { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    (hmgets, sorts)
}

/// What a user sees of a task, to compare two runs.
fn seen(d: &Driver<RqAdapter>, id: &str) -> String {
    let t = d.task(id);
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {}",
        t.state,
        t.name,
        t.queue,
        t.args,
        t.kwargs,
        t.worker,
        t.result,
        t.error,
        t.traceback.as_ref().map(|tb| tb.len()),
        t.enqueued_at,
        t.started_at,
        t.finished_at,
        t.runtime_ms,
        t.retries
    )
}

/// Jobs enqueued in one batch are read with one `SORT_RO` of their queue's tail, jobs that
/// started and ended within one batch with one `SORT_RO` of the finished (or failed) registry,
/// instead of one `HMGET` each; every task then shows what it shows when Redis refuses
/// `SORT_RO` (one `HMGET` per job, as before): name, arguments, queue, worker, times, result,
/// traceback.
#[test]
fn jobs_of_one_batch_are_read_with_one_sort_of_their_list_or_registry() {
    const N: usize = 5;
    let run = |refuse: bool| {
        let mut d = driver();
        d.redis.refuse_sort_ro = refuse;
        let queued: Vec<String> = (0..N).map(|i| format!("queued-{i}")).collect();
        let fast: Vec<String> = (0..N).map(|i| format!("fast-{i}")).collect();
        // Enqueued, started and ended (a success, a failure...) within one batch.
        let started = d.now;
        batch(&mut d, |r| {
            for (i, id) in fast.iter().enumerate() {
                rw::enqueue(r, id, started, None);
                let exec = format!("e{i:031}");
                assert_eq!(
                    rw::dequeue_and_start(r, W, &exec, started).as_deref(),
                    Some(id.as_str())
                );
                let how = if i % 2 == 0 {
                    End::Finished
                } else {
                    End::Failed
                };
                rw::end(r, id, W, &exec, started, started, how);
            }
        });
        let after_fast = hash_read_commands(&d);
        let now = d.now;
        batch(&mut d, |r| {
            for id in &queued {
                rw::enqueue(r, id, now, None);
            }
        });
        for id in &queued {
            assert_eq!(d.state(id), TaskState::Queued);
        }
        (d, queued, fast, after_fast)
    };
    let (sorted, queued, fast, after_fast) = run(false);
    let registries = ["rq:failed:default", "rq:finished:default"].map(String::from);
    assert_eq!(after_fast, (0, registries.to_vec()), "{:?}", sorted.reads);
    let (hmgets, sorts) = hash_read_commands(&sorted);
    assert_eq!(hmgets, 0, "{:?}", sorted.reads);
    assert_eq!(
        sorts,
        [
            "rq:failed:default",
            "rq:finished:default",
            "rq:queue:default"
        ],
        "{:?}",
        sorted.reads
    );
    let (plain, ..) = run(true);
    let (hmgets, _) = hash_read_commands(&plain);
    assert_eq!(hmgets, 2 * N, "{:?}", plain.reads);
    for id in queued.iter().chain(&fast) {
        assert_eq!(seen(&sorted, id), seen(&plain, id), "{id}");
    }
    assert_eq!(sorted.state("fast-0"), TaskState::Success);
    assert_eq!(sorted.state("fast-1"), TaskState::Failure);
    assert_eq!(sorted.task("fast-1").name.as_deref(), Some("rq_app.add"));
    assert_eq!(sorted.task("fast-0").worker.as_deref(), Some(W));
}

/// A `result_ttl=0` job read while queued, then started and ended (its hash deleted) within
/// one batch: running on its worker from the attempt's notifications (the hash read finds it
/// gone), then a success once reconciliation finds the hash gone.
#[test]
fn result_ttl_zero_job_started_and_ended_within_one_batch_shows_its_worker() {
    let mut d = driver();
    let now = d.now;
    batch(&mut d, |r| rw::enqueue(r, ID, now, None));
    assert_eq!(d.state(ID), TaskState::Queued);
    let started = d.now;
    batch(&mut d, |r| {
        assert_eq!(
            rw::dequeue_and_start(r, W, EXEC1, started).as_deref(),
            Some(ID)
        );
        rw::end_discarded(r, ID, W, EXEC1);
    });
    assert_eq!(d.state(ID), TaskState::Running);
    assert_eq!(d.task(ID).worker.as_deref(), Some(W));
    assert_eq!(d.task(ID).started_at, Some(started));
    d.advance(1_000);
    d.reconcile();
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.worker.as_deref(), Some(W));
    assert_eq!(t.name.as_deref(), Some("rq_app.add"));
}
