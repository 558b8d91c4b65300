//! Alerts end to end: taskscope with its defaults (`--brokers auto`) and a config file of
//! `[[alert]]` rules whose webhooks point at a receiver in this test; real RQ jobs enqueued on
//! a queue no worker listens to (a parked queue), then a real `rq worker` that drains it.
//!
//! What it proves: the oldest-message age of a parked queue fires an alert (webhook received,
//! `/api/alerts` firing, `/metrics` gauge 1, shown on `/`), stays quiet while it keeps firing
//! (no duplicates across evaluations), and resolves exactly once when a worker drains the queue.
//!
//! Run: `cargo test --test alerts`.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A webhook receiver on 127.0.0.1:0: records `(path, JSON body)` of every POST, answers 200.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let _ = handle(stream, &sink);
                });
            }
        });
        Receiver { url, got }
    }

    /// The bodies posted to `path` so far.
    fn bodies(&self, path: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// One HTTP/1.1 request per connection: its path and JSON body recorded, then 200 and close.
fn handle(
    mut stream: std::net::TcpStream,
    sink: &Mutex<Vec<(String, Value)>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    sink.lock().unwrap().push((path, value));
    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")?;
    Ok(())
}

/// The instances of `rule` in `/api/alerts` (firing and resolved ones).
fn instances(ts: &Taskscope, rule: &str) -> Vec<Value> {
    ts.get("/api/alerts")["alerts"]
        .as_array()
        .map(|a| a.iter().filter(|i| i["rule"] == rule).cloned().collect())
        .unwrap_or_default()
}

/// The value of `taskscope_alert_firing{rule="<rule>"}` in `/metrics`.
fn firing_gauge(ts: &Taskscope, rule: &str) -> Option<String> {
    let text = reqwest::blocking::get(ts.url("/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    let prefix = format!("taskscope_alert_firing{{rule=\"{rule}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

/// Waits until the evaluator has run `n` more times (its `evaluated_at` changed `n` times).
fn wait_evaluations(ts: &Taskscope, n: usize) {
    let mut seen = ts.get("/api/alerts")["evaluated_at"].clone();
    for i in 0..n {
        seen = wait_for(
            &format!("evaluation {} of {n}", i + 1),
            Duration::from_secs(30),
            || {
                let now = ts.get("/api/alerts")["evaluated_at"].clone();
                if now != seen && !now.is_null() {
                    Ok(now)
                } else {
                    Err(format!("evaluated_at still {seen}"))
                }
            },
        );
    }
}

#[test]
fn a_parked_queue_fires_oldest_age_once_and_resolves_once_when_a_worker_drains_it() {
    let _slot = test_slot();
    let redis = RedisServer::start();
    let receiver = Receiver::start();
    let dir = tempfile::Builder::new()
        .prefix("taskscope-alerts-")
        .tempdir()
        .expect("tempdir");
    let config = dir.path().join("taskscope.toml");
    std::fs::write(
        &config,
        format!(
            r#"alert_interval = "1s"

[[alert]]
name = "parked-age"
when = "oldest_age"
queue = "parked"
above = 3
for = "2s"
webhook = "{url}/json"
format = "json"

[[alert]]
name = "parked-backlog"
when = "backlog"
broker = "rq"
above = 2
webhook = "{url}/slack"

[[alert]]
name = "nobody-home"
when = "no_worker"
"#,
            url = receiver.url
        ),
    )
    .expect("write the config");
    let config_arg = config.to_str().expect("utf-8 path");
    let ts = Taskscope::start(
        &redis.url(),
        &dir.path().join("t.duckdb"),
        &["--config", config_arg, "--sample-every", "1s"],
    );

    let rules = ts.get("/api/alerts");
    assert_eq!(rules["rules"].as_array().map(Vec::len), Some(3), "{rules}");
    assert_eq!(rules["rules"][0]["webhook_host"], "127.0.0.1", "{rules}");

    // A parked queue: five jobs, no worker.
    let ids = rq_produce(
        &redis.url(),
        "add",
        5,
        &RqProduceOpts {
            queue: Some("parked".into()),
            args: Some(serde_json::json!([1, 2])),
            ..RqProduceOpts::default()
        },
    );
    ts.wait_all_state(&ids, "queued", LONG);

    let firing = wait_for("the parked-age webhook (firing)", LONG, || {
        match receiver.bodies("/json").as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}; /api/alerts: {}", ts.get("/api/alerts"))),
        }
    });
    assert_eq!(firing["rule"], "parked-age", "{firing}");
    assert_eq!(firing["state"], "firing", "{firing}");
    assert_eq!(firing["when"], "oldest_age", "{firing}");
    assert_eq!(firing["labels"]["broker"], "rq", "{firing}");
    assert_eq!(firing["labels"]["queue"], "parked", "{firing}");
    assert!(firing["value"].as_f64().unwrap_or(0.0) > 3.0, "{firing}");
    assert!(
        firing["url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&ts.base_url) && u.contains("queue=parked")),
        "{firing}"
    );
    // The evaluator publishes before it sends: the API already says what the webhook said.
    let api = instances(&ts, "parked-age");
    assert_eq!(api.len(), 1, "{api:?}");
    assert_eq!(api[0]["state"], "firing", "{api:?}");
    assert_eq!(api[0]["labels"]["queue"], "parked", "{api:?}");
    assert!(
        api[0]["since"].is_string() && api[0]["value"].is_number(),
        "{api:?}"
    );
    assert_eq!(firing_gauge(&ts, "parked-age").as_deref(), Some("1"));
    let overview = reqwest::blocking::get(ts.url("/"))
        .and_then(|r| r.text())
        .expect("GET /");
    assert!(
        overview.contains("alert-firing") && overview.contains("parked-age"),
        "the overview shows the firing alert"
    );

    // The backlog rule (Slack body) fired too, once.
    let slack = wait_for("the parked-backlog webhook", LONG, || {
        match receiver.bodies("/slack").as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    let text = slack["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("FIRING")
            && text.contains("*parked-backlog*")
            && text.contains("queue=parked"),
        "{slack}"
    );

    // No RQ worker alive while messages wait: no_worker fires too (no webhook).
    wait_for("no_worker firing", LONG, || {
        match instances(&ts, "nobody-home").as_slice() {
            [one] if one["state"] == "firing" && one["value"] == 5.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Still firing over several evaluations: no second notification.
    wait_evaluations(&ts, 3);
    assert_eq!(
        receiver.bodies("/json").len(),
        1,
        "no duplicate firing notice"
    );
    assert_eq!(
        receiver.bodies("/slack").len(),
        1,
        "no duplicate firing notice"
    );

    // A worker drains the queue: the alert resolves, once.
    let _worker = RqWorker::start(&redis.url(), &["parked"], &[], &[]);
    ts.wait_all_state(&ids, "success", LONG);
    let resolved = wait_for("the parked-age webhook (resolved)", LONG, || match receiver
        .bodies("/json")
        .as_slice()
    {
        [_, second] => Ok(second.clone()),
        other => Err(format!("{other:?}; /api/alerts: {}", ts.get("/api/alerts"))),
    });
    assert_eq!(resolved["state"], "resolved", "{resolved}");
    assert_eq!(resolved["labels"]["queue"], "parked", "{resolved}");
    let api = instances(&ts, "parked-age");
    assert_eq!(api.len(), 1, "{api:?}");
    assert_eq!(api[0]["state"], "resolved", "{api:?}");
    assert_eq!(firing_gauge(&ts, "parked-age").as_deref(), Some("0"));
    wait_for(
        "the parked-backlog webhook (resolved)",
        LONG,
        || match receiver.bodies("/slack").as_slice() {
            [_, second]
                if second["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("RESOLVED")) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    );

    wait_for("no_worker resolved", LONG, || {
        match instances(&ts, "nobody-home").as_slice() {
            [one] if one["state"] == "resolved" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    wait_evaluations(&ts, 3);
    assert_eq!(
        receiver.bodies("/json").len(),
        2,
        "one firing and one resolved notice, nothing more: {:?}",
        receiver.bodies("/json")
    );
    assert_eq!(receiver.bodies("/slack").len(), 2);
    // Counted once the receiver's answer is read, a moment after it recorded the body.
    let alerts = wait_for("four deliveries counted", LONG, || {
        let alerts = ts.get("/api/alerts");
        if alerts["webhooks"]["delivered"] == 4 {
            Ok(alerts)
        } else {
            Err(alerts.to_string())
        }
    });
    assert_eq!(alerts["webhooks"]["failures"], 0, "{alerts}");
    assert!(
        !ts.log_text().contains(&format!("{}/json", receiver.url)),
        "webhook URLs are never logged in full"
    );
}

#[test]
fn a_bad_rule_stops_taskscope_at_start_naming_the_rule_and_the_field() {
    let dir = tempfile::Builder::new()
        .prefix("taskscope-alerts-")
        .tempdir()
        .expect("tempdir");
    let config = dir.path().join("taskscope.toml");
    std::fs::write(
        &config,
        "[[alert]]\nname = \"slow\"\nwhen = \"wait_p95\"\nabove = 1\nover = \"soon\"\n",
    )
    .expect("write the config");
    let out = std::process::Command::new(taskscope_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--db"])
        .arg(dir.path().join("t.duckdb"))
        .output()
        .expect("run taskscope");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alert \"slow\" (alert #1): over:"),
        "stderr: {err}"
    );
}

#[test]
fn real_failures_fire_window_rules_that_resolve_once_the_window_has_passed() {
    let _slot = test_slot();
    let redis = RedisServer::start();
    let receiver = Receiver::start();
    let dir = tempfile::Builder::new()
        .prefix("taskscope-alerts-")
        .tempdir()
        .expect("tempdir");
    let config = dir.path().join("taskscope.toml");
    std::fs::write(
        &config,
        format!(
            r#"alert_interval = "1s"

[[alert]]
name = "declines"
when = "failures"
task = "rq_app.fail"
over = "8s"
above = 1
webhook = "{url}/failures"
format = "json"

[[alert]]
name = "rate"
when = "failure_rate"
over = "8s"
above = 0.5

[[alert]]
name = "new-error"
when = "new_failure_group"
over = "8s"
webhook = "{url}/groups"
format = "json"
"#,
            url = receiver.url
        ),
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
    let _worker = RqWorker::start(&redis.url(), &["default"], &[], &[]);
    let ids = rq_produce(
        &redis.url(),
        "fail",
        3,
        &RqProduceOpts {
            args: Some(serde_json::json!([7])),
            ..RqProduceOpts::default()
        },
    );
    ts.wait_all_state(&ids, "failure", LONG);

    let firing = wait_for("the failures webhook (firing)", LONG, || {
        match receiver.bodies("/failures").as_slice() {
            [one, ..] => Ok(one.clone()),
            [] => Err(format!("/api/alerts: {}", ts.get("/api/alerts"))),
        }
    });
    assert_eq!(firing["state"], "firing", "{firing}");
    assert_eq!(firing["labels"]["task"], "rq_app.fail", "{firing}");
    assert_eq!(firing["labels"]["queue"], "default", "{firing}");
    assert!(firing["value"].as_f64().unwrap_or(0.0) >= 2.0, "{firing}");
    let group = wait_for("the new failure group webhook", LONG, || {
        match receiver.bodies("/groups").as_slice() {
            [one, ..] => Ok(one.clone()),
            [] => Err(format!("/api/alerts: {}", ts.get("/api/alerts"))),
        }
    });
    assert_eq!(group["state"], "firing", "{group}");
    assert_eq!(group["labels"]["exception"], "ValueError", "{group}");
    let fingerprint = ts.task(&ids[0]).expect("the task")["fingerprint"].clone();
    assert_eq!(group["labels"]["fingerprint"], fingerprint, "{group}");
    wait_for("failure_rate firing at 100%", LONG, || {
        match instances(&ts, "rate").as_slice() {
            [one] if one["state"] == "firing" && one["value"] == 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Nothing fails any more: once the failures leave the 8 s window, each resolves once.
    for (path, what) in [("/failures", "failures"), ("/groups", "new failure group")] {
        let resolved = wait_for(
            &format!("the {what} webhook (resolved)"),
            LONG,
            || match receiver.bodies(path).as_slice() {
                [_, second] => Ok(second.clone()),
                other => Err(format!("{other:?}")),
            },
        );
        assert_eq!(resolved["state"], "resolved", "{resolved}");
    }
    wait_for("failure_rate resolved", LONG, || {
        match instances(&ts, "rate").as_slice() {
            [one] if one["state"] == "resolved" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_evaluations(&ts, 2);
    assert_eq!(receiver.bodies("/failures").len(), 2, "no duplicates");
    assert_eq!(receiver.bodies("/groups").len(), 2, "no duplicates");
}
