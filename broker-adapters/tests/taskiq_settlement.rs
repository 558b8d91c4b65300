//! How the taskiq adapter settles each task, driven end to end against the in-memory Redis
//! (`support/`): taskiq-redis's real writes (`support/taskiq_worker.rs`) on captured payloads
//! (`tests/fixtures/taskiq/`), the keyspace notifications they cause, and every read the adapter
//! asks for, answered from the fake's state.
//!
//! Settlement paths (the adapter's module docs): a stream entry is `queued` when read by
//! `XRANGE`, `running` while a group's PEL holds it (worker = consumer), settled by its result
//! record (read on the `set` notification, or after the acknowledgement), or assumed a success
//! when acknowledged and no result backend was ever seen; a claim by another consumer moves it
//! on (the sweep's `abandoned` before it). A list item is `queued` while listed, `running` once
//! popped, settled by its result. A retry is a copy with a higher `_retries` label.

mod support;

use broker_adapters::taskiq::{TaskiqAdapter, TaskiqConfig};
use broker_adapters::{TaskEvent, TaskState};
use support::driver::Driver;
use support::fake_redis::FakeRedis;
use support::taskiq_worker::{self as tq, fixture, task_id, QUEUE};

const C1: &str = "0d6f3c1e9a8b4f2d8e7c6b5a4d3c2b1a";
const C2: &str = "7a1b2c3d4e5f40718293a4b5c6d7e8f9";

/// Abandon after this much silence (the sweep's setting in these specs).
const ABANDON_AFTER_MS: i64 = 30_000;

fn driver() -> Driver<TaskiqAdapter> {
    driver_with(TaskiqConfig::default())
}

fn driver_with(config: TaskiqConfig) -> Driver<TaskiqAdapter> {
    let mut d = Driver::new(TaskiqAdapter::new(config));
    step(&mut d, |r| tq::startup(r, QUEUE));
    d
}

/// One command's (or `MULTI`'s) writes, their notifications, then a little time.
fn step<T>(d: &mut Driver<TaskiqAdapter>, write: impl FnOnce(&mut FakeRedis) -> T) -> T {
    let out = write(&mut d.redis);
    d.deliver();
    d.advance(5);
    out
}

/// A consumer already known to the group (a first `XREADGROUP` raises
/// `xgroup-createconsumer`; later ones raise nothing): it read once from an empty stream.
fn consumer_up(d: &mut Driver<TaskiqAdapter>, consumer: &str) {
    step(d, |r| tq::read(r, QUEUE, consumer));
}

struct Names {
    message: &'static str,
    result: &'static str,
}

const ADD: Names = Names {
    message: "stream_json_pickle_message_add.bin",
    result: "stream_json_pickle_result_add.bin",
};
const FAIL: Names = Names {
    message: "stream_json_pickle_message_fail.bin",
    result: "stream_json_pickle_result_fail.bin",
};

#[test]
fn stream_task_queued_running_on_its_consumer_then_succeeded() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id(ADD.message);
    let entry = step(&mut d, |r| tq::kiq(r, QUEUE, &fixture(ADD.message)));
    assert_eq!(d.state(&id), TaskState::Queued);
    assert_eq!(d.task(&id).name.as_deref(), Some("taskiq_app:add"));
    assert_eq!(d.task(&id).queue.as_deref(), Some(QUEUE));
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    // XREADGROUP raises no event: the PEL is read at the next reconciliation.
    assert_eq!(d.state(&id), TaskState::Queued);
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Running);
    assert_eq!(d.task(&id).worker.as_deref(), Some(C1));
    d.advance(40);
    step(&mut d, |r| tq::save_result(r, &id, &fixture(ADD.result)));
    step(&mut d, |r| tq::ack(r, QUEUE, &entry));
    d.reconcile();
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.worker.as_deref(), Some(C1));
    assert_eq!(t.retries, 0);
    assert_eq!(
        d.events_of(&id),
        [TaskEvent::Queued, TaskEvent::Running, TaskEvent::Succeeded],
        "the acknowledgement after the result read reads nothing more"
    );
}

#[test]
fn stream_task_failure_carries_its_error() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id(FAIL.message);
    let entry = step(&mut d, |r| tq::kiq(r, QUEUE, &fixture(FAIL.message)));
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    step(&mut d, |r| tq::save_result(r, &id, &fixture(FAIL.result)));
    step(&mut d, |r| tq::ack(r, QUEUE, &entry));
    d.reconcile();
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Failure);
    let error = t.error.as_deref().unwrap_or_default();
    assert!(error.contains("CardDeclined"), "{error}");
}

/// A driver where consumer C1 has read the flaky task (first attempt), shown running: the
/// driver, the task id and the stream entry id of its message.
fn flaky_task_running() -> (Driver<TaskiqAdapter>, String, String) {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id("stream_json_pickle_message_flaky.bin");
    let first = step(&mut d, |r| {
        tq::kiq(r, QUEUE, &fixture("stream_json_pickle_message_flaky.bin"))
    });
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Running);
    (d, id, first)
}

/// SimpleRetryMiddleware: the copy (`_retries` 1) is added before the failed attempt's result
/// and acknowledgement; the copy then runs and succeeds.
#[test]
fn stream_retry_copy_is_the_next_attempt_and_its_result_settles() {
    let (mut d, id, first) = flaky_task_running();
    let copy = step(&mut d, |r| {
        tq::kiq(
            r,
            QUEUE,
            &fixture("stream_json_pickle_message_flaky_retry1.bin"),
        )
    });
    assert_eq!(d.state(&id), TaskState::Retried);
    // The failed attempt's record (labels without `_retries`: attempt 0) comes after the copy.
    step(&mut d, |r| tq::save_result(r, &id, &fixture(FAIL.result)));
    step(&mut d, |r| tq::ack(r, QUEUE, &first));
    d.reconcile();
    assert_ne!(
        d.state(&id),
        TaskState::Failure,
        "a stale attempt's failure"
    );
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Running);
    step(&mut d, |r| {
        tq::save_result(r, &id, &fixture("stream_json_pickle_result_flaky.bin"))
    });
    step(&mut d, |r| tq::ack(r, QUEUE, &copy));
    d.reconcile();
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}

/// A worker outruns the loop: the whole lifecycle is written before any read is answered.
#[test]
fn stream_task_run_between_two_reads_still_ends_with_its_outcome() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id(ADD.message);
    let entry = tq::kiq(&mut d.redis, QUEUE, &fixture(ADD.message));
    tq::read(&mut d.redis, QUEUE, C1);
    tq::save_result(&mut d.redis, &id, &fixture(ADD.result));
    tq::ack(&mut d.redis, QUEUE, &entry);
    d.deliver_batch();
    assert_eq!(d.state(&id), TaskState::Success);
    assert_eq!(d.events_of(&id).first(), Some(&TaskEvent::Queued));
}

/// The `xadd` notification's reads are answered after the worker took, ran and acknowledged
/// the task; the result's `set` notification comes after.
#[test]
fn stream_reply_overtaken_by_the_worker_then_its_result() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id(ADD.message);
    tq::kiq(&mut d.redis, QUEUE, &fixture(ADD.message));
    d.deliver_outrun(|r| {
        let taken = tq::read(r, QUEUE, C1);
        tq::save_result(r, &id, &fixture(ADD.result));
        tq::ack(r, QUEUE, &taken[0]);
    });
    assert_eq!(d.state(&id), TaskState::Success);
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Success);
}

/// Every notification lost (a dropped subscription): reconciliation alone finds the task and
/// its outcome.
#[test]
fn stream_task_settled_by_reconciliation_alone() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id(FAIL.message);
    let entry = tq::kiq(&mut d.redis, QUEUE, &fixture(FAIL.message));
    tq::read(&mut d.redis, QUEUE, C1);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Running);
    assert_eq!(d.task(&id).worker.as_deref(), Some(C1));
    tq::save_result(&mut d.redis, &id, &fixture(FAIL.result));
    tq::ack(&mut d.redis, QUEUE, &entry);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Failure);
}

/// A connection gap while the task runs; it ends unseen; reconciliation after the gap settles
/// it (the stream is read again from its newest entries).
#[test]
fn stream_task_ended_during_a_gap_is_settled_after_it() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id(ADD.message);
    let entry = step(&mut d, |r| tq::kiq(r, QUEUE, &fixture(ADD.message)));
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Running);
    d.gap();
    tq::save_result(&mut d.redis, &id, &fixture(ADD.result));
    tq::ack(&mut d.redis, QUEUE, &entry);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Success);
    assert_eq!(d.task(&id).worker.as_deref(), Some(C1));
}

/// The entry is trimmed away (`XADD ... MAXLEN`) before the adapter reads it: the task is
/// known from its result record alone.
#[test]
fn stream_entry_trimmed_before_it_is_read_is_known_by_its_result() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id(ADD.message);
    tq::kiq(&mut d.redis, QUEUE, &fixture(ADD.message));
    d.redis
        .xadd_maxlen(QUEUE, 1, "*", &[("data", &fixture(FAIL.message))]);
    d.deliver();
    assert!(
        d.observations_of(&id).is_empty(),
        "never read: {:?}",
        d.events_of(&id)
    );
    assert_eq!(d.state(&task_id(FAIL.message)), TaskState::Queued);
    step(&mut d, |r| tq::save_result(r, &id, &fixture(ADD.result)));
    assert_eq!(d.state(&id), TaskState::Success);
}

/// Without a result backend a stream task's acknowledgement is all there is: after a few empty
/// reads of its result key it is assumed a success, with a detail that says so.
#[test]
fn stream_acknowledged_without_result_backend_is_assumed_success() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id(ADD.message);
    let entry = step(&mut d, |r| tq::kiq(r, QUEUE, &fixture(ADD.message)));
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    step(&mut d, |r| tq::ack(r, QUEUE, &entry));
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Running, "taken, no result yet");
    d.reconcile();
    d.reconcile();
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    let last = d.observations_of(&id).last().unwrap().detail.clone();
    assert!(last.unwrap_or_default().contains("assumed"));
}

/// A result backend under `prefix_str="res"` (msgpack records).
#[test]
fn stream_results_under_a_prefix() {
    let mut d = driver_with(TaskiqConfig {
        result_prefixes: vec!["res".into()],
        ..TaskiqConfig::default()
    });
    consumer_up(&mut d, C1);
    let id = task_id("stream_json_msgpack_message_add.bin");
    let entry = step(&mut d, |r| {
        tq::kiq(r, QUEUE, &fixture("stream_json_msgpack_message_add.bin"))
    });
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    step(&mut d, |r| {
        tq::save_result(
            r,
            &format!("res:{id}"),
            &fixture("stream_json_msgpack_result_add.bin"),
        )
    });
    step(&mut d, |r| tq::ack(r, QUEUE, &entry));
    assert_eq!(d.state(&id), TaskState::Success);
}

/// The consumer running a task falls silent: the sweep abandons the task; ten minutes on,
/// another consumer's `XAUTOCLAIM` takes it (delivery 2): it runs again, on that consumer,
/// and is not abandoned for that consumer being new; then it succeeds.
#[test]
fn stream_task_of_a_silent_consumer_is_abandoned_then_claimed_and_runs_on() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    let id = task_id(ADD.message);
    let entry = step(&mut d, |r| tq::kiq(r, QUEUE, &fixture(ADD.message)));
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    d.reconcile();
    assert_eq!(d.task(&id).worker.as_deref(), Some(C1));
    d.advance(ABANDON_AFTER_MS + 1_000);
    d.reconcile();
    d.sweep(ABANDON_AFTER_MS);
    assert_eq!(d.state(&id), TaskState::Abandoned);
    d.advance(tq::IDLE_TIMEOUT_MS);
    let claimed = step(&mut d, |r| tq::autoclaim(r, QUEUE, C2));
    assert_eq!(claimed, std::slice::from_ref(&entry));
    d.reconcile();
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.worker.as_deref(), Some(C2));
    let claim = d.observations_of(&id).last().unwrap().detail.clone();
    assert!(claim.unwrap_or_default().contains("delivery 2"));
    d.advance(100);
    d.reconcile();
    d.sweep(ABANDON_AFTER_MS);
    assert_eq!(
        d.state(&id),
        TaskState::Running,
        "the claiming consumer is alive: {:#?}",
        d.observations_of(&id).last()
    );
    step(&mut d, |r| tq::save_result(r, &id, &fixture(ADD.result)));
    step(&mut d, |r| tq::ack(r, QUEUE, &entry));
    assert_eq!(d.state(&id), TaskState::Success);
    assert_eq!(d.task(&id).worker.as_deref(), Some(C2));
}

/// A consumer busy with a long task reads nothing for longer than the abandon delay, yet
/// stays in the group: its idle time alone makes it silent (taskiq-redis has no heartbeat).
#[test]
fn stream_consumers_heartbeat_by_their_idle_time() {
    let mut d = driver();
    consumer_up(&mut d, C1);
    d.advance(2_000);
    d.reconcile();
    let w = d
        .workers()
        .into_iter()
        .find(|w| w.id == C1)
        .expect("the consumer is a worker");
    assert!(
        (d.now - w.last_seen).num_milliseconds() >= 2_000,
        "dated by its idle time: {w:?}"
    );
}

const LIST_MESSAGE: &str = "list_json_pickle_message_add.bin";

/// `ListQueueBroker`: listed (`queued`), popped (`running`, no worker: a list has no
/// acknowledgement), result (`success`).
#[test]
fn list_task_queued_taken_then_succeeded() {
    let mut d = list_driver();
    let id = task_id(LIST_MESSAGE);
    step(&mut d, |r| tq::lpush(r, "tasks", &fixture(LIST_MESSAGE)));
    assert_eq!(d.state(&id), TaskState::Queued);
    assert_eq!(d.task(&id).queue.as_deref(), Some("tasks"));
    step(&mut d, |r| tq::brpop(r, "tasks"));
    assert_eq!(d.state(&id), TaskState::Running);
    assert_eq!(d.task(&id).worker, None);
    step(&mut d, |r| {
        tq::save_result(r, &id, &fixture("list_json_pickle_result_add.bin"))
    });
    assert_eq!(d.state(&id), TaskState::Success);
    // The pop's `running`, and the empty read of the result key right after it says so again.
    let mut events = d.events_of(&id);
    events.dedup();
    assert_eq!(
        events,
        [TaskEvent::Queued, TaskEvent::Running, TaskEvent::Succeeded]
    );
}

fn list_driver() -> Driver<TaskiqAdapter> {
    Driver::new(TaskiqAdapter::new(TaskiqConfig {
        queues: vec!["tasks".into()],
        ..TaskiqConfig::default()
    }))
}

/// The pop and the result while notifications were lost: reconciliation sees the item gone
/// (taken) and reads its result.
#[test]
fn list_task_taken_and_finished_unseen_is_settled_by_reconciliation() {
    let mut d = list_driver();
    let id = task_id(LIST_MESSAGE);
    step(&mut d, |r| tq::lpush(r, "tasks", &fixture(LIST_MESSAGE)));
    tq::brpop(&mut d.redis, "tasks");
    tq::save_result(
        &mut d.redis,
        &id,
        &fixture("list_json_pickle_result_fail.bin"),
    );
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Failure);
}

/// A list task runs with no worker: the sweep never abandons it, however long it runs.
#[test]
fn list_task_is_never_abandoned() {
    let mut d = list_driver();
    let id = task_id(LIST_MESSAGE);
    step(&mut d, |r| tq::lpush(r, "tasks", &fixture(LIST_MESSAGE)));
    step(&mut d, |r| tq::brpop(r, "tasks"));
    d.advance(10 * ABANDON_AFTER_MS);
    d.reconcile();
    d.sweep(ABANDON_AFTER_MS);
    assert_eq!(d.state(&id), TaskState::Running);
}

/// Pushed and popped before the loop read the list: never seen waiting; its result still
/// tells its outcome.
#[test]
fn list_task_popped_before_it_was_read_is_known_by_its_result() {
    let mut d = list_driver();
    let id = task_id(LIST_MESSAGE);
    tq::lpush(&mut d.redis, "tasks", &fixture(LIST_MESSAGE));
    tq::brpop(&mut d.redis, "tasks");
    d.deliver_batch();
    step(&mut d, |r| {
        tq::save_result(r, &id, &fixture("list_json_pickle_result_add.bin"))
    });
    assert_eq!(d.state(&id), TaskState::Success);
}

/// Two consumer groups on one stream (each gets every entry): the task is running while
/// either holds it, and settled once both have acknowledged it.
#[test]
fn stream_entry_read_by_two_groups_settles_when_both_acknowledged() {
    let mut d = driver();
    step(&mut d, |r| r.xgroup_create(QUEUE, "audit", "$", true));
    consumer_up(&mut d, C1);
    step(&mut d, |r| r.xreadgroup(QUEUE, "audit", C2, 100));
    let id = task_id(ADD.message);
    let entry = step(&mut d, |r| tq::kiq(r, QUEUE, &fixture(ADD.message)));
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    step(&mut d, |r| r.xreadgroup(QUEUE, "audit", C2, 100));
    step(&mut d, |r| tq::ack(r, QUEUE, &entry));
    d.reconcile();
    assert_eq!(d.state(&id), TaskState::Running, "audit still holds it");
    step(&mut d, |r| r.xack(QUEUE, "audit", &[&entry]));
    d.reconcile();
    d.reconcile();
    d.reconcile();
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success, "assumed: no result backend");
}

/// The place of `event` (of attempt `attempt`) among a task's observations.
fn position(d: &Driver<TaskiqAdapter>, id: &str, event: TaskEvent, attempt: u32) -> Option<usize> {
    d.observations_of(id)
        .iter()
        .position(|o| o.event == event && o.attempt == Some(attempt))
}

/// A worker writes between two reads of one pipeline: the stream's `XRANGE` ran before the
/// retry's copy was added, the result read after the copy ran and succeeded. The success of
/// attempt 1 goes out after the copy is read (`retried`), not before it (which would leave
/// the copy behind a final state, the retry uncounted).
#[test]
fn stream_result_read_before_the_retry_copy_waits_for_it() {
    let (mut d, id, first) = flaky_task_running();
    d.reconcile_interleaved(1, |r| {
        let copy = tq::kiq(
            r,
            QUEUE,
            &fixture("stream_json_pickle_message_flaky_retry1.bin"),
        );
        tq::save_result(r, &id, &fixture(FAIL.result));
        tq::ack(r, QUEUE, &first);
        tq::read(r, QUEUE, C1);
        tq::save_result(r, &id, &fixture("stream_json_pickle_result_flaky.bin"));
        tq::ack(r, QUEUE, &copy);
    });
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
    let queued = position(&d, &id, TaskEvent::Queued, 1).expect("the copy was read");
    let succeeded = position(&d, &id, TaskEvent::Succeeded, 1).expect("the outcome");
    assert!(
        queued < succeeded,
        "the copy (retried) before the outcome: {:?}",
        d.events_of(&id)
    );
}

/// The same interleaving with the failed attempt's record: read before the copy written
/// before it, it would end the task as a failure; held until the stream is read, it is the
/// retried attempt's error, and the copy's run settles the task.
#[test]
fn stream_failure_read_before_the_retry_copy_is_not_final() {
    let (mut d, id, first) = flaky_task_running();
    let mut copy = String::new();
    d.reconcile_interleaved(1, |r| {
        copy = tq::kiq(
            r,
            QUEUE,
            &fixture("stream_json_pickle_message_flaky_retry1.bin"),
        );
        tq::save_result(r, &id, &fixture(FAIL.result));
    });
    assert_eq!(d.state(&id), TaskState::Retried, "{:?}", d.events_of(&id));
    step(&mut d, |r| tq::ack(r, QUEUE, &first));
    step(&mut d, |r| tq::read(r, QUEUE, C1));
    step(&mut d, |r| {
        tq::save_result(r, &id, &fixture("stream_json_pickle_result_flaky.bin"))
    });
    step(&mut d, |r| tq::ack(r, QUEUE, &copy));
    d.reconcile();
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}
