//! The HTTP contract end to end: a real redis-server and the taskscope binary, fed with a Celery
//! message captured from the real library (no worker needed), then every route's shape, error
//! statuses, pages, `--auth-token`, bad input, and the exit codes of bad usage.

mod common;

use common::{wait_for, RedisServer, Taskscope, SHORT};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> Vec<u8> {
    let path = common::repo_root()
        .join("broker-adapters/tests/fixtures/celery")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Sends one command in RESP and returns the raw reply (enough for LPUSH / PUBLISH / SET).
fn redis(port: u16, args: &[&[u8]]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis-server");
    let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        cmd.extend(format!("${}\r\n", a.len()).bytes());
        cmd.extend_from_slice(a);
        cmd.extend_from_slice(b"\r\n");
    }
    stream.write_all(&cmd).expect("write to redis-server");
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).expect("read from redis-server");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn task_id_of(message: &[u8]) -> String {
    let v: Value = serde_json::from_slice(message).expect("fixture is JSON");
    v["headers"]["id"].as_str().expect("headers.id").to_string()
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("t.duckdb")
}

#[test]
fn api_routes_answer_the_contract_shapes_and_errors() {
    let _slot = common::test_slot();
    let redis_server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis_server.url(),
        &db_path(&dir),
        &["--brokers", "celery", "--sample-every", "500ms"],
    );

    let message = fixture("queue_message_json.bin");
    let id = task_id_of(&message);
    // A garbage entry pushed first, then the real message: the neighbour must survive.
    redis(redis_server.port, &[b"LPUSH", b"celery", b"{not json"]);
    redis(redis_server.port, &[b"LPUSH", b"celery", &message]);

    let task = ts.wait_task(&id, "state == \"queued\"", SHORT, |t| {
        t["state"] == "queued"
    });
    common::assert_task_shape(&task);
    assert_eq!(task["name"], "cap.add", "{task}");
    assert_eq!(task["args"], serde_json::json!([2, 3]), "{task}");
    assert!(
        task["result"].is_null() && task["worker"].is_null(),
        "{task}"
    );
    let transition = &task["transitions"][0];
    for field in ["state", "at", "worker", "detail"] {
        assert!(
            transition.get(field).is_some(),
            "transition field {field}: {task}"
        );
    }
    assert!(
        task["updated_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "RFC 3339 UTC with milliseconds: {task}"
    );

    let health = ts.get("/healthz");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["redis"], "connected");
    assert!(health["version"].is_string());
    wait_for("the garbage entry counted as a decode error", SHORT, || {
        let h = ts.get("/healthz");
        if h["decode_errors"].as_u64().unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });

    let list = ts.get("/api/tasks?state=queued,running&broker=celery&limit=10");
    assert_eq!(list["tasks"][0]["id"], id.as_str(), "{list}");
    assert!(list.get("next_cursor").is_some(), "{list}");
    let by_q = ts.get("/api/tasks?q=CAP.ADD");
    assert_eq!(
        by_q["tasks"].as_array().map(Vec::len),
        Some(1),
        "q is a case-insensitive substring: {by_q}"
    );

    for (path, status) in [
        ("/api/tasks?state=done", 400),
        ("/api/tasks?limit=many", 400),
        ("/api/tasks?cursor=not-a-cursor", 400),
        ("/api/tasks?since=yesterday", 400),
        ("/api/tasks/no-such-task", 404),
        ("/api/nothing-here", 404),
    ] {
        let (got, body) = ts.try_get(path).expect("GET");
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            body["error"].is_string(),
            "{path}: errors are {{\"error\": ...}}: {body}"
        );
    }

    let stats = ts.get("/api/stats");
    for state in [
        "queued",
        "running",
        "success",
        "failure",
        "retried",
        "abandoned",
    ] {
        assert!(
            stats["by_state"][state].is_u64(),
            "by_state.{state}: {stats}"
        );
    }
    assert_eq!(stats["by_state"]["queued"], 1, "{stats}");
    assert_eq!(stats["by_broker"]["celery"], 1, "{stats}");

    wait_for("GET /api/queues to sample celery", SHORT, || {
        let q = ts.get("/api/queues");
        let found = q["queues"].as_array().and_then(|qs| {
            qs.iter()
                .find(|x| x["name"] == "celery" && x["broker"] == "celery")
                .cloned()
        });
        match found {
            Some(x) if x["length"] == 2 && x["sampled_at"].is_string() && x["dead"] == 0 => Ok(()),
            _ => Err(q.to_string()),
        }
    });
    assert!(ts.get("/api/workers")["workers"].is_array());

    let http = reqwest::blocking::Client::new();
    let metrics = http.get(ts.url("/metrics")).send().expect("GET /metrics");
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().expect("metrics body");
    for needle in [
        "taskscope_tasks_total{broker=\"celery\",queue=\"celery\",name=\"cap.add\",state=\"queued\"} 1",
        "taskscope_queue_length{broker=\"celery\",queue=\"celery\"} 2",
        "taskscope_workers_alive{broker=\"celery\"} 0",
        "taskscope_decode_errors_total{broker=\"celery\"} 1",
        "taskscope_redis_connected 1",
        "taskscope_ingest_events_total{source=\"keyspace\"}",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }

    for (path, status, needle) in [
        ("/".to_string(), 200, "Overview"),
        ("/tasks?state=queued".to_string(), 200, id.as_str()),
        (format!("/tasks/{id}"), 200, "cap.add"),
        ("/tasks/no-such-task".to_string(), 404, "no-such-task"),
    ] {
        let resp = http.get(ts.url(&path)).send().expect("GET page");
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let ctype = resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .to_string();
        let body = resp.text().expect("page body");
        assert!(ctype.starts_with("text/html"), "{path}: {ctype}");
        assert!(body.contains(needle), "{path} should mention {needle}");
    }
}

#[test]
fn auth_token_guards_everything_but_healthz() {
    let _slot = common::test_slot();
    let redis_server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis_server.url(),
        &db_path(&dir),
        &["--auth-token", "s3cret"],
    );
    let http = reqwest::blocking::Client::new();
    let status = |path: &str, token: Option<&str>| {
        let mut req = http.get(ts.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().expect("GET").status().as_u16()
    };
    assert_eq!(status("/healthz", None), 200);
    for path in [
        "/",
        "/tasks",
        "/api/tasks",
        "/api/stats",
        "/api/queues",
        "/api/workers",
    ] {
        assert_eq!(status(path, None), 401, "{path} without the token");
        assert_eq!(
            status(path, Some("wrong")),
            401,
            "{path} with a wrong token"
        );
        assert_eq!(status(path, Some("s3cret")), 200, "{path} with the token");
    }
    // Opening a page with ?token= sets the session cookie and redirects to the address
    // without the token.
    let no_redirects = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = no_redirects
        .get(ts.url("/tasks?token=s3cret&state=failure"))
        .send()
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()["location"], "/tasks?state=failure");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert!(
        cookie.starts_with("taskscope_session=")
            && cookie.contains("HttpOnly")
            && !cookie.contains("s3cret"),
        "{cookie}"
    );
    let cookie_value = cookie.split(';').next().unwrap_or("").to_string();
    let with_cookie = http
        .get(ts.url("/tasks"))
        .header("cookie", cookie_value)
        .send()
        .expect("GET");
    assert_eq!(
        with_cookie.status().as_u16(),
        200,
        "the cookie lets a browser follow links"
    );
}

#[test]
fn bad_usage_exits_2_and_a_locked_database_exits_1_with_a_message() {
    let _slot = common::test_slot();
    let run = |args: &[&str]| {
        let out = Command::new(common::taskscope_bin())
            .args(args)
            .output()
            .expect("run taskscope");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["serve", "--brokers", "resque"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("resque"), "{err}");
    let (code, err) = run(&["serve", "--abandon-after", "soon"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(&["serve", "--redis", "http://localhost"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("redis://"),
        "says what a URL looks like: {err}"
    );

    let redis_server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let _first = Taskscope::start(&redis_server.url(), &db, &[]);
    let db_arg = db.display().to_string();
    let (code, err) = run(&[
        "serve",
        "--redis",
        &redis_server.url(),
        "--db",
        &db_arg,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("locked by another process"), "{err}");
}

/// Issue #14: SIGTERM used to hang while a browser held `/api/events` open (graceful shutdown
/// waited for the stream, which ended only once the server stopped), until the orchestrator's
/// SIGKILL skipped the final flush.
#[test]
fn sigterm_exits_within_5s_with_a_live_stream_open_and_keeps_the_data() {
    let _slot = common::test_slot();
    let redis_server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let mut ts = Taskscope::start(&redis_server.url(), &db, &["--brokers", "celery"]);
    let address = ts.base_url.trim_start_matches("http://").to_string();
    let mut browser = TcpStream::connect(&address).expect("connect");
    write!(
        browser,
        "GET /api/events HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request /api/events");
    browser.set_read_timeout(Some(SHORT)).expect("read timeout");
    let mut seen = Vec::new();
    let message = fixture("queue_message_json.bin");
    let id = task_id_of(&message);
    redis(redis_server.port, &[b"LPUSH", b"celery", &message]);
    // The transition event is published after its batch commits.
    while !String::from_utf8_lossy(&seen).contains(&id) {
        let mut buf = [0u8; 4096];
        let n = browser.read(&mut buf).expect("read the event stream");
        assert!(
            n > 0,
            "the stream closed early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let (took, status) = ts.stop_timed(std::time::Duration::from_secs(10));
    eprintln!("SIGTERM with /api/events open: exited in {took:?}");
    let status = status.unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM"));
    assert!(status.success(), "{status}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    // The stream was ended, not left hanging.
    let mut rest = Vec::new();
    let _ = browser.read_to_end(&mut rest);
    // The history file is whole and holds the task.
    let out = dir.path().join("tasks.csv");
    let export = Command::new(common::taskscope_bin())
        .arg("export")
        .arg("--db")
        .arg(&db)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run taskscope export");
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let csv = std::fs::read_to_string(&out).expect("read the export");
    assert!(csv.contains(&id), "{csv}");
}
