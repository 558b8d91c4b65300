//! Webhook delivery against a real HTTP receiver on 127.0.0.1:0 (an axum server in the test).

use super::*;
use crate::alerts::rules::parse_rules;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Json;
use std::sync::atomic::AtomicUsize;

/// A receiver that records every body, answers 500 to the first `fail_first` requests, and
/// takes `delay` before answering each.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
    fail_first: usize,
    delay: Duration,
}

async fn receive(State(r): State<Receiver>, Json(body): Json<Value>) -> StatusCode {
    let n = r.requests.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(r.delay).await;
    if n < r.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.bodies.lock().unwrap().push(body);
    StatusCode::OK
}

/// Serves `receiver` on a free port; returns its `/hook` URL.
async fn serve(receiver: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

fn rule(url: &str, format: &str) -> AlertRule {
    parse_rules(&format!(
        "[[alert]]\nname = \"parked <rq>\"\nwhen = \"oldest_age\"\nabove = 30\n\
         webhook = \"{url}\"\nformat = \"{format}\""
    ))
    .unwrap()
    .remove(0)
}

fn notice(phase: Phase) -> Notice {
    Notice {
        rule: "parked <rq>".into(),
        phase,
        labels: [
            ("broker".to_string(), "rq".to_string()),
            ("queue".to_string(), "parked".to_string()),
        ]
        .into(),
        value: 42.1234,
        since: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
    }
}

fn fast(attempts: u32, timeout: Duration) -> DeliveryPolicy {
    DeliveryPolicy {
        timeout,
        attempts,
        backoff: Duration::from_millis(50),
        queue: 16,
    }
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn delivery(rule: &AlertRule, phase: Phase) -> Delivery {
    let hook = rule.webhook.clone().unwrap();
    Delivery {
        body: body(
            rule,
            hook.format,
            &notice(phase),
            "http://ts:7979/tasks?broker=rq",
        ),
        webhook: hook,
        rule: rule.name.clone(),
    }
}

#[tokio::test]
async fn slack_and_json_bodies_reach_the_receiver() {
    let receiver = Receiver::default();
    let url = serve(receiver.clone()).await;
    let stats = Arc::new(DeliveryStats::default());
    let (outbox, _task) = spawn(fast(1, Duration::from_secs(5)), stats.clone()).unwrap();
    outbox.send(delivery(&rule(&url, "slack"), Phase::Firing));
    outbox.send(delivery(&rule(&url, "json"), Phase::Resolved));
    eventually("two bodies", || receiver.bodies.lock().unwrap().len() == 2).await;
    let bodies = receiver.bodies.lock().unwrap().clone();
    let text = bodies[0]["text"].as_str().unwrap();
    assert_eq!(
        text,
        ":rotating_light: FIRING *parked &lt;rq&gt;*: oldest_age = 42.123 (above 30) \
         [broker=rq, queue=parked] since 2027-01-15T08:00:00.000Z \
         <http://ts:7979/tasks?broker=rq|open taskscope>"
    );
    assert_eq!(
        bodies[1],
        json!({
            "rule": "parked <rq>", "state": "resolved", "when": "oldest_age",
            "value": 42.1234, "above": 30.0,
            "labels": {"broker": "rq", "queue": "parked"},
            "since": "2027-01-15T08:00:00.000Z",
            "url": "http://ts:7979/tasks?broker=rq",
        })
    );
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 2);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_500_is_retried_and_then_delivered() {
    let receiver = Receiver {
        fail_first: 2,
        ..Receiver::default()
    };
    let url = serve(receiver.clone()).await;
    let stats = Arc::new(DeliveryStats::default());
    let (outbox, _task) = spawn(fast(3, Duration::from_secs(5)), stats.clone()).unwrap();
    outbox.send(delivery(&rule(&url, "json"), Phase::Firing));
    eventually("the delivery", || {
        stats.delivered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 3);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
    assert_eq!(receiver.bodies.lock().unwrap().len(), 1, "delivered once");
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_the_failure_is_counted_without_the_url() {
    let receiver = Receiver {
        delay: Duration::from_secs(3),
        ..Receiver::default()
    };
    let url = serve(receiver.clone()).await;
    let url = format!("{url}?token=secret-part");
    let stats = Arc::new(DeliveryStats::default());
    let (outbox, _task) = spawn(fast(2, Duration::from_millis(200)), stats.clone()).unwrap();
    let started = std::time::Instant::now();
    outbox.send(delivery(&rule(&url, "slack"), Phase::Firing));
    eventually("the failure", || {
        stats.failures.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up on the timeout, not on the receiver's answer: {:?}",
        started.elapsed()
    );
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 2, "one retry");
    let last = stats.last_error().unwrap();
    assert_eq!(last.host, "127.0.0.1");
    assert!(last.error.contains("timed out"), "{}", last.error);
    assert!(!last.error.contains("secret"), "{}", last.error);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    // Nothing listens on a port just freed: every attempt fails at connect.
    let stats = Arc::new(DeliveryStats::default());
    let policy = DeliveryPolicy {
        timeout: Duration::from_secs(5),
        attempts: 1,
        backoff: Duration::from_millis(1),
        queue: 1,
    };
    let (outbox, _task) = spawn(policy, stats.clone()).unwrap();
    let r = rule("http://127.0.0.1:9/hook", "json");
    let started = std::time::Instant::now();
    for _ in 0..50 {
        outbox.send(delivery(&r, Phase::Firing));
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "send never waits"
    );
    eventually("every failure counted", || {
        stats.failures.load(Ordering::Relaxed) == 50
    })
    .await;
}

#[test]
fn values_are_rounded_for_people() {
    assert_eq!(round(42.0), "42");
    assert_eq!(round(0.12345), "0.123");
}
