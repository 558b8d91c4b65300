//! How long each adapter takes over the hostile payloads of issue #14 (those of
//! tests/python/hostile.py that are read whole), one `on_reply` each: a measurement, not a
//! timed assertion (the machine's load is not ours). Run it optimised:
//! `cargo test --release -p broker-adapters --test hostile_decode_time -- --ignored --nocapture`.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};
use support::tagged::Answer;

use base64::Engine as _;
use broker_adapters::adapter::{Adapter, ReadRequest, Reply};
use broker_adapters::celery::{CeleryAdapter, CeleryConfig};
use broker_adapters::dramatiq::{DramatiqAdapter, DramatiqConfig};
use broker_adapters::rq::{RqAdapter, RqConfig};
use chrono::Utc;

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).expect("zlib in memory");
    e.finish().expect("zlib in memory")
}

/// PROTO 4, EMPTY_LIST, MEMOIZE, then 50,000 x (POP, EMPTY_LIST, MEMOIZE, LONG_BINGET k-1,
/// APPEND), STOP.
fn memo_chain() -> Vec<u8> {
    let mut p = vec![0x80, 4, b']', 0x94];
    for k in 1u32..=50_000 {
        p.extend_from_slice(b"0]\x94j");
        p.extend_from_slice(&(k - 1).to_le_bytes());
        p.push(b'a');
    }
    p.push(b'.');
    p
}

/// PROTO 2, a million MARKs, NONE, STOP.
fn mark_flood() -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b'(', 1_000_000));
    p.extend_from_slice(b"N.");
    p
}

fn deep_json(depth: usize) -> Vec<u8> {
    let mut v = vec![b'['; depth];
    v.extend(std::iter::repeat_n(b']', depth));
    v
}

/// The best of three runs of `f`.
fn time(mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn rq_job(data: &[u8]) -> Duration {
    time(|| {
        let mut a = RqAdapter::new(RqConfig::default());
        let now = Utc::now();
        let reads = a.on_key_event("rq:job:h", "hset", now);
        let Some(read @ ReadRequest::HMGet { fields, .. }) = reads.first().map(|r| &r.request)
        else {
            panic!("no HMGET of the job hash: {reads:?}");
        };
        let values = fields
            .iter()
            .map(|f| match f.as_str() {
                "status" => Reply::Bytes(b"queued".to_vec()),
                "origin" => Reply::Bytes(b"hostile".to_vec()),
                "description" => Reply::Bytes(b"hostile.job()".to_vec()),
                "data" => Reply::Bytes(data.to_vec()),
                _ => Reply::Nil,
            })
            .collect();
        let out = a.answer(read, Reply::Array(values), now);
        assert!(!out.observations.is_empty(), "the job is listed");
    })
}

fn celery_message(body: &[u8], compression: Option<&str>) -> Duration {
    let mut headers = serde_json::json!({"id": "h", "task": "hostile.task", "retries": 0});
    if let Some(c) = compression {
        headers["compression"] = c.into();
    }
    let envelope = serde_json::json!({
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": headers,
        "properties": {"body_encoding": "base64", "delivery_tag": "t",
                       "delivery_info": {"routing_key": "celery"}},
    })
    .to_string()
    .into_bytes();
    time(|| {
        let mut a = CeleryAdapter::new(CeleryConfig::default());
        let read = ReadRequest::LRange {
            key: "celery".into(),
            start: 0,
            stop: 199,
        };
        let out = a.answer(
            &read,
            Reply::Array(vec![Reply::Bytes(envelope.clone())]),
            Utc::now(),
        );
        assert!(!out.observations.is_empty(), "the task is listed");
    })
}

fn dramatiq_message(args: &[u8]) -> Duration {
    let mut msg = br#"{"queue_name":"default","actor_name":"add","args":"#.to_vec();
    msg.extend_from_slice(args);
    msg.extend_from_slice(br#","kwargs":{},"options":{},"message_id":"h","message_timestamp":1}"#);
    time(|| {
        let mut a = DramatiqAdapter::new(DramatiqConfig::default());
        let read = ReadRequest::HMGet {
            key: "dramatiq:default.msgs".into(),
            fields: vec!["h".into()],
        };
        let out = a.answer(
            &read,
            Reply::Array(vec![Reply::Bytes(msg.clone())]),
            Utc::now(),
        );
        assert!(!out.observations.is_empty(), "the task is listed");
    })
}

#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn hostile_payloads_decode_times() {
    let zlib_bomb = zlib(&[b"[".as_slice(), &b"0,".repeat(100_000_000), b"0]"].concat());
    let rows = [
        (
            "rq: pickle memo chain 50,000 deep",
            rq_job(&zlib(&memo_chain())),
        ),
        (
            "rq: pickle of 1,000,000 MARKs",
            rq_job(&zlib(&mark_flood())),
        ),
        (
            "celery: body nested 100,000 deep",
            celery_message(&deep_json(100_000), None),
        ),
        (
            "celery: zlib body of 200 MB of zeros",
            celery_message(&zlib_bomb, Some("application/x-zlib")),
        ),
        (
            "dramatiq: args nested 100,000 deep",
            dramatiq_message(&deep_json(100_000)),
        ),
        (
            "dramatiq: 1,000,000 numbers (2 MB)",
            dramatiq_message(&[b"[".as_slice(), &b"1,".repeat(1_000_000), b"1]"].concat()),
        ),
    ];
    for (what, took) in rows {
        println!("{what:<40} {:>9.2} ms", took.as_secs_f64() * 1000.0);
    }
}
