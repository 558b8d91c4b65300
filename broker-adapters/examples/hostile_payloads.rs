//! The hostile payloads of issue #14, each decoded through the entry point that meets it in
//! production, with the time taken and the outcome; plus the largest payloads the default
//! budget lets through (the worst decode times it allows).
//!
//! `cargo run --release -p broker-adapters --example hostile_payloads` runs them all;
//! `... -- NAME` runs one, so that `/usr/bin/time -v` measures its peak memory alone.

use broker_adapters::{celery, codec, rq};
use std::io::Write;
use std::time::Instant;

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(bytes).expect("to a Vec");
    z.finish().expect("to a Vec")
}

/// Lists nested `n` deep through memo references.
fn memo_chain(n: u32) -> Vec<u8> {
    let mut p = vec![0x80, 4, b']', 0x94];
    for k in 1..=n {
        p.extend([b'0', b']', 0x94, b'j']);
        p.extend((k - 1).to_le_bytes());
        p.push(b'a');
    }
    p.push(b'.');
    p
}

fn mark_flood(n: usize) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b'(', n));
    p.extend([b'N', b'.']);
    p
}

/// Each level a list of two references to the one below: 2^levels leaves.
fn memo_laughs(levels: u32) -> Vec<u8> {
    let mut p = vec![0x80, 4, b'K', 0, 0x94];
    for k in 1..=levels {
        p.extend([b']', 0x94, b'(', b'j']);
        p.extend((k - 1).to_le_bytes());
        p.push(b'j');
        p.extend((k - 1).to_le_bytes());
        p.extend([b'e', b'0']);
    }
    p.push(b'j');
    p.extend(levels.to_le_bytes());
    p.push(b'.');
    p
}

/// One string of `len` bytes referenced `times` times.
fn string_laughs(len: u32, times: usize) -> Vec<u8> {
    let mut p = vec![0x80, 4, b'X'];
    p.extend(len.to_le_bytes());
    p.extend(std::iter::repeat_n(b'x', len as usize));
    p.extend([0x94, b']', b'(']);
    for _ in 0..times {
        p.extend([b'h', 0]);
    }
    p.extend([b'e', b'.']);
    p
}

/// `list(range(n))` as Python 3 pickles it (APPENDS in batches of 1000).
fn range_list(n: u32) -> Vec<u8> {
    let mut p = vec![0x80, 4, b']', 0x94];
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        p.push(b'(');
        for i in chunk {
            p.push(b'J');
            p.extend(i.to_le_bytes());
        }
        p.push(b'e');
    }
    p.push(b'.');
    p
}

/// An RQ job's `data`: zlib of the pickled `(func, None, args, kwargs)` tuple around `arg`.
fn rq_call(arg: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 4, b'(', 0x8c, 8];
    p.extend(b"app.task");
    p.push(b'N');
    // args = (arg,)
    p.extend(&arg[2..arg.len() - 1]);
    p.push(0x85);
    p.extend([b'}', b't', b'.']);
    zlib(&p)
}

fn json_zeros(n: usize) -> Vec<u8> {
    let mut t = Vec::with_capacity(2 * n + 2);
    t.push(b'[');
    for _ in 1..n {
        t.extend(b"0,");
    }
    t.extend(b"0]");
    t
}

fn celery_pickle_message(body: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    format!(
        r#"{{"body": "{b64}", "content-encoding": "binary", "content-type": "application/x-python-serialize",
        "headers": {{"lang": "py", "task": "app.hostile", "id": "7c9d4875-a02c-4dcb-b08a-c82e543624e9",
        "argsrepr": "(...)", "kwargsrepr": "{{}}"}},
        "properties": {{"body_encoding": "base64", "delivery_tag": "t1", "delivery_info": {{"routing_key": "celery"}}}}}}"#
    )
    .into_bytes()
}

/// A name, the payload, and the decoder that meets it in production.
type Case = (&'static str, Vec<u8>, fn(&[u8]) -> String);

fn describe<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>, show: bool) -> String {
    match r {
        Ok(v) if show => format!("ok: {v:?}"),
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    }
}

fn rq_data(b: &[u8]) -> String {
    describe(rq::job::decode_data(b), false)
}

fn sniff(b: &[u8]) -> String {
    describe(codec::sniff_decode(b).map(|_| ()), false)
}

fn msgpack(b: &[u8]) -> String {
    describe(codec::msgpack_to_json(b).map(|_| ()), false)
}

fn case(name: &str) -> Option<Case> {
    Some(match name {
        "rq-memo-chain-50000" => ("rq-memo-chain-50000", zlib(&memo_chain(50_000)), rq_data),
        "rq-mark-flood-1000000" => (
            "rq-mark-flood-1000000",
            zlib(&mark_flood(1_000_000)),
            rq_data,
        ),
        "pickle-memo-laughs-2^40" => ("pickle-memo-laughs-2^40", memo_laughs(40), sniff),
        "pickle-1MB-string-x100" => ("pickle-1MB-string-x100", string_laughs(1 << 20, 100), sniff),
        "rq-json-zlib-bomb-64MB" => (
            "rq-json-zlib-bomb-64MB",
            zlib(&json_zeros(32 << 20)),
            rq_data,
        ),
        "json-4M-zeros-8MB" => ("json-4M-zeros-8MB", json_zeros(4 << 20), sniff),
        "json-nested-100000" => (
            "json-nested-100000",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            sniff,
        ),
        "msgpack-array32-4G-header" => (
            "msgpack-array32-4G-header",
            vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0],
            msgpack,
        ),
        "msgpack-map32-nested-100000" => {
            let mut b = Vec::new();
            for _ in 0..100_000 {
                b.extend([0xdf, 0, 0, 0, 1, 0xc0]);
            }
            b.push(0xc0);
            ("msgpack-map32-nested-100000", b, msgpack)
        }
        "celery-pickle-body-mark-flood" => (
            "celery-pickle-body-mark-flood",
            celery_pickle_message(&mark_flood(1_000_000)),
            |m| {
                let r =
                    celery::message::decode(m).map(|m| (m.task_id, m.name, m.args, m.body_error));
                describe(r, true)
            },
        ),
        "python-literal-nested-100000" => (
            "python-literal-nested-100000",
            format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000)).into_bytes(),
            |t| format!("{:?}", codec::python_literal(&String::from_utf8_lossy(t))),
        ),
        // Within the default budget: the slowest decodes it allows.
        "ok-rq-list-range-1000000" => (
            "ok-rq-list-range-1000000",
            rq_call(&range_list(1_000_000)),
            |b| {
                let r =
                    rq::job::decode_data(b).map(|c| c.args.map(|a| a[0].as_array().map(Vec::len)));
                describe(r, true)
            },
        ),
        "ok-pickle-memo-laughs-2^19" => ("ok-pickle-memo-laughs-2^19", memo_laughs(19), sniff),
        "ok-json-1900000-zeros" => ("ok-json-1900000-zeros", json_zeros(1_900_000), sniff),
        "ok-pickle-1MB-string-x15" => (
            "ok-pickle-1MB-string-x15",
            string_laughs(1 << 20, 15),
            sniff,
        ),
        _ => return None,
    })
}

const NAMES: [&str; 15] = [
    "rq-memo-chain-50000",
    "rq-mark-flood-1000000",
    "pickle-memo-laughs-2^40",
    "pickle-1MB-string-x100",
    "rq-json-zlib-bomb-64MB",
    "json-4M-zeros-8MB",
    "json-nested-100000",
    "msgpack-array32-4G-header",
    "msgpack-map32-nested-100000",
    "celery-pickle-body-mark-flood",
    "python-literal-nested-100000",
    "ok-rq-list-range-1000000",
    "ok-pickle-memo-laughs-2^19",
    "ok-json-1900000-zeros",
    "ok-pickle-1MB-string-x15",
];

fn main() {
    let only = std::env::args().nth(1);
    for name in NAMES {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let Some((name, payload, decode)) = case(name) else {
            continue;
        };
        let t = Instant::now();
        let mut outcome = decode(&payload);
        let took = t.elapsed();
        if outcome.len() > 150 {
            let cut = outcome
                .char_indices()
                .nth(150)
                .map_or(outcome.len(), |(i, _)| i);
            outcome.truncate(cut);
            outcome.push('…');
        }
        println!(
            "{name:<30} {:>9} B  {:>9.2} ms  {outcome}",
            payload.len(),
            took.as_secs_f64() * 1e3
        );
    }
}
