//! The sink's own pieces: task keys computed in Rust as the SQL computes them, the time ranges
//! a replaced row is searched in, and numbering and replacement on a real store.

use super::schema::{id_text_sql, uid_sql};
use super::sink::{task_uid, time_ranges};
use super::*;
use broker_adapters::{Broker, Observation, TaskEvent, TaskObservation, TaskState};
use chrono::{DateTime, Duration, TimeZone, Utc};

fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap() + Duration::seconds(secs)
}

async fn write(writer: &StoreWriter, obs: Vec<(&str, i64, TaskEvent)>) {
    let obs = obs
        .into_iter()
        .map(|(id, secs, event)| {
            Observation::Task(TaskObservation::new(
                Broker::Celery,
                id,
                at(secs),
                event,
                "test",
            ))
        })
        .collect();
    writer.observe(obs).await.unwrap();
    writer.flush().await.unwrap();
}

/// Rows of `SELECT id, num FROM tasks` as `id=num`, by id.
async fn nums(reader: &StoreReader) -> Vec<String> {
    reader
        .column_for_test("SELECT id || '=' || num FROM tasks ORDER BY id")
        .await
}

#[test]
fn task_uid_is_the_key_the_sql_computes() {
    let conn = duckdb::Connection::open_in_memory().unwrap();
    let ids = [
        "5f0c6f3e-9a51-4a8e-8f3e-2b7d4c1a9e10",
        "5F0C6F3E-9A51-4A8E-8F3E-2B7D4C1A9E10",
        "{5f0c6f3e-9a51-4a8e-8f3e-2b7d4c1a9e10}",
        "5f0c6f3e9a514a8e8f3e2b7d4c1a9e10",
        "5f0c6f3e-9a51-4a8e-8f3e-2b7d4c1a9e1",
        "ABC-not-a-uuid",
        "task-17",
        "",
        "ünïcødé-id",
    ];
    for id in ids {
        let (uid, id_text): (String, Option<String>) = conn
            .query_row(
                &format!(
                    "SELECT ({})::VARCHAR, {} FROM (SELECT ?::VARCHAR AS id)",
                    uid_sql("id"),
                    id_text_sql("id")
                ),
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(task_uid(id), (uid, id_text), "{id:?}");
    }
}

#[test]
fn far_apart_stored_times_are_searched_in_separate_ranges_and_at_most_eight() {
    let s = 1_000_000;
    assert_eq!(time_ranges(vec![5 * s, 0, 3 * s]), [(0, 5 * s + 1)]);
    // An hour-old version does not stretch the range of the recent ones.
    assert_eq!(
        time_ranges(vec![3600 * s, 0, 3601 * s]),
        [(0, 1), (3600 * s, 3601 * s + 1)]
    );
    // Twenty clusters: the closest merge until eight are left, every time still covered.
    let times: Vec<i64> = (0..20).map(|i| i * i * 100 * s).collect();
    let ranges = time_ranges(times.clone());
    assert_eq!(ranges.len(), 8);
    for t in times {
        assert!(ranges.iter().any(|(lo, hi)| *lo <= t && t < *hi), "{t}");
    }
    assert!(time_ranges(Vec::new()).is_empty());
}

/// One batch replaces a task stored an hour earlier and tasks stored a moment earlier: each
/// keeps its number and has one row, counts and timelines are whole.
#[tokio::test]
async fn stored_tasks_far_apart_in_time_are_replaced_in_one_batch_keeping_their_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) =
        open(&dir.path().join("t.duckdb"), StoreOptions::default()).unwrap();
    write(&writer, vec![("old", 0, TaskEvent::Queued)]).await;
    // One batch each: tasks new in the same batch are numbered in no particular order.
    write(&writer, vec![("a", 3590, TaskEvent::Queued)]).await;
    write(&writer, vec![("b", 3595, TaskEvent::Queued)]).await;
    let before = nums(&reader).await;
    assert_eq!(before, ["a=2", "b=3", "old=1"]);
    write(
        &writer,
        vec![
            ("old", 3600, TaskEvent::Running),
            ("a", 3600, TaskEvent::Running),
            ("b", 3600, TaskEvent::Succeeded),
            ("c", 3600, TaskEvent::Queued),
        ],
    )
    .await;
    assert_eq!(nums(&reader).await, ["a=2", "b=3", "c=4", "old=1"]);
    let stats = reader.stats(None).await.unwrap();
    assert_eq!(
        stats.by_state.get(&TaskState::Running),
        Some(&2),
        "{stats:?}"
    );
    assert_eq!(stats.by_state.get(&TaskState::Success), Some(&1));
    assert_eq!(stats.by_state.get(&TaskState::Queued), Some(&1));
    let (old, timeline) = reader.get_task("old").await.unwrap().unwrap();
    assert_eq!(old.state, TaskState::Running);
    let states: Vec<TaskState> = timeline.iter().map(|t| t.state).collect();
    assert_eq!(states, [TaskState::Queued, TaskState::Running]);
    assert_eq!(
        writer
            .stats()
            .batch_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(writer);
    handle.join().unwrap();
    drop(reader);
}

/// Numbers are counted in memory: after a restart they go on after the highest stored one.
#[tokio::test]
async fn task_numbers_go_on_after_the_highest_stored_number_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.duckdb");
    let (writer, reader, handle) = open(&path, StoreOptions::default()).unwrap();
    write(&writer, vec![("a", 0, TaskEvent::Queued)]).await;
    write(&writer, vec![("b", 1, TaskEvent::Queued)]).await;
    drop(writer);
    handle.join().unwrap();
    drop(reader);
    let (writer, reader, handle) = open(&path, StoreOptions::default()).unwrap();
    write(
        &writer,
        vec![("c", 2, TaskEvent::Queued), ("a", 3, TaskEvent::Running)],
    )
    .await;
    assert_eq!(nums(&reader).await, ["a=1", "b=2", "c=3"]);
    let (_, timeline) = reader.get_task("a").await.unwrap().unwrap();
    assert_eq!(timeline.len(), 2);
    drop(writer);
    handle.join().unwrap();
    drop(reader);
}
