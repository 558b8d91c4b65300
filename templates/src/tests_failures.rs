//! The failure groups page (`/failures`) rendered with sample groups: what its users rely on.

use crate::charts::TimeAxis;
use crate::failures::{render, sparkline, FailuresView, GroupRow};
use crate::reports::ReportWindow;
use chrono::{DateTime, Duration, TimeZone, Utc};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn window() -> ReportWindow {
    let since = now() - Duration::hours(24);
    ReportWindow {
        since,
        until: now(),
        axis: TimeAxis {
            start: since,
            step_ms: 3_600_000,
            count: 24,
        },
        range: Some("24h".into()),
        since_text: None,
        until_text: None,
        broker: Some("rq".into()),
        queue: None,
        name: None,
    }
}

fn group(exception: &str, message: &str, first_seen_hours_ago: i64, count: u64) -> GroupRow {
    let mut counts = vec![0; 24];
    counts[20] = count;
    GroupRow {
        fingerprint: format!("{:016x}", count * 7919 + first_seen_hours_ago as u64),
        exception: Some(exception.into()),
        message: message.into(),
        frames: vec!["rq.job:_execute".into(), "app.billing:charge".into()],
        count,
        first_seen: Some(now() - Duration::hours(first_seen_hours_ago)),
        last_seen: Some(now() - Duration::minutes(3)),
        names: vec!["billing.charge".into()],
        brokers: vec!["rq".into()],
        sample_task_id: Some("job/1 <x>".into()),
        counts,
    }
}

fn view(groups: Vec<GroupRow>) -> FailuresView {
    FailuresView {
        version: "0.1.0".into(),
        window: window(),
        all: false,
        groups,
    }
}

#[test]
fn groups_link_to_their_tasks_with_the_window_filters_and_mark_new_ones() {
    let html = render(
        &view(vec![
            group("ValueError", "card declined <n>", 72, 30),
            group("LookupError", "no account <uuid>", 2, 4),
        ]),
        &now(),
    )
    .into_string();
    assert!(html.contains("card declined &lt;n&gt;"), "escaped message");
    assert!(html.contains("ValueError") && html.contains("LookupError"));
    let old = group("ValueError", "", 72, 30).fingerprint;
    let new = group("LookupError", "", 2, 4).fingerprint;
    assert!(html.contains(&format!("/tasks?broker=rq&amp;fingerprint={old}")));
    assert!(html.contains(&format!("/tasks?broker=rq&amp;fingerprint={new}")));
    // Only the group first seen in the range is new.
    assert_eq!(html.matches("new-badge").count(), 1, "{html}");
    assert!(html.contains("1 new"));
    assert!(
        html.contains("/tasks/job%2F1%20%3Cx%3E"),
        "sample task link encoded"
    );
    assert!(html.contains("/api/failures/groups?range=24h&amp;broker=rq&amp;state=open"));
    assert!(
        html.contains("aria-current=\"page\""),
        "Failures is in the navigation"
    );
}

#[test]
fn no_failures_says_so() {
    let html = render(&view(Vec::new()), &now()).into_string();
    assert!(html.contains("No failure in this range."));
}

#[test]
fn sparklines_draw_one_bar_per_non_empty_bucket() {
    let svg = sparkline(&[0, 2, 0, 4], "6 in this range").into_string();
    assert_eq!(svg.matches("<rect").count(), 2);
    assert!(svg.contains("viewBox=\"0 0 4 20\""));
    assert!(svg.contains("<title>6 in this range</title>"));
    let flat = sparkline(&[], "none").into_string();
    assert_eq!(flat.matches("<rect").count(), 0);
}

/// Not a check: writes the sample page next to the others (`TASKSCOPE_RENDER_DIR`).
#[test]
fn render_sample_when_asked() {
    let Some(dir) = std::env::var_os("TASKSCOPE_RENDER_DIR") else {
        return;
    };
    let html = render(
        &view(vec![
            group("ValueError", "card declined <n>", 72, 30),
            group("LookupError", "no account <uuid>", 2, 4),
        ]),
        &now(),
    )
    .into_string()
    .replace("href=\"/static/app.css\"", "href=\"app.css\"");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(std::path::Path::new(&dir).join("failures.html"), html).unwrap();
}
