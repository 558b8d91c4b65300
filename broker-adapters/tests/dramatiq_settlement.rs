//! How the Dramatiq adapter settles each message, driven end to end against an in-memory Redis
//! (`support/`): a worker's real writes (`dispatch.lua`, command for command) on captured
//! payloads (`tests/fixtures/dramatiq/`), the keyspace notifications they cause, every read the
//! adapter asks for and the prefetch rules it declares, answered from the fake's state.
//!
//! Each behaviour runs twice: on a *followed* queue (short: the default, read by the
//! prefetcher's coalesced rule with `FollowHash` snapshots of `.msgs`) and on an *unfollowed*
//! one (found by a scan, so it may hold a backlog: settled by the adapter's own reads of
//! `.msgs`, `.DQ.msgs` and `.XQ.msgs`).

mod support;

use broker_adapters::dramatiq::{DramatiqAdapter, DramatiqConfig};
use broker_adapters::{Adapter, Broker, ReadRequest, TaskEvent, TaskObservation, TaskState};
use support::dramatiq_worker::{self as dq, NS};
use support::driver::Driver;

const PRODUCER: &str = "0b6c3f4e-producer";
const W1: &str = "c9969593-dbec-40ca-be49-334c25b533a0";
const W2: &str = "5e1d2f7a-8c4b-4e0f-9a6d-2b7c8e9f0a1b";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/dramatiq/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// The default: the queue is short, its `.msgs` hash is followed by the prefetch rule.
    Followed,
    /// Found by a scan (a backlog maybe): the adapter's own reads settle its messages.
    Unfollowed,
}

fn driver(path: Path) -> Driver<DramatiqAdapter> {
    let mut d = Driver::new(DramatiqAdapter::new(DramatiqConfig::default()));
    if path == Path::Unfollowed {
        let reads = d.adapter.on_scan(
            &format!("{NS}:*.msgs"),
            vec![format!("{NS}:default.msgs")],
            d.now,
        );
        d.pump(reads);
    }
    d
}

/// The first message of `default`: once it is read, the queue is on `path`.
fn first_enqueue(d: &mut Driver<DramatiqAdapter>, path: Path, msg: &[u8]) {
    step(d, |r| {
        dq::enqueue(r, PRODUCER, msg);
    });
    let followed = d
        .adapter
        .interest()
        .prefetch
        .iter()
        .any(|rule| rule.key == format!("{NS}:default.msgs"));
    assert_eq!(followed, path == Path::Followed, "the queue's path");
}

/// One script call's writes, then its notifications, then a little time.
fn step(d: &mut Driver<DramatiqAdapter>, write: impl FnOnce(&mut support::fake_redis::FakeRedis)) {
    write(&mut d.redis);
    d.deliver();
    d.advance(5);
}

/// The reads that settled the messages were those of `path`: the prefetcher's snapshots of
/// `.msgs` (followed), or the adapter's reads of the three hashes (unfollowed).
fn assert_settled_by(d: &Driver<DramatiqAdapter>, path: Path) {
    let snapshots = d
        .reads
        .iter()
        .any(|r| *r == ReadRequest::HKeys(format!("{NS}:default.msgs")));
    let own_reads = d
        .reads
        .iter()
        .any(|r| *r == ReadRequest::HGetAll(format!("{NS}:default.DQ.msgs")));
    assert_eq!(
        (snapshots, own_reads),
        (path == Path::Followed, path == Path::Unfollowed),
        "{path:?}: {:#?}",
        d.reads
    );
}

/// Runs a scenario on both paths, as `<name>::followed` and `<name>::unfollowed`.
macro_rules! on_both_paths {
    ($name:ident, $scenario:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn followed() {
                ($scenario)(Path::Followed);
            }
            #[test]
            fn unfollowed() {
                ($scenario)(Path::Unfollowed);
            }
        }
    };
}

on_both_paths!(
    enqueued_message_is_queued_with_its_actor_and_arguments,
    |path| {
        let mut d = driver(path);
        let msg = fixture("queue_message.bin");
        first_enqueue(&mut d, path, &msg);
        let t = d.task(&dq::message_id(&msg));
        assert_eq!(t.state, TaskState::Queued);
        assert_eq!(t.queue.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("add"));
        assert_eq!(t.args, Some(serde_json::json!([1, 2])));
        assert!(t.enqueued_at.is_some());
    }
);

on_both_paths!(
    taken_message_is_running_on_the_worker_of_its_ack_set,
    |path| {
        let mut d = driver(path);
        let msg = fixture("queue_message.bin");
        first_enqueue(&mut d, path, &msg);
        step(&mut d, |r| {
            assert_eq!(dq::fetch(r, W1, "default", 1).len(), 1);
        });
        let t = d.task(&dq::message_id(&msg));
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(t.worker.as_deref(), Some(W1));
    }
);

/// A queue's first message, fetched and acknowledged by an idle worker before the loop has read
/// anything of it (a worker polls on its own clock; the loop's reads come a few ms late): the
/// prefetcher read it at its first sight, so it is a success, not an unknown id.
#[test]
fn first_message_of_a_new_queue_outrun_by_an_idle_worker_succeeds() {
    let mut d = Driver::new(DramatiqAdapter::new(DramatiqConfig::default()));
    let msg = fixture("queue_message.bin");
    let rid = dq::redis_id(&msg);
    dq::enqueue(&mut d.redis, PRODUCER, &msg);
    d.deliver_outrun(|r| {
        assert_eq!(dq::fetch(r, W1, "default", 1), vec![rid.clone()]);
        dq::ack(r, W1, "default", &rid);
    });
    d.reconcile();
    let t = d.task(&dq::message_id(&msg));
    assert_eq!(t.state, TaskState::Success, "{:#?}", d.observations);
    assert_eq!(t.name.as_deref(), Some("add"));
    assert_eq!(t.args, Some(serde_json::json!([1, 2])));
    assert!(
        d.reads
            .iter()
            .any(|r| matches!(r, ReadRequest::HScanFirstPage { key, .. } if *key == format!("{NS}:default.msgs"))),
        "read at first sight: {:?}",
        d.reads
    );
}

on_both_paths!(acknowledged_message_succeeds_on_its_worker, |path| {
    let mut d = driver(path);
    let msg = fixture("queue_message.bin");
    let rid = dq::redis_id(&msg);
    first_enqueue(&mut d, path, &msg);
    step(&mut d, |r| {
        dq::fetch(r, W1, "default", 1);
    });
    step(&mut d, |r| dq::ack(r, W1, "default", &rid));
    let id = dq::message_id(&msg);
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.worker.as_deref(), Some(W1));
    let successes = d
        .observations_of(&id)
        .iter()
        .filter(|o| o.event == TaskEvent::Succeeded)
        .count();
    assert_eq!(successes, 1, "settled once: {:#?}", d.observations_of(&id));
    assert_settled_by(&d, path);
});

on_both_paths!(
    message_fetched_and_acknowledged_between_two_reads_still_succeeds,
    |path| {
        let mut d = driver(path);
        let msg = fixture("queue_message.bin");
        let rid = dq::redis_id(&msg);
        first_enqueue(&mut d, path, &msg);
        // A fast worker: fetch and ack land before any read of the ack set.
        dq::fetch(&mut d.redis, W1, "default", 1);
        dq::ack(&mut d.redis, W1, "default", &rid);
        d.deliver();
        assert_eq!(d.state(&dq::message_id(&msg)), TaskState::Success);
        assert_settled_by(&d, path);
    }
);

on_both_paths!(nacked_message_is_a_failure_from_the_dead_letters, |path| {
    let mut d = driver(path);
    let msg = fixture("dead_letter_message.bin"); // fail(), max_retries=0
    let rid = dq::redis_id(&msg);
    first_enqueue(&mut d, path, &msg);
    step(&mut d, |r| {
        dq::fetch(r, W1, "default", 1);
    });
    step(&mut d, |r| dq::nack(r, W1, "default", &rid));
    let id = dq::message_id(&msg);
    let t = d.task(&id);
    assert_eq!(t.state, TaskState::Failure);
    assert_eq!(t.name.as_deref(), Some("fail"));
    assert!(
        !d.observations_of(&id)
            .iter()
            .any(|o| o.event == TaskEvent::Succeeded),
        "the nack is no success: {:#?}",
        d.observations_of(&id)
    );
    assert_settled_by(&d, path);
});

on_both_paths!(
    delayed_message_stays_queued_until_moved_back_then_runs_and_succeeds,
    |path| {
        let mut d = driver(path);
        let delayed = fixture("delayed_message.bin");
        let id = dq::message_id(&delayed);
        let dq_rid = dq::redis_id(&delayed);
        first_enqueue(&mut d, path, &delayed);
        let t = d.task(&id);
        assert_eq!(t.state, TaskState::Queued);
        assert_eq!(t.queue.as_deref(), Some("default"));
        assert!(t.eta.is_some(), "the delay queue's message has its eta");

        // The delay-queue consumer holds it in memory until due: still queued.
        step(&mut d, |r| {
            dq::fetch(r, W1, "default.DQ", 1);
        });
        assert_eq!(d.state(&id), TaskState::Queued);

        // Due: a copy into `default` under a new id, then the ack of the delayed one.
        let copy = dq::due_copy(&delayed, "bf58bfe5-db1d-4aaa-ba84-89341bff4da5");
        step(&mut d, |r| {
            dq::enqueue(r, W1, &copy);
            dq::ack(r, W1, "default.DQ", &dq_rid);
        });
        assert_eq!(
            d.state(&id),
            TaskState::Queued,
            "moved back, not done: {:#?}",
            d.observations_of(&id)
        );

        step(&mut d, |r| {
            dq::fetch(r, W1, "default", 1);
        });
        assert_eq!(d.state(&id), TaskState::Running);
        step(&mut d, |r| {
            dq::ack(r, W1, "default", "bf58bfe5-db1d-4aaa-ba84-89341bff4da5")
        });
        assert_eq!(d.state(&id), TaskState::Success);
        assert_settled_by(&d, path);
    }
);

on_both_paths!(
    failed_attempt_with_a_retry_copy_is_retried_then_the_copy_succeeds,
    |path| {
        let mut d = driver(path);
        let attempt1 = fixture("retry_copy_requeued_1.bin"); // attempt 1, in `default`
        let copy2 = fixture("retry_copy_dq_2.bin"); // its retry, in `default.DQ`
        let moved2 = fixture("retry_copy_requeued_2.bin"); // the retry when due, in `default`
        let id = dq::message_id(&attempt1);
        let rid1 = dq::redis_id(&attempt1);
        first_enqueue(&mut d, path, &attempt1);
        step(&mut d, |r| {
            dq::fetch(r, W1, "default", 1);
        });
        assert_eq!((d.state(&id), d.task(&id).retries), (TaskState::Running, 1));

        // The Retries middleware enqueues the copy, then the worker acks the failed attempt.
        step(&mut d, |r| {
            dq::enqueue(r, W1, &copy2);
            dq::ack(r, W1, "default", &rid1);
        });
        let t = d.task(&id);
        assert_eq!((t.state, t.retries), (TaskState::Retried, 2), "{t:#?}");
        assert!(t.error.is_some(), "the copy's traceback names the failure");

        step(&mut d, |r| {
            dq::fetch(r, W2, "default.DQ", 1);
        });
        step(&mut d, |r| {
            dq::enqueue(r, W2, &moved2);
            dq::ack(r, W2, "default.DQ", &dq::redis_id(&copy2));
        });
        assert_eq!(d.state(&id), TaskState::Retried);
        step(&mut d, |r| {
            dq::fetch(r, W2, "default", 1);
        });
        step(&mut d, |r| {
            dq::ack(r, W2, "default", &dq::redis_id(&moved2))
        });
        let t = d.task(&id);
        assert_eq!((t.state, t.retries), (TaskState::Success, 2), "{t:#?}");
        assert_eq!(t.worker.as_deref(), Some(W2));
        assert_settled_by(&d, path);
    }
);

on_both_paths!(
    abandoned_message_of_a_dead_worker_is_requeued_then_succeeds_on_another,
    |path| {
        let mut d = driver(path);
        let msg = fixture("queue_message.bin");
        let rid = dq::redis_id(&msg);
        let id = dq::message_id(&msg);
        first_enqueue(&mut d, path, &msg);
        step(&mut d, |r| {
            dq::fetch(r, W1, "default", 1);
        });
        assert_eq!(d.state(&id), TaskState::Running);

        // W1 was SIGKILLed: the shared sweep gives its task up after `--abandon-after`...
        d.advance(60_000);
        let mut abandoned =
            TaskObservation::new(Broker::Dramatiq, &id, d.now, TaskEvent::Abandoned, "sweep");
        abandoned.fields.worker = Some(W1.to_string());
        d.observe(abandoned);
        assert_eq!(d.state(&id), TaskState::Abandoned);

        // ...then W2's call draws maintenance: W1's ack set goes back to the list.
        d.advance(1_000);
        step(&mut d, |r| dq::maintenance(r, W2, W1, "default"));
        // An ack set emptied without a write to `.msgs` runs no prefetch rule: a followed queue
        // judges the requeue at the next snapshot of `.msgs`, a reconciliation at the latest.
        d.reconcile();
        assert!(
            d.observations_of(&id)
                .iter()
                .any(|o| o.event == TaskEvent::Queued && o.source == "requeued"),
            "{:#?}",
            d.observations_of(&id)
        );
        assert_eq!(d.state(&id), TaskState::Queued, "redelivered: moved on");

        step(&mut d, |r| {
            dq::fetch(r, W2, "default", 1);
        });
        let t = d.task(&id);
        assert_eq!(
            (t.state, t.worker.as_deref()),
            (TaskState::Running, Some(W2))
        );
        step(&mut d, |r| dq::ack(r, W2, "default", &rid));
        let t = d.task(&id);
        assert_eq!(
            (t.state, t.worker.as_deref()),
            (TaskState::Success, Some(W2))
        );
    }
);

on_both_paths!(
    prefetched_message_given_back_at_a_graceful_stop_is_reported_requeued_not_acknowledged,
    |path| {
        let mut d = driver(path);
        let msg = fixture("queue_message.bin");
        let rid = dq::redis_id(&msg);
        let id = dq::message_id(&msg);
        first_enqueue(&mut d, path, &msg);
        let mut taken = Vec::new();
        step(&mut d, |r| taken = dq::fetch(r, W1, "default", 1));
        step(&mut d, |r| dq::requeue(r, W1, "default", &taken));
        // As after a dead worker's maintenance: a reconciliation at the latest.
        d.reconcile();
        let seen = d.observations_of(&id);
        let requeued = seen
            .iter()
            .filter(|o| o.event == TaskEvent::Queued && o.source == "requeued")
            .count();
        assert_eq!(requeued, 1, "{seen:#?}");
        assert!(
            !seen.iter().any(|o| o.event == TaskEvent::Succeeded),
            "a requeue is no ack: {seen:#?}"
        );
        // The state machine only moves forward: the task shows `running` until the next
        // worker takes it (the contract moves only an `abandoned` task back).
        assert_eq!(d.state(&id), TaskState::Running);

        step(&mut d, |r| {
            dq::fetch(r, W2, "default", 1);
        });
        step(&mut d, |r| dq::ack(r, W2, "default", &rid));
        let t = d.task(&id);
        assert_eq!(
            (t.state, t.worker.as_deref()),
            (TaskState::Success, Some(W2))
        );
    }
);

on_both_paths!(
    message_acknowledged_during_a_gap_is_settled_by_the_next_reconciliation,
    |path| {
        let mut d = driver(path);
        let msg = fixture("queue_message.bin");
        let rid = dq::redis_id(&msg);
        let id = dq::message_id(&msg);
        first_enqueue(&mut d, path, &msg);
        d.reconcile(); // the start-up settlement, with nothing gone yet
        assert_eq!(d.state(&id), TaskState::Queued);
        d.gap();
        dq::fetch(&mut d.redis, W1, "default", 1);
        dq::ack(&mut d.redis, W1, "default", &rid);
        d.lose_notifications();
        d.reconcile();
        assert_eq!(d.state(&id), TaskState::Success);
    }
);

on_both_paths!(
    message_fetched_and_nacked_between_two_reads_is_a_failure_not_a_success,
    |path| {
        let mut d = driver(path);
        let msg = fixture("dead_letter_message.bin");
        let rid = dq::redis_id(&msg);
        let id = dq::message_id(&msg);
        first_enqueue(&mut d, path, &msg);
        dq::fetch(&mut d.redis, W1, "default", 1);
        dq::nack(&mut d.redis, W1, "default", &rid);
        d.deliver();
        assert_eq!(d.state(&id), TaskState::Failure);
        assert!(
            !d.observations_of(&id)
                .iter()
                .any(|o| o.event == TaskEvent::Succeeded),
            "{:#?}",
            d.observations_of(&id)
        );
    }
);

on_both_paths!(
    running_message_acknowledged_during_a_gap_is_settled_by_the_next_reconciliation,
    |path| {
        let mut d = driver(path);
        let msg = fixture("queue_message.bin");
        let rid = dq::redis_id(&msg);
        let id = dq::message_id(&msg);
        first_enqueue(&mut d, path, &msg);
        step(&mut d, |r| {
            dq::fetch(r, W1, "default", 1);
        });
        d.reconcile();
        assert_eq!(d.state(&id), TaskState::Running);
        d.gap();
        dq::ack(&mut d.redis, W1, "default", &rid);
        d.lose_notifications();
        d.reconcile();
        assert_eq!(d.state(&id), TaskState::Success);
    }
);

/// taskscope lags behind a short retry backoff: the copy is written, the failed attempt acked,
/// the copy taken off `.DQ`, moved back to `.msgs` under a new id and acked on `.DQ`, all before
/// the first read of the ack; the loop gets those notifications in one batch.
fn retry_copy_moved_back_before_the_ack_is_read(path: Path) {
    let mut d = driver(path);
    let attempt1 = fixture("retry_copy_requeued_1.bin");
    let copy2 = fixture("retry_copy_dq_2.bin");
    let moved2 = fixture("retry_copy_requeued_2.bin");
    let id = dq::message_id(&attempt1);
    first_enqueue(&mut d, path, &attempt1);
    step(&mut d, |r| {
        dq::fetch(r, W1, "default", 1);
    });
    dq::enqueue(&mut d.redis, W1, &copy2);
    dq::ack(&mut d.redis, W1, "default", &dq::redis_id(&attempt1));
    dq::fetch(&mut d.redis, W2, "default.DQ", 1);
    dq::enqueue(&mut d.redis, W2, &moved2);
    dq::ack(&mut d.redis, W2, "default.DQ", &dq::redis_id(&copy2));
    d.deliver_batch();
    let t = d.task(&id);
    assert_eq!(
        (t.state, t.retries),
        (TaskState::Retried, 2),
        "{:#?}",
        d.observations_of(&id)
    );
}

mod retry_copy_moved_back_before_the_ack_is_read_is_still_no_success {
    use super::*;

    #[test]
    fn followed() {
        retry_copy_moved_back_before_the_ack_is_read(Path::Followed);
    }

    /// The unfollowed path settles a departed id from `.msgs` (its own field), `.DQ.msgs`
    /// (whole) and `.XQ.msgs`: the copy is no longer in `.DQ.msgs`, and its new field in
    /// `.msgs` is read by the tail read of the list (from the `hset`) and the `HMGET` that read
    /// asks for, answered after the settlement reads. The settlement waits for that read of
    /// the same queue (it may carry the retry copy) instead of taking the ack for a success.
    #[test]
    fn unfollowed() {
        retry_copy_moved_back_before_the_ack_is_read(Path::Unfollowed);
    }
}

/// A queue found by a scan is left to the adapter's reads until a sample says it is short; a
/// message taken before the switch is settled once, by the followed path.
#[test]
fn message_running_when_its_queue_becomes_followed_succeeds_once() {
    let mut d = driver(Path::Unfollowed);
    let msg = fixture("queue_message.bin");
    let rid = dq::redis_id(&msg);
    let id = dq::message_id(&msg);
    first_enqueue(&mut d, Path::Unfollowed, &msg);
    step(&mut d, |r| {
        dq::fetch(r, W1, "default", 1);
    });
    assert_eq!(d.state(&id), TaskState::Running);
    d.sample();
    assert!(
        d.adapter
            .interest()
            .prefetch
            .iter()
            .any(|rule| rule.key == format!("{NS}:default.msgs")),
        "a short queue is followed after a sample"
    );
    step(&mut d, |r| dq::ack(r, W1, "default", &rid));
    let t = d.task(&id);
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (TaskState::Success, Some(W1))
    );
    let successes = d
        .observations_of(&id)
        .iter()
        .filter(|o| o.event == TaskEvent::Succeeded)
        .count();
    assert_eq!(successes, 1, "{:#?}", d.observations_of(&id));
}

on_both_paths!(
    message_enqueued_taken_and_acknowledged_within_one_lagging_batch_succeeds,
    |path| {
        let mut d = driver(path);
        let first = fixture("queue_message_unicode.bin"); // makes `default` known first
        first_enqueue(&mut d, path, &first);
        let msg = fixture("queue_message.bin");
        let rid = dq::redis_id(&msg);
        let id = dq::message_id(&msg);
        dq::enqueue(&mut d.redis, PRODUCER, &msg);
        d.deliver();
        // The loop lags: fetch and ack of both arrive in one batch.
        let taken = dq::fetch(&mut d.redis, W1, "default", 2);
        assert_eq!(taken.len(), 2);
        for rid in &taken {
            dq::ack(&mut d.redis, W1, "default", rid);
        }
        d.deliver_batch();
        assert!(!d.redis.exists(&format!("{NS}:default.msgs")));
        assert_eq!(d.state(&id), TaskState::Success, "{rid}");
        assert_eq!(d.state(&dq::message_id(&first)), TaskState::Success);
    }
);

on_both_paths!(
    message_nacked_within_one_lagging_batch_is_a_failure,
    |path| {
        let mut d = driver(path);
        let msg = fixture("dead_letter_message.bin");
        let rid = dq::redis_id(&msg);
        let id = dq::message_id(&msg);
        first_enqueue(&mut d, path, &msg);
        dq::fetch(&mut d.redis, W1, "default", 1);
        dq::nack(&mut d.redis, W1, "default", &rid);
        d.deliver_batch();
        assert_eq!(d.state(&id), TaskState::Failure);
        assert!(!d
            .observations_of(&id)
            .iter()
            .any(|o| o.event == TaskEvent::Succeeded));
    }
);

/// A followed queue that grows past 2,000 messages is left to the adapter's reads at the next
/// sample; a message running at the switch is still settled, once.
#[test]
fn message_running_when_its_queue_grows_long_and_is_unfollowed_succeeds_once() {
    let mut d = driver(Path::Followed);
    let msg = fixture("queue_message.bin");
    let rid = dq::redis_id(&msg);
    let id = dq::message_id(&msg);
    first_enqueue(&mut d, Path::Followed, &msg);
    step(&mut d, |r| {
        dq::fetch(r, W1, "default", 1);
    });
    // A backlog: 2,001 more copies of another message under fresh ids.
    let other = fixture("queue_message_unicode.bin");
    for n in 0..2_001 {
        let rid = format!("00000000-0000-4000-8000-{n:012}");
        let mut v: serde_json::Value = serde_json::from_slice(&other).unwrap();
        v["options"]["redis_message_id"] = rid.into();
        v["message_id"] = format!("10000000-0000-4000-8000-{n:012}").into();
        dq::enqueue(&mut d.redis, PRODUCER, &serde_json::to_vec(&v).unwrap());
    }
    d.deliver_batch();
    d.sample();
    assert!(
        !d.adapter
            .interest()
            .prefetch
            .iter()
            .any(|rule| rule.key == format!("{NS}:default.msgs")),
        "a long queue is not followed"
    );
    step(&mut d, |r| dq::ack(r, W1, "default", &rid));
    let t = d.task(&id);
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (TaskState::Success, Some(W1))
    );
    let successes = d
        .observations_of(&id)
        .iter()
        .filter(|o| o.event == TaskEvent::Succeeded)
        .count();
    assert_eq!(successes, 1, "{:#?}", d.observations_of(&id));
    assert_eq!(
        d.state("10000000-0000-4000-8000-000000002000"),
        TaskState::Queued
    );
}

on_both_paths!(
    running_message_dead_lettered_during_a_gap_is_a_failure_after_reconciliation,
    |path| {
        let mut d = driver(path);
        let msg = fixture("dead_letter_message.bin");
        let rid = dq::redis_id(&msg);
        let id = dq::message_id(&msg);
        first_enqueue(&mut d, path, &msg);
        step(&mut d, |r| {
            dq::fetch(r, W1, "default", 1);
        });
        d.reconcile();
        assert_eq!(d.state(&id), TaskState::Running);
        d.gap();
        dq::nack(&mut d.redis, W1, "default", &rid);
        d.lose_notifications();
        d.reconcile();
        assert_eq!(d.state(&id), TaskState::Failure);
        assert!(
            !d.observations_of(&id)
                .iter()
                .any(|o| o.event == TaskEvent::Succeeded),
            "{:#?}",
            d.observations_of(&id)
        );
    }
);

on_both_paths!(
    retry_during_a_gap_is_retried_not_a_success_after_reconciliation,
    |path| {
        let mut d = driver(path);
        let attempt1 = fixture("retry_copy_requeued_1.bin");
        let copy2 = fixture("retry_copy_dq_2.bin");
        let id = dq::message_id(&attempt1);
        first_enqueue(&mut d, path, &attempt1);
        step(&mut d, |r| {
            dq::fetch(r, W1, "default", 1);
        });
        d.reconcile();
        d.gap();
        dq::enqueue(&mut d.redis, W1, &copy2);
        dq::ack(&mut d.redis, W1, "default", &dq::redis_id(&attempt1));
        d.lose_notifications();
        d.reconcile();
        let t = d.task(&id);
        assert_eq!(
            (t.state, t.retries),
            (TaskState::Retried, 2),
            "{:#?}",
            d.observations_of(&id)
        );
    }
);

/// A followed queue where the task is known by its delayed copy (`retries` 1), then, in one
/// burst the loop sees as one batch (the prefetcher's coalesced run comes after it): a worker
/// moves the copy back to `default` under a new id and another takes and finishes that new
/// message before any snapshot lists it. `finish` is the new message's end.
fn moved_back_and_finished_between_two_reads(
    finish: impl FnOnce(&mut support::fake_redis::FakeRedis, &str),
) -> (Driver<DramatiqAdapter>, String) {
    let mut d = driver(Path::Followed);
    first_enqueue(&mut d, Path::Followed, &fixture("queue_message.bin"));
    d.reconcile(); // the start-up settlement, with nothing gone yet
    d.reads.clear();
    let copy = fixture("retry_copy_dq_1.bin");
    let id = dq::message_id(&copy);
    step(&mut d, |r| {
        dq::enqueue(r, W1, &copy);
    });
    assert_eq!(d.task(&id).retries, 1, "{:#?}", d.observations_of(&id));
    let moved = fixture("retry_copy_requeued_1.bin");
    dq::fetch(&mut d.redis, W2, "default.DQ", 1);
    let new_id = dq::enqueue(&mut d.redis, W2, &moved);
    dq::ack(&mut d.redis, W2, "default.DQ", &dq::redis_id(&copy));
    assert_eq!(dq::fetch(&mut d.redis, W1, "default", 2).len(), 2);
    finish(&mut d.redis, &new_id);
    d.deliver_batch();
    (d, id)
}

/// The settlement's bulk reads (`HGETALL` of `.msgs`) were not needed.
fn no_bulk_settlement(d: &Driver<DramatiqAdapter>) {
    assert!(
        !d.reads
            .iter()
            .any(|r| *r == ReadRequest::HGetAll(format!("{NS}:default.msgs"))),
        "{:#?}",
        d.reads
    );
}

/// Before `requeue.rs` the task stayed `retried` until a reconciliation's bulk settlement
/// (seconds at full load); now the queue's next snapshot run settles it.
#[test]
fn moved_back_message_taken_and_acknowledged_between_two_reads_succeeds_at_the_next_run() {
    let (mut d, id) = moved_back_and_finished_between_two_reads(|r, new_id| {
        dq::ack(r, W1, "default", new_id);
    });
    assert_eq!(
        d.state(&id),
        TaskState::Retried,
        "{:#?}",
        d.observations_of(&id)
    );
    // Any write to the queue runs its rule again.
    step(&mut d, |r| {
        dq::enqueue(r, PRODUCER, &fixture("queue_message_unicode.bin"));
    });
    let t = d.task(&id);
    assert_eq!((t.state, t.retries), (TaskState::Success, 1));
    let success = d
        .observations_of(&id)
        .into_iter()
        .find(|o| o.event == TaskEvent::Succeeded)
        .expect("a success");
    assert_eq!(
        success.source,
        broker_adapters::dramatiq::requeue::MOVED_AND_ACKNOWLEDGED
    );
    no_bulk_settlement(&d);
}

/// The same move whose new message failed for good: the newest dead letters hold it.
#[test]
fn moved_back_message_taken_and_nacked_between_two_reads_is_a_failure() {
    let (mut d, id) = moved_back_and_finished_between_two_reads(|r, new_id| {
        dq::nack(r, W1, "default", new_id);
    });
    step(&mut d, |r| {
        dq::enqueue(r, PRODUCER, &fixture("queue_message_unicode.bin"));
    });
    assert_eq!(
        d.state(&id),
        TaskState::Failure,
        "{:#?}",
        d.observations_of(&id)
    );
    assert!(
        !d.observations_of(&id)
            .iter()
            .any(|o| o.event == TaskEvent::Succeeded),
        "{:#?}",
        d.observations_of(&id)
    );
}

/// The same move whose new message failed and was retried again: the next copy outranks it.
#[test]
fn moved_back_message_retried_again_between_two_reads_is_retried() {
    let (mut d, id) = moved_back_and_finished_between_two_reads(|r, new_id| {
        dq::enqueue(r, W1, &fixture("retry_copy_dq_2.bin"));
        dq::ack(r, W1, "default", new_id);
    });
    step(&mut d, |r| {
        dq::enqueue(r, PRODUCER, &fixture("queue_message_unicode.bin"));
    });
    let t = d.task(&id);
    assert_eq!(
        (t.state, t.retries),
        (TaskState::Retried, 2),
        "{:#?}",
        d.observations_of(&id)
    );
}

/// No later write to the queue: the reconciliation's run of the rule settles it, still
/// without the bulk settlement.
#[test]
fn moved_back_message_of_a_quiet_queue_succeeds_at_the_next_reconciliation() {
    let (mut d, id) = moved_back_and_finished_between_two_reads(|r, new_id| {
        dq::ack(r, W1, "default", new_id);
    });
    d.reconcile();
    assert_eq!(
        d.state(&id),
        TaskState::Success,
        "{:#?}",
        d.observations_of(&id)
    );
    no_bulk_settlement(&d);
}
