//! The UI in real headless Chromium (Debian's `chromium`, installed by scripts/setup.sh with
//! TASKSCOPE_SETUP_BROWSER=1, which .ci/run sets): a running taskscope watches real Celery and
//! Dramatiq workers through waves of traffic with backlog, failures and retries; then every page
//! is loaded at 1280 px and at a phone's 390 px through the DevTools protocol, which reports
//! console errors, uncaught exceptions and failed loads. Screenshots go to
//! `target/screenshots/` (README's come from there).

mod common;

use base64::Engine;
use common::{
    dramatiq_produce, produce, wait_for, CeleryWorker, DramatiqProduceOpts, DramatiqWorker,
    ProduceOpts, RedisServer, Taskscope, LONG,
};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A headless Chromium with a DevTools port, killed on drop.
struct Chromium {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let port = common::free_port();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--font-render-hinting=none",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the renderers and helpers it forks end with it.
            .process_group(0)
            .spawn()
            .expect("start chromium (scripts/setup.sh installs it with TASKSCOPE_SETUP_BROWSER=1)");
        let c = Chromium {
            child,
            port,
            _profile: profile,
        };
        wait_for("chromium's DevTools endpoint", LONG, || {
            reqwest::blocking::get(format!("http://127.0.0.1:{port}/json/version"))
                .map_err(|e| e.to_string())
                .map(|_| ())
        });
        c
    }

    /// A new tab, driven through its own DevTools websocket.
    fn new_page(&self) -> Page {
        let target: Value = reqwest::blocking::Client::new()
            .put(format!(
                "http://127.0.0.1:{}/json/new?about:blank",
                self.port
            ))
            .send()
            .and_then(|r| r.json())
            .expect("open a tab");
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("webSocketDebuggerUrl")
            .to_string();
        let (socket, _) = tungstenite::connect(ws_url.as_str()).expect("connect to the tab");
        if let MaybeTlsStream::Plain(s) = socket.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("read timeout");
        }
        let mut page = Page {
            socket,
            next_id: 0,
            events: Vec::new(),
        };
        page.call("Runtime.enable", json!({}));
        page.call("Log.enable", json!({}));
        page.call("Page.enable", json!({}));
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Page {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Every event received so far (method, params).
    events: Vec<(String, Value)>,
}

impl Page {
    /// Reads one message if one arrives within the read timeout.
    fn pump(&mut self) -> Option<Value> {
        match self.socket.read() {
            Ok(Message::Text(text)) => {
                let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
                if let Some(method) = v["method"].as_str() {
                    self.events.push((method.to_string(), v["params"].clone()));
                }
                Some(v)
            }
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("DevTools connection: {e}"),
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::Text(msg.to_string()))
            .expect("send to DevTools");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(v) = self.pump() {
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
        panic!("{method}: no answer from DevTools");
    }

    /// Pumps events for `d`.
    fn settle(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.pump();
        }
    }

    fn wait_event(&mut self, method: &str, since: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.events[since..].iter().any(|(m, _)| m == method) {
                return;
            }
            assert!(Instant::now() < deadline, "no {method} within {timeout:?}");
            self.pump();
        }
    }

    fn viewport(&mut self, width: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": 900, "deviceScaleFactor": if mobile { 2 } else { 1 }, "mobile": mobile }),
        );
    }

    /// Navigates and waits for the load event and a moment for scripts.
    fn open(&mut self, url: &str) {
        let since = self.events.len();
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_event("Page.loadEventFired", since, Duration::from_secs(30));
        self.settle(Duration::from_millis(700));
    }

    /// How many elements match `selector`, through the DOM domain (works with scripts off).
    fn count(&mut self, selector: &str) -> usize {
        let doc = self.call("DOM.getDocument", json!({ "depth": 0 }));
        let nodes = self.call(
            "DOM.querySelectorAll",
            json!({ "nodeId": doc["root"]["nodeId"], "selector": selector }),
        );
        nodes["nodeIds"].as_array().map_or(0, Vec::len)
    }

    /// Polls `expression` until it is `true`.
    fn wait_true(&mut self, what: &str, expression: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.eval(expression) != json!(true) {
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            self.settle(Duration::from_millis(250));
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// Console errors, uncaught exceptions and failed loads seen since event `since`.
    fn errors_since(&self, since: usize) -> Vec<String> {
        self.events[since..]
            .iter()
            .filter_map(|(method, p)| match method.as_str() {
                "Runtime.exceptionThrown" => Some(format!("exception: {}", p["exceptionDetails"])),
                "Runtime.consoleAPICalled" if p["type"] == "error" || p["type"] == "assert" => {
                    Some(format!("console.{}: {}", p["type"], p["args"]))
                }
                "Log.entryAdded" if p["entry"]["level"] == "error" => {
                    Some(format!("log: {}", p["entry"]))
                }
                _ => None,
            })
            .collect()
    }

    /// A PNG of the whole page at the current width.
    fn screenshot(&mut self, path: &Path) {
        let png = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png["data"].as_str().expect("screenshot data"))
            .expect("base64");
        std::fs::write(path, bytes).expect("write screenshot");
    }

    /// Opens `url` (shown as `path`) at the current viewport `width` and saves a screenshot to
    /// `shot`; the problems found: console errors, exceptions and failed loads, and anything
    /// sticking out sideways (against the emulated width: on a phone the layout viewport grows
    /// to fit content; the page must scroll vertically only).
    fn check(&mut self, url: &str, path: &str, width: u32, shot: &Path) -> Vec<String> {
        let since = self.events.len();
        self.open(url);
        let mut problems = Vec::new();
        let errors = self.errors_since(since);
        if !errors.is_empty() {
            problems.push(format!("{path} at {width}px: {errors:#?}"));
        }
        let overflow = self.eval(&format!(
            "Math.max(document.documentElement.scrollWidth, window.innerWidth) - {width}"
        ));
        if overflow.as_i64().unwrap_or(0) > 0 {
            problems.push(format!("{path} at {width}px is {overflow} px too wide"));
        }
        self.screenshot(shot);
        problems
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = common::repo_root().join("target").join("screenshots");
    std::fs::create_dir_all(&dir).expect("target/screenshots");
    dir
}

#[test]
fn pages_render_in_chromium_with_real_traffic_and_no_console_errors() {
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--brokers", "celery,dramatiq", "--sample-every", "1s"],
    );
    let celery = CeleryWorker::start(&redis.url(), "celery", false, &["--concurrency", "2"]);
    let dramatiq = DramatiqWorker::start(&redis.url(), &[]);

    // Waves of traffic: slow tasks pile up in the queue (backlog) and drain, a few fail, a few
    // are retried; a queue nobody consumes keeps a steady backlog.
    let mut failed_id = None;
    produce(&redis.url(), "add", 4, "reports", &ProduceOpts::default());
    for wave in 0..5usize {
        let slow = ProduceOpts {
            seconds: Some(0.4),
            ..ProduceOpts::default()
        };
        produce(&redis.url(), "slow", 10, "celery", &slow);
        produce(&redis.url(), "add", 6, "celery", &ProduceOpts::default());
        let ids = produce(
            &redis.url(),
            "fail",
            1 + wave % 2,
            "celery",
            &ProduceOpts::default(),
        );
        failed_id.get_or_insert_with(|| ids[0].clone());
        if wave % 2 == 0 {
            produce(
                &redis.url(),
                "flaky",
                1,
                "celery",
                &ProduceOpts {
                    args: Some(json!([format!("w{wave}"), 1])),
                    ..ProduceOpts::default()
                },
            );
        }
        dramatiq_produce(&redis.url(), "add", 8, &DramatiqProduceOpts::default());
        dramatiq_produce(
            &redis.url(),
            "slow",
            6,
            &DramatiqProduceOpts {
                seconds: Some(0.3),
                ..DramatiqProduceOpts::default()
            },
        );
        if wave % 2 == 1 {
            dramatiq_produce(&redis.url(), "fail", 1, &DramatiqProduceOpts::default());
        }
        std::thread::sleep(Duration::from_secs(4));
    }
    let failed_id = failed_id.expect("a failing task");
    ts.wait_state(&failed_id, "failure", LONG);
    wait_for("failures and retries in the failures report", LONG, || {
        let v = ts.get("/api/reports/failures?since=10m&step=10s");
        let (f, r) = v["total"]
            .as_array()
            .into_iter()
            .flatten()
            .fold((0, 0), |acc, p| {
                (
                    acc.0 + p[1].as_u64().unwrap_or(0),
                    acc.1 + p[2].as_u64().unwrap_or(0),
                )
            });
        if f >= 5 && r >= 1 {
            Ok(())
        } else {
            Err(format!("{f} failures, {r} retries: {v}"))
        }
    });
    wait_for("a backlog above zero in the backlog report", LONG, || {
        let v = ts.get("/api/reports/backlog?since=10m&step=5s");
        let peak = v["series"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["queue"] == "celery")
            .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
            .map(|p| p[1].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0);
        if peak >= 3 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });

    let chromium = Chromium::start();
    let mut page = chromium.new_page();
    let shots = screenshot_dir();
    let window = "since=70s&step=2s";
    let pages: Vec<(&str, String)> = vec![
        ("overview", format!("/?{window}")),
        ("reports", format!("/reports?{window}")),
        ("queues", "/queues?range=15m".to_string()),
        ("workers", "/workers".to_string()),
        ("tasks", "/tasks".to_string()),
        ("task", format!("/tasks/{failed_id}")),
    ];
    let mut problems = Vec::new();
    for (width, mobile, suffix) in [(1280, false, "desktop"), (390, true, "phone")] {
        page.viewport(width, mobile);
        for (name, path) in &pages {
            let shot = shots.join(format!("{name}-{suffix}.png"));
            problems.extend(page.check(&ts.url(path), path, width, &shot));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // The script ran: the live toggle is visible, chart tooltips are prepared, and pausing works.
    page.viewport(1280, false);
    page.open(&ts.url(&format!("/?{window}")));
    assert_eq!(
        page.eval("document.querySelector('.live-toggle').hidden"),
        json!(false)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('rect.hit[data-tip]').length > 0"),
        json!(true)
    );
    page.eval("document.querySelector('.live-toggle').click()");
    assert_eq!(
        page.eval("document.querySelector('.live-toggle').getAttribute('aria-pressed')"),
        json!("true")
    );
    // The overview has real bars for failures and a backlog line.
    assert_eq!(
        page.eval("document.querySelectorAll('svg.plot rect.bar.state-failure').length > 0"),
        json!(true)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('svg.plot path.line').length > 0"),
        json!(true)
    );

    // Live: a task produced now appears in the open task list without a reload; while paused
    // nothing changes, and resuming catches up.
    page.open(&ts.url("/tasks"));
    let marker = "window.__same_page = true";
    page.eval(marker);
    let fresh = produce(&redis.url(), "add", 1, "celery", &ProduceOpts::default()).remove(0);
    page.wait_true(
        "the new task in the live task list",
        &format!("document.querySelector('#live-tasks a[title=\"{fresh}\"]') !== null"),
        Duration::from_secs(30),
    );
    assert_eq!(
        page.eval("window.__same_page === true"),
        json!(true),
        "no reload"
    );
    page.eval("document.querySelector('.live-toggle').click()");
    let held = produce(&redis.url(), "add", 1, "celery", &ProduceOpts::default()).remove(0);
    ts.wait_state(&held, "success", LONG);
    page.settle(Duration::from_secs(3));
    let shown = format!("document.querySelector('#live-tasks a[title=\"{held}\"]') !== null");
    assert_eq!(
        page.eval(&shown),
        json!(false),
        "paused: the list must not change"
    );
    page.eval("document.querySelector('.live-toggle').click()");
    page.wait_true("resuming catches up", &shown, Duration::from_secs(30));

    // Without JavaScript every page is complete: charts, tables, links; the live toggle stays
    // hidden.
    page.call(
        "Emulation.setScriptExecutionDisabled",
        json!({ "value": true }),
    );
    page.open(&ts.url(&format!("/reports?{window}")));
    assert!(
        page.count("svg.plot rect.bar.state-failure") > 0,
        "bars without JS"
    );
    assert!(page.count("svg.plot path.line") > 0, "lines without JS");
    assert!(
        page.count("svg.plot rect.hit title") > 0,
        "native tooltips without JS"
    );
    page.screenshot(&shots.join("reports-nojs.png"));
    page.open(&ts.url("/"));
    assert_eq!(page.count(".stat"), 6);
    assert!(
        page.count("svg.plot rect.bar") > 0,
        "overview charts without JS"
    );
    assert_eq!(page.count(".live-toggle[hidden]"), 1);
    drop(celery);
    drop(dramatiq);
}

/// `/failures` (issue #19) in Chromium, on groups that real `rq worker`s made: two errors that
/// started before the window, a new one inside it; desktop and phone, no console error, nothing
/// wider than the screen, every group linked to its tasks. Screenshots `failures-*.png`.
#[test]
fn failure_groups_page_renders_in_chromium_with_real_rq_failures() {
    use common::{rq_produce, RqProduceOpts, RqWorker};
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--brokers", "rq", "--sample-every", "1s"],
    );
    let _worker = RqWorker::start(&redis.url(), &["default"], &[], &[]);
    let fail = |kind: &str, args: Value| {
        let opts = RqProduceOpts {
            args: Some(args),
            ..RqProduceOpts::default()
        };
        rq_produce(&redis.url(), kind, 1, &opts).remove(0)
    };
    // Before the window: the two old errors.
    let mut ids = vec![
        fail("fail", json!([3])),
        fail("retry_then_fail", json!([8])),
    ];
    for id in &ids {
        ts.wait_state(id, "failure", LONG);
    }
    std::thread::sleep(Duration::from_millis(1_100));
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // Waves inside it: the old errors again, and a new one.
    for wave in 0..3u32 {
        for n in 0..(2 + wave) {
            ids.push(fail("fail", json!([100 * wave + n])));
        }
        ids.push(fail("retry_then_fail", json!([wave])));
        if wave > 0 {
            ids.push(fail(
                "missing_account",
                json!([format!(
                    "6f1c2a9e-0b7d-4e5f-9a3c-{:012x}",
                    0x51_u32 * (wave + 1)
                )]),
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    for id in &ids {
        ts.wait_state(id, "failure", LONG);
    }
    let query = format!("since={since}&step=1s");
    let groups = ts.get(&format!("/api/failures/groups?{query}"))["groups"]
        .as_array()
        .expect("groups")
        .clone();
    assert_eq!(groups.len(), 3, "{groups:?}");

    let chromium = Chromium::start();
    let mut page = chromium.new_page();
    let shots = screenshot_dir();
    let path = format!("/failures?{query}");
    let mut problems = Vec::new();
    for (width, mobile, suffix) in [(1280, false, "desktop"), (390, true, "phone")] {
        page.viewport(width, mobile);
        let shot = shots.join(format!("failures-{suffix}.png"));
        problems.extend(page.check(&ts.url(&path), &path, width, &shot));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        page.eval(
            "document.querySelectorAll('section.group a[href^=\"/tasks?fingerprint=\"]').length"
        ),
        json!(3)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('.new-badge').length"),
        json!(1),
        "only the error first seen in the window is new"
    );
}

/// `--base-path /taskscope` (a non-stripping proxy's view): the overview, the task list and a
/// task's page load with their stylesheet and script from under the prefix, the live stream
/// connects there, a link followed stays under it, and nothing in the console complains.
#[test]
fn pages_under_a_base_path_load_their_assets_and_live_stream_in_chromium() {
    use common::{rq_produce, RqProduceOpts, RqWorker};
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--base-path", "/taskscope", "--sample-every", "1s"],
    );
    let _worker = RqWorker::start(&redis.url(), &["default"], &[], &[]);
    let ids = rq_produce(&redis.url(), "add", 3, &RqProduceOpts::default());
    ts.wait_all_state(&ids, "success", LONG);

    let chromium = Chromium::start();
    let mut page = chromium.new_page();
    page.call("Network.enable", json!({}));
    page.viewport(1280, false);
    let shots = screenshot_dir();
    let mut problems = Vec::new();
    for (path, shot) in [
        ("/taskscope/", "base-path-overview.png"),
        ("/taskscope/tasks", "base-path-tasks.png"),
    ] {
        problems.extend(page.check(&ts.url(path), path, 1280, &shots.join(shot)));
        let loaded = page
            .eval("performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)");
        for asset in ["/taskscope/static/app.css", "/taskscope/static/app.js"] {
            assert!(
                loaded
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p == asset)),
                "{path}: {asset} not loaded: {loaded}"
            );
        }
        assert_ne!(
            page.eval("getComputedStyle(document.querySelector('header.topbar')).backgroundColor"),
            json!("rgba(0, 0, 0, 0)"),
            "{path}: the stylesheet does not apply"
        );
    }
    // The live stream: app.js opened `/taskscope/api/events`, answered 200 (an open stream never
    // shows in resource timing, so ask the network log).
    wait_for("the live stream answered under the prefix", LONG, || {
        page.eval("1"); // reads the events that arrived meanwhile
        let answered: Vec<(String, i64)> = page
            .events
            .iter()
            .filter(|(method, _)| method == "Network.responseReceived")
            .filter_map(|(_, p)| {
                let url = p["response"]["url"].as_str()?;
                let path = url.split_once("//")?.1.split_once('/')?.1;
                path.ends_with("api/events").then(|| {
                    (
                        format!("/{path}"),
                        p["response"]["status"].as_i64().unwrap_or(0),
                    )
                })
            })
            .collect();
        let expected = ("/taskscope/api/events".to_string(), 200);
        if !answered.is_empty() && answered.iter().all(|a| *a == expected) {
            Ok(())
        } else {
            Err(format!("{answered:?}"))
        }
    });
    let href =
        page.eval("document.querySelector('a[href^=\"/taskscope/tasks/\"]').getAttribute('href')");
    let href = href.as_str().expect("a task link").to_string();
    problems.extend(page.check(
        &ts.url(&href),
        &href,
        1280,
        &shots.join("base-path-task.png"),
    ));
    assert_eq!(
        page.eval("document.querySelector('h1') !== null && location.pathname.startsWith('/taskscope/tasks/')"),
        json!(true)
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_firing_alert_stands_out_on_the_overview_in_chromium() {
    use common::{rq_produce, RqProduceOpts};
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("taskscope.toml");
    std::fs::write(
        &config,
        "alert_interval = \"1s\"\n\
         [[alert]]\nname = \"parked queue\"\nwhen = \"oldest_age\"\nabove = 2\n\
         [[alert]]\nname = \"failing\"\nwhen = \"failure_rate\"\nabove = 0.5\n",
    )
    .expect("write the config");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--sample-every",
            "1s",
        ],
    );
    // A parked queue: jobs and no worker.
    let opts = RqProduceOpts {
        queue: Some("parked".into()),
        args: Some(json!([1, 2])),
        ..RqProduceOpts::default()
    };
    rq_produce(&redis.url(), "add", 3, &opts);
    wait_for("the parked queue alert to fire", LONG, || {
        let alerts = ts.get("/api/alerts");
        let firing = alerts["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["state"] == "firing"));
        if firing {
            Ok(())
        } else {
            Err(alerts.to_string())
        }
    });

    let chromium = Chromium::start();
    let mut page = chromium.new_page();
    let shots = screenshot_dir();
    let mut problems = Vec::new();
    for (width, mobile, suffix) in [(1280, false, "desktop"), (390, true, "phone")] {
        page.viewport(width, mobile);
        let shot = shots.join(format!("alerts-{suffix}.png"));
        problems.extend(page.check(&ts.url("/"), "/", width, &shot));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        page.eval("document.querySelectorAll('#alerts tr.alert-firing a[href=\"/tasks?broker=rq&queue=parked\"]').length"),
        json!(1),
        "the firing alert links to its queue's tasks"
    );
}

/// The action UI (issue #21) in Chromium: a failed RQ job's page with its buttons, the Retry
/// button posting its form and landing on the retry's page, a queue's purge confirmation with
/// its count, and `/audit` with the journal and the run form; at desktop and phone widths, no
/// console errors. Screenshots: `target/screenshots/actions-*.png`, `audit-*.png`.
#[test]
fn action_pages_retry_and_purge_in_chromium() {
    use common::{rq_produce, RqProduceOpts, RqWorker};
    let _slot = common::test_slot();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "shots-token";
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &[
            "--brokers",
            "rq",
            "--sample-every",
            "1s",
            "--allow-actions",
            "--auth-token",
            token,
        ],
    );
    let _worker = RqWorker::start(&redis.url(), &["default"], &[], &[]);
    let failed = rq_produce(
        &redis.url(),
        "fail",
        1,
        &RqProduceOpts {
            args: Some(json!([3])),
            ..RqProduceOpts::default()
        },
    )
    .remove(0);
    ts.wait_state(&failed, "failure", LONG);
    let waiting = rq_produce(
        &redis.url(),
        "add",
        4,
        &RqProduceOpts {
            queue: Some("invoices".into()),
            ..RqProduceOpts::default()
        },
    );
    ts.wait_all_state(&waiting, "queued", LONG);
    wait_for("a sample of the invoices queue", LONG, || {
        let q = ts.get("/api/queues");
        if q.to_string().contains("\"invoices\"") {
            Ok(())
        } else {
            Err(q.to_string())
        }
    });

    let chromium = Chromium::start();
    let mut page = chromium.new_page();
    let shots = screenshot_dir();
    page.viewport(1280, false);
    page.open(&ts.url(&format!("/?token={token}")));
    let mut problems = Vec::new();
    let task_path = format!("/tasks/{failed}");
    problems.extend(page.check(
        &ts.url(&task_path),
        &task_path,
        1280,
        &shots.join("actions-task-desktop.png"),
    ));
    assert_eq!(
        page.count("form[action$=\"/retry\"] button"),
        1,
        "a Retry button"
    );
    // Retry: the form posts and the browser lands on the new task's page.
    let since = page.events.len();
    page.eval("document.querySelector('form[action$=\"/retry\"] button').click()");
    page.wait_event("Page.loadEventFired", since, Duration::from_secs(30));
    page.settle(Duration::from_millis(500));
    let landed = page.eval("location.pathname");
    let new_id = landed
        .as_str()
        .and_then(|p| p.strip_prefix("/tasks/"))
        .unwrap_or_else(|| panic!("not on a task page after Retry: {landed}"))
        .to_string();
    assert_ne!(new_id, failed);
    ts.wait_state(&new_id, "failure", LONG);
    problems.extend(page.check(
        &ts.url(&task_path),
        &task_path,
        1280,
        &shots.join("actions-task-retried-desktop.png"),
    ));
    problems.extend(page.check(
        &ts.url("/queues"),
        "/queues",
        1280,
        &shots.join("actions-queues-desktop.png"),
    ));
    assert_eq!(
        page.count("a[href=\"/queues/rq/invoices/purge\"]"),
        1,
        "a Purge button"
    );
    let list = "/tasks?state=failure";
    problems.extend(page.check(
        &ts.url(list),
        list,
        1280,
        &shots.join("actions-task-list-desktop.png"),
    ));
    // Purge: the confirmation page shows the count; confirming posts and lands on /audit.
    let purge_path = "/queues/rq/invoices/purge";
    problems.extend(page.check(
        &ts.url(purge_path),
        purge_path,
        1280,
        &shots.join("actions-confirm-purge-desktop.png"),
    ));
    assert_eq!(
        page.eval("document.querySelector('.confirm-question').textContent.includes('Purge 4 waiting messages')"),
        json!(true)
    );
    let since = page.events.len();
    page.eval("document.querySelector('.confirm form button').click()");
    page.wait_event("Page.loadEventFired", since, Duration::from_secs(30));
    page.settle(Duration::from_millis(500));
    assert_eq!(page.eval("location.pathname"), json!("/audit"));
    assert_eq!(redis.cli(&["LLEN", "rq:queue:invoices"]), "0");
    for (width, mobile, suffix) in [(1280, false, "desktop"), (390, true, "phone")] {
        page.viewport(width, mobile);
        problems.extend(page.check(
            &ts.url("/audit"),
            "/audit",
            width,
            &shots.join(format!("audit-{suffix}.png")),
        ));
    }
    page.viewport(390, true);
    problems.extend(page.check(
        &ts.url(&task_path),
        &task_path,
        390,
        &shots.join("actions-task-phone.png"),
    ));
    assert_eq!(page.count("table.audit tbody tr"), 0, "not on /audit");
    page.viewport(1280, false);
    page.open(&ts.url("/audit"));
    assert_eq!(
        page.count("table.audit tbody tr"),
        2,
        "retry and purge journaled"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
