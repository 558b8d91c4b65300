//! Property-based fuzzing of every decoder with adversarial generators: deep nesting, memo
//! chains and memo "laughs", MARK floods, huge declared lengths, truncated and mutated real
//! payloads, random bytes. Each target checks that the decoder never panics, answers within a
//! bounded time, and that what it returns stays within the budget; where a reference decoder
//! exists (serde_json, rmpv, serde-pickle), a payload within the budget decodes to the same JSON.
//!
//! A short run by default (CI). A long run: `FUZZ_SECONDS=600 cargo test --release -p
//! broker-adapters --test fuzz_decoders <target> -- --nocapture` runs one target for ten minutes
//! and prints the executions (`PROPTEST_CASES` sets the cases per round, default 64).

mod support;

use broker_adapters::codec::{self, Limits};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};
use support::tagged::Answer;

/// One decode may take this long at most: a stall guard, not a speed target (a debug build on a
/// loaded shared machine included; speed is measured by `tests/hostile_decode_time.rs`).
const SLOWEST: Duration = Duration::from_secs(20);

fn depth_and_count(v: &Value) -> (usize, usize) {
    let mut stack = vec![(v, 0usize)];
    let (mut deepest, mut count) = (0, 0);
    while let Some((v, d)) = stack.pop() {
        count += 1;
        match v {
            Value::Array(items) => {
                deepest = deepest.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    (deepest, count)
}

fn within_budget(v: &Value) -> Result<(), TestCaseError> {
    let (depth, count) = depth_and_count(v);
    let limits = Limits::DEFAULT;
    prop_assert!(depth <= limits.max_depth, "depth {depth}");
    prop_assert!(count <= limits.max_items, "{count} values");
    Ok(())
}

/// Runs `check` on inputs of `strategy`: `PROPTEST_CASES` cases (64 by default), in rounds
/// until `FUZZ_SECONDS` have passed when that is set. Prints executions and the slowest case.
fn fuzz<S: Strategy>(
    target: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let started = Instant::now();
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let calls = std::cell::Cell::new(0u64);
    loop {
        // A fresh runner per round: a runner that met its case count runs nothing more, and a
        // new one draws a new random seed.
        let mut runner = TestRunner::new(config.clone());
        let result = runner.run(&strategy, |input| {
            calls.set(calls.get() + 1);
            let t = Instant::now();
            let outcome = check(input);
            let took = t.elapsed();
            slowest.set(slowest.get().max(took));
            prop_assert!(took < SLOWEST, "took {took:?}");
            outcome
        });
        if let Err(e) = result {
            panic!("{target}: {e}");
        }
        if started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
    }
    let executions = calls.get();
    println!(
        "{target}: {executions} executions in {:.1} s, slowest case {:?}, no failure",
        started.elapsed().as_secs_f64(),
        slowest.get()
    );
}

// ---------------------------------------------------------------------------------------------
// Pickle

fn python_pickles() -> Vec<Vec<u8>> {
    include_str!("fixtures/pickle/python_pickles.hex")
        .lines()
        .map(|l| {
            let l = l.trim();
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

fn pickle_op() -> impl Strategy<Value = Vec<u8>> {
    let single = prop::sample::select(vec![
        b'(', b']', b'}', b')', 0x8f, b'a', b'e', b's', b'u', b't', b'l', b'd', 0x85, 0x86, 0x87,
        0x90, 0x91, b'0', b'1', b'2', 0x94, b'N', 0x88, 0x89, 0x93, b'R', 0x81, 0x92, b'b', b'o',
        b'.',
    ])
    .prop_map(|b| vec![b]);
    let text = prop::sample::select(vec![
        &b"cdatetime\ndatetime\n"[..],
        b"c__builtin__\nset\n",
        b"cbuiltins\nfrozenset\n",
        b"c_codecs\nencode\n",
        b"ccopy_reg\n_reconstructor\n",
        b"cuuid\nUUID\n",
        b"cdecimal\nDecimal\n",
        b"capp\nThing\n",
        b"iapp\nThing\n",
        b"I01\n",
        b"I123456789012345678901234567890\n",
        b"L-5L\n",
        b"F1.5\n",
        b"Fnan\n",
        b"Vtext\\u00e9\n",
        b"S'a\\x41'\n",
        b"g0\n",
        b"p1\n",
        b"\x8c\x08datetime",
        b"\x8c\x04UUID",
    ])
    .prop_map(<[u8]>::to_vec);
    prop_oneof![
        4 => single,
        2 => text,
        1 => (0u8..8).prop_map(|k| vec![b'h', k]),
        1 => (0u8..8).prop_map(|k| vec![b'q', k]),
        1 => (0u32..64).prop_map(|k| {
            let mut v = vec![b'j'];
            v.extend(k.to_le_bytes());
            v
        }),
        1 => any::<i32>().prop_map(|i| {
            let mut v = vec![b'J'];
            v.extend(i.to_le_bytes());
            v
        }),
        1 => any::<u8>().prop_map(|i| vec![b'K', i]),
        1 => "[a-z\u{e9}]{0,8}".prop_map(|s| {
            let mut v = vec![0x8c, s.len() as u8];
            v.extend(s.as_bytes());
            v
        }),
        1 => vec(any::<u8>(), 0..12).prop_map(|b| {
            let mut v = vec![0x8a, b.len() as u8];
            v.extend(b);
            v
        }),
        // Huge declared lengths with little behind them.
        1 => (prop::sample::select(vec![b'X', b'B', b'T', 0x8b]), any::<u32>()).prop_map(|(op, n)| {
            let mut v = vec![op];
            v.extend(n.to_le_bytes());
            v
        }),
        1 => (prop::sample::select(vec![0x8d, 0x8e, 0x96]), any::<u64>()).prop_map(|(op, n)| {
            let mut v = vec![op];
            v.extend(n.to_le_bytes());
            v
        }),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ]
}

fn memo_chain(n: u32, op: u8) -> Vec<u8> {
    let mut p = vec![0x80, 4, b']', 0x94];
    for k in 1..=n {
        p.extend([b'0', b']', 0x94, b'j']);
        p.extend((k - 1).to_le_bytes());
        p.push(op);
    }
    p.push(b'.');
    p
}

fn memo_laughs(levels: u32, fan: usize) -> Vec<u8> {
    let mut p = vec![0x80, 4, 0x8c, 3, b'l', b'o', b'l', 0x94];
    for k in 1..=levels {
        p.extend([b']', 0x94, b'(']);
        for _ in 0..fan {
            p.push(b'j');
            p.extend((k - 1).to_le_bytes());
        }
        p.extend([b'e', b'0']);
    }
    p.push(b'j');
    p.extend(levels.to_le_bytes());
    p.push(b'.');
    p
}

fn pickle_input() -> impl Strategy<Value = Vec<u8>> {
    let fixtures = python_pickles();
    prop_oneof![
        4 => vec(pickle_op(), 0..300).prop_map(|ops| {
            let mut p = vec![0x80, 4];
            p.extend(ops.concat());
            p.push(b'.');
            p
        }),
        1 => (1u32..60_000, prop::sample::select(vec![b'a', b'e', b's', 0x85])).prop_map(|(n, op)| memo_chain(n, op)),
        1 => (0usize..200_000, prop::sample::select(vec![b'N', b'l', b't', b'e'])).prop_map(|(n, tail)| {
            let mut p = vec![0x80, 2];
            p.extend(std::iter::repeat_n(b'(', n));
            p.extend([tail, b'.']);
            p
        }),
        1 => (1u32..64, 1usize..5).prop_map(|(levels, fan)| memo_laughs(levels, fan)),
        2 => (prop::sample::select(fixtures), vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), any::<prop::sample::Index>())
            .prop_map(|(mut p, flips, cut)| {
                for (at, b) in flips {
                    let i = at.index(p.len());
                    p[i] = b;
                }
                let keep = cut.index(p.len() + 1);
                p.truncate(keep.max(p.len() / 2));
                p
            }),
        1 => vec(any::<u8>(), 0..512),
    ]
}

#[test]
fn fuzz_pickle() {
    fuzz("pickle", pickle_input(), |bytes| {
        if let Ok((v, _)) = codec::pickle_to_json_checked(&bytes) {
            within_budget(&v)?;
        }
        Ok(())
    });
}

/// Plain data pickled by serde-pickle (protocol 3) decodes to what serde-pickle decodes it to.
#[test]
fn fuzz_pickle_against_serde_pickle() {
    let leaf = prop_oneof![
        Just(serde_pickle::Value::None),
        any::<bool>().prop_map(serde_pickle::Value::Bool),
        any::<i64>().prop_map(serde_pickle::Value::I64),
        (-1e12f64..1e12).prop_map(serde_pickle::Value::F64),
        "\\PC{0,12}".prop_map(serde_pickle::Value::String),
    ];
    let value = leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(serde_pickle::Value::List),
            vec(inner.clone(), 0..8).prop_map(serde_pickle::Value::Tuple),
            vec(("[a-z]{0,4}", inner), 0..8).prop_map(|pairs| {
                serde_pickle::Value::Dict(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (serde_pickle::HashableValue::String(k), v))
                        .collect(),
                )
            }),
        ]
    });
    fuzz("pickle-vs-serde-pickle", value, |v| {
        let bytes = serde_pickle::value_to_vec(&v, serde_pickle::SerOptions::new())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let ours = codec::pickle_to_json(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let opts = serde_pickle::DeOptions::new().decode_strings();
        let theirs: Value = serde_pickle::from_slice(&bytes, opts)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(ours, theirs);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// JSON

fn json_input() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "0",
        "-1.5e3",
        "\"k\"",
        "\"\\u00e9\\n\"",
        "null",
        "true",
        " ",
        "\"",
        "1e999",
        "18446744073709551616",
    ]);
    prop_oneof![
        3 => vec(token, 0..400).prop_map(|t| t.concat().into_bytes()),
        1 => (0usize..5000, prop::sample::select(vec!["[", "{\"a\":"])).prop_map(|(n, open)| {
            open.repeat(n).into_bytes()
        }),
        1 => (0usize..300_000).prop_map(|n| format!("[{}0]", "0,".repeat(n)).into_bytes()),
        1 => vec(any::<u8>(), 0..256),
    ]
}

#[test]
fn fuzz_json() {
    fuzz("json", json_input(), |bytes| {
        let ours = codec::json_from_slice(&bytes);
        if let Ok(v) = &ours {
            within_budget(v)?;
        }
        // Within the budget, the same answer as serde_json.
        let theirs = serde_json::from_slice::<Value>(&bytes);
        match (ours, theirs) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(e), Ok(_)) => prop_assert!(e.is_over_budget(), "{e}"),
            (Ok(_), Err(e)) => prop_assert!(false, "serde_json refused what we took: {e}"),
            (Err(_), Err(_)) => {}
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// msgpack

fn msgpack_input() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(rmpv::Value::Nil),
        any::<i64>().prop_map(rmpv::Value::from),
        any::<f64>().prop_map(rmpv::Value::F64),
        "\\PC{0,10}".prop_map(rmpv::Value::from),
        vec(any::<u8>(), 0..10).prop_map(rmpv::Value::Binary),
        (any::<i8>(), vec(any::<u8>(), 0..5)).prop_map(|(t, d)| rmpv::Value::Ext(t, d)),
    ];
    let value = leaf.prop_recursive(8, 128, 10, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..10).prop_map(rmpv::Value::Array),
            vec((inner.clone(), inner), 0..6).prop_map(rmpv::Value::Map),
        ]
    });
    let encoded = value.prop_map(|v| {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).expect("encode to a Vec");
        out
    });
    let headers = prop::sample::select(vec![
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xc6, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0x7f, 0xff, 0xff, 0xff],
        vec![0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
        vec![0x91],
        vec![0x81, 0xc0],
    ]);
    prop_oneof![
        3 => encoded.clone(),
        2 => (encoded, vec((any::<prop::sample::Index>(), headers), 1..4)).prop_map(|(mut b, inserts)| {
            for (at, h) in inserts {
                let i = at.index(b.len() + 1);
                b.splice(i..i, h);
            }
            b
        }),
        1 => (0usize..100_000).prop_map(|n| {
            let mut b = vec![0x91; n];
            b.push(0xc0);
            b
        }),
        1 => vec(any::<u8>(), 0..256),
    ]
}

/// What rmpv alone makes of the bytes (with a depth beyond the budget but safe for the stack).
fn rmpv_reference(bytes: &[u8]) -> Option<rmpv::Value> {
    let mut cursor = bytes;
    rmpv::decode::read_value_with_max_depth(&mut cursor, 200).ok()
}

fn rmpv_depth_and_count(v: &rmpv::Value) -> (usize, usize) {
    let mut stack = vec![(v, 0usize)];
    let (mut deepest, mut count) = (0, 0);
    while let Some((v, d)) = stack.pop() {
        count += 1;
        match v {
            rmpv::Value::Array(items) => {
                deepest = deepest.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            rmpv::Value::Map(pairs) => {
                deepest = deepest.max(d + 1);
                stack.extend(pairs.iter().flat_map(|(k, v)| [(k, d + 1), (v, d + 1)]));
            }
            _ => {}
        }
    }
    (deepest, count)
}

#[test]
fn fuzz_msgpack() {
    fuzz("msgpack", msgpack_input(), |bytes| {
        let ours = codec::msgpack_to_json(&bytes);
        if let Ok(v) = &ours {
            within_budget(v)?;
        }
        // What rmpv alone accepts well within the budget, the header pass lets through.
        if let Some(reference) = rmpv_reference(&bytes) {
            let (depth, count) = rmpv_depth_and_count(&reference);
            if depth < 60 && count < 100_000 {
                prop_assert!(ours.is_ok(), "refused what rmpv decodes: {:?}", ours.err());
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Python literal reprs and zlib/gzip

fn literal_input() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "1",
        "-2.5",
        "'a'",
        "\"b\\x41\"",
        "'\\u00e9'",
        "None",
        "True",
        "b'x'",
        " ",
        "'",
        "\\",
        "<obj at 0x1>",
        "1e400",
    ]);
    prop_oneof![
        3 => vec(token, 0..300).prop_map(|t| t.concat()),
        1 => (0usize..20_000).prop_map(|n| format!("{}1{}", "(".repeat(n), ")".repeat(n))),
        1 => "\\PC{0,200}",
    ]
}

#[test]
fn fuzz_python_literal() {
    fuzz("python-literal", literal_input(), |text| {
        if let Some(v) = codec::python_literal(&text) {
            within_budget(&v)?;
        }
        let _ = codec::error_line_from_repr(&text);
        Ok(())
    });
}

fn compressed_input() -> impl Strategy<Value = (String, Vec<u8>)> {
    let kind = prop::sample::select(vec!["zlib", "gzip", "application/x-gzip"]);
    let compress = |kind: &str, plain: &[u8]| -> Vec<u8> {
        if kind == "gzip" {
            let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            g.write_all(plain).expect("to a Vec");
            g.finish().expect("to a Vec")
        } else {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(plain).expect("to a Vec");
            z.finish().expect("to a Vec")
        }
    };
    prop_oneof![
        2 => (kind.clone(), vec(any::<u8>(), 0..512)).prop_map(move |(k, plain)| {
            let c = compress(k, &plain);
            (k.to_string(), c)
        }),
        // Bombs: long runs that compress a thousandfold.
        1 => (kind.clone(), 0usize..24).prop_map(move |(k, mb)| {
            let c = compress(k, &vec![b'0'; mb * 1024 * 1024 / 2]);
            (k.to_string(), c)
        }),
        1 => (kind.clone(), vec(any::<u8>(), 0..512), vec((any::<prop::sample::Index>(), any::<u8>()), 1..8))
            .prop_map(move |(k, plain, flips)| {
                let mut c = compress(k, &plain);
                for (at, b) in flips {
                    let i = at.index(c.len());
                    c[i] = b;
                }
                (k.to_string(), c)
            }),
        1 => (kind, vec(any::<u8>(), 0..256)).prop_map(|(k, b)| (k.to_string(), b)),
    ]
}

#[test]
fn fuzz_decompress() {
    fuzz("zlib-gzip", compressed_input(), |(kind, body)| {
        if let Ok(out) = codec::decompress(&kind, &body) {
            prop_assert!(out.len() <= Limits::DEFAULT.max_decompressed_bytes);
            // What comes out goes on to the sniffing decoder, as RQ and Celery results do.
            if let Ok(v) = codec::sniff_decode(&out) {
                within_budget(&v)?;
            }
        }
        Ok(())
    });
}

/// arq's job definitions and results (`tests/fixtures/arq/`, pickle, JSON and msgpack), as
/// captured and mutated.
fn arq_records() -> Vec<Vec<u8>> {
    let dir = format!("{}/tests/fixtures/arq", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("arq fixtures").flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if let Some(b64) = v["value"].as_str() {
            if let Ok(bytes) = codec::base64_decode(b64) {
                out.push(bytes);
            }
        }
    }
    assert!(!out.is_empty(), "no arq fixtures in {dir}");
    out
}

#[test]
fn fuzz_arq_records() {
    use broker_adapters::arq::record;
    let input = prop_oneof![
        3 => (prop::sample::select(arq_records()), vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), any::<prop::sample::Index>())
            .prop_map(|(mut p, flips, cut)| {
                for (at, b) in flips {
                    let i = at.index(p.len());
                    p[i] = b;
                }
                let keep = cut.index(p.len() + 1);
                p.truncate(keep.max(p.len() / 2));
                p
            }),
        // Hostile pickles in general are `fuzz_pickle`'s (the same decoder, and its slowest
        // cases take most of the time limit on a loaded machine).
        1 => json_input(),
        1 => msgpack_input(),
    ];
    // One decoder per case: each decodes the whole payload, and the time limit is per decode.
    fuzz("arq-records", (input, any::<bool>()), |(bytes, as_job)| {
        if as_job {
            if let Ok(job) = record::decode_job(&bytes) {
                for v in [&job.args, &job.kwargs].into_iter().flatten() {
                    within_budget(v)?;
                }
            }
        } else if let Ok(r) = record::decode_result(&bytes) {
            if let Some(v) = &r.value {
                within_budget(v)?;
            }
            prop_assert!(r.error.as_deref().is_none_or(|e| !e.contains('\n')));
        }
        Ok(())
    });
}

#[test]
fn fuzz_bullmq_events_and_job_hashes() {
    use broker_adapters::bullmq::{job, BullmqAdapter, BullmqConfig};
    use broker_adapters::{ReadRequest, Reply};
    let now = chrono::DateTime::from_timestamp_millis(1_900_000_000_000).expect("time");
    let value = prop_oneof![
        3 => json_input(),
        1 => vec(any::<u8>(), 0..64),
        1 => prop::sample::select(vec![
            b"added".to_vec(), b"active".to_vec(), b"waiting".to_vec(), b"delayed".to_vec(),
            b"completed".to_vec(), b"failed".to_vec(), b"stalled".to_vec(), b"1".to_vec(),
            b"jobId".to_vec(), b"-1".to_vec(), b"99999999999999999999".to_vec(),
        ]),
    ];
    let bytes = |b: Vec<u8>| Reply::Bytes(b);
    // Events: entries of random fields and values; job hashes: random values of every field.
    fuzz(
        "bullmq",
        (
            vec(vec(value.clone(), 0..8), 0..12),
            vec(value, job::FIELDS.len()),
        ),
        |(entries, hash)| {
            let mut adapter = BullmqAdapter::new(BullmqConfig {
                queues: vec![broker_adapters::bullmq::layout::QueueName::new("bull", "q")],
            });
            let stream = ReadRequest::XRevRange {
                key: "bull:q:events".into(),
                end: "+".into(),
                start: "-".into(),
                count: 1000,
            };
            let reply = Reply::Array(
                entries
                    .into_iter()
                    .enumerate()
                    .map(|(i, fields)| {
                        let mut all = vec![bytes(b"event".to_vec())];
                        all.extend(fields.into_iter().map(bytes));
                        Reply::Array(vec![
                            bytes(format!("{}-0", 100 - i).into_bytes()),
                            Reply::Array(all),
                        ])
                    })
                    .collect(),
            );
            let out = adapter.answer(&stream, reply, now);
            for read in out.follow_up {
                if let ReadRequest::HMGet { .. } = &read.request {
                    let reply = Reply::Array(hash.iter().cloned().map(bytes).collect());
                    let out = adapter.answer(&read, reply, now);
                    for o in out.observations {
                        if let broker_adapters::Observation::Task(t) = o {
                            for v in [&t.fields.kwargs, &t.fields.result].into_iter().flatten() {
                                within_budget(v)?;
                            }
                        }
                    }
                }
            }
            Ok(())
        },
    );
}
