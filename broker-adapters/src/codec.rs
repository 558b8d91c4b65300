//! Payload decoding every adapter shares: base64, JSON, msgpack and Python pickle into
//! `serde_json::Value`, Python literal reprs (what Celery events carry) into JSON, and the time
//! formats brokers write.
//!
//! Every function returns a `Result` or `Option`: garbage in is an error out, never a panic.
//! Every decoder works within the decode budget ([`Limits`]): a payload over it is a
//! [`CodecError::Budget`], whatever its bytes say.

pub use crate::limits::{BudgetExceeded, Limits};
use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};

/// Why a payload did not decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("invalid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid msgpack: {0}")]
    Msgpack(String),
    #[error("invalid pickle: {0}")]
    Pickle(String),
    #[error("unsupported content type {0:?}")]
    UnsupportedContentType(String),
    #[error("unsupported compression {0:?} (zlib and gzip are supported)")]
    UnsupportedCompression(String),
    #[error("cannot decompress: {0}")]
    Decompress(#[from] std::io::Error),
    /// Over one of the [`Limits`]: the payload is refused, not cut.
    #[error("{0}")]
    Budget(#[from] BudgetExceeded),
}

impl CodecError {
    /// The payload broke a limit of the decode budget (rather than being malformed).
    pub fn is_over_budget(&self) -> bool {
        matches!(self, CodecError::Budget(_))
    }
}

/// Decompresses a body compressed by kombu (`application/x-gzip` is zlib there, `zlib` and
/// `gzip` by name too), within the configured [`Limits`].
pub fn decompress(content_type: &str, body: &[u8]) -> Result<Vec<u8>, CodecError> {
    decompress_with(content_type, body, &Limits::current())
}

/// [`decompress`] within `limits`: more than `max_decompressed_bytes` out is an error.
pub fn decompress_with(
    content_type: &str,
    body: &[u8],
    limits: &Limits,
) -> Result<Vec<u8>, CodecError> {
    use std::io::Read;
    let max = limits.max_decompressed_bytes;
    // One byte more than allowed tells "exactly at the limit" from "over it".
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::new();
    match content_type.trim() {
        "application/x-gzip" | "application/zlib" | "zlib" | "application/x-zlib" => {
            if body.starts_with(&[0x1f, 0x8b]) {
                flate2::read::GzDecoder::new(body)
                    .take(cap)
                    .read_to_end(&mut out)?;
            } else {
                flate2::read::ZlibDecoder::new(body)
                    .take(cap)
                    .read_to_end(&mut out)?;
            }
        }
        "application/gzip" | "gzip" => {
            flate2::read::GzDecoder::new(body)
                .take(cap)
                .read_to_end(&mut out)?;
        }
        other => return Err(CodecError::UnsupportedCompression(other.to_string())),
    }
    if out.len() > max {
        return Err(BudgetExceeded::Decompressed(max).into());
    }
    Ok(out)
}

/// Decodes standard base64, tolerating missing padding and embedded newlines (kombu wraps none,
/// but hand-written producers do).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, CodecError> {
    // Every Celery event and message body comes through here: skip the copy when there is no
    // whitespace to remove (kombu never wraps).
    if !text.bytes().any(|b| b.is_ascii_whitespace()) {
        return Ok(BASE64.decode(text.as_bytes())?);
    }
    let cleaned: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    Ok(BASE64.decode(&cleaned)?)
}

/// [`base64_decode`] appended to `out` (a buffer reused from one payload to the next).
pub fn base64_decode_into(text: &str, out: &mut Vec<u8>) -> Result<(), CodecError> {
    if !text.bytes().any(|b| b.is_ascii_whitespace()) {
        BASE64.decode_vec(text.as_bytes(), out)?;
        return Ok(());
    }
    let cleaned: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    BASE64.decode_vec(&cleaned, out)?;
    Ok(())
}

/// Standard alphabet; padding optional.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Decodes a body according to its MIME content type (kombu's names).
pub fn decode_by_content_type(content_type: &str, body: &[u8]) -> Result<Value, CodecError> {
    match content_type.trim() {
        "application/json" | "" => json_from_slice(body),
        "application/x-msgpack" | "application/msgpack" => msgpack_to_json(body),
        "application/x-python-serialize" => pickle_to_json(body),
        other => Err(CodecError::UnsupportedContentType(other.to_string())),
    }
}

/// Guesses the serialisation of a stored value from its first byte: pickle starts with the
/// PROTO opcode 0x80, JSON with text, anything else is tried as msgpack.
pub fn sniff_decode(bytes: &[u8]) -> Result<Value, CodecError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    match first {
        Some(0x80) => pickle_to_json(bytes),
        Some(b'{' | b'[' | b'"') => json_from_slice(bytes),
        _ => match json_from_slice(bytes) {
            Ok(v) => Ok(v),
            Err(budget @ CodecError::Budget(_)) => Err(budget),
            Err(json_err) => match msgpack_to_json(bytes) {
                Ok(v) => Ok(v),
                Err(budget @ CodecError::Budget(_)) => Err(budget),
                Err(_) => Err(json_err),
            },
        },
    }
}

/// Parses JSON into a `Value` within the configured [`Limits`] (serde_json alone bounds the
/// depth, not the number of values).
pub fn json_from_slice(bytes: &[u8]) -> Result<Value, CodecError> {
    json_from_slice_with(bytes, &Limits::current())
}

/// [`json_from_slice`] within `limits`.
pub fn json_from_slice_with(bytes: &[u8], limits: &Limits) -> Result<Value, CodecError> {
    crate::budgeted::json(bytes, limits).map_err(|e| match e {
        crate::budgeted::JsonError::Json(e) => CodecError::Json(e),
        crate::budgeted::JsonError::Budget(b) => CodecError::Budget(b),
    })
}

/// [`json_from_slice`] for callers whose error type is `serde_json::Error` (envelopes): the
/// budget's refusal is a JSON error saying which limit.
pub fn json_value(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    crate::budgeted::json(bytes, &Limits::current()).map_err(|e| match e {
        crate::budgeted::JsonError::Json(e) => e,
        crate::budgeted::JsonError::Budget(b) => serde::de::Error::custom(b),
    })
}

/// Decodes msgpack schemalessly (binary values included, which `rmp-serde` into JSON rejects),
/// within the configured [`Limits`].
pub fn msgpack_to_json(bytes: &[u8]) -> Result<Value, CodecError> {
    msgpack_to_json_with(bytes, &Limits::current())
}

/// [`msgpack_to_json`] within `limits`: headers are checked first, then `rmpv` decodes.
pub fn msgpack_to_json_with(bytes: &[u8], limits: &Limits) -> Result<Value, CodecError> {
    crate::budgeted::msgpack_fits(bytes, limits).map_err(|e| match e {
        Some(budget) => CodecError::Budget(budget),
        None => CodecError::Msgpack("truncated or malformed".into()),
    })?;
    // rmpv counts strings and binaries as levels too: leave the depth to the check above.
    let depth = limits.max_depth.saturating_mul(2).saturating_add(2);
    let mut cursor = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut cursor, depth)
        .map_err(|e| CodecError::Msgpack(e.to_string()))?;
    Ok(msgpack_value_to_json(value))
}

fn msgpack_value_to_json(v: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => i
            .as_i64()
            .map(Value::from)
            .or_else(|| i.as_u64().map(Value::from))
            .unwrap_or(Value::Null),
        M::F32(f) => float(f64::from(f)),
        M::F64(f) => float(f),
        M::String(s) => match s.into_str() {
            Some(s) => Value::String(s),
            None => Value::Null,
        },
        M::Binary(b) => bytes_to_json(&b),
        M::Array(items) => Value::Array(items.into_iter().map(msgpack_value_to_json).collect()),
        M::Map(pairs) => {
            let mut map = Map::new();
            for (k, v) in pairs {
                let key = match k {
                    M::String(s) => s.into_str().unwrap_or_default(),
                    other => other.to_string(),
                };
                map.insert(key, msgpack_value_to_json(v));
            }
            Value::Object(map)
        }
        M::Ext(kind, data) => Value::String(format!("<msgpack ext {kind}: {} bytes>", data.len())),
    }
}

/// Decodes a Python pickle (protocols 0 to 5) into JSON within the configured [`Limits`].
/// Objects of classes come out as `{"__class__": "module.Name", ...}` placeholders (see
/// [`crate::pickle`]).
pub fn pickle_to_json(bytes: &[u8]) -> Result<Value, CodecError> {
    Ok(pickle_to_json_with(bytes, &Limits::current())?.0)
}

/// [`pickle_to_json`], also telling whether the pickle held objects of classes (a user's
/// class, `datetime`, `Decimal`...): then the JSON holds placeholders or text in their place,
/// which callers that must show values exactly may prefer not to show.
pub fn pickle_to_json_checked(bytes: &[u8]) -> Result<(Value, bool), CodecError> {
    pickle_to_json_with(bytes, &Limits::current())
}

/// [`pickle_to_json_checked`] within `limits`.
pub fn pickle_to_json_with(bytes: &[u8], limits: &Limits) -> Result<(Value, bool), CodecError> {
    match crate::pickle::decode(bytes, limits) {
        Ok(d) => Ok((d.value, d.names_classes)),
        Err(crate::pickle::PickleError::Budget(b)) => Err(CodecError::Budget(b)),
        Err(e) => Err(CodecError::Pickle(e.to_string())),
    }
}

use crate::pickle::{bytes_to_json, float};

/// Parses a time as brokers write it: RFC 3339 / ISO 8601 with or without offset (naive times
/// are UTC, as Celery and RQ write them), or Unix seconds as a number.
pub fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => parse_time_str(s),
        Value::Number(n) => unix_seconds(n.as_f64()?),
        _ => None,
    }
}

/// [`parse_time`] for a string.
pub fn parse_time_str(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    s.parse::<f64>().ok().and_then(unix_seconds)
}

/// Unix seconds (fractional) as a time; `None` for NaN, negative or absurd values.
pub fn unix_seconds(secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() || !(0.0..1e11).contains(&secs) {
        return None;
    }
    let micros = (secs * 1e6).round() as i64;
    DateTime::from_timestamp_micros(micros)
}

/// Parses a Python literal repr (what Celery puts in events and `argsrepr`): numbers, strings,
/// `True`/`False`/`None`, tuples, lists, dicts, sets. Returns `None` for anything else (an
/// object repr like `<Foo at 0x...>`), so the caller keeps the text.
pub fn python_literal(text: &str) -> Option<Value> {
    let mut p = PyParser {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.value()?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct PyParser<'a> {
    s: &'a [u8],
    i: usize,
    depth: u32,
}

impl PyParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.depth += 1;
        if self.depth > 64 {
            return None;
        }
        self.ws();
        let v = match self.peek()? {
            b'(' => self.seq(b')').map(Value::Array),
            b'[' => self.seq(b']').map(Value::Array),
            b'{' => self.dict_or_set(),
            b'\'' | b'"' => self.string().map(Value::String),
            b'b' if matches!(self.s.get(self.i + 1), Some(b'\'' | b'"')) => {
                self.i += 1;
                self.string().map(Value::String)
            }
            _ => self.atom(),
        };
        self.depth -= 1;
        v
    }

    fn seq(&mut self, close: u8) -> Option<Vec<Value>> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Some(items);
            }
            items.push(self.value()?);
            if !self.eat(b',') {
                return self.eat(close).then_some(items);
            }
        }
    }

    fn dict_or_set(&mut self) -> Option<Value> {
        self.i += 1;
        let mut map = Map::new();
        let mut set = Vec::new();
        loop {
            if self.eat(b'}') {
                return Some(if set.is_empty() {
                    Value::Object(map)
                } else {
                    Value::Array(set)
                });
            }
            let key = self.value()?;
            if self.eat(b':') {
                let value = self.value()?;
                let key = match key {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                map.insert(key, value);
            } else {
                set.push(key);
            }
            if !self.eat(b',') {
                if !self.eat(b'}') {
                    return None;
                }
                return Some(if set.is_empty() {
                    Value::Object(map)
                } else {
                    Value::Array(set)
                });
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.peek()?;
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                c if c == quote => return Some(out),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'0' => out.push('\0'),
                        b'x' => out.push(self.hex_char(2)?),
                        b'u' => out.push(self.hex_char(4)?),
                        b'U' => out.push(self.hex_char(8)?),
                        other => out.push(other as char),
                    }
                }
                _ => {
                    // Copy one whole UTF-8 character.
                    let start = self.i - 1;
                    let len = utf8_len(c);
                    let end = (start + len).min(self.s.len());
                    out.push_str(std::str::from_utf8(&self.s[start..end]).ok()?);
                    self.i = end;
                }
            }
        }
    }

    fn hex_char(&mut self, n: usize) -> Option<char> {
        let digits = self.s.get(self.i..self.i + n)?;
        self.i += n;
        let code = u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
        char::from_u32(code)
    }

    fn atom(&mut self) -> Option<Value> {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || b"+-._".contains(&self.s[self.i]))
        {
            self.i += 1;
        }
        let word = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        match word {
            "True" => Some(Value::Bool(true)),
            "False" => Some(Value::Bool(false)),
            "None" => Some(Value::Null),
            _ => {
                if let Ok(i) = word.parse::<i64>() {
                    Some(Value::from(i))
                } else {
                    let f = word.parse::<f64>().ok()?;
                    Some(float(f))
                }
            }
        }
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Turns an exception repr (`ValueError('card declined 3')`) or a `{exc_type, exc_message}`
/// record into the contract's one-line error: `ValueError: card declined 3`.
pub fn error_line_from_repr(repr: &str) -> String {
    let repr = repr.trim();
    if let Some(open) = repr.find('(') {
        let name = &repr[..open];
        if repr.ends_with(')')
            && !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
        {
            let inner = &repr[open..];
            let message = match python_literal(inner) {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => inner[1..inner.len() - 1].to_string(),
            };
            return one_line(&if message.is_empty() {
                name.to_string()
            } else {
                format!("{name}: {message}")
            });
        }
    }
    one_line(repr)
}

/// The first line of a message, trimmed: errors are one line in the contract.
pub fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

/// The last non-empty line of a Python traceback: `ValueError: card declined 3`.
pub fn error_line_from_traceback(traceback: &str) -> Option<String> {
    traceback
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_literals_become_json() {
        assert_eq!(python_literal("(1, 2)"), Some(json!([1, 2])));
        assert_eq!(python_literal("()"), Some(json!([])));
        assert_eq!(python_literal("(1,)"), Some(json!([1])));
        assert_eq!(
            python_literal("{'a': 'x\\'y', \"b\": [None, True, 1.5]}"),
            Some(json!({"a": "x'y", "b": [null, true, 1.5]}))
        );
        assert_eq!(python_literal("'héllo ✓'"), Some(json!("héllo ✓")));
        assert_eq!(python_literal("<object at 0x7f>"), None);
        assert_eq!(python_literal("(1, 2"), None);
    }

    #[test]
    fn exception_reprs_become_one_line_errors() {
        assert_eq!(
            error_line_from_repr("ValueError('card declined 3')"),
            "ValueError: card declined 3"
        );
        assert_eq!(error_line_from_repr("KeyError()"), "KeyError");
        assert_eq!(
            error_line_from_repr("mymod.Boom('a', 2)"),
            "mymod.Boom: a, 2"
        );
        assert_eq!(error_line_from_repr("weird\nsecond"), "weird");
    }

    #[test]
    fn times_in_every_broker_format() {
        let t = parse_time_str("2026-11-23T12:16:07.706123+00:00").unwrap();
        assert_eq!(crate::model::rfc3339(&t), "2026-11-23T12:16:07.706Z");
        let naive = parse_time_str("2026-11-23T12:16:07.706123").unwrap();
        assert_eq!(t, naive);
        assert_eq!(
            parse_time(&json!(1_700_000_000.5)).map(|t| t.timestamp_millis()),
            Some(1_700_000_000_500)
        );
        assert_eq!(parse_time(&json!(f64::MAX)), None);
        assert_eq!(parse_time_str("yesterday"), None);
    }

    #[test]
    fn msgpack_binary_values_decode() {
        // {"a": bin(b"xy")}
        let bytes = [0x81, 0xa1, b'a', 0xc4, 0x02, b'x', b'y'];
        assert_eq!(msgpack_to_json(&bytes).unwrap(), json!({"a": "xy"}));
        assert!(msgpack_to_json(&[0x92, 0x01]).is_err());
    }

    #[test]
    fn zlib_and_gzip_bodies_decompress() {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"[1, 2]").unwrap();
        let zlib = z.finish().unwrap();
        assert_eq!(decompress("application/x-gzip", &zlib).unwrap(), b"[1, 2]");
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        g.write_all(b"{}").unwrap();
        assert_eq!(
            decompress("application/x-gzip", &g.finish().unwrap()).unwrap(),
            b"{}"
        );
        assert!(decompress("application/x-bz2", b"x").is_err());
        assert!(decompress("zlib", b"not zlib").is_err());
    }

    #[test]
    fn a_zlib_json_bomb_is_refused_not_decoded() {
        use std::io::Write;
        // ~64 KB of zlib holding 64 MB of `[0,0,0,...]`: tens of millions of values.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(b"[").unwrap();
        for _ in 0..(32 * 1024) {
            z.write_all(&b"0,".repeat(1024)).unwrap();
        }
        z.write_all(b"0]").unwrap();
        let bomb = z.finish().unwrap();
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let started = std::time::Instant::now();
        let err = decompress("zlib", &bomb).unwrap_err();
        assert!(
            matches!(err, CodecError::Budget(BudgetExceeded::Decompressed(_))),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Under a larger decompression cap, the item budget stops it instead.
        let loose = Limits {
            max_decompressed_bytes: 128 * 1024 * 1024,
            ..Limits::DEFAULT
        };
        let text = decompress_with("zlib", &bomb, &loose).unwrap();
        let err = json_from_slice_with(&text, &Limits::DEFAULT).unwrap_err();
        assert!(
            matches!(err, CodecError::Budget(BudgetExceeded::Items(2_000_000))),
            "{err}"
        );
        // A body exactly at the cap is fine.
        let exact = Limits {
            max_decompressed_bytes: 6,
            ..Limits::DEFAULT
        };
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"[1, 2]").unwrap();
        assert_eq!(
            decompress_with("zlib", &z.finish().unwrap(), &exact).unwrap(),
            b"[1, 2]"
        );
    }

    #[test]
    fn msgpack_with_a_huge_declared_length_is_refused_without_allocating() {
        // map32 announcing 2^32-1 pairs; array32 announcing 2^32-1 items; bin32 of 4 GB.
        for bytes in [
            &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0][..],
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0],
            &[0xc6, 0xff, 0xff, 0xff, 0xff, 0x00],
        ] {
            assert!(msgpack_to_json(bytes).is_err());
        }
        // A million nils in a declared array of a million: the item budget holds.
        let mut many = vec![0xdd, 0x00, 0x0f, 0x42, 0x40];
        many.extend(std::iter::repeat_n(0xc0, 1_000_000));
        let small = Limits {
            max_items: 1000,
            ..Limits::DEFAULT
        };
        assert!(matches!(
            msgpack_to_json_with(&many, &small),
            Err(CodecError::Budget(BudgetExceeded::Items(1000)))
        ));
        assert_eq!(
            msgpack_to_json(&many).unwrap().as_array().map(Vec::len),
            Some(1_000_000)
        );
    }

    #[test]
    fn base64_without_padding() {
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
        assert_eq!(base64_decode("aGk=\n").unwrap(), b"hi");
        assert!(base64_decode("!!!").is_err());
    }
}
