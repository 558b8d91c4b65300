//! The pickle VM on what Python writes (protocols 0 to 5: plain data decodes exactly as
//! serde-pickle, the decoder it replaced, decoded it; objects of classes become readable
//! placeholders) and on hostile pickles (each one cheap decode error, never a stack overflow,
//! an abort or a stall).
//!
//! The fixture was made with Python 3.11:
//! ```python
//! import pickle, datetime, uuid, decimal, collections
//! class Custom:
//!     def __init__(self): self.a = [1, {"b": (2, 3)}]
//! vals = [("billing.add", None, (1, 2.5, "s", b"raw", [1, 2], {"k": "v"},
//!          datetime.datetime(2026,11,23,1,2,3,4567)), {"flag": True, "u": uuid.UUID(int=1)}),
//!         {"is_err": False, "log": None, "return_value": {"x": [1,2,{"y": set([1,2])}]},
//!          "execution_time": 0.5, "labels": {}, "error": None},
//!         [list(range(3000)), {i: str(i) for i in range(1500)}],
//!         Custom(), frozenset([1,2]), decimal.Decimal("1.5"), collections.OrderedDict(a=1)]
//! for proto in range(0, 6):
//!     for v in vals: print(pickle.dumps(v, protocol=proto).hex())
//! ```

use broker_adapters::codec::{self, BudgetExceeded, CodecError, Limits};
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

fn unhex(line: &str) -> Vec<u8> {
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
        .collect()
}

fn python_pickles() -> Vec<Vec<u8>> {
    include_str!("fixtures/pickle/python_pickles.hex")
        .lines()
        .map(|l| unhex(l.trim()))
        .collect()
}

/// What the previous decoder (serde-pickle, then a conversion to JSON) gave.
fn serde_pickle_json(bytes: &[u8]) -> Value {
    use serde_pickle::{HashableValue as H, Value as P};
    fn key(k: H) -> String {
        match k {
            H::String(s) => s,
            H::I64(i) => i.to_string(),
            other => format!("{other:?}"),
        }
    }
    fn conv(v: P) -> Value {
        match v {
            P::None => Value::Null,
            P::Bool(b) => Value::Bool(b),
            P::I64(i) => Value::from(i),
            P::Int(i) => Value::String(i.to_string()),
            P::F64(f) => json!(f),
            P::Bytes(b) => match String::from_utf8(b) {
                Ok(s) => Value::String(s),
                Err(e) => Value::String(format!("<{} bytes>", e.as_bytes().len())),
            },
            P::String(s) => Value::String(s),
            P::List(items) | P::Tuple(items) => Value::Array(items.into_iter().map(conv).collect()),
            P::Set(items) | P::FrozenSet(items) => {
                Value::Array(items.into_iter().map(|h| conv(h.into_value())).collect())
            }
            P::Dict(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (key(k), conv(v))).collect())
            }
        }
    }
    let opts = serde_pickle::DeOptions::new()
        .replace_unresolved_globals()
        .decode_strings();
    conv(serde_pickle::value_from_slice(bytes, opts).expect("serde-pickle decodes it"))
}

#[test]
fn plain_data_of_every_protocol_decodes_as_serde_pickle_decoded_it() {
    for (n, bytes) in python_pickles().iter().enumerate() {
        if ![1, 2, 4].contains(&(n % 7)) {
            continue;
        }
        let (value, classes) = codec::pickle_to_json_checked(bytes)
            .unwrap_or_else(|e| panic!("#{n} (protocol {}): {e}", n / 7));
        assert_eq!(value, serde_pickle_json(bytes), "#{n} (protocol {})", n / 7);
        assert!(!classes, "#{n}: plain data, no classes");
    }
}

#[test]
fn objects_of_every_protocol_become_readable_placeholders() {
    let pickles = python_pickles();
    assert_eq!(pickles.len(), 42);
    for proto in 0..6 {
        let at = |i: usize| {
            let (v, classes) = codec::pickle_to_json_checked(&pickles[proto * 7 + i])
                .unwrap_or_else(|e| panic!("value {i}, protocol {proto}: {e}"));
            assert!(classes, "value {i}, protocol {proto} holds an object");
            v
        };
        assert_eq!(
            at(0),
            json!(["billing.add", null,
                [1, 2.5, "s", "raw", [1, 2], {"k": "v"}, "2026-11-23T01:02:03.004567"],
                {"flag": true, "u": "00000000-0000-0000-0000-000000000001"}]),
            "protocol {proto}"
        );
        assert_eq!(
            at(3),
            json!({"__class__": "__main__.Custom", "a": [1, {"b": [2, 3]}]}),
            "protocol {proto}"
        );
        assert_eq!(at(5), json!("1.5"), "protocol {proto}");
        assert_eq!(
            at(6),
            json!({"__class__": "collections.OrderedDict", "a": 1}),
            "protocol {proto}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile pickles. Each must fail with a budget error, never stall: the bound only tells a
// bounded decode (milliseconds in release, seconds in a debug build on a loaded machine: 2.9 s
// seen at load average 7.7 on 2 cores) from a runaway one (these payloads expand to 2^64 values
// or recurse 50,000 deep). Speed is measured by `tests/hostile_decode_time.rs`, not here.

const FAST: Duration = Duration::from_secs(20);

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

/// `PROTO 4, EMPTY_LIST, MEMOIZE`, then `n` x `POP, EMPTY_LIST, MEMOIZE, LONG_BINGET k-1,
/// APPEND`, `STOP`: lists nested `n` deep through memo references (issue #14's first attack;
/// it overflowed the stack of serde-pickle's recursive expansion and aborted the process).
pub fn memo_chain(n: u32) -> Vec<u8> {
    let mut p = vec![0x80, 4, b']', 0x94];
    for k in 1..=n {
        p.extend([b'0', b']', 0x94, b'j']);
        p.extend((k - 1).to_le_bytes());
        p.push(b'a');
    }
    p.push(b'.');
    p
}

/// `PROTO 2`, `n` x `MARK`, `NONE STOP` (issue #14's second attack: 4.2 GB and 22 s before).
pub fn mark_flood(n: usize) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b'(', n));
    p.extend([b'N', b'.']);
    p
}

/// A list of two references to the previous list, `levels` times: 2^levels leaves from a few
/// hundred bytes ("billion laughs" through memo references).
pub fn memo_laughs(levels: u32) -> Vec<u8> {
    let mut p = vec![0x80, 4, b']', 0x94]; // memo 0: []
    for k in 1..=levels {
        p.extend([b']', 0x94, b'j']); // memo k: [m(k-1), m(k-1)]
        p.extend((k - 1).to_le_bytes());
        p.push(b'a');
        p.push(b'j');
        p.extend((k - 1).to_le_bytes());
        p.push(b'a');
        p.push(b'0');
    }
    p.push(b'j');
    p.extend(levels.to_le_bytes());
    p.push(b'.');
    p
}

fn refused_fast(bytes: &[u8]) -> CodecError {
    let t = Instant::now();
    let err = codec::pickle_to_json(bytes).expect_err("refused");
    assert!(t.elapsed() < FAST, "took {:?}", t.elapsed());
    err
}

#[test]
fn lists_nested_50000_deep_through_memo_refs_are_one_budget_error() {
    let p = memo_chain(50_000);
    assert!(
        zlib(&p).len() > 50_000,
        "the attack as filed: ~82 KB of zlib"
    );
    let err = refused_fast(&p);
    assert!(
        matches!(err, CodecError::Budget(BudgetExceeded::Depth(128))),
        "{err}"
    );
    // Through RQ, the job is still listed (named from its description) with the error.
    let call = broker_adapters::rq::job::decode_data(&zlib(&p)).expect_err("a decode error");
    assert!(
        call.to_string().contains("nested deeper than 128"),
        "{call}"
    );
}

#[test]
fn a_million_marks_are_one_budget_error() {
    let p = mark_flood(1_000_000);
    assert!(zlib(&p).len() < 1100, "the attack as filed: ~1 KB of zlib");
    let err = refused_fast(&p);
    assert!(
        matches!(err, CodecError::Budget(BudgetExceeded::Depth(128))),
        "{err}"
    );
}

#[test]
fn memo_references_are_counted_each_time_they_are_expanded() {
    let p = memo_laughs(40);
    assert!(p.len() < 1000);
    let err = refused_fast(&p);
    assert!(
        matches!(err, CodecError::Budget(BudgetExceeded::Items(_))),
        "{err}"
    );
    // A big string referenced many times counts its bytes each time.
    let mut p = vec![0x80, 4, b'X'];
    p.extend(1_000_000u32.to_le_bytes());
    p.extend(std::iter::repeat_n(b'x', 1_000_000));
    p.extend([0x94, b']', b'(']);
    for _ in 0..100 {
        p.extend([b'h', 0]);
    }
    p.extend([b'e', b'.']);
    let err = refused_fast(&p);
    assert!(
        matches!(err, CodecError::Budget(BudgetExceeded::Bytes(_))),
        "{err}"
    );
}

#[test]
fn a_small_budget_is_honoured_and_a_fitting_pickle_is_not_refused() {
    let limits = Limits {
        max_items: 5,
        ..Limits::DEFAULT
    };
    // [1, 2, 3]: four values
    let p = [0x80, 2, b']', b'(', b'K', 1, b'K', 2, b'K', 3, b'e', b'.'];
    assert_eq!(
        codec::pickle_to_json_with(&p, &limits).unwrap().0,
        json!([1, 2, 3])
    );
    let p = [
        0x80, 2, b']', b'(', b'K', 1, b'K', 2, b'K', 3, b'K', 4, b'K', 5, b'e', b'.',
    ];
    assert!(codec::pickle_to_json_with(&p, &limits).is_err());
    // Depth 3 passes a limit of 3, depth 4 does not.
    let nested = |n: usize| {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        p
    };
    let limits = Limits {
        max_depth: 3,
        ..Limits::DEFAULT
    };
    assert!(codec::pickle_to_json_with(&nested(3), &limits).is_ok());
    assert!(codec::pickle_to_json_with(&nested(4), &limits).is_err());
}

#[test]
fn truncated_and_unknown_pickles_are_errors() {
    for p in python_pickles() {
        for cut in [1, p.len() / 2, p.len() - 1] {
            assert!(codec::pickle_to_json(&p[..cut]).is_err());
        }
    }
    assert!(codec::pickle_to_json(&[0x80, 2, b'P', b'x', b'\n', b'.']).is_err());
    assert!(codec::pickle_to_json(&[0xff]).is_err());
    assert!(codec::pickle_to_json(&[]).is_err());
}
