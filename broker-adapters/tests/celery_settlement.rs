//! How the Celery adapter settles each task, driven end to end against the in-memory Redis
//! (`support/`): kombu's and Celery's real writes (`support/celery_worker.rs`) on captured
//! payloads (`tests/fixtures/celery/`), the keyspace notifications and pub/sub messages they
//! cause, every read the adapter asks for and its `unacked` prefetch rule.
//!
//! Settlement paths (the adapter's module docs): `queued` from the queue lists (and
//! `task-sent`/`task-received` with an ETA); `running` from a message gone from its list, the
//! `unacked` hash (taken; an ETA message held there stays queued until due; a vanished tag was
//! acknowledged), a STARTED result or `task-received`/`task-started` events; the outcome from
//! the result record (published on its channel, read at reconciliation for open tasks) or
//! task events; `retried` from a RETRY record or `task-retried` and the new message.

mod support;

use broker_adapters::celery::{CeleryAdapter, CeleryConfig};
use broker_adapters::{ReadRequest, TaskEvent, TaskState};
use chrono::Duration;
use support::celery_worker::{self as cw, Message};
use support::driver::Driver;
use support::fake_redis::FakeRedis;

const ID: &str = "4f1c2b9e-6a3d-4e8f-9b7a-1c2d3e4f5a6b";
const TAG: &str = "8d2e7f10-3c4b-4a59-8e6d-7f8091a2b3c4";
const TAG2: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";

fn driver() -> Driver<CeleryAdapter> {
    driver_with(CeleryConfig::default())
}

fn driver_with(config: CeleryConfig) -> Driver<CeleryAdapter> {
    let mut d = Driver::new(CeleryAdapter::new(config));
    step(&mut d, cw::declare);
    d
}

/// One command's (or `MULTI`'s) writes, their notifications and messages, then a little time.
fn step<T>(d: &mut Driver<CeleryAdapter>, write: impl FnOnce(&mut FakeRedis) -> T) -> T {
    let out = write(&mut d.redis);
    d.deliver();
    d.deliver_published();
    d.advance(5);
    out
}

fn message() -> Message {
    Message::new("queue_message_json.bin", ID, TAG)
}

/// Send, take and (early) acknowledge: the task is executing.
fn send_take_ack(d: &mut Driver<CeleryAdapter>, msg: &Message) {
    step(d, |r| cw::send(r, msg));
    let taken = step(d, cw::take).expect("the message");
    step(d, |r| cw::ack(r, &taken.tag));
}

fn success(d: &Driver<CeleryAdapter>) -> Vec<u8> {
    cw::record("result_success_plain.bin", ID, d.now)
}

/// Without `-E` and without `task_track_started`: the list, `unacked` and the result are all
/// there is.
#[test]
fn early_ack_task_queued_running_then_success_from_its_result() {
    let mut d = driver();
    let msg = message();
    step(&mut d, |r| cw::send(r, &msg));
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.name.as_deref(), Some("cap.add"));
    assert_eq!(t.queue.as_deref(), Some(cw::QUEUE));
    let taken = step(&mut d, cw::take).unwrap();
    assert_eq!(d.state(ID), TaskState::Running);
    step(&mut d, |r| cw::ack(r, &taken.tag));
    d.advance(3_000);
    let record = success(&d);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.result, Some(serde_json::json!("slept 3")));
    let mut events = d.events_of(ID);
    events.dedup();
    assert_eq!(
        events,
        [TaskEvent::Queued, TaskEvent::Running, TaskEvent::Succeeded]
    );
}

/// `task_track_started`: the STARTED record names the worker.
#[test]
fn started_record_is_running_on_its_worker() {
    let mut d = driver();
    send_take_ack(&mut d, &message());
    let started = cw::record("result_started_plain.bin", ID, d.now);
    step(&mut d, |r| cw::store_result(r, ID, &started));
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.worker.as_deref(), Some("cap_plain@caphost"));
    let record = success(&d);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    assert_eq!(d.state(ID), TaskState::Success);
    assert_eq!(d.task(ID).worker.as_deref(), Some("cap_plain@caphost"));
}

/// With `-E`: received, started and succeeded events tell the state and the worker, the
/// result record agrees.
#[test]
fn with_task_events_the_worker_is_known_and_the_outcome_agrees() {
    let mut d = driver();
    let msg = message();
    step(&mut d, |r| cw::send(r, &msg));
    let now = d.now;
    step(&mut d, |r| {
        cw::take(r);
        cw::task_event(
            r,
            "event_task_multi_containing_task_received_with_E.bin",
            ID,
            now,
        );
    });
    step(&mut d, |r| cw::ack(r, TAG));
    let now = d.now;
    step(&mut d, |r| {
        cw::task_event(
            r,
            "event_task_multi_containing_task_started_with_E.bin",
            ID,
            now,
        )
    });
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.worker.as_deref(), Some(cw::HOSTNAME));
    d.advance(3_000);
    let (now, record) = (d.now, success(&d));
    step(&mut d, |r| {
        cw::store_result(r, ID, &record);
        cw::task_event(
            r,
            "event_task_multi_containing_task_succeeded_with_E.bin",
            ID,
            now,
        );
    });
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.worker.as_deref(), Some(cw::HOSTNAME));
}

/// A `task-succeeded` event before the result's publish (another connection): one outcome.
#[test]
fn event_and_result_in_either_order_settle_once() {
    let mut d = driver();
    send_take_ack(&mut d, &message());
    let now = d.now;
    step(&mut d, |r| {
        cw::task_event(
            r,
            "event_task_multi_containing_task_succeeded_with_E.bin",
            ID,
            now,
        )
    });
    assert_eq!(d.state(ID), TaskState::Success);
    let record = success(&d);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    assert_eq!(d.state(ID), TaskState::Success);
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Success);
}

#[test]
fn failure_record_carries_the_error_and_traceback() {
    let mut d = driver();
    send_take_ack(&mut d, &message());
    let record = cw::record("result_failure_plain.bin", ID, d.now);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Failure);
    let error = t.error.as_deref().unwrap_or_default();
    assert!(error.contains("ValueError"), "{error}");
    assert!(t.traceback.is_some());
}

/// `self.retry(countdown=1)`: the new message (retries 1, an ETA) is pushed, then the RETRY
/// record; the worker holds the new message in `unacked` until due, runs it, succeeds.
#[test]
fn retry_then_success_counts_one_retry() {
    let mut d = driver();
    let msg = message();
    send_take_ack(&mut d, &msg);
    let due = d.now + Duration::seconds(1);
    let again = msg.retry(TAG2, due);
    let retry = cw::record("result_retry_plain.bin", ID, d.now);
    step(&mut d, |r| cw::send(r, &again));
    step(&mut d, |r| cw::store_result(r, ID, &retry));
    assert_eq!(d.state(ID), TaskState::Retried);
    step(&mut d, cw::take);
    assert_eq!(d.state(ID), TaskState::Retried, "held until due");
    d.advance(1_000);
    step(&mut d, |r| cw::ack(r, TAG2));
    assert_eq!(d.state(ID), TaskState::Running);
    let record = cw::record("result_success_after_retry_plain.bin", ID, d.now);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.retries, 1);
}

/// `countdown=60`: taken at once into `unacked`, held there (queued, with its ETA) until due;
/// the early ack at execution makes it running.
#[test]
fn countdown_task_held_in_unacked_is_queued_until_due() {
    let mut d = driver();
    let eta = d.now + Duration::seconds(60);
    let msg = Message::new("queue_message_countdown.bin", ID, TAG).with_eta(Some(eta));
    step(&mut d, |r| cw::send(r, &msg));
    step(&mut d, cw::take);
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.eta, Some(eta));
    d.advance(30_000);
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Queued, "not due yet");
    d.advance(30_000);
    step(&mut d, |r| cw::ack(r, TAG));
    assert_eq!(d.state(ID), TaskState::Running);
    let record = success(&d);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    assert_eq!(d.state(ID), TaskState::Success);
}

/// `control.revoke(id)` before the message arrives: the worker takes it, acknowledges it and
/// stores REVOKED; a failure saying so.
#[test]
fn revoked_task_is_a_failure_saying_revoked() {
    let mut d = driver();
    send_take_ack(&mut d, &message());
    let record = cw::record("result_revoked_plain.bin", ID, d.now);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Failure);
    assert!(t.error.as_deref().unwrap_or_default().contains("Revoked"));
}

/// `acks_late`: the worker dies with the message in `unacked`; after the visibility timeout
/// another worker's `restore_visible` puts it back (`RPUSH`), takes it, runs it, acknowledges
/// after the result. One task, settled by the second run's result.
#[test]
fn acks_late_message_restored_after_the_visibility_timeout_runs_again() {
    let mut d = driver();
    let msg = message();
    step(&mut d, |r| cw::send(r, &msg));
    step(&mut d, cw::take);
    assert_eq!(d.state(ID), TaskState::Running);
    d.advance(3_600_000);
    step(&mut d, |r| cw::restore(r, TAG));
    assert_ne!(d.state(ID), TaskState::Success);
    let again = step(&mut d, cw::take).expect("the restored message");
    assert_eq!(again.tag, TAG, "kombu keeps the delivery tag");
    assert_eq!(d.state(ID), TaskState::Running);
    let record = success(&d);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    step(&mut d, |r| cw::ack(r, TAG));
    assert_eq!(d.state(ID), TaskState::Success);
    assert!(d.redis.list(cw::QUEUE).is_empty());
}

/// Every notification and message lost: reconciliation reads the list, `unacked`, and the
/// result key of each open task.
#[test]
fn reconciliation_alone_finds_the_task_and_its_outcome() {
    let mut d = driver();
    let msg = message();
    cw::send(&mut d.redis, &msg);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Queued);
    cw::take(&mut d.redis);
    d.lose_notifications();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Running);
    cw::ack(&mut d.redis, TAG);
    let record = cw::record("result_failure_plain.bin", ID, d.now);
    cw::store_result(&mut d.redis, ID, &record);
    d.lose_notifications();
    d.lose_published();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Failure);
}

/// A gap while the task runs (the adapter forgets its listings and `unacked`); the task ends
/// unseen; the reconciliation after it settles the task from its result key.
#[test]
fn task_ended_during_a_gap_is_settled_after_it() {
    let mut d = driver();
    send_take_ack(&mut d, &message());
    d.gap();
    let record = success(&d);
    cw::store_result(&mut d.redis, ID, &record);
    d.lose_notifications();
    d.lose_published();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Success);
}

/// The `lpush` read is answered after an idle worker took the message, ran it and stored its
/// result: the list read finds nothing; `unacked` and the result tell the rest.
#[test]
fn reply_overtaken_by_the_worker_still_settles() {
    let mut d = driver();
    let msg = message();
    cw::send(&mut d.redis, &msg);
    let now = d.now;
    d.deliver_outrun(|r| {
        cw::take(r);
        cw::ack(r, TAG);
        cw::store_result(r, ID, &cw::record("result_success_plain.bin", ID, now));
    });
    d.deliver_published();
    assert_eq!(d.state(ID), TaskState::Success);
}

/// The message is popped before any read sees it, and its `unacked` entry lives too briefly
/// to be read: the result alone makes the task, a success.
#[test]
fn message_gone_before_it_is_read_is_known_by_its_result() {
    let mut d = driver();
    let msg = message();
    cw::send(&mut d.redis, &msg);
    cw::take(&mut d.redis);
    cw::ack(&mut d.redis, TAG);
    d.deliver_batch();
    let record = success(&d);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    assert_eq!(d.state(ID), TaskState::Success);
}

/// Result records expire (`SETEX 86400`): a task whose record expired before it was read
/// stays as it was (nothing says how it ended), and the adapter asks no more of it than the
/// key it reads for every open task.
#[test]
fn expired_result_record_leaves_the_task_running() {
    let mut d = driver();
    send_take_ack(&mut d, &message());
    let record = success(&d);
    cw::store_result(&mut d.redis, ID, &record);
    d.lose_notifications();
    d.lose_published();
    d.advance(cw::RESULT_TTL_S * 1000 + 1);
    assert!(!d.redis.exists(&cw::result_key(ID)));
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Running);
}

/// The result backend in another database (`CeleryConfig::result_url`): result keys are read
/// on the side connection.
#[test]
fn results_in_another_database_are_read_on_the_side_connection() {
    let mut d = driver_with(CeleryConfig {
        result_url: Some("redis://localhost:6379/1".into()),
        ..CeleryConfig::default()
    });
    send_take_ack(&mut d, &message());
    let record = success(&d);
    cw::store_result(&mut d.redis, ID, &record);
    d.lose_notifications();
    d.lose_published();
    d.reconcile();
    assert_eq!(d.state(ID), TaskState::Success);
    assert!(d
        .reads
        .iter()
        .any(|r| matches!(r, ReadRequest::Side(inner) if matches!(**inner, ReadRequest::MGet(_)))));
}

/// Worker events (sent without `-E` too; these two are of one worker) keep a worker alive; an
/// executing task whose worker is unknown (no task events) is abandoned once every worker up
/// when it started has gone offline.
#[test]
fn task_of_a_worker_that_went_offline_is_abandoned() {
    let mut d = driver();
    let now = d.now;
    step(&mut d, |r| {
        cw::worker_event(r, "event_worker_online_with_E.bin", now)
    });
    send_take_ack(&mut d, &message());
    d.advance(10_000);
    d.sweep(60_000);
    assert_eq!(d.state(ID), TaskState::Running, "its worker is alive");
    let now = d.now;
    step(&mut d, |r| {
        cw::worker_event(r, "event_worker_offline_with_E.bin", now)
    });
    d.sweep(60_000);
    assert_eq!(d.state(ID), TaskState::Abandoned);
    let record = success(&d);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    assert_eq!(d.state(ID), TaskState::Success, "a late result settles it");
}

/// A warm shutdown with a countdown task held in `unacked` (`observations.json`
/// `after_warm_shutdown`: `unacked` emptied, the ETA message back in `celery`): kombu's
/// `restore_unacked` takes it out of `unacked` and pushes it back. Nothing ran it: it is
/// queued, with its ETA, and the sweep must not abandon it when its worker goes offline.
#[test]
fn countdown_task_restored_by_a_warm_shutdown_is_queued_not_running() {
    let mut d = driver();
    let now = d.now;
    step(&mut d, |r| {
        cw::worker_event(r, "event_worker_online_with_E.bin", now)
    });
    let eta = d.now + Duration::seconds(60);
    let msg = Message::new("queue_message_countdown.bin", ID, TAG).with_eta(Some(eta));
    step(&mut d, |r| cw::send(r, &msg));
    step(&mut d, cw::take);
    assert_eq!(d.state(ID), TaskState::Queued);
    d.advance(10_000);
    let now = d.now;
    step(&mut d, |r| {
        cw::restore(r, TAG);
        cw::worker_event(r, "event_worker_offline_with_E.bin", now);
    });
    assert_eq!(
        d.state(ID),
        TaskState::Queued,
        "{:#?}",
        d.observations_of(ID)
    );
    d.advance(10_000);
    d.reconcile();
    d.sweep(60_000);
    assert_eq!(d.state(ID), TaskState::Queued);
}

/// `priority=5` with the default steps: the message waits in the sub-list `celery\x06\x163`,
/// a worker's `BRPOP` over every sub-list takes it.
#[test]
fn priority_message_in_its_sub_list_is_queued_then_taken() {
    let mut d = driver();
    let msg = Message::new("queue_message_priority5_default_steps.bin", ID, TAG);
    let sub = "celery\x06\x163";
    step(&mut d, |r| r.lpush(sub, &msg.bytes()));
    let t = d.task(ID);
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.queue.as_deref(), Some(cw::QUEUE));
    step(&mut d, |r| r.rpop(sub));
    assert_eq!(d.state(ID), TaskState::Running);
    let record = success(&d);
    step(&mut d, |r| cw::store_result(r, ID, &record));
    assert_eq!(d.state(ID), TaskState::Success);
}

/// With `-E`: the task runs on a named worker whose heartbeats stop (SIGKILL: no
/// `worker-offline`); once it is silent for `--abandon-after`, the sweep abandons the task.
#[test]
fn task_of_a_silent_named_worker_is_abandoned() {
    let mut d = driver();
    let now = d.now;
    step(&mut d, |r| {
        cw::worker_event(r, "event_worker_online_with_E.bin", now)
    });
    step(&mut d, |r| cw::send(r, &message()));
    let now = d.now;
    step(&mut d, |r| {
        cw::take(r);
        cw::task_event(
            r,
            "event_task_multi_containing_task_started_with_E.bin",
            ID,
            now,
        );
    });
    step(&mut d, |r| cw::ack(r, TAG));
    assert_eq!(d.task(ID).worker.as_deref(), Some(cw::HOSTNAME));
    for _ in 0..5 {
        d.advance(2_000);
        let now = d.now;
        step(&mut d, |r| {
            cw::worker_event(r, "event_worker_heartbeat_with_E.bin", now)
        });
        d.sweep(60_000);
    }
    assert_eq!(d.state(ID), TaskState::Running, "its worker beats");
    d.advance(61_000);
    d.sweep(60_000);
    assert_eq!(d.state(ID), TaskState::Abandoned);
}
