//! Failure groups end to end (issue #19): real `rq worker` processes fail jobs with two
//! exception types whose messages carry varying numbers, then a third type with varying ids
//! appears later; taskscope must form exactly three groups with the right counts, on
//! `/api/failures/groups`, `?fingerprint=` of `/api/tasks` and the `/failures` page.
//!
//! RQ is the broker here because its failures are the easiest to drive: one enqueue per
//! failure, the traceback in the results stream. Run: `cargo test --test failure_groups`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn enqueue(redis: &RedisServer, kind: &str, args: Value, retry: Option<u32>) -> String {
    let opts = RqProduceOpts {
        args: Some(args),
        retry,
        ..RqProduceOpts::default()
    };
    rq_produce(&redis.url(), kind, 1, &opts).remove(0)
}

fn group<'a>(groups: &'a [Value], exception: &str) -> &'a Value {
    groups
        .iter()
        .find(|g| g["exception"] == exception)
        .unwrap_or_else(|| panic!("no {exception} group in {groups:?}"))
}

fn groups(ts: &Taskscope, query: &str) -> Vec<Value> {
    ts.get(&format!("/api/failures/groups?{query}"))["groups"]
        .as_array()
        .expect("groups")
        .clone()
}

fn task_ids(ts: &Taskscope, fingerprint: &str) -> BTreeSet<String> {
    let page = ts.get(&format!("/api/tasks?fingerprint={fingerprint}&limit=100"));
    page["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

fn page_html(ts: &Taskscope, path: &str) -> String {
    let resp = reqwest::blocking::get(ts.url(path)).expect("GET page");
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.text().expect("html")
}

#[test]
fn two_exceptions_then_a_new_one_form_three_groups_with_their_counts() {
    let _slot = test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--brokers", "rq", "--sample-every", "1s"],
    );
    let _worker = RqWorker::start(&redis.url(), &["default"], &[], &[]);

    // ValueError("card declined <n>") three times, RuntimeError("flaky <n>") twice and once
    // retried before failing. RQ's retried attempt counts no error: RQ keeps none for it (an
    // attempt that raised with retries left gets no results entry and no `exc_info`), so 3 + 3.
    let declined: Vec<String> = [3, 17, 250]
        .iter()
        .map(|n| enqueue(&redis, "fail", json!([n]), None))
        .collect();
    let mut flaky: Vec<String> = [1, 22]
        .iter()
        .map(|n| enqueue(&redis, "retry_then_fail", json!([n]), None))
        .collect();
    flaky.push(enqueue(&redis, "retry_then_fail", json!([333]), Some(1)));
    ts.wait_all_state(&declined, "failure", WAIT);
    ts.wait_all_state(&flaky, "failure", WAIT);
    let retried = ts.task(&flaky[2]).expect("the retried job");
    assert_eq!(retried["retries"], 1, "{retried}");

    let before_new = chrono::Utc::now();
    let first = wait_for("two groups", WAIT, || {
        let g = groups(&ts, "since=1h");
        let total: u64 = g.iter().map(|g| g["count"].as_u64().unwrap_or(0)).sum();
        if g.len() == 2 && total == 6 {
            Ok(g)
        } else {
            Err(format!("{g:?}"))
        }
    });
    let value_error = group(&first, "ValueError");
    assert_eq!(value_error["count"], 3, "{value_error}");
    assert_eq!(value_error["message"], "card declined <n>");
    assert_eq!(value_error["names"], json!(["rq_app.fail"]));
    assert_eq!(value_error["brokers"], json!(["rq"]));
    assert!(declined.contains(&value_error["sample_task_id"].as_str().unwrap().to_string()));
    let runtime_error = group(&first, "RuntimeError");
    assert_eq!(
        runtime_error["count"], 3,
        "three failures (the retry's error is unknown)"
    );
    assert_eq!(runtime_error["message"], "flaky <n>");
    let points: u64 = runtime_error["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_u64().unwrap())
        .sum();
    assert_eq!(points, 3, "the sparkline's points add up to the count");

    // A third exception appears later, with a different id in every message.
    let missing: Vec<String> = (0..2)
        .map(|_| {
            let id = uuid_like();
            enqueue(&redis, "missing_account", json!([id]), None)
        })
        .collect();
    ts.wait_all_state(&missing, "failure", WAIT);
    let all = wait_for("three groups", WAIT, || {
        let g = groups(&ts, "since=1h");
        if g.len() == 3 {
            Ok(g)
        } else {
            Err(format!("{g:?}"))
        }
    });
    let lookup = group(&all, "LookupError");
    assert_eq!(lookup["count"], 2, "{lookup}");
    assert_eq!(lookup["message"], "no account <uuid>");
    assert_eq!(group(&all, "ValueError")["count"], 3);
    assert_eq!(group(&all, "RuntimeError")["count"], 3);
    let first_seen = |g: &Value| {
        chrono::DateTime::parse_from_rfc3339(g["first_seen"].as_str().expect("first_seen"))
            .expect("rfc3339")
    };
    assert!(first_seen(lookup) > first_seen(group(&all, "ValueError")));

    // Each group's tasks, by fingerprint.
    let fp = |g: &Value| g["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(
        task_ids(&ts, &fp(group(&all, "ValueError"))),
        declined.iter().cloned().collect()
    );
    assert_eq!(
        task_ids(&ts, &fp(lookup)),
        missing.iter().cloned().collect()
    );
    assert_eq!(
        task_ids(&ts, &fp(group(&all, "RuntimeError"))),
        flaky.iter().cloned().collect()
    );

    // A window that starts after the first two: only the new group is open, and it is new.
    let since = broker_adapters_time(before_new);
    let open = groups(&ts, &format!("since={since}"));
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["exception"], "LookupError");
    let everything = groups(&ts, &format!("since={since}&state=all"));
    assert_eq!(everything.len(), 3, "{everything:?}");
    assert_eq!(group(&everything, "ValueError")["count"], 0);

    // The page lists the three, links each to its tasks, and marks the new one.
    let html = page_html(&ts, "/failures?range=1h");
    for g in &all {
        assert!(
            html.contains(&format!("/tasks?fingerprint={}", fp(g))),
            "no link to {g}"
        );
    }
    assert!(html.contains("card declined &lt;n&gt;"), "{html}");
    assert!(html.contains("no account &lt;uuid&gt;"));
    let new_page = page_html(&ts, &format!("/failures?since={since}"));
    assert!(new_page.contains("LookupError"));
    assert!(new_page.contains("new-badge"));
    assert!(!new_page.contains("ValueError"));
    let (status, body) = ts
        .try_get("/api/failures/groups?state=closed")
        .expect("GET");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("open or all"),
        "{body}"
    );
    let tasks_page = page_html(&ts, &format!("/tasks?fingerprint={}", fp(lookup)));
    for id in &missing {
        assert!(
            tasks_page.contains(id.as_str()),
            "{id} not on its group's task page"
        );
    }
}

/// A fresh UUID-shaped id (no uuid crate needed).
fn uuid_like() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let h = format!(
        "{:032x}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn broker_adapters_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
