//! Housekeeping against a real DuckDB file: generated history with timestamps in the past,
//! exact expectations on what is rolled up, deleted and down-sampled; the scheduler with a
//! seconds-level cron; ingestion flowing while a large retention delete runs.

use super::jobs::{self, Context, Job, Policy};
use super::schedule::Schedule;
use super::Settings;
use crate::metrics::Metrics;
use crate::store::{self, StoreOptions, StoreReader, StoreWriter};
use broker_adapters::{Broker, Observation, QueueSample, TaskEvent, TaskObservation};
use chrono::{DateTime, Duration, TimeZone, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;

/// "Now" for these tests: a fixed time, so every expectation is exact.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 31, 12, 0, 0).unwrap()
}

fn days_ago(days: i64, plus_ms: i64) -> DateTime<Utc> {
    now() - Duration::days(days) + Duration::milliseconds(plus_ms)
}

fn policy() -> Policy {
    Policy {
        retention: std::time::Duration::from_secs(30 * 86_400),
        sample_retention: std::time::Duration::from_secs(7 * 86_400),
        aggregate_retention: std::time::Duration::from_secs(400 * 86_400),
        audit_retention: crate::housekeeping::jobs::DEFAULT_AUDIT_RETENTION,
    }
}

/// queued at `start`, running 1 s later, then `end` after `runtime_ms` (unless `end` is None).
fn lifecycle(
    id: &str,
    name: &str,
    start: DateTime<Utc>,
    end: Option<TaskEvent>,
    runtime_ms: f64,
) -> Vec<Observation> {
    let mut queued = TaskObservation::new(Broker::Celery, id, start, TaskEvent::Queued, "test");
    queued.fields.name = Some(name.into());
    queued.fields.queue = Some("celery".into());
    let running = TaskObservation::new(
        Broker::Celery,
        id,
        start + Duration::seconds(1),
        TaskEvent::Running,
        "test",
    );
    let mut out = vec![queued, running];
    if let Some(end) = end {
        let at =
            start + Duration::seconds(1) + Duration::microseconds((runtime_ms * 1000.0) as i64);
        let mut finished = TaskObservation::new(Broker::Celery, id, at, end, "test");
        finished.fields.runtime_ms = Some(runtime_ms);
        out.push(finished);
    }
    out.into_iter().map(Observation::Task).collect()
}

fn sample(length: u64, at: DateTime<Utc>) -> QueueSample {
    QueueSample {
        broker: Broker::Celery,
        name: "celery".into(),
        length,
        delayed: 0,
        dead: 0,
        running: 1,
        sampled_at: at,
        oldest_enqueued_at: None,
    }
}

struct Store {
    writer: StoreWriter,
    reader: StoreReader,
    path: std::path::PathBuf,
    thread: std::thread::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Store {
    fn open() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.duckdb");
        let (writer, reader, thread) = store::open(&path, StoreOptions::default()).unwrap();
        Store {
            writer,
            reader,
            path,
            thread,
            _dir: dir,
        }
    }

    fn context<'a>(&'a self, policy: &'a Policy) -> Context<'a> {
        Context {
            writer: &self.writer,
            reader: &self.reader,
            db_path: self.path.clone(),
            policy,
        }
    }

    /// Closes every connection (the writer thread ends once its handles are gone).
    fn close(self) -> tempfile::TempDir {
        drop(self.writer);
        drop(self.reader);
        self.thread.join().unwrap();
        self._dir
    }

    async fn observe(&self, obs: Vec<Observation>) {
        self.writer.observe(obs).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    async fn column(&self, sql: &str) -> Vec<String> {
        self.reader.column_for_test(sql).await
    }

    async fn count(&self, table: &str) -> u64 {
        self.column(&format!("SELECT count(*)::VARCHAR FROM {table}"))
            .await
            .first()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn retention_rolls_up_then_deletes_old_history_and_downsamples_old_samples() {
    let store = Store::open();
    let policy = policy();
    // 40 days ago: two successes (100 and 300 ms), one failure (50 ms), one task still
    // running (its worker is alive as far as the store knows: it must stay).
    let old = days_ago(40, 0);
    let mut obs = Vec::new();
    obs.extend(lifecycle(
        "old-1",
        "app.add",
        old,
        Some(TaskEvent::Succeeded),
        100.0,
    ));
    obs.extend(lifecycle(
        "old-2",
        "app.add",
        old,
        Some(TaskEvent::Succeeded),
        300.0,
    ));
    obs.extend(lifecycle(
        "old-3",
        "app.pay",
        old,
        Some(TaskEvent::Failed),
        50.0,
    ));
    obs.extend(lifecycle("old-run", "app.slow", old, None, 0.0));
    // Yesterday: two successes, kept.
    let recent = days_ago(1, 0);
    obs.extend(lifecycle(
        "new-1",
        "app.add",
        recent,
        Some(TaskEvent::Succeeded),
        20.0,
    ));
    obs.extend(lifecycle(
        "new-2",
        "app.add",
        recent,
        Some(TaskEvent::Succeeded),
        40.0,
    ));
    store.observe(obs).await;
    // Queue samples: 10 minutes every 5 s, 10 days ago (down-sampled to 2 rows: the maximum of
    // each 5-minute bucket), and 10 samples yesterday (kept as they are).
    let start = days_ago(10, 0);
    let old_samples: Vec<QueueSample> = (0..120)
        .map(|i| sample(i, start + Duration::seconds(5 * i as i64)))
        .collect();
    let new_samples: Vec<QueueSample> = (0..10)
        .map(|i| sample(1000 + i, recent + Duration::seconds(5 * i as i64)))
        .collect();
    store.writer.samples(old_samples).await.unwrap();
    store.writer.samples(new_samples).await.unwrap();
    store.writer.flush().await.unwrap();
    assert_eq!(store.count("tasks").await, 6);
    assert_eq!(store.count("transitions").await, 17);

    let cx = store.context(&policy);
    // A dry run says what would go and changes nothing.
    let preview = jobs::run(Job::Retention, &cx, now(), true).await.unwrap();
    assert!(
        preview
            .detail
            .starts_with("would delete 3 tasks and 11 transitions"),
        "{}",
        preview.detail
    );
    assert_eq!(store.count("tasks").await, 6);
    assert_eq!(store.count("rollup_hourly").await, 0);

    // Rolled up but not deleted yet: reports with whole-hour buckets read the roll-ups, finer
    // ones the raw rows, and both count the same.
    jobs::run(Job::Rollup, &cx, now(), false).await.unwrap();
    for step_us in [86_400_000_000, 3_600_000_000, 60_000_000] {
        let range = store::ReportRange {
            since: days_ago(45, 0),
            until: now(),
            step_us,
        };
        let throughput = store
            .reader
            .throughput(range, store::ReportFilter::default())
            .await
            .unwrap();
        let counts: Vec<u64> = throughput
            .iter()
            .map(|s| s.points.iter().map(|(_, n)| n).sum())
            .collect();
        // queued, running, success, failure, retried, abandoned
        assert_eq!(counts, [6, 6, 4, 1, 0, 0], "step {step_us} µs");
    }

    // Wait times (queued -> running: 1 s each) of what finished, from raw rows now and from
    // the roll-ups once the raw rows are gone.
    let waits = || async {
        let rows = store
            .reader
            .wait(days_ago(45, 0), now(), store::ReportFilter::default(), 100)
            .await
            .unwrap();
        let mut out: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {}",
                    r.name.as_deref().unwrap_or("-"),
                    r.count,
                    r.p50_ms,
                    r.p95_ms,
                    r.max_ms
                )
            })
            .collect();
        out.sort();
        out
    };
    let before = waits().await;
    assert_eq!(
        before,
        ["app.add 4 1000 1000 1000", "app.pay 1 1000 1000 1000"]
    );

    let report = jobs::run(Job::Retention, &cx, now(), false).await.unwrap();
    assert_eq!(waits().await, before, "the roll-ups keep the wait report");
    assert!(
        report.detail.contains("deleted 3 tasks and 11 transitions"),
        "{}",
        report.detail
    );

    // The old finished tasks are gone; the running one and yesterday's stay.
    assert_eq!(
        store.column("SELECT id FROM tasks ORDER BY id").await,
        ["new-1", "new-2", "old-run"]
    );
    assert_eq!(store.count("transitions").await, 6);
    // The old hour was rolled up first: counts per state and runtime percentiles of what
    // finished, per task name.
    let old_hour = store
        .column(&format!(
            "SELECT name || ' ' || state || ' ' || transitions || ' ' || runtime_count || ' '
                    || coalesce(runtime_sum_ms::VARCHAR, '-') || ' ' || coalesce(runtime_p50_ms::VARCHAR, '-')
                    || ' ' || coalesce(runtime_max_ms::VARCHAR, '-')
             FROM rollup_hourly WHERE bucket = TIMESTAMP '{}' ORDER BY name, state",
            old.format("%Y-%m-%d %H:00:00")
        ))
        .await;
    assert_eq!(
        old_hour,
        [
            "app.add queued 2 0 - - -",
            "app.add running 2 0 - - -",
            "app.add success 2 2 400.0 200.0 300.0",
            "app.pay failure 1 1 50.0 50.0 50.0",
            "app.pay queued 1 0 - - -",
            "app.pay running 1 0 - - -",
            "app.slow queued 1 0 - - -",
            "app.slow running 1 0 - - -",
        ]
    );
    // The daily roll-up has the same totals.
    let daily: u64 = store
        .column(&format!(
            "SELECT sum(transitions)::VARCHAR FROM rollup_daily WHERE bucket = TIMESTAMP '{}'",
            old.format("%Y-%m-%d 00:00:00")
        ))
        .await[0]
        .parse()
        .unwrap();
    assert_eq!(daily, 11);
    // Old samples: one per 5 minutes, the maximum of each bucket; recent ones untouched.
    assert_eq!(
        store
            .column("SELECT length::VARCHAR FROM queue_samples ORDER BY sampled_at")
            .await,
        [
            "59", "119", "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008",
            "1009"
        ]
    );

    // Reports over a range longer than the raw retention read the roll-ups for the deleted
    // part and raw rows after it: nothing lost, nothing counted twice.
    let range = store::ReportRange {
        since: days_ago(45, 0),
        until: now(),
        step_us: 86_400_000_000,
    };
    let filter = store::ReportFilter::default();
    let throughput = store
        .reader
        .throughput(range, filter.clone())
        .await
        .unwrap();
    let total = |state: broker_adapters::TaskState| -> u64 {
        throughput
            .iter()
            .find(|s| s.state == state)
            .map(|s| s.points.iter().map(|(_, n)| n).sum())
            .unwrap_or(0)
    };
    use broker_adapters::TaskState as S;
    assert_eq!(total(S::Success), 4, "2 rolled up + 2 raw");
    assert_eq!(total(S::Failure), 1);
    assert_eq!(total(S::Queued), 6);
    let failures = store
        .reader
        .failures(range, filter.clone(), 5)
        .await
        .unwrap();
    let failed: u64 = failures.total.points.iter().map(|p| p.1).sum();
    assert_eq!(failed, 1);
    assert_eq!(failures.series[0].name.as_deref(), Some("app.pay"));
    let runtime = store
        .reader
        .runtime(range.since, range.until, filter.clone(), 10)
        .await
        .unwrap();
    let add = runtime
        .iter()
        .find(|r| r.name.as_deref() == Some("app.add"))
        .unwrap();
    assert_eq!(add.count, 4, "two rolled-up runtimes and two raw ones");
    assert_eq!(add.max_ms, 300.0);
    assert!(
        (add.mean_ms - 115.0).abs() < 1e-9,
        "(100+300+20+40)/4: {}",
        add.mean_ms
    );
    let names = store
        .reader
        .name_stats(
            range.since,
            range.until,
            filter,
            store::NameOrder::Failures,
            5,
        )
        .await
        .unwrap();
    assert_eq!(names[0].name.as_deref(), Some("app.pay"));
    assert_eq!((names[0].runs, names[0].failures), (1, 1));

    // A second run finds nothing more to do and changes nothing.
    let rollups = store.count("rollup_hourly").await;
    let again = jobs::run(Job::Retention, &cx, now(), false).await.unwrap();
    assert!(
        again.detail.contains("deleted 0 tasks and 0 transitions"),
        "{}",
        again.detail
    );
    assert_eq!(store.count("rollup_hourly").await, rollups);
    assert_eq!(store.count("queue_samples").await, 12);
}

#[tokio::test]
async fn raw_rows_wait_for_their_rollup_and_aggregates_expire_after_their_retention() {
    let store = Store::open();
    // A short raw retention: yesterday's rows are past it, but today's hours that are not yet
    // rolled up (the current hour, within the late-data grace) must stay.
    let policy = Policy {
        retention: std::time::Duration::from_secs(60),
        sample_retention: std::time::Duration::from_secs(60),
        aggregate_retention: std::time::Duration::from_secs(3 * 86_400),
        audit_retention: crate::housekeeping::jobs::DEFAULT_AUDIT_RETENTION,
    };
    let mut obs = lifecycle(
        "a",
        "app.add",
        days_ago(5, 0),
        Some(TaskEvent::Succeeded),
        10.0,
    );
    obs.extend(lifecycle(
        "b",
        "app.add",
        now() - Duration::minutes(5),
        Some(TaskEvent::Succeeded),
        10.0,
    ));
    store.observe(obs).await;
    let cx = store.context(&policy);
    jobs::run(Job::Retention, &cx, now(), false).await.unwrap();
    // "a" rolled up and deleted; "b" finished 5 minutes ago: not rolled up yet, so kept.
    assert_eq!(store.column("SELECT id FROM tasks").await, ["b"]);
    // "a"'s roll-ups are 5 days old: past the 3-day aggregate retention, deleted too.
    assert_eq!(store.count("rollup_hourly").await, 0);
    assert_eq!(store.count("rollup_daily").await, 0);
}

#[tokio::test]
async fn a_retention_shorter_than_a_day_trims_raw_rows_by_hour_and_the_day_rolls_up_from_hours() {
    let store = Store::open();
    let policy = Policy {
        retention: std::time::Duration::from_secs(60),
        sample_retention: std::time::Duration::from_secs(60),
        aggregate_retention: std::time::Duration::from_secs(30 * 86_400),
        audit_retention: crate::housekeeping::jobs::DEFAULT_AUDIT_RETENTION,
    };
    let today =
        |h: i64, m: i64| now() - Duration::hours(12) + Duration::hours(h) + Duration::minutes(m);
    let mut obs = lifecycle(
        "a",
        "app.add",
        today(2, 0),
        Some(TaskEvent::Succeeded),
        10.0,
    );
    obs.extend(lifecycle(
        "b",
        "app.add",
        today(5, 0),
        Some(TaskEvent::Succeeded),
        30.0,
    ));
    let mut failed = lifecycle("c", "app.add", today(5, 10), Some(TaskEvent::Failed), 50.0);
    if let Some(Observation::Task(t)) = failed.last_mut() {
        t.fields.error = Some("ValueError: boom".into());
    }
    obs.extend(failed);
    obs.extend(lifecycle(
        "d",
        "app.add",
        today(11, 50),
        Some(TaskEvent::Succeeded),
        20.0,
    ));
    store.observe(obs).await;
    let cx = store.context(&policy);

    // Noon: hours up to 11:00 are rolled up (the late-data grace keeps 11:00-12:00 raw) and
    // their raw rows go now, not after the day ends.
    jobs::run(Job::Retention, &cx, now(), false).await.unwrap();
    assert_eq!(store.column("SELECT id FROM tasks").await, ["d"]);
    assert_eq!(store.count("rollup_daily").await, 0);

    // After midnight the day is rolled up from its hours: exact counts, sums, min and max;
    // percentiles are the count-weighted mean of the hours' (10, 30 and 20 ms).
    let after_midnight = today(24, 30);
    jobs::run(Job::Retention, &cx, after_midnight, false)
        .await
        .unwrap();
    assert!(store.column("SELECT id FROM tasks").await.is_empty());
    assert_eq!(
        store
            .column(
                "SELECT concat_ws(' ', strftime(bucket, '%Y-%m-%d %H:%M'), state, transitions,
                                  runtime_count, runtime_sum_ms, runtime_min_ms, runtime_max_ms,
                                  runtime_p50_ms)
                 FROM rollup_daily ORDER BY state"
            )
            .await,
        [
            "2024-03-31 00:00 failure 1 1 50.0 50.0 50.0 50.0",
            "2024-03-31 00:00 queued 4 0",
            "2024-03-31 00:00 running 4 0",
            "2024-03-31 00:00 success 3 3 60.0 10.0 30.0 20.0",
        ]
    );
    assert_eq!(
        store
            .column(
                "SELECT concat_ws(' ', strftime(bucket, '%Y-%m-%d'), state, transitions)
                 FROM failure_rollup_daily"
            )
            .await,
        ["2024-03-31 failure 1"]
    );
    // Rolled up once: a later run adds no second row for the day.
    jobs::run(
        Job::Retention,
        &cx,
        after_midnight + Duration::hours(2),
        false,
    )
    .await
    .unwrap();
    assert_eq!(store.count("rollup_daily").await, 4);
}

#[tokio::test]
async fn the_audit_journal_outlives_the_task_retention_and_goes_only_past_its_own() {
    let store = Store::open();
    let policy = Policy {
        retention: std::time::Duration::from_secs(60),
        sample_retention: std::time::Duration::from_secs(60),
        aggregate_retention: std::time::Duration::from_secs(3 * 86_400),
        audit_retention: std::time::Duration::from_secs(10 * 86_400),
    };
    for (days, target) in [(5, "kept"), (11, "gone")] {
        store
            .writer
            .audit(store::NewAuditEntry {
                at: days_ago(days, 0),
                who: "token".into(),
                action: "purge".into(),
                broker: Some("rq".into()),
                queue: Some("default".into()),
                target: Some(target.into()),
                arguments: None,
                new_task_id: None,
                outcome: store::AuditOutcome::Ok,
                error: None,
                count: Some(3),
            })
            .await
            .unwrap();
    }
    let cx = store.context(&policy);
    let report = jobs::run(Job::Retention, &cx, now(), false).await.unwrap();
    assert!(
        report.detail.contains("deleted 1 audit entries"),
        "{}",
        report.detail
    );
    assert_eq!(store.column("SELECT target FROM audit_log").await, ["kept"]);
}

#[tokio::test]
async fn compaction_checkpoints_and_reports_the_file_size() {
    let store = Store::open();
    store
        .observe(lifecycle(
            "a",
            "app.add",
            days_ago(1, 0),
            Some(TaskEvent::Succeeded),
            1.0,
        ))
        .await;
    let policy = policy();
    let cx = store.context(&policy);
    let report = jobs::run(Job::Compaction, &cx, now(), false).await.unwrap();
    assert!(
        report.detail.starts_with("checkpointed: "),
        "{}",
        report.detail
    );
    assert!(report.detail.contains(" -> "), "{}", report.detail);
    // After a checkpoint the WAL is folded into the file.
    assert!(report.detail.ends_with("blocks free"), "{}", report.detail);
    let wal = std::fs::metadata(store.path.with_extension("duckdb.wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal, 0, "the WAL is empty after FORCE CHECKPOINT");
}

#[tokio::test]
async fn a_seconds_level_schedule_runs_every_job_repeatedly_without_overlap() {
    let store = Store::open();
    store
        .observe(lifecycle(
            "a",
            "app.add",
            days_ago(40, 0),
            Some(TaskEvent::Succeeded),
            1.0,
        ))
        .await;
    let metrics = Arc::new(Metrics::default());
    let settings = Settings {
        default_schedule: Schedule::parse("* * * * * *").unwrap(),
        job_schedules: BTreeMap::from([(
            Job::Compaction,
            Schedule::parse("*/2 * * * * *").unwrap(),
        )]),
        policy: policy(),
    };
    let plan = settings.plan();
    assert_eq!(plan.len(), 2);
    assert_eq!(plan[0].1, vec![Job::Rollup, Job::Retention]);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let task = super::spawn(
        settings,
        store.writer.clone(),
        store.reader.clone(),
        store.path.clone(),
        metrics.clone(),
        shutdown,
    );
    // A deadline, not a duration: compaction rewrites the file, which takes seconds on a loaded
    // 2-core machine (24 s for all six runs was seen with builds alongside).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let runs: BTreeMap<String, u64> = metrics
            .housekeeping()
            .into_iter()
            .map(|r| (r.job, r.runs))
            .collect();
        if ["rollup", "retention", "compaction"]
            .iter()
            .all(|j| runs.get(*j).copied().unwrap_or(0) >= 2)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs did not run twice each within 120 s: {runs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    task.abort();
    // The 40-day-old task went at the first retention run, and every run was recorded.
    assert_eq!(store.count("tasks").await, 0);
    assert!(metrics
        .housekeeping()
        .iter()
        .all(|r| r.error.is_none() && r.next_at.is_some()));
    store.writer.flush().await.unwrap();
    // Runs never overlap: each run starts after the previous one (of any job) ended.
    let spans = store
        .column(
            "SELECT epoch_ms(started_at)::VARCHAR || ' ' || duration_ms::VARCHAR
             FROM housekeeping_runs ORDER BY started_at",
        )
        .await;
    let mut previous_end = f64::MIN;
    for span in &spans {
        let (start, duration) = span.split_once(' ').unwrap();
        let (start, duration): (f64, f64) = (start.parse().unwrap(), duration.parse().unwrap());
        assert!(start + 1.0 >= previous_end, "overlapping runs: {spans:?}");
        previous_end = start + duration;
    }
}

#[tokio::test]
async fn ingestion_keeps_flowing_while_a_large_retention_delete_runs() {
    let store = Store::open();
    // 100k old finished tasks with two transitions each, planted directly, in time order as
    // the writer appends them (one per 36 ms over an hour).
    store
        .reader
        .execute_for_test(
            "INSERT INTO tasks (broker, id, queue, name, state, retries, updated_at, finished_at, runtime_ms)
             SELECT 'celery', 'old-' || i, 'celery', 'app.add', 'success', 0,
                    TIMESTAMP '2024-02-01 10:00:00' + INTERVAL (i * 36) MILLISECOND,
                    TIMESTAMP '2024-02-01 10:00:00' + INTERVAL (i * 36) MILLISECOND, 5.0
             FROM range(100000) t(i);
             INSERT INTO transitions (broker, task_id, state, occurred_at, seq)
             SELECT 'celery', 'old-' || i, s, TIMESTAMP '2024-02-01 10:00:00' + INTERVAL (i * 36) MILLISECOND, i * 2 + j
             FROM range(100000) t(i), (VALUES ('running', 0), ('success', 1)) v(s, j)
             ORDER BY i, j;",
        )
        .await;
    let policy = policy();
    let writer = store.writer.clone();
    let reader = store.reader.clone();
    let path = store.path.clone();
    let retention = tokio::spawn(async move {
        let cx = Context {
            writer: &writer,
            reader: &reader,
            db_path: path,
            policy: &policy,
        };
        jobs::run(Job::Retention, &cx, now(), false).await.unwrap()
    });
    // Meanwhile, batches of new tasks keep arriving; count those committed before the
    // retention finished, and the slowest flush.
    let mut during = 0;
    let mut slowest = std::time::Duration::ZERO;
    let mut batch = 0;
    while !retention.is_finished() {
        let obs: Vec<Observation> = (0..50)
            .flat_map(|i| {
                lifecycle(
                    &format!("new-{batch}-{i}"),
                    "app.add",
                    days_ago(0, -60_000),
                    Some(TaskEvent::Succeeded),
                    1.0,
                )
            })
            .collect();
        let started = std::time::Instant::now();
        store.observe(obs).await;
        slowest = slowest.max(started.elapsed());
        if !retention.is_finished() {
            during += 1;
        }
        batch += 1;
    }
    let report = retention.await.unwrap();
    println!(
        "retention: {}; {during} ingest batches committed meanwhile, slowest flush {slowest:?}",
        report.detail
    );
    assert!(
        report
            .detail
            .contains("deleted 100000 tasks and 200000 transitions"),
        "{}",
        report.detail
    );
    assert!(
        during >= 3,
        "ingestion must interleave with the delete chunks, got {during} batches during it"
    );
    assert_eq!(store.count("tasks").await, batch as u64 * 50);
}

/// Disk use over "months": 60 days of history at ~8 tasks a minute (700k tasks, 2.1M
/// transitions), then retention at 30 days and compaction, then another 30 days of new history
/// and the same again: the file must stop growing once deleted blocks are reused. Prints the
/// figures; run with
/// `cargo test --release --bin taskscope -- --ignored --nocapture housekeeping_disk_benchmark`.
#[tokio::test]
#[ignore = "benchmark: prints figures, takes a minute"]
async fn housekeeping_disk_benchmark() {
    let store = Store::open();
    let policy = policy();
    let cx = store.context(&policy);
    let size = |label: &str| {
        let file = std::fs::metadata(&store.path).map(|m| m.len()).unwrap_or(0);
        println!("{label}: file {}", jobs::human_bytes(file));
        file
    };
    // Planted in time order, as the writer appends them; `start_day` days before now().
    async fn plant(store: &Store, start_day: i64, days: i64) {
        let minutes = days * 1440;
        let sql: &'static str = Box::leak(
            format!(
                "INSERT INTO tasks (broker, id, queue, name, state, args, kwargs, result, retries,
                                    worker, enqueued_at, started_at, finished_at, runtime_ms, updated_at)
                 SELECT 'celery', 'd{start_day}-' || i, 'celery', 'billing.charge_' || (i % 20),
                        CASE WHEN i % 50 = 0 THEN 'failure' ELSE 'success' END,
                        '[' || i || ', \"EUR\"]', '{{\"customer\": ' || (i % 997) || '}}', '\"ok\"', 0,
                        'celery@worker-' || (i % 4),
                        t, t + INTERVAL 1 SECOND, t + INTERVAL 2 SECOND, 1000.0 + (i % 300), t + INTERVAL 2 SECOND
                 FROM (SELECT i, TIMESTAMP '2024-03-31 12:00:00' - INTERVAL {start_day} DAY
                                 + INTERVAL (i * 7500) MILLISECOND AS t
                       FROM range({n}) r(i));
                 INSERT INTO transitions (broker, task_id, state, occurred_at, worker, seq)
                 SELECT 'celery', 'd{start_day}-' || i, s, t + INTERVAL (j) SECOND, 'celery@worker-' || (i % 4), i * 3 + j
                 FROM (SELECT i, TIMESTAMP '2024-03-31 12:00:00' - INTERVAL {start_day} DAY
                                 + INTERVAL (i * 7500) MILLISECOND AS t
                       FROM range({n}) r(i)),
                      (VALUES ('queued', 0), ('running', 1), ('success', 2)) v(s, j)
                 ORDER BY i, j;",
                n = minutes * 8,
            )
            .into_boxed_str(),
        );
        store.reader.execute_for_test(sql).await;
    }
    plant(&store, 60, 60).await;
    store
        .writer
        .maintain(crate::store::maintenance::Step::Checkpoint)
        .await
        .unwrap();
    let tasks = store.count("tasks").await;
    let first = size(&format!("60 days, {tasks} tasks"));
    println!("  {:.0} bytes per task", first as f64 / tasks as f64);
    let started = std::time::Instant::now();
    let retention = jobs::run(Job::Retention, &cx, now(), false).await.unwrap();
    let compaction = jobs::run(Job::Compaction, &cx, now(), false).await.unwrap();
    println!(
        "  retention ({:?}): {}",
        started.elapsed(),
        retention.detail
    );
    println!("  compaction: {}", compaction.detail);
    let after = size(&format!(
        "after retention, {} tasks",
        store.count("tasks").await
    ));
    // The next month arrives, and housekeeping runs again a month later.
    plant(&store, 0, 30).await;
    let later = now() + Duration::days(30);
    let retention = jobs::run(Job::Retention, &cx, later, false).await.unwrap();
    jobs::run(Job::Compaction, &cx, later, false).await.unwrap();
    println!("  month 2 retention: {}", retention.detail);
    let steady = size(&format!(
        "a month later, {} tasks",
        store.count("tasks").await
    ));
    println!(
        "  steady state: {:.0} bytes per kept task (file {} before retention, {} after, {} a month later)",
        steady as f64 / store.count("tasks").await as f64,
        jobs::human_bytes(first),
        jobs::human_bytes(after),
        jobs::human_bytes(steady)
    );
    assert!(
        steady <= first + first / 10,
        "the file must not keep growing: {first} -> {steady}"
    );
    // Offline, `taskscope housekeeping --rewrite` gives the free blocks back.
    let kept = store.count("tasks").await;
    let path = store.path.clone();
    let _dir = store.close();
    let (before, after) = crate::store::maintenance::rewrite(&path).unwrap();
    println!(
        "  rewrite: {} -> {} ({:.0} bytes per kept task)",
        jobs::human_bytes(before),
        jobs::human_bytes(after),
        after as f64 / kept as f64
    );
    let (_writer, reader, _thread) = store::open(&path, StoreOptions::default()).unwrap();
    let n = reader
        .column_for_test("SELECT count(*)::VARCHAR FROM tasks")
        .await;
    assert_eq!(n, [kept.to_string()]);
}
