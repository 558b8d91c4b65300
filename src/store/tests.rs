//! The store as its callers see it: observations in through the writer, answers out of the
//! reader, against a real DuckDB file in a temporary directory. Times are fixed, in the past.

use super::maintenance::Step;
use super::writer::WriterCommand;
use super::*;
use broker_adapters::{
    Broker, Observation, QueueSample, TaskEvent, TaskObservation, TaskState, WorkerEvent,
    WorkerObservation,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::Ordering;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap() + Duration::milliseconds(secs * 1000)
}

fn task_obs(broker: Broker, id: &str, secs: i64, event: TaskEvent) -> TaskObservation {
    TaskObservation::new(broker, id, at(secs), event, "test")
}

fn worker_obs(id: &str, pid: u32, secs: i64, event: WorkerEvent) -> Observation {
    Observation::Worker(WorkerObservation {
        broker: Broker::Celery,
        id: id.into(),
        hostname: Some("host".into()),
        pid: Some(pid),
        at: at(secs),
        event,
        active: None,
        heartbeat_every_s: None,
    })
}

fn open_at(path: &Path) -> (StoreWriter, StoreReader, std::thread::JoinHandle<()>) {
    open(path, StoreOptions::default()).unwrap()
}

async fn write(writer: &StoreWriter, obs: Vec<TaskObservation>) {
    writer
        .observe(obs.into_iter().map(Observation::Task).collect())
        .await
        .unwrap();
    writer.flush().await.unwrap();
}

fn close(writer: StoreWriter, reader: StoreReader, handle: std::thread::JoinHandle<()>) {
    drop(writer);
    handle.join().unwrap();
    drop(reader);
}

#[tokio::test]
async fn lifecycle_with_one_retry_writes_five_transitions_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.duckdb");
    let (writer, reader, handle) = open_at(&path);
    let mut events = writer.subscribe();

    let mut queued = task_obs(Broker::Celery, "t1", 0, TaskEvent::Queued);
    queued.fields.name = Some("billing.add".into());
    queued.fields.queue = Some("celery".into());
    queued.fields.args = Some(json!([1, 2]));
    queued.fields.kwargs = Some(json!({"x": 1}));
    let mut running = task_obs(Broker::Celery, "t1", 1, TaskEvent::Running);
    running.fields.worker = Some("celery@a".into());
    let mut retried = task_obs(Broker::Celery, "t1", 2, TaskEvent::Retried);
    retried.fields.error = Some("ValueError: boom".into());
    let running2 = task_obs(Broker::Celery, "t1", 3, TaskEvent::Running);
    let mut success = task_obs(Broker::Celery, "t1", 4, TaskEvent::Succeeded);
    success.fields.result = Some(json!(3));
    // Two rounds, so both the in-batch fold and the cache across batches are exercised.
    write(&writer, vec![queued, running, retried]).await;
    write(&writer, vec![running2, success]).await;

    let check = |task: &broker_adapters::Task, transitions: &[broker_adapters::Transition]| {
        assert_eq!(task.state, TaskState::Success);
        assert_eq!(task.retries, 1);
        assert_eq!(task.name.as_deref(), Some("billing.add"));
        assert_eq!(task.args, Some(json!([1, 2])));
        assert_eq!(task.kwargs, Some(json!({"x": 1})));
        assert_eq!(task.result, Some(json!(3)));
        assert_eq!(task.worker.as_deref(), Some("celery@a"));
        assert_eq!(task.enqueued_at, Some(at(0)));
        assert_eq!(task.started_at, Some(at(3)));
        assert_eq!(task.finished_at, Some(at(4)));
        assert_eq!(task.runtime_ms, Some(1000.0));
        assert_eq!(task.updated_at, at(4));
        let states: Vec<TaskState> = transitions.iter().map(|t| t.state).collect();
        assert_eq!(
            states,
            [
                TaskState::Queued,
                TaskState::Running,
                TaskState::Retried,
                TaskState::Running,
                TaskState::Success
            ]
        );
        assert_eq!(transitions[2].at, at(2));
    };
    let (task, transitions) = reader.get_task("t1").await.unwrap().unwrap();
    check(&task, &transitions);
    for _ in 0..5 {
        let e = events.try_recv().unwrap();
        assert_eq!(e.task.id, "t1");
    }
    assert_eq!(
        writer
            .stats()
            .transitions_written
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );

    close(writer, reader, handle);
    let (writer, reader, handle) = open_at(&path);
    let (task, transitions) = reader.get_task("t1").await.unwrap().unwrap();
    check(&task, &transitions);
    assert!(reader.get_task("nope").await.unwrap().is_none());
    // A late duplicate after the restart is read from the file and changes nothing.
    write(
        &writer,
        vec![task_obs(Broker::Celery, "t1", 1, TaskEvent::Running)],
    )
    .await;
    let (again, transitions) = reader.get_task("t1").await.unwrap().unwrap();
    assert_eq!(again, task);
    assert_eq!(transitions.len(), 5);
    close(writer, reader, handle);
}

#[tokio::test]
async fn success_seen_before_queued_stays_success_and_gains_name_and_args() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    write(
        &writer,
        vec![task_obs(Broker::Rq, "j1", 5, TaskEvent::Succeeded)],
    )
    .await;
    let mut queued = task_obs(Broker::Rq, "j1", 1, TaskEvent::Queued);
    queued.fields.name = Some("jobs.send".into());
    queued.fields.args = Some(json!(["a@b.c"]));
    write(&writer, vec![queued]).await;
    let (task, _) = reader.get_task("j1").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Success);
    assert_eq!(task.name.as_deref(), Some("jobs.send"));
    assert_eq!(task.args, Some(json!(["a@b.c"])));
    close(writer, reader, handle);
}

#[tokio::test]
async fn list_tasks_filters_and_pages_every_task_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    let mut obs = Vec::new();
    for i in 0..120 {
        let broker = if i % 2 == 0 {
            Broker::Celery
        } else {
            Broker::Dramatiq
        };
        // Groups of three share an updated_at, so ties are paged by (broker, id).
        let secs = i / 3;
        let mut q = task_obs(broker, &format!("task-{i:03}"), secs, TaskEvent::Queued);
        q.fields.name = Some(if i % 3 == 0 { "mail.Send" } else { "calc.add" }.into());
        q.fields.queue = Some("default".into());
        q.fields.args = Some(json!([format!("Customer-{i}")]));
        obs.push(q);
        if i % 4 == 0 {
            obs.push(task_obs(
                broker,
                &format!("task-{i:03}"),
                secs,
                TaskEvent::Failed,
            ));
        }
    }
    write(&writer, obs).await;

    let mut seen = std::collections::HashSet::new();
    let mut cursor = None;
    let mut last: Option<(DateTime<Utc>, Broker, String)> = None;
    loop {
        let page = reader
            .list_tasks(&TaskQuery {
                limit: 7,
                cursor: cursor.clone(),
                ..TaskQuery::default()
            })
            .await
            .unwrap();
        for t in &page.tasks {
            assert!(seen.insert(t.id.clone()), "{} twice", t.id);
            let key = (t.updated_at, t.broker, t.id.clone());
            if let Some(prev) = &last {
                assert!(
                    (prev.0 > key.0) || (prev.0 == key.0 && (prev.1, &prev.2) < (key.1, &key.2)),
                    "order broken at {}",
                    t.id
                );
            }
            last = Some(key);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 120);

    let count = |q: TaskQuery| {
        let reader = reader.clone();
        async move {
            reader
                .list_tasks(&TaskQuery { limit: 1000, ..q })
                .await
                .unwrap()
                .tasks
                .len()
        }
    };
    let failed_or_queued = TaskQuery {
        states: vec![TaskState::Failure, TaskState::Queued],
        ..TaskQuery::default()
    };
    assert_eq!(count(failed_or_queued).await, 120);
    let failed = TaskQuery {
        states: vec![TaskState::Failure],
        ..TaskQuery::default()
    };
    assert_eq!(count(failed).await, 30);
    let dramatiq = TaskQuery {
        brokers: vec![Broker::Dramatiq],
        ..TaskQuery::default()
    };
    assert_eq!(count(dramatiq).await, 60);
    // Case-insensitive substring of the name, the args, the id.
    let by_name = TaskQuery {
        q: Some("MAIL.send".into()),
        ..TaskQuery::default()
    };
    assert_eq!(count(by_name).await, 40);
    let by_args = TaskQuery {
        q: Some("customer-11".into()),
        ..TaskQuery::default()
    };
    assert_eq!(count(by_args).await, 11); // 11, 110..=119
    let by_id = TaskQuery {
        q: Some("TASK-00".into()),
        ..TaskQuery::default()
    };
    assert_eq!(count(by_id).await, 10);
    // A search matching few tasks (at most `SEARCH_NUMS_FIRST`, 5 in tests, unlike the above)
    // reads their numbers first: the same answers, pages and filters.
    let by_one_id = TaskQuery {
        q: Some("task-007".into()),
        ..TaskQuery::default()
    };
    assert_eq!(count(by_one_id).await, 1);
    let few = |limit, cursor| TaskQuery {
        q: Some("CUSTOMER-10".into()), // 10, 100..=109: 11, more than 5
        limit,
        cursor,
        ..TaskQuery::default()
    };
    assert_eq!(count(few(1000, None)).await, 11);
    let nine = |cursor| TaskQuery {
        q: Some("customer-11".into()),
        states: vec![TaskState::Queued], // 11, 110..=119 minus the failed 112, 116
        limit: 5,
        cursor,
        ..TaskQuery::default()
    };
    let first = reader.list_tasks(&nine(None)).await.unwrap();
    assert_eq!(first.tasks.len(), 5);
    let rest = reader
        .list_tasks(&nine(first.next_cursor.clone()))
        .await
        .unwrap();
    let mut ids: Vec<String> = first
        .tasks
        .iter()
        .chain(&rest.tasks)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(rest.next_cursor, None);
    ids.sort();
    assert_eq!(
        ids,
        [
            "task-011", "task-110", "task-111", "task-113", "task-114", "task-115", "task-117",
            "task-118", "task-119"
        ]
    );
    let none = TaskQuery {
        q: Some("no such text".into()),
        ..TaskQuery::default()
    };
    assert_eq!(count(none).await, 0);
    // A UUID id is stored as its value (no text): found by any part of it, in any case.
    let uuid = "5f0c2e6a-3b1d-4c8e-9a7f-1e2d3c4b5a69";
    write(
        &writer,
        vec![task_obs(Broker::Celery, uuid, 500, TaskEvent::Queued)],
    )
    .await;
    let by_uuid_part = TaskQuery {
        q: Some("6A-3B1D-4C8".into()),
        ..TaskQuery::default()
    };
    let found = reader
        .list_tasks(&TaskQuery {
            limit: 10,
            ..by_uuid_part
        })
        .await
        .unwrap();
    assert_eq!(
        found
            .tasks
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        [uuid]
    );
    // since inclusive, until exclusive: seconds 10..20 hold tasks 30..=59.
    let window = TaskQuery {
        since: Some(at(10)),
        until: Some(at(20)),
        ..TaskQuery::default()
    };
    assert_eq!(count(window).await, 30);
    let injection = TaskQuery {
        q: Some("' OR 1=1 --".into()),
        name: Some("x' OR 'a'='a".into()),
        ..TaskQuery::default()
    };
    assert_eq!(count(injection).await, 0);
    let bad = reader
        .list_tasks(&TaskQuery {
            limit: 5,
            cursor: Some("not-a-cursor".into()),
            ..TaskQuery::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::BadCursor(_))));
    assert_eq!(reader.recent_tasks(5).await.unwrap().len(), 5);
    close(writer, reader, handle);
}

#[tokio::test]
async fn sweep_abandons_the_tasks_of_a_silent_worker_only() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    writer
        .observe(vec![
            worker_obs("celery@silent", 10, 0, WorkerEvent::Online),
            worker_obs("celery@alive", 20, 0, WorkerEvent::Online),
            worker_obs("celery@alive", 20, 100, WorkerEvent::Heartbeat),
        ])
        .await
        .unwrap();
    let mut on_silent = task_obs(Broker::Celery, "a", 5, TaskEvent::Running);
    on_silent.fields.worker = Some("celery@silent".into());
    let mut on_alive = task_obs(Broker::Celery, "b", 5, TaskEvent::Running);
    on_alive.fields.worker = Some("celery@alive".into());
    write(&writer, vec![on_silent, on_alive]).await;

    writer.sweep(at(110), Duration::seconds(60)).await.unwrap();
    writer.flush().await.unwrap();

    let (a, transitions) = reader.get_task("a").await.unwrap().unwrap();
    assert_eq!(a.state, TaskState::Abandoned);
    assert_eq!(transitions.last().unwrap().state, TaskState::Abandoned);
    let (b, _) = reader.get_task("b").await.unwrap().unwrap();
    assert_eq!(b.state, TaskState::Running);

    let workers = reader
        .workers(at(110), Duration::seconds(60))
        .await
        .unwrap();
    let alive: Vec<(&str, bool, u64)> = workers
        .iter()
        .map(|w| (w.id.as_str(), w.alive, w.running))
        .collect();
    assert_eq!(
        alive,
        [("celery@alive", true, 1), ("celery@silent", false, 0)]
    );

    // The running set survives a restart: a sweep right after reopening still finds `b`.
    close(writer, reader, handle);
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    writer.sweep(at(500), Duration::seconds(60)).await.unwrap();
    writer.flush().await.unwrap();
    let (b, _) = reader.get_task("b").await.unwrap().unwrap();
    assert_eq!(b.state, TaskState::Abandoned);
    close(writer, reader, handle);
}

#[tokio::test]
async fn a_new_pid_under_the_same_worker_name_is_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    writer
        .observe(vec![
            worker_obs("celery@a", 1, 0, WorkerEvent::Online),
            worker_obs("celery@a", 1, 10, WorkerEvent::Heartbeat),
        ])
        .await
        .unwrap();
    let mut running = task_obs(Broker::Celery, "t", 5, TaskEvent::Running);
    running.fields.worker = Some("celery@a".into());
    write(&writer, vec![running]).await;
    // A heartbeat older than the newest one changes nothing.
    writer
        .observe(vec![
            worker_obs("celery@a", 2, 20, WorkerEvent::Online),
            worker_obs("celery@a", 1, 15, WorkerEvent::Heartbeat),
        ])
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let workers = reader.workers(at(21), Duration::seconds(60)).await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].pid, Some(2));
    assert_eq!(workers[0].online_since, at(20));
    assert_eq!(workers[0].last_seen, at(20));
    assert!(workers[0].alive);

    // The task the old process ran is abandoned even though the name is alive.
    writer.sweep(at(21), Duration::seconds(60)).await.unwrap();
    writer.flush().await.unwrap();
    let (t, _) = reader.get_task("t").await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Abandoned);

    writer
        .observe(vec![worker_obs("celery@a", 2, 30, WorkerEvent::Offline)])
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let workers = reader.workers(at(31), Duration::seconds(60)).await.unwrap();
    assert!(!workers[0].alive);
    close(writer, reader, handle);
}

/// A worker first heard of by a heartbeat read after its task started (a Dramatiq ack set
/// names the worker before its heartbeat is sampled; a taskiq consumer claims before its idle
/// time is read) was up all along: not a restart, so its task is not abandoned.
#[tokio::test]
async fn a_worker_first_seen_after_its_task_started_is_not_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    let mut running = task_obs(Broker::Celery, "t", 5, TaskEvent::Running);
    running.fields.worker = Some("w-new".into());
    write(&writer, vec![running]).await;
    writer
        .observe(vec![worker_obs("w-new", 1, 10, WorkerEvent::Heartbeat)])
        .await
        .unwrap();
    writer.sweep(at(11), Duration::seconds(60)).await.unwrap();
    writer.flush().await.unwrap();
    let (t, _) = reader.get_task("t").await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Running, "{t:?}");
    // Its Online event, when that is what taskscope hears first, dates its process.
    writer
        .observe(vec![worker_obs("w-late", 2, 20, WorkerEvent::Online)])
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let workers = reader.workers(at(21), Duration::seconds(60)).await.unwrap();
    let late = workers.iter().find(|w| w.id == "w-late").unwrap();
    assert_eq!(late.online_since, at(20));
    close(writer, reader, handle);
}

#[tokio::test]
async fn stats_count_every_state_and_broker_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    let mut obs = Vec::new();
    for i in 0..10 {
        obs.push(task_obs(
            Broker::Celery,
            &format!("c{i}"),
            i,
            TaskEvent::Queued,
        ));
    }
    for i in 0..4 {
        obs.push(task_obs(
            Broker::Celery,
            &format!("c{i}"),
            20,
            TaskEvent::Succeeded,
        ));
    }
    obs.push(task_obs(Broker::Taskiq, "k1", 30, TaskEvent::Failed));
    obs.push(task_obs(Broker::Taskiq, "k2", 30, TaskEvent::Running));
    write(&writer, obs).await;

    let stats = reader.stats(None).await.unwrap();
    let by_state: Vec<(TaskState, u64)> = stats.by_state.into_iter().collect();
    assert_eq!(
        by_state,
        [
            (TaskState::Queued, 6),
            (TaskState::Running, 1),
            (TaskState::Success, 4),
            (TaskState::Failure, 1),
            (TaskState::Retried, 0),
            (TaskState::Abandoned, 0),
        ]
    );
    assert_eq!(stats.by_broker.get(&Broker::Celery), Some(&10));
    assert_eq!(stats.by_broker.get(&Broker::Taskiq), Some(&2));
    assert_eq!(stats.by_broker.get(&Broker::Rq), None);

    let recent = reader.stats(Some(at(20))).await.unwrap();
    assert_eq!(recent.by_state[&TaskState::Success], 4);
    assert_eq!(recent.by_state[&TaskState::Queued], 0);
    assert_eq!(recent.by_broker.values().sum::<u64>(), 6);

    let open = reader.open_tasks(Broker::Celery, 100).await.unwrap();
    assert_eq!(open.len(), 6);
    assert_eq!(open[0].id, "c9");
    close(writer, reader, handle);
}

#[tokio::test]
async fn garbage_json_in_the_file_reads_back_as_a_string() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    let mut q = task_obs(Broker::Dramatiq, "m1", 0, TaskEvent::Queued);
    q.fields.args = Some(json!([1]));
    write(&writer, vec![q]).await;
    reader
        .execute_for_test("UPDATE tasks SET args = '{oops', result = 'nan]'")
        .await;
    let (task, _) = reader.get_task("m1").await.unwrap().unwrap();
    assert_eq!(task.args, Some(json!("{oops")));
    assert_eq!(task.result, Some(json!("nan]")));
    let page = reader
        .list_tasks(&TaskQuery {
            limit: 10,
            ..Default::default()
        })
        .await;
    assert_eq!(page.unwrap().tasks.len(), 1);
    // The writer folds on top of it without trouble.
    write(
        &writer,
        vec![task_obs(Broker::Dramatiq, "m1", 1, TaskEvent::Running)],
    )
    .await;
    let (task, _) = reader.get_task("m1").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Running);
    close(writer, reader, handle);
}

#[tokio::test]
async fn queues_answer_the_newest_sample_of_each_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    let sample = |name: &str, secs: i64, length: u64| QueueSample {
        broker: Broker::Celery,
        name: name.into(),
        length,
        delayed: 1,
        dead: 2,
        running: 3,
        sampled_at: at(secs),
        oldest_enqueued_at: None,
    };
    writer
        .samples(vec![
            sample("a", 0, 10),
            sample("a", 5, 50),
            sample("b", 1, 7),
        ])
        .await
        .unwrap();
    // Late and out of order: ignored for the latest view.
    writer.samples(vec![sample("a", 3, 30)]).await.unwrap();
    writer.flush().await.unwrap();
    let queues = reader.queues().await.unwrap();
    assert_eq!(queues, [sample("a", 5, 50), sample("b", 1, 7)]);
    close(writer, reader, handle);
}

/// Sends `n` workers' `event` and `n` queues' samples of `length` (queues `q0`...), at `secs`.
async fn workers_and_queues(
    writer: &StoreWriter,
    n: usize,
    secs: i64,
    event: WorkerEvent,
    length: u64,
) {
    writer
        .observe(
            (0..n)
                .map(|i| worker_obs(&format!("w{i}"), 1, secs, event))
                .collect(),
        )
        .await
        .unwrap();
    let samples = (0..n)
        .map(|i| QueueSample {
            broker: Broker::Celery,
            name: format!("q{i}"),
            length,
            delayed: 0,
            dead: 0,
            running: 0,
            sampled_at: at(secs),
            oldest_enqueued_at: None,
        })
        .collect();
    writer.samples(samples).await.unwrap();
}

#[tokio::test]
async fn hundreds_of_workers_queues_and_counts_in_one_batch_are_all_written_then_updated() {
    // More rows than one upsert statement takes (`UPSERT_ROWS`): every one is written, and a
    // second batch updates them all, read back from the file after a restart.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.duckdb");
    let n = 600;
    let (writer, reader, handle) = open_at(&path);
    for (secs, event, length) in [(0, WorkerEvent::Online, 1), (10, WorkerEvent::Heartbeat, 2)] {
        workers_and_queues(&writer, n, secs, event, length).await;
        let brokers = [Broker::Celery, Broker::Rq, Broker::Dramatiq];
        write(
            &writer,
            brokers
                .iter()
                .map(|b| {
                    task_obs(
                        *b,
                        &format!("{}-{secs}", b.as_str()),
                        secs,
                        TaskEvent::Queued,
                    )
                })
                .collect(),
        )
        .await;
    }
    close(writer, reader, handle);
    let (writer, reader, handle) = open_at(&path);
    let workers = reader.workers(at(11), Duration::seconds(60)).await.unwrap();
    assert_eq!(workers.len(), n);
    assert!(workers.iter().all(|w| w.last_seen == at(10)), "{workers:?}");
    let queues = reader.queues().await.unwrap();
    assert_eq!(queues.len(), n);
    assert!(queues
        .iter()
        .all(|q| q.length == 2 && q.sampled_at == at(10)));
    let stats = reader.stats(None).await.unwrap();
    assert_eq!(
        stats.by_broker.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{stats:?}"
    );
    close(writer, reader, handle);
}

#[tokio::test]
async fn timestamps_round_trip_to_the_microsecond() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    let precise = Utc.timestamp_micros(1_709_294_400_123_456).unwrap();
    let mut q = TaskObservation::new(Broker::Celery, "p", precise, TaskEvent::Queued, "test");
    q.fields.eta = Some(Utc.timestamp_micros(-1_000_001).unwrap());
    write(&writer, vec![q]).await;
    let (task, transitions) = reader.get_task("p").await.unwrap().unwrap();
    assert_eq!(task.updated_at, precise);
    assert_eq!(task.eta, Some(Utc.timestamp_micros(-1_000_001).unwrap()));
    assert_eq!(transitions[0].at, precise);
    close(writer, reader, handle);
}

#[test]
fn a_second_open_of_a_locked_file_says_which_file_and_why() {
    // DuckDB's lock is per process, so this only checks the message of the error we build.
    let err = StoreError::Locked {
        path: "/data/t.duckdb".into(),
        source: duckdb::Error::InvalidQuery,
    };
    let msg = err.to_string();
    assert!(msg.contains("/data/t.duckdb") && msg.contains("another taskscope"));
}

/// What a flush costs with many workers and queues: each flush writes every worker's heartbeat
/// and every queue's latest sample (one upsert statement per table, not per row).
/// `cargo test --release --lib -- --ignored --nocapture store::tests::flush_of_300_workers`
#[tokio::test]
#[ignore]
async fn flush_of_300_workers_and_300_queues() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    let (n, flushes) = (300, 20);
    let started = std::time::Instant::now();
    for secs in 0..flushes {
        let event = if secs == 0 {
            WorkerEvent::Online
        } else {
            WorkerEvent::Heartbeat
        };
        workers_and_queues(&writer, n, secs, event, secs as u64).await;
        writer.flush().await.unwrap();
    }
    println!(
        "{n} workers and {n} queues: {:.1} ms per flush ({flushes} flushes)",
        started.elapsed().as_secs_f64() * 1000.0 / flushes as f64
    );
    close(writer, reader, handle);
}

/// `cargo test --release -- --ignored --nocapture store::tests::throughput`
#[tokio::test]
#[ignore]
async fn throughput_of_100k_observations() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    let n_tasks = 50_000;
    let started = std::time::Instant::now();
    for chunk in 0..(n_tasks / 500) {
        let mut obs = Vec::with_capacity(1000);
        for i in chunk * 500..(chunk + 1) * 500 {
            let id = format!("{i:08}-0000-4000-8000-000000000000");
            let mut q = task_obs(Broker::Celery, &id, i as i64 / 100, TaskEvent::Queued);
            q.fields.name = Some("bench.task".into());
            q.fields.args = Some(json!([i, "x"]));
            obs.push(Observation::Task(q));
        }
        writer.observe(obs).await.unwrap();
    }
    for chunk in 0..(n_tasks / 500) {
        let mut obs = Vec::with_capacity(1000);
        for i in chunk * 500..(chunk + 1) * 500 {
            let id = format!("{i:08}-0000-4000-8000-000000000000");
            let mut s = task_obs(
                Broker::Celery,
                &id,
                i as i64 / 100 + 1,
                TaskEvent::Succeeded,
            );
            s.fields.result = Some(json!(i));
            obs.push(Observation::Task(s));
        }
        writer.observe(obs).await.unwrap();
    }
    writer.flush().await.unwrap();
    let elapsed = started.elapsed();
    let stats = writer.stats();
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "100k observations ({} tasks) in {:.2?}: {:.0} observations/s, {} batches, {} transitions",
        n_tasks,
        elapsed,
        100_000.0 / elapsed.as_secs_f64(),
        batches,
        stats
            .transitions_written
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let s = reader.stats(None).await.unwrap();
    assert_eq!(s.by_state[&TaskState::Success], n_tasks as u64);
    let t = std::time::Instant::now();
    let page = reader
        .list_tasks(&TaskQuery {
            limit: 50,
            q: Some("4999".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    println!(
        "list_tasks q= over 50k tasks: {:.2?} ({} hits)",
        t.elapsed(),
        page.tasks.len()
    );
    let t = std::time::Instant::now();
    reader
        .get_task("00012345-0000-4000-8000-000000000000")
        .await
        .unwrap()
        .unwrap();
    println!("get_task: {:.2?}", t.elapsed());
    close(writer, reader, handle);
}

/// The writer looks up only the keys its filter of stored keys may hold; after a restart its
/// cache is empty of queued and finished tasks, so the filter alone says which to look up. A
/// stored task must be found and updated, not stored a second time, and no new task may be lost.
#[tokio::test]
async fn tasks_stored_before_a_restart_are_updated_and_new_ones_appended_without_a_failed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.duckdb");
    let (writer, reader, handle) = open_at(&path);
    let first: Vec<_> = (0..50)
        .map(|i| task_obs(Broker::Celery, &format!("old-{i}"), 0, TaskEvent::Queued))
        .collect();
    write(&writer, first).await;
    close(writer, reader, handle);

    let (writer, reader, handle) = open_at(&path);
    let mut later = Vec::new();
    for i in 0..50 {
        // Stored and queued: not in the cache after the restart.
        later.push(task_obs(
            Broker::Celery,
            &format!("old-{i}"),
            5,
            TaskEvent::Succeeded,
        ));
        later.push(task_obs(
            Broker::Celery,
            &format!("new-{i}"),
            5,
            TaskEvent::Queued,
        ));
    }
    write(&writer, later).await;
    let stats = writer.stats();
    assert_eq!(
        stats
            .batch_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(stats.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    let s = reader.stats(None).await.unwrap();
    assert_eq!(s.by_broker.get(&Broker::Celery), Some(&100), "{s:?}");
    let (old, _) = reader.get_task("old-7").await.unwrap().unwrap();
    assert_eq!(old.state, TaskState::Success);
    assert_eq!(
        old.enqueued_at,
        Some(at(0)),
        "the stored row was updated, not replaced"
    );
    let (new, _) = reader.get_task("new-7").await.unwrap().unwrap();
    assert_eq!(new.state, TaskState::Queued);
    close(writer, reader, handle);
}

/// A file of schema v2 (the migrations up to 2 only), as an older taskscope left it.
fn v2_file(path: &Path, rows: &str) {
    let conn = duckdb::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE schema_version (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)",
    )
    .unwrap();
    for (version, sql) in schema::MIGRATIONS.iter().filter(|(v, _)| *v <= 2) {
        conn.execute_batch(sql).unwrap();
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
            .unwrap();
    }
    conn.execute_batch(rows).unwrap();
}

#[tokio::test]
async fn a_v2_file_migrates_to_v3_with_its_tasks_timelines_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.duckdb");
    let uuid = "5f0c6f3e-9a51-4a8e-8f3e-2b7d4c1a9e10";
    v2_file(
        &path,
        &format!(
            "INSERT INTO tasks (broker, id, queue, name, state, args, retries, enqueued_at,
                                started_at, finished_at, runtime_ms, updated_at) VALUES
             ('celery', '{uuid}', 'q', 'app.add', 'success', '[1]', 0, '2024-03-01 12:00:00',
              '2024-03-01 12:00:01', '2024-03-01 12:00:02', 1000, '2024-03-01 12:00:02'),
             ('dramatiq', '{uuid}', 'q', 'app.mul', 'queued', NULL, 0, '2024-03-01 12:00:05',
              NULL, NULL, NULL, '2024-03-01 12:00:05'),
             ('rq', 'job:1', 'default', 'app.job', 'running', NULL, 0, '2024-03-01 12:00:03',
              '2024-03-01 12:00:04', NULL, NULL, '2024-03-01 12:00:04'),
             ('celery', 'ABC-not-a-uuid', NULL, NULL, 'queued', NULL, 0, NULL, NULL, NULL,
              NULL, '2024-03-01 12:00:06');
             INSERT INTO transitions (broker, task_id, state, occurred_at, worker, detail, seq) VALUES
             ('celery', '{uuid}', 'queued', '2024-03-01 12:00:00', NULL, 'sent', 1),
             ('celery', '{uuid}', 'running', '2024-03-01 12:00:01', 'w1', NULL, 2),
             ('celery', '{uuid}', 'success', '2024-03-01 12:00:02', 'w1', NULL, 3),
             ('rq', 'job:1', 'queued', '2024-03-01 12:00:03', NULL, NULL, 4),
             ('rq', 'job:1', 'running', '2024-03-01 12:00:04', 'w2', NULL, 5),
             ('dramatiq', '{uuid}', 'queued', '2024-03-01 12:00:05', NULL, NULL, 6),
             ('celery', 'ABC-not-a-uuid', 'queued', '2024-03-01 12:00:06', NULL, NULL, 7),
             ('celery', 'deleted-task', 'queued', '2024-03-01 11:00:00', NULL, NULL, 0);"
        ),
    );
    let (writer, reader, handle) = open_at(&path);
    let version = reader
        .column_for_test("SELECT max(version)::VARCHAR FROM schema_version")
        .await;
    // Migrated through v3 and every later migration.
    assert_eq!(version, [super::schema::LATEST_VERSION.to_string()]);
    // No index is left, and the old tables are gone.
    assert_eq!(
        reader
            .column_for_test("SELECT count(*)::VARCHAR FROM duckdb_indexes() WHERE table_name IN ('tasks', 'task_rows', 'transitions')")
            .await,
        ["0"]
    );
    // The id found under the most recently updated broker, with its own timeline only.
    let (task, timeline) = reader.get_task(uuid).await.unwrap().unwrap();
    assert_eq!(
        (task.broker, task.state),
        (Broker::Dramatiq, TaskState::Queued)
    );
    assert_eq!(timeline.len(), 1);
    let (task, timeline) = reader.get_task("job:1").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Running);
    assert_eq!(task.worker, None);
    assert_eq!(
        timeline
            .iter()
            .map(|t| (t.task_id.as_str(), t.state, t.worker.clone()))
            .collect::<Vec<_>>(),
        [
            ("job:1", TaskState::Queued, None),
            ("job:1", TaskState::Running, Some("w2".to_string()))
        ]
    );
    let (task, _) = reader.get_task("ABC-not-a-uuid").await.unwrap().unwrap();
    assert_eq!(task.id, "ABC-not-a-uuid");
    assert!(reader.get_task("abc-not-a-uuid").await.unwrap().is_none());
    assert_eq!(
        reader
            .column_for_test("SELECT id FROM tasks WHERE broker = 'celery' ORDER BY id")
            .await,
        ["5f0c6f3e-9a51-4a8e-8f3e-2b7d4c1a9e10", "ABC-not-a-uuid"]
    );
    // Counts came along; the orphan transition (its task was deleted) stays for the roll-ups.
    let stats = reader.stats(None).await.unwrap();
    assert_eq!(stats.by_state[&TaskState::Queued], 2);
    assert_eq!(stats.by_state[&TaskState::Running], 1);
    assert_eq!(stats.by_state[&TaskState::Success], 1);
    assert_eq!(
        reader
            .column_for_test("SELECT count(*)::VARCHAR FROM transitions WHERE task_num IS NULL")
            .await,
        ["1"]
    );

    // The writer goes on from the migrated rows: the running task finishes (it was loaded as
    // running), the counts move, nothing is duplicated.
    let mut done = task_obs(Broker::Rq, "job:1", 10, TaskEvent::Succeeded);
    done.fields.runtime_ms = Some(6000.0);
    write(
        &writer,
        vec![done, task_obs(Broker::Rq, "job:2", 11, TaskEvent::Queued)],
    )
    .await;
    close(writer, reader, handle);
    let (writer, reader, handle) = open_at(&path);
    let (task, timeline) = reader.get_task("job:1").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Success);
    assert_eq!(timeline.len(), 3);
    assert_eq!(
        reader
            .column_for_test("SELECT count(*)::VARCHAR FROM tasks WHERE id LIKE 'job:%'")
            .await,
        ["2"]
    );
    let stats = reader.stats(None).await.unwrap();
    assert_eq!(stats.by_state[&TaskState::Running], 0);
    assert_eq!(stats.by_state[&TaskState::Success], 2);
    assert_eq!(stats.by_state[&TaskState::Queued], 3);
    close(writer, reader, handle);
}

#[tokio::test]
async fn tasks_read_back_from_the_file_are_replaced_not_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    // A one-task cache: every later observation finds its task in the file, not in memory.
    let opts = StoreOptions {
        cache_capacity: 1,
        ..StoreOptions::default()
    };
    let (writer, reader, handle) = open(&dir.path().join("t.duckdb"), opts).unwrap();
    let ids: Vec<String> = (0..50)
        .map(|i| {
            if i % 2 == 0 {
                uuid::Uuid::new_v4().to_string()
            } else {
                format!("task-{i}")
            }
        })
        .collect();
    for (step, event) in [TaskEvent::Queued, TaskEvent::Running, TaskEvent::Succeeded]
        .into_iter()
        .enumerate()
    {
        for (i, id) in ids.iter().enumerate() {
            // Spread over time so the stored versions lie in different places.
            let secs = (step * 1000 + i * 7) as i64;
            write(&writer, vec![task_obs(Broker::Celery, id, secs, event)]).await;
        }
    }
    assert_eq!(
        reader
            .column_for_test("SELECT count(*)::VARCHAR FROM tasks")
            .await,
        ["50"]
    );
    let stats = reader.stats(None).await.unwrap();
    assert_eq!(stats.by_state[&TaskState::Success], 50);
    assert_eq!(stats.by_state.values().sum::<u64>(), 50);
    // Written at each of the three flushes: appended once, then replaced twice.
    assert_eq!(
        writer
            .stats()
            .task_rows_replaced
            .load(std::sync::atomic::Ordering::Relaxed),
        100
    );
    for id in &ids {
        let (task, timeline) = reader.get_task(id).await.unwrap().unwrap();
        assert_eq!(&task.id, id);
        let states: Vec<TaskState> = timeline.iter().map(|t| t.state).collect();
        assert_eq!(
            states,
            [TaskState::Queued, TaskState::Running, TaskState::Success],
            "{id}"
        );
    }
    close(writer, reader, handle);
}

/// A task whose stored version cannot be read (the lookup fails twice, as one that runs out of
/// memory does) is folded as new and replaces its stored row: never a second row of one task,
/// and the counts stay those of the rows.
#[tokio::test]
async fn a_task_whose_lookup_fails_replaces_its_stored_row() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        // Finished tasks leave memory oldest first, and one is kept: every later observation
        // of an earlier task finds it in the file, not in memory.
        cache_capacity: 1,
        failing_lookups: 2,
        ..StoreOptions::default()
    };
    let (writer, reader, handle) = open(&dir.path().join("t.duckdb"), opts).unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("task-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        write(
            &writer,
            vec![task_obs(Broker::Rq, id, i as i64, TaskEvent::Succeeded)],
        )
        .await;
    }
    // Stored an hour earlier than anything else in the file: found wherever it is.
    write(
        &writer,
        vec![task_obs(Broker::Rq, &ids[3], 3600, TaskEvent::Failed)],
    )
    .await;
    assert_eq!(
        reader
            .column_for_test(
                "SELECT count(*)::VARCHAR || ' ' || count(DISTINCT uid)::VARCHAR FROM task_rows"
            )
            .await,
        ["20 20"]
    );
    let stats = reader.stats(None).await.unwrap();
    assert_eq!(stats.by_state.values().sum::<u64>(), 20, "{stats:?}");
    assert_eq!(stats.by_state[&TaskState::Failure], 1);
    assert_eq!(stats.by_state[&TaskState::Success], 19);
    // Its number is kept: the earlier transition still belongs to it.
    let (task, timeline) = reader.get_task(&ids[3]).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Failure);
    let states: Vec<TaskState> = timeline.iter().map(|t| t.state).collect();
    assert_eq!(states, [TaskState::Success, TaskState::Failure]);
    assert!(
        writer
            .stats()
            .batch_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    close(writer, reader, handle);
}

/// The live view is ahead of the file: a transition is published, and the reader's task, list,
/// counts and queues show it, before the writer's flush interval writes it; once written, the
/// merged answers count nothing twice.
#[tokio::test]
async fn transitions_are_published_and_read_before_they_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing is written until the test flushes.
    let opts = StoreOptions {
        flush_interval: std::time::Duration::from_secs(3600),
        ..StoreOptions::default()
    };
    let (writer, reader, handle) = open(&dir.path().join("t.duckdb"), opts).unwrap();
    write(
        &writer,
        vec![task_obs(Broker::Celery, "stored", 0, TaskEvent::Queued)],
    )
    .await;
    let mut events = writer.subscribe();
    writer
        .observe(vec![
            Observation::Task(task_obs(Broker::Celery, "stored", 1, TaskEvent::Running)),
            Observation::Task(task_obs(Broker::Celery, "stored", 2, TaskEvent::Succeeded)),
            Observation::Task(task_obs(Broker::Rq, "fresh", 1, TaskEvent::Queued)),
        ])
        .await
        .unwrap();
    writer
        .samples(vec![QueueSample {
            broker: Broker::Rq,
            name: "default".into(),
            sampled_at: at(1),
            length: 7,
            delayed: 0,
            dead: 0,
            running: 0,
            oldest_enqueued_at: None,
        }])
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(30), events.recv())
            .await
            .expect("a transition within 30 s, long before any flush")
            .unwrap();
        seen.push((ev.task.id.clone(), ev.transition.state));
    }
    assert_eq!(
        seen,
        [
            ("stored".to_string(), TaskState::Running),
            ("stored".to_string(), TaskState::Success),
            ("fresh".to_string(), TaskState::Queued),
        ]
    );
    let check = |reader: StoreReader| async move {
        let (task, timeline) = reader.get_task("stored").await.unwrap().unwrap();
        assert_eq!(task.state, TaskState::Success);
        let states: Vec<TaskState> = timeline.iter().map(|t| t.state).collect();
        assert_eq!(
            states,
            [TaskState::Queued, TaskState::Running, TaskState::Success]
        );
        let (fresh, timeline) = reader.get_task("fresh").await.unwrap().unwrap();
        assert_eq!(fresh.broker, Broker::Rq);
        assert_eq!(timeline.len(), 1);
        let stats = reader.stats(None).await.unwrap();
        assert_eq!(stats.by_state[&TaskState::Success], 1, "{stats:?}");
        assert_eq!(stats.by_state[&TaskState::Queued], 1, "{stats:?}");
        assert_eq!(stats.by_broker.get(&Broker::Celery), Some(&1), "{stats:?}");
        assert_eq!(stats.by_broker.get(&Broker::Rq), Some(&1), "{stats:?}");
        let query = TaskQuery {
            limit: 10,
            ..TaskQuery::default()
        };
        let page = reader.list_tasks(&query).await.unwrap();
        let stored = page.tasks.iter().find(|t| t.id == "stored").unwrap();
        assert_eq!(stored.state, TaskState::Success);
        let queues = reader.queues().await.unwrap();
        assert_eq!(queues.len(), 1);
        assert_eq!(queues[0].length, 7);
    };
    // Published and served, not yet in the file.
    check(reader.clone()).await;
    assert_eq!(
        reader
            .column_for_test("SELECT state FROM tasks ORDER BY id")
            .await,
        ["queued"]
    );
    // Written: the same answers, from the file alone.
    writer.flush().await.unwrap();
    assert_eq!(
        reader
            .column_for_test("SELECT state FROM tasks ORDER BY id")
            .await,
        ["queued", "success"]
    );
    check(reader.clone()).await;
    close(writer, reader, handle);
}

/// Ids sharing a prefix (uuid7, sequential ids) are stored uncompressed: DuckDB would bit-pack
/// them, and scans of bit-packed 128-bit keys run ~5x slower (schema v8).
#[test]
fn the_key_column_stays_uncompressed_for_ids_that_share_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = duckdb::Connection::open(dir.path().join("keys.duckdb")).unwrap();
    schema::migrate(&mut conn).unwrap();
    conn.execute_batch(
        "INSERT INTO task_rows (num, broker, uid, state, updated_at)
             SELECT i, 'celery',
                    ('018f3a2b-7c4d-7000-8000-' || lpad(printf('%x', i), 12, '0'))::UUID,
                    'success', TIMESTAMP '2026-01-01' + INTERVAL (i) SECOND
             FROM range(200000) r(i);
         CHECKPOINT;",
    )
    .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT DISTINCT compression FROM pragma_storage_info('task_rows')
             WHERE column_name = 'uid' AND segment_type = 'UUID'",
        )
        .unwrap();
    let compressions: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(compressions, ["Uncompressed"]);
    // The view readers use still answers.
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM tasks WHERE id LIKE '018f3a2b-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 200_000);
}

/// Retention deletes tasks the filter of stored ids still holds: once it deleted half as many
/// as remain, the filter is rebuilt from the file (it holds the kept tasks only, not every task
/// ever stored), and keys folded while it was rebuilt are not lost: a kept task changed after
/// the rebuild is replaced, never stored twice.
#[tokio::test]
async fn retention_rebuilds_the_filter_of_stored_ids_without_losing_a_kept_task() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        // A one-task cache: later observations find their task through the filter and the file.
        cache_capacity: 1,
        filter_rebuild_min_deleted: 1,
        ..StoreOptions::default()
    };
    let (writer, reader, handle) = open(&dir.path().join("t.duckdb"), opts).unwrap();
    // 40 old tasks (second 0-39), 10 kept ones (second 1000-1009).
    let old: Vec<TaskObservation> = (0..40)
        .map(|i| task_obs(Broker::Celery, &format!("old-{i}"), i, TaskEvent::Succeeded))
        .collect();
    write(&writer, old).await;
    let kept: Vec<TaskObservation> = (0..10)
        .map(|i| {
            task_obs(
                Broker::Celery,
                &format!("kept-{i}"),
                1000 + i,
                TaskEvent::Queued,
            )
        })
        .collect();
    write(&writer, kept).await;
    assert_eq!(writer.stats().filter_keys.load(Ordering::Relaxed), 50);

    // The deletion, and right behind it (likely folded before the sink answers, so kept in
    // the journal) a kept task's change and a new task.
    let (reply, answer) = tokio::sync::oneshot::channel();
    writer
        .send(WriterCommand::Maintain {
            step: Step::DeleteTasks {
                from: at(-1),
                to: at(500),
            },
            reply,
        })
        .await
        .unwrap();
    write(
        &writer,
        vec![
            task_obs(Broker::Celery, "kept-3", 1100, TaskEvent::Running),
            task_obs(Broker::Celery, "new-1", 1200, TaskEvent::Queued),
        ],
    )
    .await;
    assert_eq!(answer.await.unwrap().unwrap().rows, 40);
    // The rebuilt filter is taken with the next command at the latest.
    write(
        &writer,
        vec![task_obs(Broker::Celery, "new-2", 1250, TaskEvent::Queued)],
    )
    .await;
    assert_eq!(
        writer.stats().filter_keys.load(Ordering::Relaxed),
        12,
        "the 10 kept tasks, new-1 and new-2: not the 40 deleted"
    );
    // Every task changes again: each is found through the new filter, none stored twice.
    let mut again: Vec<TaskObservation> = (0..10)
        .map(|i| {
            task_obs(
                Broker::Celery,
                &format!("kept-{i}"),
                1300 + i,
                TaskEvent::Succeeded,
            )
        })
        .collect();
    again.push(task_obs(
        Broker::Celery,
        "new-1",
        1400,
        TaskEvent::Succeeded,
    ));
    again.push(task_obs(
        Broker::Celery,
        "new-2",
        1401,
        TaskEvent::Succeeded,
    ));
    write(&writer, again).await;
    assert_eq!(
        reader
            .column_for_test("SELECT count(*)::VARCHAR FROM tasks")
            .await,
        ["12"]
    );
    let stats = reader.stats(None).await.unwrap();
    assert_eq!(stats.by_state[&TaskState::Success], 12);
    assert_eq!(stats.by_state.values().sum::<u64>(), 12);
    close(writer, reader, handle);
}

/// Workers last seen before the retention are forgotten, in the file and in the writer's
/// memory (a sweep writes no row back for them), and stay forgotten after a restart.
#[tokio::test]
async fn workers_last_seen_before_the_retention_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.duckdb");
    let (writer, reader, handle) = open_at(&path);
    writer
        .observe(vec![
            worker_obs("celery@old", 1, 0, WorkerEvent::Online),
            worker_obs("celery@silent", 3, 5, WorkerEvent::Online),
            worker_obs("celery@old", 1, 10, WorkerEvent::Offline),
            worker_obs("celery@new", 2, 100, WorkerEvent::Online),
        ])
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let outcome = writer
        .maintain(Step::DeleteWorkers { before: at(50) })
        .await
        .unwrap();
    assert_eq!(outcome.rows, 2);
    writer.sweep(at(200), Duration::seconds(60)).await.unwrap();
    writer.flush().await.unwrap();
    let ids = |workers: Vec<broker_adapters::Worker>| -> Vec<String> {
        workers.into_iter().map(|w| w.id).collect()
    };
    assert_eq!(
        ids(reader
            .workers(at(201), Duration::seconds(60))
            .await
            .unwrap()),
        ["celery@new"]
    );
    // The writer forgot it too: heard of again, it is a new worker, online since then.
    writer
        .observe(vec![worker_obs(
            "celery@old",
            1,
            300,
            WorkerEvent::Heartbeat,
        )])
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let workers = reader
        .workers(at(301), Duration::seconds(60))
        .await
        .unwrap();
    let old = workers.iter().find(|w| w.id == "celery@old").unwrap();
    assert_ne!(old.online_since, at(0), "not the forgotten process's start");
    close(writer, reader, handle);
    let (writer, reader, handle) = open_at(&path);
    let mut after_restart = ids(reader
        .workers(at(301), Duration::seconds(60))
        .await
        .unwrap());
    after_restart.sort();
    assert_eq!(after_restart, ["celery@new", "celery@old"]);
    close(writer, reader, handle);
}

/// `id` (process `pid`) says goodbye at `secs`; a sweep runs a second later; all written.
async fn goes_offline_then_sweep(writer: &StoreWriter, id: &str, pid: u32, secs: i64) {
    writer
        .observe(vec![worker_obs(id, pid, secs, WorkerEvent::Offline)])
        .await
        .unwrap();
    writer
        .sweep(at(secs + 1), Duration::seconds(1000))
        .await
        .unwrap();
    writer.flush().await.unwrap();
}

/// Running tasks past `running_capacity` leave memory, the oldest first (Celery with
/// `ignore_result` and no events never reports an end: they would pile up until a deploy), and
/// are still folded when they change, swept when their workers go away (from the file), and
/// after a restart.
#[tokio::test]
async fn running_tasks_past_the_memory_cap_are_parked_and_still_swept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.duckdb");
    let opts = StoreOptions {
        running_capacity: 4,
        parked_sweep_interval: std::time::Duration::ZERO,
        ..StoreOptions::default()
    };
    let (writer, reader, handle) = open(&path, opts.clone()).unwrap();
    writer
        .observe(vec![
            worker_obs("celery@a", 1, 0, WorkerEvent::Online),
            worker_obs("celery@b", 2, 0, WorkerEvent::Online),
        ])
        .await
        .unwrap();
    let running = |id: String, secs: i64, worker: Option<&str>| {
        let mut o = task_obs(Broker::Celery, &id, secs, TaskEvent::Running);
        o.fields.worker = worker.map(str::to_string);
        o
    };
    for i in 1..=20 {
        let batch = vec![
            running(format!("a-{i}"), i, Some("celery@a")),
            running(format!("unnamed-{i}"), i, None),
        ];
        write(&writer, batch).await;
    }
    write(
        &writer,
        (1..=5)
            .map(|i| running(format!("b-{i}"), 20 + i, Some("celery@b")))
            .collect(),
    )
    .await;
    let stats = writer.stats();
    assert!(stats.running_in_memory.load(Ordering::Relaxed) <= 4);
    assert!(stats.running_parked.load(Ordering::Relaxed) >= 41);

    // A parked task that ends is read back from the file: one row, its name kept.
    let mut named = task_obs(Broker::Celery, "a-1", 0, TaskEvent::Queued);
    named.fields.name = Some("tasks.add".into());
    write(&writer, vec![named]).await;
    write(
        &writer,
        vec![task_obs(Broker::Celery, "a-1", 30, TaskEvent::Succeeded)],
    )
    .await;
    let (a1, _) = reader.get_task("a-1").await.unwrap().unwrap();
    assert_eq!(
        (a1.state, a1.name.as_deref()),
        (TaskState::Success, Some("tasks.add"))
    );

    // Worker a goes away: its parked tasks are abandoned from the file; b's and the unnamed
    // ones (b was up when they started) stay running.
    goes_offline_then_sweep(&writer, "celery@a", 1, 100).await;
    for i in 2..=20 {
        let (t, _) = reader.get_task(&format!("a-{i}")).await.unwrap().unwrap();
        assert_eq!(t.state, TaskState::Abandoned, "a-{i}");
    }
    let counts = reader.stats(None).await.unwrap();
    assert_eq!(counts.by_state[&TaskState::Running], 25, "{counts:?}");
    assert_eq!(counts.by_state[&TaskState::Abandoned], 19);

    // After a restart only the newest running tasks are loaded; the sweep still finds the
    // others in the file once b goes away.
    close(writer, reader, handle);
    let (writer, reader, handle) = open(&path, opts).unwrap();
    assert_eq!(writer.stats().running_in_memory.load(Ordering::Relaxed), 4);
    goes_offline_then_sweep(&writer, "celery@b", 2, 200).await;
    let counts = reader.stats(None).await.unwrap();
    assert_eq!(counts.by_state[&TaskState::Running], 0, "{counts:?}");
    assert_eq!(counts.by_state[&TaskState::Abandoned], 44);
    assert_eq!(counts.by_state[&TaskState::Success], 1);
    let (unnamed, _) = reader.get_task("unnamed-7").await.unwrap().unwrap();
    assert_eq!(unnamed.state, TaskState::Abandoned);
    close(writer, reader, handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytic_queries_run_one_at_a_time_across_readers() {
    // Several reports at once ran DuckDB out of its memory limit (500s at 10M tasks); the
    // pool runs one analytic query at a time, whichever reader (gated or not) asks.
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) = open_at(&dir.path().join("t.duckdb"));
    let gated = reader.gated(8, std::time::Duration::from_secs(10));
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let first = {
        let reader = reader.clone();
        let started_tx = started_tx.clone();
        tokio::spawn(async move {
            reader
                .with_conn_heavy("first", move |_| {
                    let _ = started_tx.send("first");
                    let _ = held.recv();
                    Ok(())
                })
                .await
        })
    };
    assert_eq!(started.recv().await, Some("first"));
    let second = tokio::spawn(async move {
        gated
            .with_conn_heavy("second", move |_| {
                let _ = started_tx.send("second");
                Ok(())
            })
            .await
    });
    // A point query is not held up by it.
    reader.stats(None).await.unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), started.recv())
            .await
            .is_err(),
        "the second analytic query started while the first ran"
    );
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(started.recv().await, Some("second"));
    close(writer, reader, handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_retried_with_no_analytic_query_beside_it() {
    // DuckDB's memory limit is shared: a report's hash tables could leave a batch without room
    // twice in a row, and a batch failing twice is dropped from the file. The retry waits for
    // the analytic slot and runs alone.
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        failing_writes: 1,
        ..StoreOptions::default()
    };
    let (writer, reader, handle) = open(&dir.path().join("t.duckdb"), opts).unwrap();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let report = {
        let reader = reader.clone();
        tokio::spawn(async move {
            reader
                .with_conn_heavy("report", move |_| {
                    let _ = started_tx.send(());
                    let _ = held.recv();
                    Ok(())
                })
                .await
        })
    };
    started.await.unwrap();
    let batch = {
        let writer = writer.clone();
        tokio::spawn(async move {
            write(
                &writer,
                vec![task_obs(Broker::Celery, "t1", 0, TaskEvent::Queued)],
            )
            .await
        })
    };
    let stats = writer.stats();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stats.batch_errors.load(Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the batch never failed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), async {
            while !batch.is_finished() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .is_err(),
        "the retry ran beside the analytic query"
    );
    release.send(()).unwrap();
    report.await.unwrap().unwrap();
    batch.await.unwrap();
    assert_eq!(stats.dropped.load(Relaxed), 0);
    assert_eq!(stats.batch_errors.load(Relaxed), 1);
    assert_eq!(stats.transitions_written.load(Relaxed), 1);
    close(writer, reader, handle);
}

#[test]
fn downsampling_keeps_no_table_of_its_own_between_steps() {
    // A DELETE frees no memory of an in-memory table: an emptied-and-kept temporary table
    // grew with every step's rows for as long as the sink's connection lived (measured: a
    // month of 200 queues sampled every minute left 130 MiB in DuckDB's `IN_MEMORY_TABLE`).
    let mut conn = duckdb::Connection::open_in_memory().unwrap();
    schema::migrate(&mut conn).unwrap();
    conn.execute_batch(
        "INSERT INTO queue_samples
         SELECT 'celery', 'q', TIMESTAMP '2026-01-01' + i * INTERVAL 1 SECOND, i, 0, 0, 0
         FROM range(5000) t(i)",
    )
    .unwrap();
    let before = Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap();
    let mut steps = 0;
    loop {
        let outcome =
            maintenance::run_step(&mut conn, &Step::DownsampleSamples { before }).unwrap();
        steps += 1;
        let temporary: i64 = conn
            .query_row(
                "SELECT count(*) FROM duckdb_tables() WHERE temporary",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(temporary, 0, "after step {steps}");
        if !outcome.more {
            break;
        }
    }
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM queue_samples", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 17, "5,000 one-second samples in 5-minute buckets");
}
