//! Route tests on a store filled with known rows (planted with SQL, times fixed in the past):
//! every report answers exact numbers, bad windows are 400s, the CSV export has every row, and
//! every page renders.

use super::{router, AppState};
use crate::store::{self, StoreOptions, StoreReader, StoreWriter};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use broker_adapters::{Broker, Task, TaskState, Transition};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Five tasks between 10:00 and 10:05 on 2026-11-23:
/// - c1, c2, c3 `billing.add` (celery/celery) succeed in 10, 20 and 30 ms;
/// - c4 `billing.charge` (celery/celery) is retried at 10:01:30 and fails at 10:02:00 (100 ms);
/// - d1 `mail.send` (dramatiq/default) fails at 10:04:00, runtime unknown.
///
/// Backlog samples: celery/celery 5 (10:00:00), 7 (10:00:30), 2 (10:01:00), 0 (10:03:00);
/// dramatiq/default 1 (10:03:30).
const PLANT: &str = r#"
INSERT INTO tasks (broker, id, queue, name, state, args, kwargs, retries, enqueued_at, finished_at, runtime_ms, updated_at) VALUES
 ('celery', 'c1', 'celery', 'billing.add', 'success', '[1,2]', '{}', 0, '2026-11-23 10:00:10', '2026-11-23 10:01:00', 10, '2026-11-23 10:01:00'),
 ('celery', 'c2', 'celery', 'billing.add', 'success', '[2,"a,\"b\""]', '{}', 0, '2026-11-23 10:00:20', '2026-11-23 10:02:30', 20, '2026-11-23 10:02:30'),
 ('celery', 'c3', 'celery', 'billing.add', 'success', '[3]', '{}', 0, '2026-11-23 10:03:00', '2026-11-23 10:03:10', 30, '2026-11-23 10:03:10'),
 ('celery', 'c4', 'celery', 'billing.charge', 'failure', '[]', '{}', 1, '2026-11-23 10:00:30', '2026-11-23 10:02:00', 100, '2026-11-23 10:02:00'),
 ('dramatiq', 'd1', 'default', 'mail.send', 'failure', NULL, NULL, 0, '2026-11-23 10:03:30', '2026-11-23 10:04:00', NULL, '2026-11-23 10:04:00');
INSERT INTO transitions (broker, task_id, state, occurred_at, seq) VALUES
 ('celery', 'c1', 'queued', '2026-11-23 10:00:10', 1),
 ('celery', 'c2', 'queued', '2026-11-23 10:00:20', 2),
 ('celery', 'c4', 'queued', '2026-11-23 10:00:30', 3),
 ('celery', 'c1', 'running', '2026-11-23 10:00:50', 4),
 ('celery', 'c1', 'success', '2026-11-23 10:01:00', 5),
 ('celery', 'c4', 'retried', '2026-11-23 10:01:30', 6),
 ('celery', 'c4', 'failure', '2026-11-23 10:02:00', 7),
 ('celery', 'c2', 'success', '2026-11-23 10:02:30', 8),
 ('celery', 'c3', 'queued', '2026-11-23 10:03:00', 9),
 ('celery', 'c3', 'success', '2026-11-23 10:03:10', 10),
 ('dramatiq', 'd1', 'queued', '2026-11-23 10:03:30', 11),
 ('dramatiq', 'd1', 'failure', '2026-11-23 10:04:00', 12);
INSERT INTO queue_samples (broker, queue, sampled_at, length, delayed, dead, running) VALUES
 ('celery', 'celery', '2026-11-23 10:00:00', 5, 0, 0, 1),
 ('celery', 'celery', '2026-11-23 10:00:30', 7, 1, 0, 2),
 ('celery', 'celery', '2026-11-23 10:01:00', 2, 0, 0, 1),
 ('celery', 'celery', '2026-11-23 10:03:00', 0, 0, 0, 0),
 ('dramatiq', 'default', '2026-11-23 10:03:30', 1, 0, 3, 0);
INSERT INTO queue_latest (broker, queue, sampled_at, length, delayed, dead, running, oldest_enqueued_at) VALUES
 ('celery', 'celery', '2026-11-23 10:03:00', 0, 0, 0, 0, NULL),
 ('dramatiq', 'default', '2026-11-23 10:03:30', 1, 0, 3, 0, '2026-11-23 10:03:00');
"#;

const WINDOW: &str = "since=2026-11-23T10:00:00Z&until=2026-11-23T10:05:00Z&step=1m";

struct Fixture {
    app: axum::Router,
    _writer: StoreWriter,
    _reader: StoreReader,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    fixture_with(Options::default()).await
}

/// What a test changes of the router's state.
#[derive(Default)]
struct Options {
    access: super::Access,
    limits: super::limits::HttpLimits,
    task_metrics: Option<super::prometheus::TaskMetrics>,
    /// Keep the sender to shut down; `None`: never.
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

async fn fixture_with(options: Options) -> Fixture {
    let (fixture, _) = fixture_and_state(options).await;
    fixture
}

async fn fixture_and_state(options: Options) -> (Fixture, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, _handle) =
        store::open(&dir.path().join("t.duckdb"), StoreOptions::default()).unwrap();
    reader.execute_for_test(PLANT).await;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    metrics.set_brokers(vec![Broker::Celery, Broker::Dramatiq]);
    let task_metrics = options.task_metrics.unwrap_or_default();
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:01:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let mut task = Task::new(Broker::Celery, "c1", at);
    task.queue = Some("celery".into());
    task.name = Some("billing.add".into());
    // Enqueued 10:00:10, started 10:00:50: a 40 s wait, observed on entering `running`.
    task.enqueued_at = Some(at - chrono::Duration::seconds(50));
    task.started_at = Some(at - chrono::Duration::seconds(10));
    for state in [TaskState::Running, TaskState::Success] {
        task.state = state;
        task.runtime_ms = (state == TaskState::Success).then_some(10.0);
        task_metrics.record(&crate::store::TransitionEvent {
            transition: Transition {
                broker: Broker::Celery,
                task_id: "c1".into(),
                state,
                at,
                worker: None,
                detail: None,
                fingerprint: None,
            },
            task: std::sync::Arc::new(task.clone()),
        });
    }
    let state = AppState::new(
        reader.clone(),
        writer.clone(),
        metrics,
        Duration::from_secs(60),
        task_metrics,
        options.access,
        options.limits,
        options
            .shutdown
            .unwrap_or_else(|| tokio::sync::watch::channel(false).1),
    );
    let app = router(state.clone());
    (
        Fixture {
            app,
            _writer: writer,
            _reader: reader,
            _dir: dir,
        },
        state,
    )
}

/// Sends `request` and reads the whole answer.
async fn send(f: &Fixture, request: Request<Body>) -> axum::response::Response<String> {
    let resp = f.app.clone().oneshot(request).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    axum::response::Response::from_parts(parts, String::from_utf8_lossy(&body).into_owned())
}

async fn get(f: &Fixture, uri: &str) -> (StatusCode, String) {
    let resp = f
        .app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get_json(f: &Fixture, uri: &str) -> Value {
    let (status, body) = get(f, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn backlog_report_is_the_peak_sample_per_bucket_per_queue() {
    let f = fixture().await;
    let v = get_json(&f, &format!("/api/reports/backlog?{WINDOW}")).await;
    assert_eq!(
        v["series"],
        json!([
            {"broker": "celery", "queue": "celery", "points": [
                ["2026-11-23T10:00:00.000Z", 7], ["2026-11-23T10:01:00.000Z", 2],
                ["2026-11-23T10:03:00.000Z", 0]],
             "other_points": [
                ["2026-11-23T10:00:00.000Z", 1, 0, 2], ["2026-11-23T10:01:00.000Z", 0, 0, 1],
                ["2026-11-23T10:03:00.000Z", 0, 0, 0]]},
            {"broker": "dramatiq", "queue": "default", "points": [
                ["2026-11-23T10:03:00.000Z", 1]],
             "other_points": [["2026-11-23T10:03:00.000Z", 0, 3, 0]]},
        ])
    );
    assert_eq!(v["step_ms"], 60_000);
    let only = get_json(
        &f,
        &format!("/api/reports/backlog?{WINDOW}&broker=dramatiq"),
    )
    .await;
    assert_eq!(only["series"].as_array().unwrap().len(), 1, "{only}");
    let coarse = get_json(
        &f,
        "/api/reports/backlog?since=2026-11-23T10:00:00Z&until=2026-11-23T10:05:00Z&step=5m&queue=celery",
    )
    .await;
    assert_eq!(
        coarse["series"][0]["points"],
        json!([["2026-11-23T10:00:00.000Z", 7]])
    );
}

#[tokio::test]
async fn failures_report_counts_failure_and_retry_transitions_per_bucket() {
    let f = fixture().await;
    let v = get_json(&f, &format!("/api/reports/failures?{WINDOW}")).await;
    let t = |m: u32| format!("2026-11-23T10:0{m}:00.000Z");
    assert_eq!(
        v["total"],
        json!([
            [t(0), 0, 0],
            [t(1), 0, 1],
            [t(2), 1, 0],
            [t(3), 0, 0],
            [t(4), 1, 0]
        ])
    );
    assert_eq!(
        v["series"],
        json!([
            {"name": "billing.charge", "points": [[t(0), 0, 0], [t(1), 0, 1], [t(2), 1, 0], [t(3), 0, 0], [t(4), 0, 0]]},
            {"name": "mail.send", "points": [[t(0), 0, 0], [t(1), 0, 0], [t(2), 0, 0], [t(3), 0, 0], [t(4), 1, 0]]},
        ])
    );
    assert_eq!(
        v["top"],
        json!([
            {"name": "billing.charge", "runs": 1, "failures": 1, "retries": 1, "failure_rate": 1.0},
            {"name": "mail.send", "runs": 1, "failures": 1, "retries": 0, "failure_rate": 1.0},
            {"name": "billing.add", "runs": 3, "failures": 0, "retries": 0, "failure_rate": 0.0},
        ])
    );
    let names = get_json(&f, &format!("/api/reports/names?{WINDOW}&order=runs")).await;
    assert_eq!(names["names"][0]["name"], "billing.add", "{names}");
    assert_eq!(names["names"][0]["runs"], 3, "{names}");
}

#[tokio::test]
async fn runtime_report_gives_percentiles_per_name_slowest_first() {
    let f = fixture().await;
    let v = get_json(&f, &format!("/api/reports/runtime?{WINDOW}")).await;
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "d1 has no runtime: {v}");
    assert_eq!(
        tasks[0],
        json!({"broker": "celery", "name": "billing.charge", "count": 1, "p50_ms": 100.0,
               "p95_ms": 100.0, "p99_ms": 100.0, "max_ms": 100.0, "mean_ms": 100.0})
    );
    let add = &tasks[1];
    assert_eq!(add["name"], "billing.add");
    assert_eq!(add["count"], 3);
    for (field, expected) in [
        ("p50_ms", 20.0),
        ("p95_ms", 29.0),
        ("p99_ms", 29.8),
        ("max_ms", 30.0),
        ("mean_ms", 20.0),
    ] {
        let got = add[field].as_f64().unwrap();
        assert!(
            (got - expected).abs() < 1e-9,
            "{field}: {got} != {expected}"
        );
    }
    // finished_at 10:01:00 and 10:02:30 only.
    let early = get_json(
        &f,
        "/api/reports/runtime?since=2026-11-23T10:00:00Z&until=2026-11-23T10:02:00Z",
    )
    .await;
    assert_eq!(early["tasks"][0]["count"], 1, "{early}");
    assert_eq!(early["tasks"][0]["max_ms"], 10.0, "{early}");
}

#[tokio::test]
async fn wait_report_gives_percentiles_per_queue_and_name_from_enqueueing_or_eta() {
    let dir = tempfile::tempdir().unwrap();
    let (_writer, reader, _handle) =
        store::open(&dir.path().join("t.duckdb"), StoreOptions::default()).unwrap();
    reader.execute_for_test(PLANT).await;
    // c1, c2 start 2 s after their enqueueing; c3 was delayed to 10:03:05 and started 1 s
    // after its eta; c4 never started (no wait); d1 started 500 ms after its enqueueing.
    reader
        .execute_for_test(
            "UPDATE tasks SET started_at = enqueued_at + INTERVAL 2 SECOND WHERE id_text IN ('c1', 'c2');
             UPDATE tasks SET eta = '2026-11-23 10:03:05', started_at = '2026-11-23 10:03:06' WHERE id_text = 'c3';
             UPDATE tasks SET started_at = '2026-11-23 10:03:30.5' WHERE id_text = 'd1';",
        )
        .await;
    let state = AppState::new(
        reader.clone(),
        _writer.clone(),
        Arc::new(crate::metrics::Metrics::default()),
        Duration::from_secs(60),
        Default::default(),
        Default::default(),
        Default::default(),
        tokio::sync::watch::channel(false).1,
    );
    let f = Fixture {
        app: router(state),
        _writer,
        _reader: reader,
        _dir: dir,
    };
    let v = get_json(&f, &format!("/api/reports/wait?{WINDOW}")).await;
    assert_eq!(
        v["tasks"],
        json!([
            {"broker": "celery", "queue": "celery", "name": "billing.add", "count": 3,
             "p50_ms": 2000.0, "p95_ms": 2000.0, "p99_ms": 2000.0, "max_ms": 2000.0},
            {"broker": "dramatiq", "queue": "default", "name": "mail.send", "count": 1,
             "p50_ms": 500.0, "p95_ms": 500.0, "p99_ms": 500.0, "max_ms": 500.0},
        ]),
        "{v}"
    );
    let default = get_json(&f, &format!("/api/reports/wait?{WINDOW}&queue=default")).await;
    assert_eq!(default["tasks"].as_array().unwrap().len(), 1, "{default}");
    let task = get_json(&f, "/api/tasks/c3").await;
    assert_eq!(task["wait_ms"], 1000.0, "{task}");
    let never = get_json(&f, "/api/tasks/c4").await;
    assert!(never["wait_ms"].is_null(), "{never}");
    assert!(never["fingerprint"].is_null(), "{never}");
}

#[tokio::test]
async fn throughput_report_counts_transitions_per_state_per_bucket() {
    let f = fixture().await;
    let v = get_json(&f, &format!("/api/reports/throughput?{WINDOW}")).await;
    let series = v["series"].as_array().unwrap();
    let counts = |state: &str| -> Vec<u64> {
        series.iter().find(|s| s["state"] == state).unwrap()["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_u64().unwrap())
            .collect()
    };
    assert_eq!(counts("queued"), [3, 0, 0, 2, 0]);
    assert_eq!(counts("running"), [1, 0, 0, 0, 0]);
    assert_eq!(counts("success"), [0, 1, 1, 1, 0]);
    assert_eq!(counts("failure"), [0, 0, 1, 0, 1]);
    assert_eq!(counts("retried"), [0, 1, 0, 0, 0]);
    assert_eq!(counts("abandoned"), [0, 0, 0, 0, 0]);
    let named = get_json(
        &f,
        &format!("/api/reports/throughput?{WINDOW}&name=billing.add"),
    )
    .await;
    let queued: u64 = named["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_u64().unwrap())
        .sum();
    assert_eq!(queued, 3, "{named}");
}

#[tokio::test]
async fn bad_report_windows_are_400_with_an_error() {
    let f = fixture().await;
    for uri in [
        "/api/reports/backlog?step=0s",
        "/api/reports/backlog?step=soon",
        "/api/reports/failures?since=yesterday",
        "/api/reports/runtime?since=1h&until=2h",
        "/api/reports/backlog?since=30d&step=100ms",
        "/api/reports/backlog?broker=kafka",
        "/api/reports/names?order=alphabetical",
    ] {
        let (status, body) = get(&f, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string(), "{uri}: {body}");
    }
}

#[tokio::test]
async fn csv_export_has_a_header_and_every_matching_task() {
    let f = fixture().await;
    let (status, body) = get(&f, "/export.csv").await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], crate::store::CSV_HEADER.trim_end());
    assert_eq!(lines.len(), 6, "{body}");
    assert!(
        lines.contains(
            &r#""c2","celery","celery","billing.add","success","[2,""a,\""b\""""]","{}",,,,0,,,2026-11-23T10:00:20.000Z,,2026-11-23T10:02:30.000Z,20.0,2026-11-23T10:02:30.000Z,"#
        ),
        "{body}"
    );
    assert!(
        crate::store::CSV_HEADER.ends_with(",updated_at,fingerprint\n"),
        "fingerprint is the last column, after the old ones"
    );
    let (_, failed) = get(&f, "/export.csv?state=failure&limit=1").await;
    assert_eq!(failed.lines().count(), 3, "limit is ignored: {failed}");

    let (status, _) = get(&f, "/export.csv?state=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn report_pages_render_charts_and_drill_down_links() {
    let f = fixture().await;
    let (status, html) = get(&f, &format!("/reports?{WINDOW}")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    for needle in [
        "<svg class=\"plot\"",
        "billing.charge",
        "/tasks?name=billing.charge&amp;state=failure&amp;since=2026-11-23T10%3A00%3A00.000Z",
        "29.0 ms",
        "Failures and retries by task",
        "billing.charge 1 · mail.send 0",
    ] {
        assert!(html.contains(needle), "/reports lacks {needle}");
    }
    for page in ["/", "/queues", "/workers", "/reports?range=30d", "/tasks"] {
        let (status, html) = get(&f, page).await;
        assert_eq!(status, StatusCode::OK, "{page}: {html}");
        assert!(html.contains("/static/app.js"), "{page}");
    }
    let (status, _) = get(&f, "/reports?step=0s").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, js) = get(&f, "/static/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(js.contains("EventSource"));
}

#[tokio::test]
async fn metrics_declare_every_contract_name() {
    let f = fixture().await;
    let (status, text) = get(&f, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "taskscope_tasks",
        "taskscope_queue_length",
        "taskscope_task_runtime_seconds",
        "taskscope_task_wait_seconds",
        "taskscope_queue_oldest_age_seconds",
        "taskscope_workers_alive",
        "taskscope_ingest_events",
        "taskscope_decode_errors",
        "taskscope_redis_connected",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "/metrics lacks {name}:\n{text}"
        );
    }
    for needle in [
        "taskscope_queue_length{broker=\"dramatiq\",queue=\"default\"} 1",
        "taskscope_tasks_total{broker=\"celery\",queue=\"celery\",name=\"billing.add\",state=\"success\"} 1",
        "taskscope_task_runtime_seconds_count{broker=\"celery\",name=\"billing.add\"} 1",
        "taskscope_task_wait_seconds_count{broker=\"celery\",queue=\"celery\"} 1",
        "taskscope_task_wait_seconds_sum{broker=\"celery\",queue=\"celery\"} 40.0",
        "taskscope_task_wait_seconds_bucket{le=\"30.0\",broker=\"celery\",queue=\"celery\"} 0",
        "taskscope_task_wait_seconds_bucket{le=\"60.0\",broker=\"celery\",queue=\"celery\"} 1",
        "taskscope_workers_alive{broker=\"dramatiq\"} 0",
        "taskscope_decode_errors_total{broker=\"celery\"} 0",
        "taskscope_ingest_events_total{source=\"pubsub\"} 0",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    // DuckDB's own memory: the fixture's file holds tables, so some blocks are cached.
    let engine: u64 = text
        .lines()
        .filter(|l| l.starts_with("taskscope_store_engine_memory_bytes{tag="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(engine > 0, "no DuckDB memory in /metrics:\n{text}");
}

/// `oldest_age_ms` is computed when asked, from the stored enqueue time of the oldest waiting
/// message; `null` when the broker does not say (Celery), and no gauge then.
#[tokio::test]
async fn queues_answer_the_oldest_age_now_and_null_when_unknown() {
    let f = fixture().await;
    let oldest = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:03:00Z").unwrap();
    // Fractional milliseconds, as the answer has them (whole ones cut `after` below the age).
    let age_now = || {
        let age = chrono::Utc::now() - oldest.with_timezone(&chrono::Utc);
        age.num_microseconds().unwrap() as f64 / 1000.0
    };
    let before = age_now();
    let body = get_json(&f, "/api/queues").await;
    let after = age_now();
    let queues = body["queues"].as_array().unwrap();
    let by_name = |name: &str| queues.iter().find(|q| q["name"] == name).unwrap().clone();
    assert_eq!(by_name("celery")["oldest_age_ms"], Value::Null);
    let age = by_name("default")["oldest_age_ms"].as_f64().unwrap();
    assert!(
        (before..=after).contains(&age),
        "{before} <= {age} <= {after}"
    );
    let (_, text) = get(&f, "/metrics").await;
    let gauge: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("taskscope_queue_oldest_age_seconds{"))
        .collect();
    assert_eq!(gauge.len(), 1, "{text}");
    assert!(
        gauge[0].starts_with(
            "taskscope_queue_oldest_age_seconds{broker=\"dramatiq\",queue=\"default\"} "
        ),
        "{gauge:?}"
    );
    let seconds: f64 = gauge[0].rsplit(' ').next().unwrap().parse().unwrap();
    assert!((seconds - age / 1000.0).abs() < 60.0, "{seconds} vs {age}");
}

mod hardening;
