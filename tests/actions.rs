//! Write actions end to end (issue #21): taskscope with `--allow-actions` on a private
//! redis-server enqueues, retries, deletes, purges and stops tasks in each broker's own format,
//! and the broker's real workers run (or never run) them; every action is in `/api/audit` and
//! in the timelines of the tasks it touched. Refusals: no `--allow-actions`, no CSRF token or
//! Origin, a name outside `--action-allow-names`, the rate limit, a missing identity header.
//!
//! Run one: `cargo test --test actions -- rq_run`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;

const TOKEN: &str = "act-s3cret";

/// redis-server and taskscope with actions enabled (token auth) for `brokers`.
struct World {
    ts: Taskscope,
    redis: RedisServer,
    http: reqwest::blocking::Client,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(brokers: &str, extra: &[&str]) -> World {
        let redis = RedisServer::start();
        let dir = db_dir();
        let mut args = vec!["--brokers", brokers, "--sample-every", "1s"];
        args.extend_from_slice(extra);
        let ts = Taskscope::start(&redis.url(), &dir.path().join("t.duckdb"), &args);
        World {
            ts,
            redis,
            http: reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(20))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            _dir: dir,
        }
    }

    fn with_actions(brokers: &str) -> World {
        World::new(brokers, &["--allow-actions", "--auth-token", TOKEN])
    }

    /// A write with the bearer token: (status, JSON body).
    fn write(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = self.ts.url(path);
        let mut req = match method {
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url),
        };
        req = req.bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Runs a task; forced (`"force": true`) unless the body says otherwise, as these tests
    /// run names on a fresh Redis before taskscope has seen any task of them.
    fn run(&self, body: Value) -> Value {
        let mut body = body;
        if let Some(fields) = body.as_object_mut() {
            fields.entry("force").or_insert(Value::Bool(true));
        }
        let (status, v) = self.write("POST", "/api/tasks", Some(body.clone()));
        assert_eq!(status, 200, "POST /api/tasks {body}: {v}");
        v
    }

    fn audit(&self) -> Vec<Value> {
        self.ts.get("/api/audit?limit=1000")["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn redis_cli(&self, args: &[&str]) -> String {
        self.redis.cli(args)
    }
}

fn rq_worker(w: &World) -> RqWorker {
    RqWorker::start(&w.redis.url(), &["default"], &[], &[])
}

#[test]
fn rq_run_from_the_api_is_executed_by_a_real_worker_and_journaled() {
    let _slot = test_slot();
    let w = World::with_actions("rq");
    let worker = rq_worker(&w);
    let task = w.run(
        json!({"broker": "rq", "queue": "default", "name": "rq_app.add",
                            "args": [2, 3], "kwargs": {"note": "from taskscope"}}),
    );
    let id = task["id"].as_str().expect("the new task's id").to_string();
    assert_eq!(task["state"], "queued", "{task}");
    assert_eq!(task["audit"]["who"], "token", "{task}");
    assert_eq!(task["audit"]["new_task_id"], id.as_str(), "{task}");
    let done = w.ts.wait_state(&id, "success", LONG);
    assert_eq!(done["result"], json!(5), "{done}");
    assert_eq!(done["name"], "rq_app.add", "{done}");
    assert_eq!(done["args"], json!([2, 3]), "{done}");
    assert_eq!(done["kwargs"], json!({"note": "from taskscope"}), "{done}");
    assert_eq!(done["worker"], worker.name.as_str(), "{done}");
    let states = transition_states(&done);
    assert!(states.contains(&"running".to_string()), "{states:?}");
    let actions = done["actions"].as_array().expect("actions in the timeline");
    assert_eq!(actions.len(), 1, "{done}");
    assert_eq!(actions[0]["action"], "run");
    let audit = w.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["action"], "run");
    assert_eq!(audit[0]["outcome"], "ok");
    assert_eq!(audit[0]["target"], "rq_app.add");
    assert_eq!(audit[0]["arguments"]["args"], json!([2, 3]));
    for key in [
        "id",
        "at",
        "who",
        "action",
        "target",
        "new_task_id",
        "outcome",
        "error",
    ] {
        assert!(audit[0].get(key).is_some(), "{key} missing: {}", audit[0]);
    }
}

#[test]
fn rq_failed_task_retried_runs_again_under_a_new_id_linked_both_ways() {
    let _slot = test_slot();
    let w = World::with_actions("rq");
    let _worker = rq_worker(&w);
    let ids = rq_produce(
        &w.redis.url(),
        "fail",
        1,
        &RqProduceOpts {
            args: Some(json!([7])),
            ..RqProduceOpts::default()
        },
    );
    let failed = w.ts.wait_state(&ids[0], "failure", LONG);
    assert_eq!(failed["error"], "ValueError: card declined 7", "{failed}");
    let (status, entry) = w.write("POST", &format!("/api/tasks/{}/retry", ids[0]), None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["action"], "retry");
    assert_eq!(entry["target"], ids[0].as_str());
    assert_eq!(entry["outcome"], "ok");
    let new_id = entry["new_task_id"]
        .as_str()
        .expect("new_task_id")
        .to_string();
    assert_ne!(new_id, ids[0]);
    // The same call ran again under the new id (and failed the same way).
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["name"], "rq_app.fail", "{again}");
    assert_eq!(again["args"], json!([7]), "{again}");
    assert_eq!(again["error"], "ValueError: card declined 7", "{again}");
    for id in [&ids[0], &new_id] {
        let t = w.ts.task(id).expect("task");
        let actions = t["actions"].as_array().expect("actions");
        assert!(
            actions
                .iter()
                .any(|a| a["action"] == "retry" && a["new_task_id"] == new_id.as_str()),
            "task {id} does not show the retry: {t}"
        );
    }
    // A successful task is not retried.
    let ok = w.run(json!({"broker": "rq", "name": "rq_app.add", "args": [1, 1]}));
    let ok_id = ok["id"].as_str().unwrap().to_string();
    w.ts.wait_state(&ok_id, "success", LONG);
    let (status, refused) = w.write("POST", &format!("/api/tasks/{ok_id}/retry"), None);
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["entry"]["outcome"], "refused", "{refused}");
}

#[test]
fn rq_delete_and_purge_remove_messages_a_stopped_worker_would_have_run() {
    let _slot = test_slot();
    let w = World::with_actions("rq");
    // No worker yet: five jobs wait.
    let ids = rq_produce(
        &w.redis.url(),
        "add",
        5,
        &RqProduceOpts {
            args: Some(json!([1, 2])),
            ..RqProduceOpts::default()
        },
    );
    w.ts.wait_all_state(&ids, "queued", SHORT);
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/rq/default/messages/{}", ids[0]),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["action"], "delete");
    assert_eq!(entry["count"], 1);
    assert_eq!(w.redis_cli(&["EXISTS", &format!("rq:job:{}", ids[0])]), "0");
    // Deleting it again: not waiting any more.
    let (status, again) = w.write(
        "DELETE",
        &format!("/api/queues/rq/default/messages/{}", ids[0]),
        None,
    );
    assert_eq!(status, 404, "{again}");
    let (status, entry) = w.write("POST", "/api/queues/rq/default/purge", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["action"], "purge");
    assert_eq!(entry["count"], 4, "{entry}");
    assert_eq!(w.redis_cli(&["LLEN", "rq:queue:default"]), "0");
    let (status, missing) = w.write("POST", "/api/queues/rq/nosuchqueue/purge", None);
    assert_eq!(status, 404, "{missing}");
    // A worker now runs what is left: a marker job enqueued after them runs, they never do.
    let _worker = rq_worker(&w);
    let marker = rq_produce(&w.redis.url(), "add", 1, &RqProduceOpts::default());
    w.ts.wait_state(&marker[0], "success", LONG);
    for id in &ids {
        assert_eq!(
            w.redis_cli(&["EXISTS", &format!("rq:job:{id}")]),
            "0",
            "{id}"
        );
        let t = w.ts.task(id).expect("task");
        assert!(t["started_at"].is_null(), "a deleted job started: {t}");
        assert_eq!(t["state"], "failure", "a removed message ends failure: {t}");
        assert!(
            t["error"]
                .as_str()
                .unwrap_or("")
                .contains("by taskscope (token)"),
            "{t}"
        );
    }
    let actions: Vec<String> = w
        .audit()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions,
        ["purge:refused", "purge:ok", "delete:refused", "delete:ok"],
        "newest first"
    );
}

#[test]
fn rq_running_job_is_stopped_by_revoke() {
    let _slot = test_slot();
    let w = World::with_actions("rq");
    let worker = rq_worker(&w);
    let hang = rq_produce(&w.redis.url(), "hang", 1, &RqProduceOpts::default());
    worker.wait_started(&hang[0], LONG);
    w.ts.wait_state(&hang[0], "running", SHORT);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{}/revoke", hang[0]), None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["action"], "revoke");
    let t = w.ts.wait_state(&hang[0], "failure", LONG);
    assert_eq!(t["error"], "stopped", "{t}");
    // A finished job cannot be stopped.
    let (status, refused) = w.write("POST", &format!("/api/tasks/{}/revoke", hang[0]), None);
    assert_eq!(status, 409, "{refused}");
}

#[test]
fn writes_are_refused_without_allow_actions() {
    let _slot = test_slot();
    let w = World::new("rq", &["--auth-token", TOKEN]);
    let (status, v) = w.write(
        "POST",
        "/api/tasks",
        Some(json!({"broker": "rq", "name": "rq_app.add"})),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("--allow-actions"),
        "{v}"
    );
    assert_eq!(w.redis_cli(&["EXISTS", "rq:queue:default"]), "0");
    let (status, v) = w.write("POST", "/api/queues/rq/default/purge", None);
    assert_eq!(status, 403, "{v}");
}

#[test]
fn browser_writes_need_the_origin_and_the_csrf_token_and_names_must_be_allowed() {
    let _slot = test_slot();
    let w = World::new(
        "rq",
        &[
            "--allow-actions",
            "--auth-token",
            TOKEN,
            "--action-allow-names",
            "rq_app.*",
        ],
    );
    // A browser session: the cookie from `?token=`.
    let login = w
        .http
        .get(w.ts.url(&format!("/?token={TOKEN}")))
        .send()
        .expect("login");
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let host = w.ts.base_url.trim_start_matches("http://").to_string();
    let form = |fields: &[(&str, &str)], origin: Option<&str>| {
        let mut req = w
            .http
            .post(w.ts.url("/api/tasks"))
            .header("cookie", &cookie)
            .form(fields);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().expect("post");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().unwrap_or(Value::Null))
    };
    let run = [
        ("broker", "rq"),
        ("name", "rq_app.add"),
        ("args", "[1, 2]"),
        ("force", "on"),
    ];
    // No Origin: refused.
    let (status, v) = form(&run, None);
    assert_eq!(status, 403, "{v}");
    // Another site's Origin: refused.
    let (status, v) = form(&run, Some("http://evil.example"));
    assert_eq!(status, 403, "{v}");
    // Our Origin without the CSRF token: refused.
    let origin = format!("http://{host}");
    let (status, v) = form(&run, Some(&origin));
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("CSRF"), "{v}");
    // With the session's token: accepted.
    let csrf = w
        .http
        .get(w.ts.url("/api/csrf"))
        .header("cookie", &cookie)
        .send()
        .expect("csrf")
        .json::<Value>()
        .expect("json")["csrf_token"]
        .as_str()
        .expect("csrf_token")
        .to_string();
    let mut with_token = run.to_vec();
    with_token.push(("csrf_token", &csrf));
    let (status, v) = form(&with_token, Some(&origin));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["name"], "rq_app.add", "{v}");
    assert_eq!(v["args"], json!([1, 2]), "{v}");
    // A name outside --action-allow-names.
    let (status, v) = w.write(
        "POST",
        "/api/tasks",
        Some(json!({"broker": "rq", "name": "os.system", "args": ["true"]})),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("--action-allow-names"),
        "{v}"
    );
    assert_eq!(w.redis_cli(&["LLEN", "rq:queue:default"]), "1");
    let audit = w.audit();
    let outcomes: Vec<&str> = audit
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["refused", "ok", "refused", "refused", "refused"],
        "{audit:?}"
    );
    // An unsupported combination names the broker and the action.
    // (every broker runs tasks now: RQ has no queue pause of its own.)
    let (status, v) = w.write("POST", "/api/queues/rq/default/pause", None);
    assert_eq!(status, 400, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("rq") && error.contains("pause"), "{v}");
    // The rate limit: a burst of writes ends in 429 with Retry-After.
    let mut limited = None;
    for _ in 0..60 {
        let resp = w
            .http
            .post(w.ts.url("/api/queues/rq/nosuch/purge"))
            .bearer_auth(TOKEN)
            .send()
            .expect("post");
        if resp.status().as_u16() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let limited = limited.expect("no 429 after 60 writes in a burst");
    assert!(limited.headers().get("retry-after").is_some());
}

#[test]
fn the_trusted_user_header_names_who_acted_and_is_required() {
    let _slot = test_slot();
    let w = World::new(
        "rq",
        &[
            "--allow-actions",
            "--trusted-user-header",
            "X-Forwarded-User",
        ],
    );
    let host = w.ts.base_url.trim_start_matches("http://").to_string();
    let origin = format!("http://{host}");
    let csrf_of = |user: &str| {
        w.http
            .get(w.ts.url("/api/csrf"))
            .header("x-forwarded-user", user)
            .send()
            .expect("csrf")
            .json::<Value>()
            .expect("json")["csrf_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let post = |user: Option<&str>, csrf: &str| {
        let mut req = w
            .http
            .post(w.ts.url("/api/tasks"))
            .header("origin", &origin)
            .header("x-csrf-token", csrf)
            .json(&json!({"broker": "rq", "name": "rq_app.add", "args": [1, 1], "force": true}));
        if let Some(u) = user {
            req = req.header("x-forwarded-user", u);
        }
        let resp = req.send().expect("post");
        (
            resp.status().as_u16(),
            resp.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let (status, v) = post(None, &csrf_of("alice"));
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("X-Forwarded-User"),
        "{v}"
    );
    let (status, v) = post(Some("alice"), &csrf_of("alice"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["audit"]["who"], "alice", "{v}");
    // Another user's CSRF token does not do.
    let (status, v) = post(Some("bob"), &csrf_of("alice"));
    assert_eq!(status, 403, "{v}");
    let who: Vec<String> = w.ts.get("/api/audit?who=alice")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["who"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(who, ["alice"]);
}

#[test]
fn allow_actions_without_a_token_or_identity_header_exits_2() {
    let out = Command::new(taskscope_bin())
        .args(["serve", "--allow-actions", "--listen", "127.0.0.1:0"])
        .env_remove("TASKSCOPE_AUTH_TOKEN")
        .env_remove("TASKSCOPE_TRUSTED_USER_HEADER")
        .output()
        .expect("run taskscope");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--auth-token") && err.contains("--trusted-user-header"),
        "{err}"
    );
}

#[test]
fn purge_cli_shows_the_count_asks_and_journals_in_the_history_file() {
    let _slot = test_slot();
    let mut w = World::with_actions("rq");
    let ids = rq_produce(&w.redis.url(), "add", 3, &RqProduceOpts::default());
    w.ts.wait_all_state(&ids, "queued", SHORT);
    w.ts.stop();
    let purge = |answer: &str, extra: &[&str]| {
        use std::io::Write;
        let mut child = Command::new(taskscope_bin())
            .args(["purge", "rq", "default", "--redis", &w.redis.url()])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run taskscope purge");
        let _ = child.stdin.take().unwrap().write_all(answer.as_bytes());
        child.wait_with_output().expect("purge output")
    };
    // Asked, answered no: nothing purged.
    let out = purge("n\n", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("3 waiting messages in rq queue \"default\""),
        "{stdout}"
    );
    assert!(stdout.contains("Nothing purged"), "{stdout}");
    assert_eq!(w.redis_cli(&["LLEN", "rq:queue:default"]), "3");
    // --yes, journaled in the history file.
    let db = w.ts.db_path.to_string_lossy().to_string();
    let out = purge("", &["--yes", "--db", &db]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("Purged 3 messages"), "{stdout}");
    assert_eq!(w.redis_cli(&["LLEN", "rq:queue:default"]), "0");
    // An empty queue purges to nothing; an unknown broker is bad usage.
    let out = purge("", &["--yes"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Purged 0 messages"),
        "{out:?}"
    );
    let bad = Command::new(taskscope_bin())
        .args([
            "purge",
            "nosuch",
            "default",
            "--yes",
            "--redis",
            &w.redis.url(),
        ])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    w.ts.restart();
    let audit = w.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["action"], "purge");
    assert_eq!(audit[0]["count"], 3);
    assert!(
        audit[0]["who"].as_str().unwrap().starts_with("cli"),
        "{}",
        audit[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Celery (tests/python/celery_app.py, billing.py)

fn celery_worker(w: &World) -> CeleryWorker {
    CeleryWorker::start(&w.redis.url(), "celery", true, &[])
}

#[test]
fn celery_run_with_a_countdown_is_executed_by_a_real_worker_at_its_eta() {
    let _slot = test_slot();
    let w = World::with_actions("celery");
    let _worker = celery_worker(&w);
    let task = w.run(
        json!({"broker": "celery", "queue": "celery", "name": "billing.add",
                            "args": [20, 22], "delay_ms": 1500}),
    );
    let id = task["id"].as_str().expect("id").to_string();
    let eta = chrono::DateTime::parse_from_rfc3339(task["eta"].as_str().expect("eta")).unwrap();
    let done = w.ts.wait_state(&id, "success", LONG);
    assert_eq!(done["result"], json!(42), "{done}");
    assert_eq!(done["name"], "billing.add", "{done}");
    assert_eq!(done["args"], json!([20, 22]), "{done}");
    let started = parse_time(&done, "started_at");
    assert!(
        started >= eta - chrono::Duration::milliseconds(50),
        "started {started} before its eta {eta}: {done}"
    );
    assert_eq!(
        w.redis.celery_result(&id).expect("result")["status"],
        "SUCCESS"
    );
    assert_eq!(w.audit()[0]["new_task_id"], id.as_str());
}

#[test]
fn celery_failed_task_retried_runs_again_under_a_new_id_linked_both_ways() {
    let _slot = test_slot();
    let w = World::with_actions("celery");
    let _worker = celery_worker(&w);
    let first = w.run(json!({"broker": "celery", "name": "billing.fail", "args": [9]}));
    let id = first["id"].as_str().unwrap().to_string();
    let failed = w.ts.wait_state(&id, "failure", LONG);
    assert_eq!(failed["error"], "ValueError: card declined 9", "{failed}");
    let (status, entry) = w.write("POST", &format!("/api/tasks/{id}/retry"), None);
    assert_eq!(status, 200, "{entry}");
    let new_id = entry["new_task_id"]
        .as_str()
        .expect("new_task_id")
        .to_string();
    assert_ne!(new_id, id);
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["name"], "billing.fail", "{again}");
    assert_eq!(again["args"], json!([9]), "{again}");
    assert_eq!(
        w.redis.celery_result(&new_id).expect("result")["status"],
        "FAILURE"
    );
    for t in [&id, &new_id] {
        let task = w.ts.task(t).expect("task");
        assert!(
            task["actions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["action"] == "retry" && a["new_task_id"] == new_id.as_str()),
            "{task}"
        );
    }
}

#[test]
fn celery_delete_and_purge_remove_messages_a_stopped_worker_would_have_run() {
    let _slot = test_slot();
    let w = World::with_actions("celery");
    let ids = produce(&w.redis.url(), "add", 4, "celery", &ProduceOpts::default());
    w.ts.wait_all_state(&ids, "queued", SHORT);
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/celery/celery/messages/{}", ids[1]),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 1);
    assert_eq!(w.redis_cli(&["LLEN", "celery"]), "3");
    let (status, again) = w.write(
        "DELETE",
        &format!("/api/queues/celery/celery/messages/{}", ids[1]),
        None,
    );
    assert_eq!(status, 404, "{again}");
    let (status, entry) = w.write("POST", "/api/queues/celery/celery/purge", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 3, "{entry}");
    assert_eq!(w.redis_cli(&["LLEN", "celery"]), "0");
    let _worker = celery_worker(&w);
    let marker = produce(&w.redis.url(), "add", 1, "celery", &ProduceOpts::default());
    w.ts.wait_state(&marker[0], "success", LONG);
    for id in &ids {
        assert!(w.redis.celery_result(id).is_none(), "purged task {id} ran");
    }
}

#[test]
fn celery_running_task_is_revoked_with_terminate() {
    let _slot = test_slot();
    let w = World::with_actions("celery");
    let worker = celery_worker(&w);
    let slow = w.run(json!({"broker": "celery", "name": "billing.slow", "args": [60]}));
    let id = slow["id"].as_str().unwrap().to_string();
    worker.wait_started(&id, LONG);
    w.ts.wait_state(&id, "running", SHORT);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{id}/revoke"), None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["action"], "revoke");
    let t = w.ts.wait_state(&id, "failure", LONG);
    assert!(t["error"].as_str().unwrap_or("").contains("Revoked"), "{t}");
    assert_eq!(
        w.redis.celery_result(&id).expect("result")["status"],
        "REVOKED"
    );
}

// ---------------------------------------------------------------------------------------------
// Sidekiq (Sidekiq 6.4, tests/ruby/app.rb)

fn sidekiq_world() -> World {
    World::with_actions("sidekiq")
}

fn sidekiq(w: &World) -> WorkerProcess {
    sidekiq_worker(&w.redis, &["default", "critical"], None)
}

fn is_jid(id: &str) -> bool {
    id.len() == 24 && id.chars().all(|c| c.is_ascii_hexdigit())
}

#[test]
fn sidekiq_run_now_and_delayed_is_executed_by_a_real_sidekiq_and_journaled() {
    let _slot = test_slot();
    let w = sidekiq_world();
    let worker = sidekiq(&w);
    // A slow job: an idle fetcher takes it at once, a heartbeat's work hash shows it running.
    let task = w.run(
        json!({"broker": "sidekiq", "queue": "critical", "name": "AddJob",
        "args": [2, 3, 6]}),
    );
    let id = task["id"].as_str().expect("id").to_string();
    assert!(is_jid(&id), "a jid as SecureRandom.hex(12): {id}");
    assert_eq!(task["state"], "queued", "{task}");
    worker.wait_started(&id, LONG);
    let done = w.ts.wait_state(&id, "success", LONG);
    assert_eq!(done["name"], "AddJob", "{done}");
    assert_eq!(done["queue"], "critical", "{done}");
    assert_eq!(done["args"], json!([2, 3, 6]), "{done}");
    assert!(
        transition_states(&done).contains(&"running".to_string()),
        "{done}"
    );
    // A delayed one waits in the schedule until Sidekiq's poller pushes it.
    let later = w.run(
        json!({"broker": "sidekiq", "name": "AddJob", "args": [40, 2],
        "delay_ms": 1500}),
    );
    let later_id = later["id"].as_str().expect("id").to_string();
    assert!(later["eta"].is_string(), "{later}");
    worker.wait_started(&later_id, LONG);
    let done = w.ts.wait_state(&later_id, "success", LONG);
    assert_eq!(done["queue"], "default", "{done}");
    assert_eq!(done["args"], json!([40, 2]), "{done}");
    // Sidekiq jobs take positional arguments only; OSS Sidekiq cannot stop a running job.
    let (status, refused) = w.write(
        "POST",
        "/api/tasks",
        Some(
            json!({"broker": "sidekiq", "name": "AddJob", "args": [1], "kwargs": {"b": 2},
            "force": true}),
        ),
    );
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = w.write("POST", &format!("/api/tasks/{id}/revoke"), None);
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused.to_string().contains("sidekiq"),
        "the error names the broker: {refused}"
    );
    let runs: Vec<Value> = w
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "run" && e["outcome"] == "ok")
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
}

#[test]
fn sidekiq_under_a_namespace_runs_and_retries_in_the_namespaces_keys() {
    let _slot = test_slot();
    let w = World::new(
        "sidekiq",
        &[
            "--allow-actions",
            "--auth-token",
            TOKEN,
            "--sidekiq-namespace",
            "app",
        ],
    );
    let worker = sidekiq_worker(&w.redis, &["default"], Some("app"));
    let task = w.run(json!({"broker": "sidekiq", "name": "AddJob", "args": [2, 3, 6]}));
    let id = task["id"].as_str().expect("id").to_string();
    worker.wait_started(&id, LONG);
    w.ts.wait_state(&id, "success", LONG);
    assert_eq!(w.redis_cli(&["SISMEMBER", "app:queues", "default"]), "1");
    assert_eq!(
        w.redis_cli(&["EXISTS", "queues"]),
        "0",
        "nothing outside the namespace"
    );
    let ids = sidekiq_produce(&w.redis, Some("app"), &["noretry", "ns-7"]);
    w.ts.wait_state(&ids[0], "failure", LONG);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{}/retry", ids[0]), None);
    assert_eq!(status, 200, "{entry}");
    let new_id = entry["new_task_id"].as_str().expect("new id").to_string();
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["args"], json!(["ns-7"]), "{again}");
    let dead = w.redis_cli(&["ZRANGE", "app:dead", "0", "-1"]);
    assert!(dead.contains(&new_id) && !dead.contains(&ids[0]), "{dead}");
}

#[test]
fn sidekiq_dead_job_retried_runs_again_under_a_new_jid_linked_both_ways() {
    let _slot = test_slot();
    let w = sidekiq_world();
    let _worker = sidekiq(&w);
    let ids = sidekiq_produce(&w.redis, None, &["noretry", "declined-9"]);
    let failed = w.ts.wait_state(&ids[0], "failure", LONG);
    assert_eq!(failed["name"], "NoRetryJob", "{failed}");
    let (status, entry) = w.write("POST", &format!("/api/tasks/{}/retry", ids[0]), None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["outcome"], "ok", "{entry}");
    let new_id = entry["new_task_id"].as_str().expect("new id").to_string();
    assert!(is_jid(&new_id) && new_id != ids[0], "{new_id}");
    // The job from the dead set, options included (`retry: 0`): dead again at once.
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["name"], "NoRetryJob", "{again}");
    assert_eq!(again["args"], json!(["declined-9"]), "{again}");
    assert!(
        again["error"].as_str().unwrap_or("").contains("declined-9"),
        "{again}"
    );
    // Sidekiq's own retry takes the member out of `dead`: only the new attempt is there.
    let dead = w.redis_cli(&["ZRANGE", "dead", "0", "-1"]);
    assert!(
        dead.contains(&new_id) && !dead.contains(&ids[0]),
        "dead set: {dead}"
    );
    assert_eq!(w.ts.task(&ids[0]).expect("task")["state"], "failure");
    for id in [&ids[0], &new_id] {
        let t = w.ts.task(id).expect("task");
        let actions = t["actions"].as_array().expect("actions");
        assert!(
            actions
                .iter()
                .any(|a| a["action"] == "retry" && a["new_task_id"] == new_id.as_str()),
            "task {id} does not show the retry: {t}"
        );
    }
    // Out of the dead set now: a second retry rebuilds the job from the stored (whole)
    // arguments, with Sidekiq's default options (`retry: true`: into the retry set).
    let (status, entry) = w.write("POST", &format!("/api/tasks/{}/retry", ids[0]), None);
    assert_eq!(status, 200, "{entry}");
    let third = entry["new_task_id"].as_str().expect("new id").to_string();
    let t = w.ts.wait_state(&third, "retried", LONG);
    assert_eq!(t["args"], json!(["declined-9"]), "{t}");
    assert_eq!(t["name"], "NoRetryJob", "{t}");
}

#[test]
fn sidekiq_delete_and_purge_remove_jobs_a_stopped_sidekiq_would_have_run() {
    let _slot = test_slot();
    let w = sidekiq_world();
    // No Sidekiq process yet: three jobs wait in the list, one in the schedule.
    let ids: Vec<String> = (0..3)
        .map(|i| {
            w.run(json!({"broker": "sidekiq", "name": "AddJob", "args": [i, 1]}))["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    let scheduled = w.run(
        json!({"broker": "sidekiq", "name": "AddJob", "args": [9, 9],
        "delay_ms": 500}),
    )["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(w.redis_cli(&["LLEN", "queue:default"]), "3");
    assert_eq!(w.redis_cli(&["ZCARD", "schedule"]), "1");
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/sidekiq/default/messages/{}", ids[0]),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 1, "{entry}");
    assert_eq!(w.redis_cli(&["LLEN", "queue:default"]), "2");
    let (status, again) = w.write(
        "DELETE",
        &format!("/api/queues/sidekiq/default/messages/{}", ids[0]),
        None,
    );
    assert_eq!(status, 404, "{again}");
    // The scheduled job, by its jid, out of the schedule (not from another queue's name).
    let (status, other) = w.write(
        "DELETE",
        &format!("/api/queues/sidekiq/critical/messages/{scheduled}"),
        None,
    );
    assert_eq!(status, 404, "{other}");
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/sidekiq/default/messages/{scheduled}"),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    assert_eq!(w.redis_cli(&["ZCARD", "schedule"]), "0");
    let (status, entry) = w.write("POST", "/api/queues/sidekiq/default/purge", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 2, "{entry}");
    assert_eq!(w.redis_cli(&["EXISTS", "queue:default"]), "0");
    assert_eq!(w.redis_cli(&["SISMEMBER", "queues", "default"]), "0");
    let (status, missing) = w.write("POST", "/api/queues/sidekiq/nosuchqueue/purge", None);
    assert_eq!(status, 404, "{missing}");
    // A Sidekiq process now: a marker job run after them starts; they never do.
    // The marker is scheduled after the deleted scheduled job's time: the poller pushing it
    // has passed that time (it takes every due job at once, oldest first).
    let worker = sidekiq(&w);
    let marker = w.run(
        json!({"broker": "sidekiq", "name": "AddJob", "args": [0, 0],
        "delay_ms": 600}),
    )["id"]
        .as_str()
        .expect("id")
        .to_string();
    worker.wait_started(&marker, LONG);
    let log = worker.log_text();
    assert!(
        log.contains(&marker),
        "the log names the jobs it runs:\n{log}"
    );
    for id in ids.iter().chain([&scheduled]) {
        assert!(!log.contains(id.as_str()), "deleted job {id} ran:\n{log}");
    }
    // The store was told they will never run: taskscope's Sidekiq reading, which takes a job
    // gone from its list for one a fetcher took, cannot infer their success (it does the
    // marker's, two heartbeats later).
    w.ts.wait_state(&marker, "success", LONG);
    for id in ids.iter().chain([&scheduled]) {
        let t = w.ts.task(id).expect("task");
        assert_eq!(t["state"], "failure", "{t}");
        let error = t["error"].as_str().unwrap_or("");
        assert!(
            error.contains("deleted from queue default")
                || error.contains("purged from queue default"),
            "{t}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// BullMQ (bullmq 6.7.6, tests/node/worker.js; queue `bull:mail`)

fn bullmq_world() -> World {
    World::with_actions("bullmq")
}

fn bull(w: &World) -> WorkerProcess {
    bullmq_worker(&w.redis.url(), "mail", "bull", &[])
}

#[test]
fn bullmq_run_now_and_delayed_is_executed_by_a_real_worker_and_journaled() {
    let _slot = test_slot();
    let w = bullmq_world();
    let _worker = bull(&w);
    let task = w.run(
        json!({"broker": "bullmq", "queue": "bull:mail", "name": "add",
        "kwargs": {"x": 2, "y": 3}}),
    );
    let id = task["id"].as_str().expect("id").to_string();
    assert_eq!(
        id, "bull:mail:1",
        "the queue's counter gives the job id: {task}"
    );
    let done = w.ts.wait_state(&id, "success", LONG);
    assert_eq!(done["result"], json!(5), "{done}");
    assert_eq!(done["name"], "add", "{done}");
    assert_eq!(done["queue"], "bull:mail", "{done}");
    assert_eq!(done["kwargs"], json!({"x": 2, "y": 3}), "{done}");
    // Delayed, on the queue named without its prefix.
    let later = w.run(json!({"broker": "bullmq", "queue": "mail", "name": "add",
        "kwargs": {"x": 40, "y": 2}, "delay_ms": 1000}));
    let later_id = later["id"].as_str().expect("id").to_string();
    assert!(later["eta"].is_string(), "{later}");
    let done = w.ts.wait_state(&later_id, "success", LONG);
    assert_eq!(done["result"], json!(42), "{done}");
    let hash = w.redis_cli(&["HGET", &later_id, "opts"]);
    assert_eq!(hash.trim(), r#"{"delay":1000,"attempts":0}"#);
    // One data value per job; no way to stop a running job; no pause outside BullMQ.
    let (status, refused) = w.write(
        "POST",
        "/api/tasks",
        Some(
            json!({"broker": "bullmq", "queue": "bull:mail", "name": "add",
            "args": [1, 2], "force": true}),
        ),
    );
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = w.write("POST", &format!("/api/tasks/{id}/revoke"), None);
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("bullmq"), "{refused}");
    let (status, refused) = w.write("POST", "/api/queues/sidekiq/default/pause", None);
    assert_eq!(status, 400, "{refused}");
}

#[test]
fn bullmq_failed_job_retried_runs_again_under_a_new_id_linked_both_ways() {
    let _slot = test_slot();
    let w = bullmq_world();
    let _worker = bull(&w);
    let ids = bullmq_produce(
        &w.redis.url(),
        "mail",
        "bull",
        &json!([{"name": "fail", "data": {"why": "declined"},
            "opts": {"backoff": {"type": "fixed", "delay": 100}}}]),
    );
    w.ts.wait_state(&ids[0], "failure", LONG);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{}/retry", ids[0]), None);
    assert_eq!(status, 200, "{entry}");
    let new_id = entry["new_task_id"].as_str().expect("new id").to_string();
    assert_eq!(new_id, "bull:mail:2", "{entry}");
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["name"], "fail", "{again}");
    assert_eq!(again["kwargs"], json!({"why": "declined"}), "{again}");
    assert_eq!(again["error"], "boom declined", "{again}");
    // The failed job's own options came along (not its identity).
    let opts: Value =
        serde_json::from_str(w.redis_cli(&["HGET", &new_id, "opts"]).trim()).expect("opts");
    assert_eq!(
        opts["backoff"],
        json!({"type": "fixed", "delay": 100}),
        "{opts}"
    );
    for id in [&ids[0], &new_id] {
        let t = w.ts.task(id).expect("task");
        let actions = t["actions"].as_array().expect("actions");
        assert!(
            actions
                .iter()
                .any(|a| a["action"] == "retry" && a["new_task_id"] == new_id.as_str()),
            "task {id} does not show the retry: {t}"
        );
    }
}

#[test]
fn bullmq_delete_purge_pause_and_resume_on_a_queue_a_stopped_worker_would_have_run() {
    let _slot = test_slot();
    let w = bullmq_world();
    let run = |data: Value, delay: u64| -> String {
        w.run(
            json!({"broker": "bullmq", "queue": "bull:mail", "name": "add",
            "kwargs": data, "delay_ms": delay}),
        )["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let ids: Vec<String> = (0..3).map(|i| run(json!({"x": i, "y": 1}), 0)).collect();
    let delayed = run(json!({"x": 9, "y": 9}), 60_000);
    assert_eq!(w.redis_cli(&["LLEN", "bull:mail:wait"]), "3");
    assert_eq!(w.redis_cli(&["ZCARD", "bull:mail:delayed"]), "1");
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/bullmq/bull:mail/messages/{}", ids[0]),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 1, "{entry}");
    assert_eq!(w.redis_cli(&["EXISTS", &ids[0]]), "0");
    let (status, again) = w.write(
        "DELETE",
        &format!("/api/queues/bullmq/bull:mail/messages/{}", ids[0]),
        None,
    );
    assert_eq!(status, 404, "{again}");
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/bullmq/bull:mail/messages/{delayed}"),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    assert_eq!(w.redis_cli(&["ZCARD", "bull:mail:delayed"]), "0");
    let (status, entry) = w.write("POST", "/api/queues/bullmq/bull:mail/purge", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 2, "{entry}");
    assert_eq!(w.redis_cli(&["LLEN", "bull:mail:wait"]), "0");
    for id in &ids {
        assert_eq!(w.redis_cli(&["EXISTS", id]), "0", "{id}");
    }
    let (status, missing) = w.write("POST", "/api/queues/bullmq/bull:nosuch/purge", None);
    assert_eq!(status, 404, "{missing}");
    // Paused: a job added now waits, even with a worker ready.
    let (status, entry) = w.write("POST", "/api/queues/bullmq/bull:mail/pause", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["action"], "pause", "{entry}");
    assert_eq!(w.redis_cli(&["HGET", "bull:mail:meta", "paused"]), "1");
    let held = run(json!({"x": 20, "y": 22}), 0);
    assert_eq!(w.redis_cli(&["EXISTS", "bull:mail:marker"]), "0");
    let _worker = bull(&w);
    w.ts.wait_state(&held, "queued", SHORT);
    assert_eq!(w.redis_cli(&["HEXISTS", &held, "processedOn"]), "0");
    let (status, entry) = w.write("POST", "/api/queues/bullmq/bull:mail/resume", None);
    assert_eq!(status, 200, "{entry}");
    let done = w.ts.wait_state(&held, "success", LONG);
    assert_eq!(done["result"], json!(42), "{done}");
    for id in ids.iter().chain([&delayed]) {
        let t = w.ts.task(id).expect("task");
        assert_ne!(t["state"], "success", "a deleted job ran: {t}");
        assert!(t["started_at"].is_null(), "a deleted job started: {t}");
    }
    let actions: Vec<String> = w
        .audit()
        .iter()
        .filter(|e| e["action"] != "run")
        .map(|e| {
            format!(
                "{}:{}",
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "resume:ok",
            "pause:ok",
            "purge:refused",
            "purge:ok",
            "delete:ok",
            "delete:refused",
            "delete:ok"
        ],
        "newest first"
    );
}

// ---------------------------------------------------------------------------------------------
// The pages (plain HTML forms, no JavaScript)

/// A browser session without JavaScript: the cookie of `?token=`, forms posted with the
/// page's CSRF token and the Origin a browser sends.
struct Browser<'a> {
    w: &'a World,
    cookie: String,
    origin: String,
}

impl<'a> Browser<'a> {
    fn login(w: &'a World) -> Browser<'a> {
        let login = w
            .http
            .get(w.ts.url(&format!("/?token={TOKEN}")))
            .send()
            .expect("login");
        let cookie = login.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        Browser {
            w,
            cookie,
            origin: w.ts.base_url.clone(),
        }
    }

    fn page(&self, path: &str) -> (u16, String) {
        let resp = self
            .w
            .http
            .get(self.w.ts.url(path))
            .header("cookie", &self.cookie)
            .send()
            .expect("GET");
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    }

    /// Posts the form whose action is `action` on the page's HTML, with its hidden fields and
    /// `fields`; returns the status and the `Location` of a redirect.
    fn submit(&self, html: &str, action: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let needle = format!("action=\"{action}\"");
        let at = html
            .find(&needle)
            .unwrap_or_else(|| panic!("no form {action} in:\n{html}"));
        let form = &html[at..html[at..].find("</form>").map_or(html.len(), |e| at + e)];
        let csrf = form
            .split("name=\"csrf_token\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("csrf_token field")
            .to_string();
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend_from_slice(fields);
        let resp = self
            .w
            .http
            .post(self.w.ts.url(action))
            .header("cookie", &self.cookie)
            .header("origin", &self.origin)
            .form(&all)
            .send()
            .expect("POST");
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.text().unwrap_or_default();
        (status, if location.is_empty() { body } else { location })
    }
}

#[test]
fn pages_retry_purge_and_run_through_forms_with_a_confirmation_and_show_the_journal() {
    let _slot = test_slot();
    let w = World::with_actions("rq");
    let _worker = rq_worker(&w);
    let ids = rq_produce(
        &w.redis.url(),
        "fail",
        1,
        &RqProduceOpts {
            args: Some(json!([4])),
            ..RqProduceOpts::default()
        },
    );
    w.ts.wait_state(&ids[0], "failure", LONG);
    let b = Browser::login(&w);
    // The failed task's page has a Retry button; it posts, then shows the retry.
    let (status, html) = b.page(&format!("/tasks/{}", ids[0]));
    assert_eq!(status, 200);
    let retry = format!("/tasks/{}/retry", ids[0]);
    let (status, location) = b.submit(&html, &retry, &[]);
    assert_eq!(status, 303, "{location}");
    let new_id = location.trim_start_matches("/tasks/").to_string();
    w.ts.wait_state(&new_id, "failure", LONG);
    let (_, html) = b.page(&format!("/tasks/{}", ids[0]));
    assert!(
        html.contains("retried as"),
        "the timeline shows the retry:\n{html}"
    );
    assert!(html.contains(&new_id));
    // A queue without a worker: its purge asks first, with the count.
    let waiting = rq_produce(
        &w.redis.url(),
        "add",
        3,
        &RqProduceOpts {
            queue: Some("later".into()),
            ..RqProduceOpts::default()
        },
    );
    w.ts.wait_all_state(&waiting, "queued", SHORT);
    wait_for("the queue sample of later", SHORT, || {
        let q = w.ts.get("/api/queues");
        let n = q["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "later")
            .map(|q| q["length"].clone());
        if n == Some(json!(3)) {
            Ok(())
        } else {
            Err(format!("{q}"))
        }
    });
    let (_, queues) = b.page("/queues");
    assert!(queues.contains("/queues/rq/later/purge"), "{queues}");
    let (status, confirm) = b.page("/queues/rq/later/purge");
    assert_eq!(status, 200);
    assert!(confirm.contains("Purge 3 waiting messages"), "{confirm}");
    assert_eq!(
        w.redis_cli(&["LLEN", "rq:queue:later"]),
        "3",
        "nothing purged before confirming"
    );
    let (status, location) = b.submit(&confirm, "/queues/rq/later/purge", &[]);
    assert_eq!(status, 303, "{location}");
    assert_eq!(location, "/audit");
    assert_eq!(w.redis_cli(&["LLEN", "rq:queue:later"]), "0");
    // A waiting task's delete asks first too.
    let one = rq_produce(
        &w.redis.url(),
        "add",
        1,
        &RqProduceOpts {
            queue: Some("later".into()),
            ..RqProduceOpts::default()
        },
    );
    w.ts.wait_state(&one[0], "queued", SHORT);
    let (_, task_page) = b.page(&format!("/tasks/{}", one[0]));
    assert!(
        task_page.contains(&format!("/tasks/{}/delete", one[0])),
        "{task_page}"
    );
    let (_, confirm) = b.page(&format!("/tasks/{}/delete", one[0]));
    let (status, _) = b.submit(&confirm, &format!("/tasks/{}/delete", one[0]), &[]);
    assert_eq!(status, 303);
    assert_eq!(w.redis_cli(&["EXISTS", &format!("rq:job:{}", one[0])]), "0");
    // The run form on /audit.
    let (status, audit) = b.page("/audit");
    assert_eq!(status, 200);
    let (status, location) = b.submit(
        &audit,
        "/audit/run",
        &[
            ("broker", "rq"),
            ("queue", "default"),
            ("name", "rq_app.add"),
            ("args", "[40, 2]"),
            ("kwargs", "{}"),
            ("delay_ms", ""),
            ("force", "on"),
        ],
    );
    assert_eq!(status, 303, "{location}");
    let run_id = location.trim_start_matches("/tasks/").to_string();
    let t = w.ts.wait_state(&run_id, "success", LONG);
    assert_eq!(t["result"], json!(42));
    // The journal page lists all four, newest first.
    let (_, audit) = b.page("/audit");
    let order: Vec<usize> = ["run", "delete", "purge", "retry"]
        .iter()
        .map(|a| {
            audit
                .find(&format!("<strong>{a}</strong>"))
                .unwrap_or_else(|| panic!("{a} not on /audit:\n{audit}"))
        })
        .collect();
    assert!(order.windows(2).all(|p| p[0] < p[1]), "{order:?}");
    let (_, first) = b.page("/audit?limit=1");
    assert!(
        first.contains("href=\"/audit?cursor="),
        "the older page's link: {first}"
    );
    let (_, filtered) = b.page("/audit?action=purge");
    assert!(
        filtered.contains("<strong>purge</strong>") && !filtered.contains("<strong>retry</strong>")
    );
    // A form post without the page's token is refused with an error page.
    let resp = w
        .http
        .post(w.ts.url(&retry))
        .header("cookie", &b.cookie)
        .header("origin", &b.origin)
        .form(&[("csrf_token", "forged")])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}

#[test]
fn bullmq_queue_page_pauses_and_resumes_through_forms() {
    let _slot = test_slot();
    let w = bullmq_world();
    let held = w.run(
        json!({"broker": "bullmq", "queue": "bull:mail", "name": "add",
        "kwargs": {"x": 1, "y": 1}}),
    )["id"]
        .as_str()
        .expect("id")
        .to_string();
    let b = Browser::login(&w);
    let html = wait_for("the queue's card with its pause form", LONG, || {
        let (status, html) = b.page("/queues");
        if status == 200 && html.contains("/queues/bullmq/bull%3Amail/pause") {
            Ok(html)
        } else {
            Err(format!("{status}"))
        }
    });
    let (status, location) = b.submit(&html, "/queues/bullmq/bull%3Amail/pause", &[]);
    assert_eq!((status, location.as_str()), (303, "/queues"), "pause");
    assert_eq!(w.redis_cli(&["HGET", "bull:mail:meta", "paused"]), "1");
    let _worker = bull(&w);
    w.ts.wait_state(&held, "queued", SHORT);
    assert_eq!(w.redis_cli(&["HEXISTS", &held, "processedOn"]), "0");
    let (_, html) = b.page("/queues");
    let (status, location) = b.submit(&html, "/queues/bullmq/bull%3Amail/resume", &[]);
    assert_eq!((status, location.as_str()), (303, "/queues"), "resume");
    w.ts.wait_state(&held, "success", LONG);
    let audit: Vec<String> = w
        .audit()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(audit, ["resume:ok", "pause:ok", "run:ok"], "newest first");
}

// ---------------------------------------------------------------------------------------------
// Dramatiq (tests/python/dramatiq_app.py)

#[test]
fn dramatiq_run_delayed_retry_delete_and_purge_with_a_real_worker() {
    let _slot = test_slot();
    let w = World::with_actions("dramatiq");
    // No worker yet: two waiting messages and one delayed, then deleted and purged.
    let waiting = dramatiq_produce(&w.redis.url(), "add", 2, &DramatiqProduceOpts::default());
    w.ts.wait_all_state(&waiting, "queued", SHORT);
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/dramatiq/default/messages/{}", waiting[0]),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 1);
    let delayed =
        w.run(json!({"broker": "dramatiq", "name": "add", "args": [1, 1], "delay_ms": 600000}));
    let delayed_id = delayed["id"].as_str().unwrap().to_string();
    w.ts.wait_state(&delayed_id, "queued", SHORT);
    assert_eq!(w.redis_cli(&["LLEN", "dramatiq:default.DQ"]), "1");
    let (status, entry) = w.write("POST", "/api/queues/dramatiq/default/purge", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 2, "one waiting, one delayed: {entry}");
    assert_eq!(
        w.redis_cli(&[
            "EXISTS",
            "dramatiq:default",
            "dramatiq:default.msgs",
            "dramatiq:default.DQ"
        ]),
        "0"
    );
    // A worker: a run (delayed a little) succeeds, a failure retried runs again, the removed
    // messages never run.
    let _worker = DramatiqWorker::start(&w.redis.url(), &[]);
    let task = w.run(
        json!({"broker": "dramatiq", "queue": "default", "name": "add",
                            "args": [20, 22], "delay_ms": 500}),
    );
    let id = task["id"].as_str().unwrap().to_string();
    let done = w.ts.wait_state(&id, "success", LONG);
    assert_eq!(done["name"], "add", "{done}");
    assert_eq!(done["args"], json!([20, 22]), "{done}");
    let failing = w.run(json!({"broker": "dramatiq", "name": "fail", "args": [5]}));
    let failing_id = failing["id"].as_str().unwrap().to_string();
    w.ts.wait_state(&failing_id, "failure", LONG);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{failing_id}/retry"), None);
    assert_eq!(status, 200, "{entry}");
    let new_id = entry["new_task_id"].as_str().unwrap().to_string();
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["name"], "fail", "{again}");
    assert_eq!(again["args"], json!([5]), "{again}");
    for removed in [&waiting[0], &waiting[1], &delayed_id] {
        let t = w.ts.task(removed).expect("task");
        assert!(t["started_at"].is_null(), "a removed message ran: {t}");
        assert_eq!(t["state"], "failure", "a removed message ends failure: {t}");
        assert!(
            t["error"]
                .as_str()
                .unwrap_or("")
                .contains("by taskscope (token)"),
            "{t}"
        );
    }
    // Dramatiq cannot stop a running message: a clear 400 naming the broker.
    let (status, v) = w.write("POST", &format!("/api/tasks/{id}/revoke"), None);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("dramatiq"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// arq (arq 0.28, tests/python/arq_app.py; queue `arq:queue`)

fn arq_world() -> World {
    World::with_actions("arq")
}

fn arq(w: &World, settings: &str) -> WorkerProcess {
    arq_worker(w.redis.port, settings, "arq:queue")
}

fn is_hex_uuid(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())
}

#[test]
fn arq_run_now_and_deferred_is_executed_by_a_real_worker_and_journaled() {
    let _slot = test_slot();
    let w = arq_world();
    let _worker = arq(&w, "WorkerSettings");
    let task = w.run(json!({"broker": "arq", "name": "add", "args": [2, 3],
        "kwargs": {"note": "from taskscope"}}));
    let id = task["id"].as_str().expect("id").to_string();
    assert!(is_hex_uuid(&id), "uuid4().hex: {id}");
    let done = w.ts.wait_state(&id, "success", LONG);
    assert_eq!(done["result"], json!(5), "{done}");
    assert_eq!(done["queue"], "arq:queue", "{done}");
    assert_eq!(done["args"], json!([2, 3]), "{done}");
    assert_eq!(done["kwargs"], json!({"note": "from taskscope"}), "{done}");
    let later = w.run(json!({"broker": "arq", "name": "add", "args": [40, 2],
        "delay_ms": 1500}));
    let later_id = later["id"].as_str().expect("id").to_string();
    let done = w.ts.wait_state(&later_id, "success", LONG);
    assert_eq!(done["result"], json!(42), "{done}");
    assert!(
        parse_time(&done, "started_at") >= parse_time(&later, "eta"),
        "run after its time: {done} {later}"
    );
    // arq has no queue pause.
    let (status, refused) = w.write("POST", "/api/queues/arq/arq:queue/pause", None);
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("arq"), "{refused}");
}

#[test]
fn arq_failed_job_retried_runs_again_under_a_new_id_linked_both_ways() {
    let _slot = test_slot();
    let w = arq_world();
    let _worker = arq(&w, "WorkerSettings");
    let ids = arq_produce(w.redis.port, &["fail", "[3]"]);
    w.ts.wait_state(&ids[0], "failure", LONG);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{}/retry", ids[0]), None);
    assert_eq!(status, 200, "{entry}");
    let new_id = entry["new_task_id"].as_str().expect("new id").to_string();
    assert!(is_hex_uuid(&new_id) && new_id != ids[0], "{new_id}");
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["name"], "fail", "{again}");
    assert_eq!(again["args"], json!([3]), "{again}");
    assert_eq!(again["error"], "ValueError: card declined 3", "{again}");
    for id in [&ids[0], &new_id] {
        let t = w.ts.task(id).expect("task");
        let actions = t["actions"].as_array().expect("actions");
        assert!(
            actions
                .iter()
                .any(|a| a["action"] == "retry" && a["new_task_id"] == new_id.as_str()),
            "task {id} does not show the retry: {t}"
        );
    }
}

#[test]
fn arq_with_a_json_serializer_gets_json_jobs() {
    let _slot = test_slot();
    let w = arq_world();
    let worker = arq(&w, "JsonWorkerSettings");
    // The application's own job tells taskscope its serializer.
    let ids = arq_produce(w.redis.port, &["--serializer", "json", "fail", "[4]"]);
    let failed = w.ts.wait_state(&ids[0], "failure", LONG);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{}/retry", ids[0]), None);
    assert_eq!(status, 200, "{entry}");
    let new_id = entry["new_task_id"].as_str().expect("new id").to_string();
    // It ran again and failed the same way (JSON cannot hold the exception: arq stores
    // "unable to serialize result" for both); a job the worker could not read would fail with
    // a deserialization error instead.
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["error"], failed["error"], "{again}");
    assert_eq!(again["args"], json!([4]), "{again}");
    assert!(again["started_at"].is_string(), "{again}");
    let log = worker.log_text();
    assert!(!log.contains("DeserializationError"), "{log}");
    let task = w.run(json!({"broker": "arq", "name": "add", "args": [1, 2]}));
    let id = task["id"].as_str().expect("id").to_string();
    let job = w.redis_cli(&["GET", &format!("arq:job:{id}")]);
    assert!(job.trim_start().starts_with('{'), "a JSON job: {job}");
    let done = w.ts.wait_state(&id, "success", LONG);
    assert_eq!(done["result"], json!(3), "{done}");
}

#[test]
fn arq_delete_purge_and_abort() {
    let _slot = test_slot();
    let w = arq_world();
    let run = |args: Value, delay: u64| -> String {
        w.run(json!({"broker": "arq", "name": "add", "args": args, "delay_ms": delay}))["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let ids: Vec<String> = (0..3).map(|i| run(json!([i, 1]), 0)).collect();
    let deferred = run(json!([9, 9]), 60_000);
    assert_eq!(w.redis_cli(&["ZCARD", "arq:queue"]), "4");
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/arq/arq:queue/messages/{}", ids[0]),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 1, "{entry}");
    assert_eq!(
        w.redis_cli(&["EXISTS", &format!("arq:job:{}", ids[0])]),
        "0"
    );
    let (status, again) = w.write(
        "DELETE",
        &format!("/api/queues/arq/arq:queue/messages/{}", ids[0]),
        None,
    );
    assert_eq!(status, 404, "{again}");
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/arq/arq:queue/messages/{deferred}"),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    let (status, entry) = w.write("POST", "/api/queues/arq/arq:queue/purge", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 2, "{entry}");
    assert_eq!(w.redis_cli(&["EXISTS", "arq:queue"]), "0");
    let (status, missing) = w.write("POST", "/api/queues/arq/arq:nosuch/purge", None);
    assert_eq!(status, 404, "{missing}");
    // A worker now: a running job is aborted (`Job.abort`: arq:abort); the removed ones never
    // ran.
    let worker = arq(&w, "WorkerSettings");
    let victim = w.run(json!({"broker": "arq", "name": "slow", "args": [1.9]}))["id"]
        .as_str()
        .expect("id")
        .to_string();
    worker.wait_started(&victim, LONG);
    w.ts.wait_state(&victim, "running", LONG);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{victim}/revoke"), None);
    assert_eq!(status, 200, "{entry}");
    let t = w.ts.wait_state(&victim, "failure", LONG);
    assert_eq!(t["error"], "CancelledError", "{t}");
    for id in ids.iter().chain([&deferred]) {
        assert_eq!(
            w.redis_cli(&["EXISTS", &format!("arq:result:{id}")]),
            "0",
            "a removed job ran: {id}"
        );
        let t = w.ts.task(id).expect("task");
        assert!(t["started_at"].is_null(), "a removed job started: {t}");
    }
}

// ---------------------------------------------------------------------------------------------
// taskiq (tests/python/taskiq_app.py)

fn taskiq_scenario(kind: &str) {
    let env = [("TS_TASKIQ_BROKER", kind)];
    let w = World::new(
        "taskiq",
        &[
            "--allow-actions",
            "--auth-token",
            TOKEN,
            "--reconcile-every",
            "1s",
        ],
    );
    // The worker starts (a stream broker creates its group), then stops: messages wait.
    let mut first = taskiq_worker(&w.redis.url(), &env);
    let warm = taskiq_produce(&w.redis.url(), &env, "add", 1, &[]);
    w.ts.wait_state(&warm[0], "success", LONG);
    first.sigkill();
    let waiting = taskiq_produce(&w.redis.url(), &env, "add", 3, &[]);
    w.ts.wait_all_state(&waiting, "queued", SHORT);
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/taskiq/taskiq/messages/{}", waiting[0]),
        None,
    );
    assert_eq!(status, 200, "{kind}: {entry}");
    assert_eq!(entry["count"], 1);
    let (status, entry) = w.write("POST", "/api/queues/taskiq/taskiq/purge", None);
    assert_eq!(status, 200, "{kind}: {entry}");
    assert_eq!(entry["count"], 2, "{kind}: {entry}");
    // A worker again: a run succeeds, a failure retried runs again, the removed never run.
    let _worker = taskiq_worker(&w.redis.url(), &env);
    let task = w.run(
        json!({"broker": "taskiq", "queue": "taskiq", "name": "taskiq_app:add",
                            "args": [40, 2]}),
    );
    let id = task["id"].as_str().unwrap().to_string();
    let done = w.ts.wait_state(&id, "success", LONG);
    assert_eq!(done["result"], json!(42), "{kind}: {done}");
    let failing = w.run(json!({"broker": "taskiq", "name": "taskiq_app:fail", "args": [8]}));
    let failing_id = failing["id"].as_str().unwrap().to_string();
    w.ts.wait_state(&failing_id, "failure", LONG);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{failing_id}/retry"), None);
    assert_eq!(status, 200, "{kind}: {entry}");
    let new_id = entry["new_task_id"].as_str().unwrap().to_string();
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["args"], json!([8]), "{kind}: {again}");
    // Never run: no result was stored (the result backend keys results by bare task id).
    // In taskscope they end `failure`, saying who removed them.
    for removed in &waiting {
        assert_eq!(
            w.redis_cli(&["EXISTS", removed]),
            "0",
            "{kind}: {removed} ran"
        );
        let t = w.ts.task(removed).expect("task");
        assert_eq!(t["state"], "failure", "{kind}: {t}");
        assert!(
            t["error"]
                .as_str()
                .unwrap_or("")
                .contains("by taskscope (token)"),
            "{kind}: {t}"
        );
    }
}

#[test]
fn taskiq_stream_run_retry_delete_and_purge_with_a_real_worker() {
    let _slot = test_slot();
    taskiq_scenario("stream");
}

#[test]
fn taskiq_list_run_retry_delete_and_purge_with_a_real_worker() {
    let _slot = test_slot();
    taskiq_scenario("list");
}

// ---------------------------------------------------------------------------------------------
// arq (tests/python/arq_app.py)

#[test]
fn arq_run_retry_delete_purge_and_abort_with_a_real_worker() {
    let _slot = test_slot();
    let w = World::with_actions("arq");
    // No worker yet: three waiting jobs, one deleted, two purged.
    let run = |args: Value| {
        let t = w.run(json!({"broker": "arq", "name": "add", "args": args}));
        t["id"].as_str().unwrap().to_string()
    };
    let waiting: Vec<String> = (0..3).map(|i| run(json!([i, 1]))).collect();
    w.ts.wait_all_state(&waiting, "queued", SHORT);
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/arq/arq:queue/messages/{}", waiting[0]),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    let (status, entry) = w.write("POST", "/api/queues/arq/arq:queue/purge", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 2, "{entry}");
    assert_eq!(w.redis_cli(&["EXISTS", "arq:queue"]), "0");
    let _worker = arq_worker(w.redis.port, "WorkerSettings", "arq:queue");
    let ok = run(json!([40, 2]));
    let done = w.ts.wait_state(&ok, "success", LONG);
    assert_eq!(done["result"], json!(42), "{done}");
    let failing = w.run(json!({"broker": "arq", "name": "fail", "args": [6]}));
    let failing_id = failing["id"].as_str().unwrap().to_string();
    w.ts.wait_state(&failing_id, "failure", LONG);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{failing_id}/retry"), None);
    assert_eq!(status, 200, "{entry}");
    let new_id = entry["new_task_id"].as_str().unwrap().to_string();
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["args"], json!([6]), "{again}");
    // Abort a running job (the worker allows aborts).
    let slow = w.run(json!({"broker": "arq", "name": "slow", "args": [60]}));
    let slow_id = slow["id"].as_str().unwrap().to_string();
    w.ts.wait_state(&slow_id, "running", LONG);
    let (status, entry) = w.write("POST", &format!("/api/tasks/{slow_id}/revoke"), None);
    assert_eq!(status, 200, "{entry}");
    let aborted = w.ts.wait_state(&slow_id, "failure", LONG);
    assert_eq!(aborted["error"], "CancelledError", "{aborted}");
    assert_eq!(detail_of(&aborted, "failure"), "aborted", "{aborted}");
    for removed in &waiting {
        let t = w.ts.task(removed).expect("task");
        assert_eq!(t["state"], "failure", "a removed message ends failure: {t}");
        assert!(
            t["error"]
                .as_str()
                .unwrap_or("")
                .contains("by taskscope (token)"),
            "{t}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sidekiq (tests/ruby/app.rb)

#[test]
fn sidekiq_run_retry_delete_and_purge_with_a_real_process() {
    let _slot = test_slot();
    // Sidekiq 6 beats every 5 s: the default 5 s --abandon-after would be too short.
    let w = World::new(
        "sidekiq",
        &[
            "--allow-actions",
            "--auth-token",
            TOKEN,
            "--abandon-after",
            "15s",
        ],
    );
    // No process yet: three waiting jobs, one deleted, two purged.
    let run = |class: &str, args: Value| {
        let t = w.run(json!({"broker": "sidekiq", "name": class, "args": args}));
        t["id"].as_str().unwrap().to_string()
    };
    let waiting: Vec<String> = (0..3).map(|i| run("AddJob", json!([i, 1]))).collect();
    w.ts.wait_all_state(&waiting, "queued", SHORT);
    let (status, entry) = w.write(
        "DELETE",
        &format!("/api/queues/sidekiq/default/messages/{}", waiting[0]),
        None,
    );
    assert_eq!(status, 200, "{entry}");
    let (status, entry) = w.write("POST", "/api/queues/sidekiq/default/purge", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["count"], 2, "{entry}");
    assert_eq!(w.redis_cli(&["EXISTS", "queue:default"]), "0");
    // A failing job (straight to `dead`) and a good one wait too (seen waiting: Sidekiq's
    // success is inferred from a job seen waiting, then in no work hash); then a process.
    // (Produced by the app: the class's `retry: 0` is in the job; a job pushed by class name,
    // as taskscope and `Sidekiq::Client.push("class" => ...)` do, gets the default retry.)
    let failing = sidekiq_produce(&w.redis, None, &["noretry", "declined 7"]).remove(0);
    let ok = run("AddJob", json!([40, 2]));
    w.ts.wait_all_state(&[failing.clone(), ok.clone()], "queued", SHORT);
    let _worker = sidekiq_worker(&w.redis, &["default"], None);
    w.ts.wait_state(&ok, "success", LONG);
    let failed = w.ts.wait_state(&failing, "failure", LONG);
    assert_eq!(failed["args"], json!(["declined 7"]), "{failed}");
    // Retry: the dead job's class and args pushed again under a new jid.
    let (status, entry) = w.write("POST", &format!("/api/tasks/{failing}/retry"), None);
    assert_eq!(status, 200, "{entry}");
    let new_id = entry["new_task_id"].as_str().unwrap().to_string();
    let again = w.ts.wait_state(&new_id, "failure", LONG);
    assert_eq!(again["name"], "NoRetryJob", "{again}");
    assert_eq!(again["args"], json!(["declined 7"]), "{again}");
    for removed in &waiting {
        let t = w.ts.task(removed).expect("task");
        assert_eq!(t["state"], "failure", "a removed message ends failure: {t}");
        assert!(
            t["error"]
                .as_str()
                .unwrap_or("")
                .contains("by taskscope (token)"),
            "{t}"
        );
    }
    let (status, v) = w.write("POST", &format!("/api/tasks/{ok}/revoke"), None);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("sidekiq"), "{v}");
}

#[test]
fn a_run_of_a_name_never_seen_is_refused_unless_forced_seen_or_allowed_by_name() {
    let _slot = test_slot();
    let w = World::with_actions("rq");
    let body = json!({"broker": "rq", "queue": "default", "name": "rq_app.add", "args": [1, 2]});
    // Never seen on rq, not forced: refused, journaled, nothing written.
    let (status, v) = w.write("POST", "/api/tasks", Some(body.clone()));
    assert_eq!(status, 400, "{v}");
    let error = v["error"].as_str().unwrap_or("");
    assert!(
        error.contains("unknown task name") && error.contains("\"force\": true"),
        "{v}"
    );
    assert_eq!(w.redis_cli(&["EXISTS", "rq:queue:default"]), "0");
    assert_eq!(w.audit()[0]["outcome"], "refused", "{:?}", w.audit());
    // Forced: enqueued; a real worker runs it.
    let _worker = rq_worker(&w);
    let first = w.run(body.clone());
    let id = first["id"].as_str().expect("id").to_string();
    w.ts.wait_state(&id, "success", LONG);
    // Seen now: the same name needs no force.
    let (status, v) = w.write("POST", "/api/tasks", Some(body));
    assert_eq!(status, 200, "{v}");
    // An exact name in --action-allow-names counts as known, even never seen.
    let exact = World::new(
        "rq",
        &[
            "--allow-actions",
            "--auth-token",
            TOKEN,
            "--action-allow-names",
            "rq_app.mul,rq_app.*",
        ],
    );
    let (status, v) = exact.write(
        "POST",
        "/api/tasks",
        Some(json!({"broker": "rq", "name": "rq_app.mul", "args": [2, 3]})),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = exact.write(
        "POST",
        "/api/tasks",
        Some(json!({"broker": "rq", "name": "rq_app.div", "args": [2, 3]})),
    );
    assert_eq!(status, 400, "a glob match is allowed, not known: {v}");
}

/// With the defaults (`--brokers auto`), a Dramatiq application under its own namespace is
/// found by its keys; a run on dramatiq is then refused instead of being written under
/// `dramatiq:`, where none of its workers would ever see it.
#[test]
fn a_detected_application_namespace_refuses_writes_under_the_default_keys() {
    let _slot = test_slot();
    let w = World::new("auto", &["--allow-actions", "--auth-token", TOKEN]);
    w.redis_cli(&["ZADD", "shop:__heartbeats__", "1700000000000", "worker-1"]);
    wait_for("dramatiq namespace shop detected", LONG, || {
        let h = w.ts.get("/healthz");
        if h["detection"]["found"]
            .to_string()
            .contains("dramatiq namespace shop")
        {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });
    let (status, v) = w.write(
        "POST",
        "/api/tasks",
        Some(json!({"broker": "dramatiq", "name": "count_words", "args": [1], "force": true})),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("\"shop\""),
        "{v}"
    );
    assert_eq!(w.redis_cli(&["EXISTS", "dramatiq:default"]), "0");
    assert_eq!(w.audit()[0]["outcome"], "refused");
}

#[test]
fn a_write_redis_refuses_fails_with_502_and_is_journaled_as_failed() {
    let _slot = test_slot();
    let w = World::with_actions("rq");
    // A read-only replica (of a master that is not there): every write is refused.
    let dead_port = free_port().to_string();
    w.redis_cli(&["REPLICAOF", "127.0.0.1", &dead_port]);
    let (status, v) = w.write(
        "POST",
        "/api/tasks",
        Some(json!({"broker": "rq", "name": "rq_app.add", "args": [1, 2], "force": true})),
    );
    w.redis_cli(&["REPLICAOF", "NO", "ONE"]);
    assert_eq!(status, 502, "{v}");
    let error = v["error"].as_str().unwrap_or("");
    assert!(
        error.contains("Redis refused the write") && error.contains("READONLY"),
        "{v}"
    );
    assert_eq!(v["entry"]["outcome"], "failed", "{v}");
    assert_eq!(
        w.redis_cli(&["EXISTS", "rq:queue:default"]),
        "0",
        "nothing half-written"
    );
    let audit = w.audit();
    assert_eq!(audit[0]["outcome"], "failed");
    assert!(audit[0]["error"].as_str().unwrap().contains("READONLY"));
}

#[test]
fn bulk_retry_and_delete_over_a_task_list_filter_with_a_preview_count() {
    let _slot = test_slot();
    let w = World::with_actions("rq");
    let _worker = rq_worker(&w);
    let failed = rq_produce(
        &w.redis.url(),
        "fail",
        3,
        &RqProduceOpts {
            args: Some(json!([2])),
            ..RqProduceOpts::default()
        },
    );
    let ok = rq_produce(&w.redis.url(), "add", 1, &RqProduceOpts::default());
    w.ts.wait_all_state(&failed, "failure", LONG);
    w.ts.wait_state(&ok[0], "success", LONG);
    // Jobs nobody consumes: the bulk delete's targets.
    let parked = rq_produce(
        &w.redis.url(),
        "add",
        2,
        &RqProduceOpts {
            queue: Some("parked".into()),
            ..RqProduceOpts::default()
        },
    );
    w.ts.wait_all_state(&parked, "queued", SHORT);
    // The preview counts the failed tasks the filter matches (not the successful one).
    let (status, preview) = w.write(
        "POST",
        "/api/bulk/retry?broker=rq&name=rq_app.fail&preview=1",
        None,
    );
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["count"], 3, "{preview}");
    assert_eq!(w.audit().len(), 0, "a preview changes nothing");
    let (status, done) = w.write("POST", "/api/bulk/retry?broker=rq&name=rq_app.fail", None);
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["ok"], 3, "{done}");
    let retries: Vec<String> = w
        .audit()
        .iter()
        .filter(|e| e["action"] == "retry")
        .map(|e| e["new_task_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(retries.len(), 3);
    for id in &retries {
        let t = w.ts.wait_state(id, "failure", LONG);
        assert_eq!(t["args"], json!([2]), "{t}");
    }
    let (status, preview) = w.write("POST", "/api/bulk/delete?queue=parked&preview=1", None);
    assert_eq!(status, 200);
    assert_eq!(preview["count"], 2, "{preview}");
    let (status, done) = w.write("POST", "/api/bulk/delete?queue=parked", None);
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["ok"], 2, "{done}");
    assert_eq!(w.redis_cli(&["LLEN", "rq:queue:parked"]), "0");
    let (status, _) = w.write("POST", "/api/bulk/nosuch?preview=1", None);
    assert_eq!(status, 404);
    // The pages: the task list links to the bulk retry, which asks first with the count.
    let b = Browser::login(&w);
    let (_, list) = b.page("/tasks?name=rq_app.fail");
    assert!(
        list.contains("/tasks/bulk/retry?name=rq_app.fail"),
        "{list}"
    );
    let (status, confirm) = b.page("/tasks/bulk/retry?name=rq_app.fail");
    assert_eq!(status, 200);
    assert!(
        confirm.contains("Retry the 6 failed or abandoned tasks"),
        "{confirm}"
    );
    let (status, location) = b.submit(&confirm, "/tasks/bulk/retry?name=rq_app.fail", &[]);
    assert_eq!(status, 303, "{location}");
    assert_eq!(location, "/audit");
    let bulk = w.ts.get("/api/audit?action=bulk-retry")["entries"].clone();
    assert_eq!(bulk[0]["count"], 6, "{bulk}");
}

// ---------------------------------------------------------------------------------------------
// BullMQ: pause and resume (tests/node/worker.js, producer.js)

#[test]
fn bullmq_pause_holds_jobs_until_resume_and_other_brokers_say_not_supported() {
    let _slot = test_slot();
    let w = World::with_actions("bullmq");
    let _worker = bullmq_worker(&w.redis.url(), "jobs", "bull", &[("WORKER_NAME", "w1")]);
    let first = bullmq_produce(
        &w.redis.url(),
        "jobs",
        "bull",
        &json!([{"name": "add", "data": {"x": 1, "y": 1}}]),
    );
    w.ts.wait_state(&first[0], "success", LONG);
    let (status, entry) = w.write("POST", "/api/queues/bullmq/bull:jobs/pause", None);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["action"], "pause");
    assert_eq!(w.redis_cli(&["HGET", "bull:jobs:meta", "paused"]), "1");
    let held = bullmq_produce(
        &w.redis.url(),
        "jobs",
        "bull",
        &json!([{"name": "add", "data": {"x": 2, "y": 2}}]),
    );
    w.ts.wait_state(&held[0], "queued", SHORT);
    // Paused: the job stays waiting (observed for 2 s: an absence, not a synchronisation).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < until {
        let t = w.ts.task(&held[0]).expect("task");
        assert_eq!(
            t["state"], "queued",
            "a job ran while the queue was paused: {t}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (status, entry) = w.write("POST", "/api/queues/bullmq/bull:jobs/resume", None);
    assert_eq!(status, 200, "{entry}");
    let done = w.ts.wait_state(&held[0], "success", LONG);
    assert_eq!(done["result"], json!(4), "{done}");
    let (status, v) = w.write("POST", "/api/queues/rq/default/pause", None);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("rq"), "{v}");
    let (status, v) = w.write("POST", "/api/queues/bullmq/bull:nosuch/pause", None);
    assert_eq!(status, 404, "{v}");
}
