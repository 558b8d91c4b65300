//! Smoke run of `taskscope demo`, so it cannot rot: the demo until its dashboard shows tasks of
//! all seven brokers, then Ctrl-C. Seconds, not minutes. (The load benchmark's smoke runs are in
//! `bench/tests/load.rs`.)

mod common;

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_smoke_shows_all_seven_brokers() {
    let _slot = common::test_slot();
    let port = common::free_port();
    let mut child = Command::new(common::taskscope_bin())
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--rate",
            "40",
            "--duration",
            "120s",
        ])
        .env("TASKSCOPE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start taskscope demo");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    let ok = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("demo exited early ({status})");
        }
        if let Ok(resp) = http.get(format!("{base}/api/stats")).send() {
            if let Ok(v) = resp.json::<Value>() {
                last = v;
                let all = [
                    "celery", "dramatiq", "rq", "taskiq", "arq", "bullmq", "sidekiq",
                ]
                .iter()
                .all(|b| last["by_broker"][*b].as_u64().unwrap_or(0) > 0);
                if all {
                    break true;
                }
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    // Ctrl-C: the demo stops its taskscope and its redis-server.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let stop_deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().ok();
    let text = output
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    assert!(
        ok,
        "the demo never showed all seven brokers; last /api/stats: {last}\n{text}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the demo did not stop cleanly on Ctrl-C ({status:?}):\n{text}"
    );
    assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
}
