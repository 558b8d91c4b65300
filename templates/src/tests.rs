//! Every page rendered with sample data, checked for what its users rely on.
//!
//! `TASKSCOPE_RENDER_DIR=/some/dir cargo test -p templates` also writes each sample page there
//! (with `app.css` next to them) to look at in a browser.

use crate::overview::OverviewView;
use crate::task::TaskDetailView;
use crate::tasks::{TaskFilters, TaskListView};
use broker_adapters::{Broker, QueueSample, Task, TaskState, Transition, Worker};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 20, 0).unwrap()
}

fn ago(secs: i64) -> DateTime<Utc> {
    now() - Duration::milliseconds(secs * 1000 + 706)
}

fn sample_task(i: usize, state: TaskState) -> Task {
    let names = [
        "billing.add",
        "mail.send_welcome",
        "reports.build_monthly_pdf",
        "images.resize",
    ];
    let brokers = [Broker::Celery, Broker::Dramatiq, Broker::Rq, Broker::Taskiq];
    let mut t = Task::new(
        brokers[i % 4],
        format!("7c9d48{i:02}-a02c-4dcb-b08a-c82e543624e9"),
        ago(i as i64 * 37),
    );
    t.name = Some(names[i % 4].to_string());
    t.queue = Some(["celery", "default", "high", "emails"][i % 4].to_string());
    t.state = state;
    t.args = Some(json!([i, 2]));
    t.kwargs = Some(json!({}));
    t.worker =
        (state != TaskState::Queued).then(|| format!("celery@worker-{}.prod.internal", i % 3));
    t.enqueued_at = Some(ago(i as i64 * 37 + 5));
    if state != TaskState::Queued {
        t.started_at = Some(ago(i as i64 * 37 + 3));
    }
    if state.is_final() {
        t.finished_at = Some(ago(i as i64 * 37));
        t.runtime_ms = Some([12.5, 2_010.0, 184_000.0, 0.42][i % 4]);
    }
    if state == TaskState::Failure || state == TaskState::Retried {
        t.error = Some("ValueError: card declined 3".to_string());
        t.retries = 2;
    }
    if state == TaskState::Success {
        t.result = Some(json!(3));
    }
    t
}

fn sample_tasks() -> Vec<Task> {
    (0..14)
        .map(|i| sample_task(i, TaskState::ALL[i % 6]))
        .collect()
}

fn sample_overview() -> OverviewView {
    OverviewView {
        version: "0.1.0".to_string(),
        redis_connected: true,
        brokers: vec!["celery".to_string(), "rq".to_string()],
        by_state: vec![
            (TaskState::Queued, 42),
            (TaskState::Running, 3),
            (TaskState::Success, 12_840),
            (TaskState::Failure, 17),
            (TaskState::Retried, 5),
        ],
        queues: vec![
            QueueSample {
                broker: Broker::Celery,
                name: "celery".to_string(),
                length: 40,
                delayed: 2,
                dead: 0,
                running: 3,
                sampled_at: ago(2),
                oldest_enqueued_at: None,
            },
            QueueSample {
                broker: Broker::Rq,
                name: "high priority/emails".to_string(),
                length: 2,
                delayed: 0,
                dead: 4,
                running: 0,
                sampled_at: ago(2),
                oldest_enqueued_at: Some(ago(192)),
            },
        ],
        workers: vec![
            Worker {
                broker: Broker::Celery,
                id: "celery@worker-1.prod.internal".to_string(),
                hostname: Some("worker-1.prod.internal".to_string()),
                alive: true,
                last_seen: ago(3),
                running: 3,
                pid: Some(4242),
                online_since: ago(3600),
            },
            Worker {
                broker: Broker::Rq,
                id: "rq:worker:8a1f".to_string(),
                hostname: None,
                alive: false,
                last_seen: ago(900),
                running: 0,
                pid: None,
                online_since: ago(7200),
            },
        ],
        recent: sample_tasks().into_iter().take(6).collect(),
        decode_errors: 0,
        warnings: vec![],
        charts: None,
        housekeeping: vec![crate::HousekeepingLine {
            job: "retention".to_string(),
            last_run: Some(ago(600)),
            duration_ms: 35.0,
            detail: "deleted 120 tasks and 360 transitions".to_string(),
            error: None,
            next_run: Some(ago(-3000)),
        }],
        alerts: crate::AlertsView::default(),
    }
}

fn sample_detail() -> TaskDetailView {
    let mut task = sample_task(3, TaskState::Failure);
    task.args = Some(json!(["<script>alert(1)</script>", {"amount": 12.5, "currency": "EUR"}]));
    task.kwargs = Some(json!({"customer_id": 991, "notify": true}));
    task.traceback = Some(
        "Traceback (most recent call last):\n  File \"/app/billing/tasks.py\", line 42, in add\n    \
         charge(card, amount)\n  File \"/app/billing/cards.py\", line 7, in charge\n    \
         raise ValueError(f\"card declined {attempt}\")\nValueError: card declined 3"
            .to_string(),
    );
    let id = task.id.clone();
    let step = |state, secs: i64, worker: Option<&str>, detail: Option<&str>| Transition {
        task_id: id.clone(),
        broker: task.broker,
        state,
        at: ago(secs),
        worker: worker.map(str::to_string),
        detail: detail.map(str::to_string),
        fingerprint: None,
    };
    let transitions = vec![
        step(TaskState::Queued, 130, None, Some("queue")),
        step(
            TaskState::Running,
            129,
            Some("celery@worker-0"),
            Some("event"),
        ),
        step(
            TaskState::Retried,
            120,
            Some("celery@worker-0"),
            Some("retry 1: ValueError: card declined 1"),
        ),
        step(
            TaskState::Running,
            60,
            Some("celery@worker-2"),
            Some("event"),
        ),
        step(
            TaskState::Failure,
            58,
            Some("celery@worker-2"),
            Some("ValueError: card declined 3"),
        ),
    ];
    TaskDetailView {
        version: "0.1.0".to_string(),
        task,
        transitions,
        actions: Vec::new(),
        forms: None,
    }
}

fn sample_list() -> TaskListView {
    TaskListView {
        version: "0.1.0".to_string(),
        filters: TaskFilters {
            broker: Some("celery".to_string()),
            state: Some("failure,retried".to_string()),
            q: Some("card & co".to_string()),
            queue: Some(String::new()),
            ..TaskFilters::default()
        },
        tasks: sample_tasks(),
        next_cursor: Some("2026-11-23T12:16:07.706Z|7c9d".to_string()),
        bulk_actions: false,
    }
}

#[test]
fn overview_links_every_state_count_to_its_task_list() {
    let html = crate::overview::render(&sample_overview(), &now()).into_string();
    for state in TaskState::ALL {
        assert!(
            html.contains(&format!("href=\"/tasks?state={state}\"")),
            "{state}"
        );
        assert!(html.contains(&format!("stat state-{state}")), "{state}");
    }
    assert!(html.contains("12,840"));
    assert!(html.contains("href=\"/tasks?broker=rq&amp;queue=high%20priority%2Femails\""));
    assert!(html.contains("badge alive") && html.contains("badge dead"));
    assert!(html.contains("href=\"/static/app.css\""));
}

#[test]
fn a_worker_up_before_taskscope_looked_says_so_not_1970() {
    let mut view = sample_overview();
    view.workers[0].online_since = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    let html = crate::overview::render(&view, &now()).into_string();
    assert!(html.contains("before taskscope"), "{html}");
    assert!(!html.contains("1970"), "{html}");
}

#[test]
fn overview_shows_the_oldest_waiting_age_and_a_dash_when_the_broker_does_not_say() {
    let html = crate::overview::render(&sample_overview(), &now()).into_string();
    assert!(html.contains(">Oldest</th>"), "{html}");
    // rq: enqueued 192.7 s before now; celery (40 waiting): unknown.
    assert!(html.contains(">3 m 13 s</td>"), "{html}");
    assert!(
        html.contains("<td class=\"num nowrap\"><span class=\"muted\">"),
        "{html}"
    );
}

#[test]
fn overview_is_quiet_when_all_is_well() {
    let mut view = sample_overview();
    view.workers[1].alive = true;
    let html = crate::overview::render(&view, &now()).into_string();
    assert!(!html.contains("class=\"banner\""), "{html}");
}

#[test]
fn overview_warns_when_redis_is_down_or_queues_have_no_worker() {
    let mut view = sample_overview();
    view.redis_connected = false;
    view.decode_errors = 3;
    view.warnings
        .push("CONFIG SET refused: polling every 5s".to_string());
    let html = crate::overview::render(&view, &now()).into_string();
    assert!(html.contains("Redis is disconnected"));
    // rq has 2 waiting messages and only a dead worker; celery has a live one.
    assert!(html.contains("2 rq messages wait in queues but no rq worker is alive"));
    assert!(!html.contains("no celery worker"));
    assert!(html.contains("3 messages could not be decoded"));
    assert!(html.contains("CONFIG SET refused"));
}

#[test]
fn task_list_shows_badges_and_links_with_encoded_ids() {
    let mut view = sample_list();
    view.tasks[0].id = "a/b c?d".to_string();
    let html = crate::tasks::render(&view, &now()).into_string();
    assert!(html.contains("class=\"badge state-failure\""));
    assert!(html.contains("href=\"/tasks/a%2Fb%20c%3Fd\""));
    assert!(html.contains("2.01 s"));
}

#[test]
fn task_list_next_page_link_keeps_the_filters() {
    let html = crate::tasks::render(&sample_list(), &now()).into_string();
    let expected = "href=\"/tasks?broker=celery&amp;state=failure%2Cretried&amp;q=card%20%26%20co\
                    &amp;cursor=2026-11-23T12%3A16%3A07.706Z%7C7c9d\"";
    assert!(html.contains(expected), "{html}");
    // The comma list is kept as its own selected option, not lost on resubmit.
    assert!(html.contains("<option value=\"failure,retried\" selected>"));
    assert!(html.contains("<option value=\"celery\" selected>"));
}

#[test]
fn task_list_without_results_says_so() {
    let mut view = sample_list();
    view.tasks.clear();
    view.next_cursor = None;
    let html = crate::tasks::render(&view, &now()).into_string();
    assert!(html.contains("No task matches these filters."));
    assert!(!html.contains("Next page"));
    view.filters = TaskFilters::default();
    let html = crate::tasks::render(&view, &now()).into_string();
    assert!(html.contains("No task seen yet."));
}

#[test]
fn task_detail_escapes_arguments_and_shows_the_traceback() {
    let html = crate::task::render(&sample_detail(), &now()).into_string();
    assert!(!html.contains("<script>alert(1)</script>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("class=\"code traceback\""));
    assert!(html.contains("raise ValueError(f&quot;card declined {attempt}&quot;)"));
    assert!(html.contains("ValueError: card declined 3"));
    assert!(html.contains("&quot;customer_id&quot;: 991"));
    assert!(html.contains("class=\"badge state-failure\""));
}

#[test]
fn task_detail_timeline_is_oldest_first() {
    let html = crate::task::render(&sample_detail(), &now()).into_string();
    let first = html.find("retry 1: ValueError").unwrap();
    let last = html.rfind("card declined 3").unwrap();
    assert!(first < last);
    assert!(html.contains("+1 m 0 s"));
    assert!(html.contains("+2.00 s"));
}

#[test]
fn counts_get_thousands_separators() {
    use crate::components::count;
    assert_eq!(count(0), "0");
    assert_eq!(count(999), "999");
    assert_eq!(count(12_840), "12,840");
    assert_eq!(count(1_234_567), "1,234,567");
}

#[test]
fn not_found_and_error_pages_escape_their_message() {
    let html = crate::not_found("0.1.0", "no task with id \"<b>x</b>\"").into_string();
    assert!(html.contains("Not found") && html.contains("&lt;b&gt;x&lt;/b&gt;"));
    let html =
        crate::error_page("0.1.0", "DuckDB is locked: stop the other taskscope").into_string();
    assert!(html.contains("DuckDB is locked"));
}

/// Not a check: writes the sample pages for a human (or a headless browser) to look at.
#[test]
fn render_samples_when_asked() {
    let Some(dir) = std::env::var_os("TASKSCOPE_RENDER_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut warned = sample_overview();
    warned.redis_connected = false;
    let mut empty = sample_list();
    empty.tasks.clear();
    empty.next_cursor = None;
    let pages = [
        (
            "overview.html",
            crate::overview::render(&sample_overview(), &now()),
        ),
        (
            "overview-warn.html",
            crate::overview::render(&warned, &now()),
        ),
        ("tasks.html", crate::tasks::render(&sample_list(), &now())),
        ("tasks-empty.html", crate::tasks::render(&empty, &now())),
        ("task.html", crate::task::render(&sample_detail(), &now())),
        (
            "not-found.html",
            crate::not_found("0.1.0", "No task with id \"abc\"."),
        ),
    ];
    for (file, markup) in pages {
        let html = markup
            .into_string()
            .replace("href=\"/static/app.css\"", "href=\"app.css\"");
        std::fs::write(dir.join(file), html).unwrap();
    }
    std::fs::write(dir.join("app.css"), crate::APP_CSS).unwrap();
}

mod charts {
    use crate::charts::{bar_chart, line_chart, BarSeries, LineSeries, TimeAxis};
    use chrono::{TimeZone, Utc};

    fn axis(count: usize) -> TimeAxis {
        TimeAxis {
            start: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap(),
            step_ms: 60_000,
            count,
        }
    }

    fn href(from: chrono::DateTime<Utc>, _to: chrono::DateTime<Utc>) -> String {
        format!("/tasks?since={}", from.timestamp())
    }

    #[test]
    fn an_empty_range_draws_the_frame_with_a_note() {
        let html = line_chart(&axis(5), &[], &href, "No samples here.").into_string();
        assert!(html.contains("No samples here."), "{html}");
        assert!(html.contains("<svg"), "{html}");
        assert_eq!(
            html.matches("class=\"hit\"").count(),
            5,
            "one column per bucket"
        );
    }

    #[test]
    fn a_single_point_is_a_dot_not_a_missing_line() {
        let series = LineSeries {
            label: "celery".into(),
            class: "series-0".into(),
            points: vec![(axis(5).bucket_start(2), 7)],
        };
        let html = line_chart(&axis(5), &[series], &href, "empty").into_string();
        assert!(!html.contains("empty"), "{html}");
        assert!(html.contains("class=\"dot series-0\""), "{html}");
        assert!(
            html.contains("celery 7"),
            "the tooltip names the value: {html}"
        );
    }

    #[test]
    fn bars_stack_in_state_colours_and_link_each_bucket() {
        let series = [
            BarSeries {
                label: "failure".into(),
                class: "state-failure".into(),
                values: vec![0, 2, 0],
            },
            BarSeries {
                label: "retried".into(),
                class: "state-retried".into(),
                values: vec![1, 2, 0],
            },
        ];
        let html = bar_chart(&axis(3), &series, &href, "failures", "none").into_string();
        assert_eq!(html.matches("class=\"bar state-failure\"").count(), 1);
        assert_eq!(html.matches("class=\"bar state-retried\"").count(), 2);
        assert!(html.contains("failure 2 · retried 2"), "{html}");
        let first = axis(3).bucket_start(0).timestamp();
        assert!(html.contains(&format!("/tasks?since={first}")), "{html}");
        assert!(!html.contains(">none<"), "{html}");
        let zero = bar_chart(&axis(3), &[], &href, "failures", "none").into_string();
        assert!(zero.contains(">none<"), "{zero}");
    }
}

mod workers_page {
    use crate::workers::{render, WorkersView};
    use broker_adapters::{Broker, QueueSample, Worker};
    use chrono::{TimeZone, Utc};

    fn view(waiting: u64, alive: bool) -> WorkersView {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        WorkersView {
            version: "0.1.0".into(),
            workers: vec![Worker {
                broker: Broker::Celery,
                id: "celery@w1".into(),
                hostname: Some("w1".into()),
                pid: Some(7),
                alive,
                last_seen: now,
                online_since: now,
                running: 0,
            }],
            queues: vec![QueueSample {
                broker: Broker::Celery,
                name: "celery".into(),
                length: waiting,
                delayed: 0,
                dead: 0,
                running: 0,
                sampled_at: now,
                oldest_enqueued_at: None,
            }],
        }
    }

    #[test]
    fn the_no_worker_warning_shows_only_when_messages_wait_with_no_worker_alive() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let warn = "no celery worker is alive";
        assert!(render(&view(3, false), &now).into_string().contains(warn));
        assert!(
            !render(&view(0, false), &now).into_string().contains(warn),
            "drained queue"
        );
        assert!(
            !render(&view(3, true), &now).into_string().contains(warn),
            "a worker is up"
        );
        assert!(render(&view(0, false), &now)
            .into_string()
            .contains("0 alive"));
        assert!(render(&view(0, false), &now)
            .into_string()
            .contains("1 dead"));
    }
}
