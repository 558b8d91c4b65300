//! `--base-path` (issue #21 point 5): taskscope mounted under `/taskscope` behind a reverse
//! proxy, with real RQ jobs in its history. Both proxy setups are played by the test's own
//! requests, since what distinguishes them is only the path the proxy forwards: a
//! *non-stripping* proxy forwards `/taskscope/tasks`, a *stripping* one `/tasks`. Either way
//! every page answers, and every address a page writes for the browser (links, forms, the
//! stylesheet, the script, the live-update stream, the login redirect) carries the prefix, so
//! following it through the proxy works. Run: `cargo test --test base_path`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const BASE: &str = "/taskscope";

/// Every `href`, `src` and `action` value of a page that is a path on this server.
fn local_addresses(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\"", "action=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attr) {
            rest = &rest[at + attr.len()..];
            let Some(end) = rest.find('"') else { break };
            let value = rest[..end].replace("&amp;", "&");
            if value.starts_with('/') {
                out.push(value);
            }
        }
    }
    out
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn get(client: &reqwest::blocking::Client, url: &str) -> (u16, String) {
    let resp = client
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

#[test]
fn every_page_and_address_works_under_the_prefix_whether_the_proxy_strips_it_or_not() {
    let _slot = test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--base-path", "/taskscope/"],
    );
    let _worker = RqWorker::start(&redis.url(), &["default"], &[], &[]);
    let ok = rq_produce(&redis.url(), "add", 2, &RqProduceOpts::default());
    let failed = rq_produce(
        &redis.url(),
        "fail",
        1,
        &RqProduceOpts {
            args: Some(json!([7])),
            ..RqProduceOpts::default()
        },
    );
    ts.wait_all_state(&ok, "success", WAIT);
    ts.wait_all_state(&failed, "failure", WAIT);

    let http = client();
    let server = ts.url("");
    let pages = [
        "/",
        "/tasks",
        "/tasks?state=failure",
        &format!("/tasks/{}", failed[0]),
        "/queues",
        "/workers",
        "/failures",
        "/reports",
        "/tasks/no-such-task",
    ];
    for (setup, forwarded) in [("non-stripping", BASE), ("stripping", "")] {
        let mut followed = BTreeSet::new();
        for page in pages {
            let (status, html) = get(&http, &format!("{server}{forwarded}{page}"));
            let expected = if page.contains("no-such-task") {
                404
            } else {
                200
            };
            assert_eq!(status, expected, "{setup} proxy, {page}");
            assert!(
                html.contains(r#"data-base="/taskscope""#),
                "{setup} proxy, {page}: the script is not told the prefix"
            );
            let addresses = local_addresses(&html);
            assert!(!addresses.is_empty(), "{setup} proxy, {page}: no links");
            for address in addresses {
                assert!(
                    address == BASE || address.starts_with(&format!("{BASE}/")),
                    "{setup} proxy, {page}: {address:?} lacks the prefix"
                );
                followed.insert(address);
            }
        }
        // What the browser asks for next goes through the proxy again.
        for address in &followed {
            let through_proxy = if forwarded.is_empty() {
                address
                    .strip_prefix(BASE)
                    .filter(|a| !a.is_empty())
                    .unwrap_or("/")
            } else {
                address.as_str()
            };
            let (status, _) = get(&http, &format!("{server}{through_proxy}"));
            assert_eq!(status, 200, "{setup} proxy: {address} -> {through_proxy}");
        }
        for must in [
            "/taskscope/static/app.css",
            "/taskscope/static/app.js",
            "/taskscope/failures",
        ] {
            assert!(
                followed.contains(must),
                "{setup} proxy: no {must} in {followed:?}"
            );
        }
        let (status, body) = get(&http, &format!("{server}{forwarded}/api/tasks/{}", ok[0]));
        assert_eq!(status, 200, "{setup} proxy: the API");
        assert!(body.contains(&ok[0]));
    }

    // The script's live stream: `data-base` + `/api/events`.
    let resp = http
        .get(format!("{server}{BASE}/api/events"))
        .send()
        .expect("GET /api/events");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap_or(""),
        "text/event-stream"
    );
    // Only the whole prefix is one: `/taskscopes` is another address.
    assert_eq!(get(&http, &format!("{server}/taskscopes/tasks")).0, 404);
}

#[test]
fn the_login_redirect_keeps_the_prefix() {
    let _slot = test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--base-path", "taskscope", "--auth-token", "s3cret"],
    );
    let http = client();
    for forwarded in [BASE, ""] {
        let resp = http
            .get(ts.url(&format!("{forwarded}/tasks?state=failure&token=s3cret")))
            .send()
            .expect("GET with token");
        assert_eq!(resp.status().as_u16(), 303, "via {forwarded:?}");
        assert_eq!(
            resp.headers()["location"].to_str().unwrap_or(""),
            "/taskscope/tasks?state=failure",
            "via {forwarded:?}"
        );
    }
}

#[test]
fn a_bad_base_path_is_a_usage_error() {
    let out = std::process::Command::new(taskscope_bin())
        .args(["serve", "--base-path", "/a/../b"])
        .output()
        .expect("run taskscope");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--base-path"), "{err}");
}
