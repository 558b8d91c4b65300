//! [`StoreReader::alert_window`] on a real store: per-queue counts of a window, waits of the
//! tasks started in it, filters, and nothing from before the window.

use super::*;
use broker_adapters::{Broker, Observation, TaskEvent, TaskObservation};
use chrono::{DateTime, Duration, TimeZone, Utc};

fn at(mins: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap() + Duration::minutes(mins)
}

/// A task of `queue` enqueued at `queued`, started at `started`, ending with `end` at `ended`.
fn task(
    id: &str,
    queue: &str,
    name: &str,
    queued: i64,
    started: i64,
    end: (TaskEvent, i64),
) -> Vec<Observation> {
    let obs = |event, mins| {
        let mut o = TaskObservation::new(Broker::Rq, id, at(mins), event, "test");
        o.fields.queue = Some(queue.into());
        o.fields.name = Some(name.into());
        o.fields.enqueued_at = Some(at(queued));
        if event == TaskEvent::Failed {
            o.fields.error = Some("ValueError: no".into());
        }
        Observation::Task(o)
    };
    vec![
        obs(TaskEvent::Queued, queued),
        obs(TaskEvent::Running, started),
        obs(end.0, end.1),
    ]
}

#[tokio::test]
async fn window_counts_finished_failed_and_the_wait_p95_per_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) =
        open(&dir.path().join("w.duckdb"), StoreOptions::default()).unwrap();
    let mut obs = Vec::new();
    obs.extend(task("a1", "a", "add", 0, 1, (TaskEvent::Succeeded, 2)));
    obs.extend(task("a2", "a", "add", 0, 3, (TaskEvent::Failed, 4)));
    obs.extend(task("b1", "b", "other", 0, 5, (TaskEvent::Failed, 6)));
    obs.extend(task(
        "old",
        "a",
        "add",
        -120,
        -119,
        (TaskEvent::Failed, -118),
    ));
    writer.observe(obs).await.unwrap();
    writer.flush().await.unwrap();

    let all = reader
        .alert_window(at(-10), at(10), ReportFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let a = &all[0];
    assert_eq!(
        (a.queue.as_deref(), a.finished, a.failures, a.abandoned),
        (Some("a"), 2, 1, 0)
    );
    // Waits of 60 s and 180 s: p95 interpolates between them.
    assert_eq!(a.wait_p95_ms, Some(174_000.0));
    let b = &all[1];
    assert_eq!(
        (b.queue.as_deref(), b.finished, b.failures),
        (Some("b"), 1, 1)
    );
    assert_eq!(b.wait_p95_ms, Some(300_000.0));

    let only_other = reader
        .alert_window(
            at(-10),
            at(10),
            ReportFilter {
                name: Some("other".into()),
                ..ReportFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(only_other.len(), 1);
    assert_eq!(only_other[0].queue.as_deref(), Some("b"));

    let none = reader
        .alert_window(at(20), at(30), ReportFilter::default())
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    drop(writer);
    drop(reader);
    handle.join().unwrap();
}
