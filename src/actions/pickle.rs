//! A minimal pickle writer (protocol 2 opcodes) for RQ's default serializer: JSON values
//! (None, bool, int, float, str, list, dict) and tuples, as Python's `pickle.loads` reads them.
//! Pure; iterative over an explicit stack, so any depth of JSON costs no recursion.

use serde_json::Value;

/// A value to pickle: JSON, or a tuple of values (RQ's job data is a 4-tuple).
pub enum Pickled<'a> {
    Json(&'a Value),
    Tuple(Vec<Pickled<'a>>),
    Str(&'a str),
    None,
}

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const EMPTY_LIST: u8 = b']';
const EMPTY_DICT: u8 = b'}';
const APPEND: u8 = b'a';
const SETITEM: u8 = b's';
const MARK: u8 = b'(';
const TUPLE: u8 = b't';

/// `pickle.dumps(value, protocol=2)`'s meaning (not its exact bytes: no memo).
pub fn dumps(value: &Pickled<'_>) -> Vec<u8> {
    let mut out = vec![PROTO, 2];
    write(&mut out, value);
    out.push(STOP);
    out
}

enum Step<'a> {
    Value(&'a Pickled<'a>),
    Json(&'a Value),
    Key(&'a str),
    Op(u8),
}

fn write(out: &mut Vec<u8>, root: &Pickled<'_>) {
    let mut stack = vec![Step::Value(root)];
    while let Some(step) = stack.pop() {
        match step {
            Step::Op(op) => out.push(op),
            Step::Key(k) => unicode(out, k),
            Step::Value(Pickled::None) => out.push(NONE),
            Step::Value(Pickled::Str(s)) => unicode(out, s),
            Step::Value(Pickled::Json(v)) => stack.push(Step::Json(v)),
            Step::Value(Pickled::Tuple(items)) => {
                out.push(MARK);
                stack.push(Step::Op(TUPLE));
                for item in items.iter().rev() {
                    stack.push(Step::Value(item));
                }
            }
            Step::Json(v) => match v {
                Value::Null => out.push(NONE),
                Value::Bool(true) => out.push(NEWTRUE),
                Value::Bool(false) => out.push(NEWFALSE),
                Value::Number(n) => {
                    if let Some(i) = n.as_i64() {
                        int(out, i128::from(i));
                    } else if let Some(u) = n.as_u64() {
                        int(out, i128::from(u));
                    } else {
                        out.push(BINFLOAT);
                        out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_be_bytes());
                    }
                }
                Value::String(s) => unicode(out, s),
                Value::Array(items) => {
                    out.push(EMPTY_LIST);
                    // Each item, then APPEND: pushed in reverse so they pop in order.
                    for item in items.iter().rev() {
                        stack.push(Step::Op(APPEND));
                        stack.push(Step::Json(item));
                    }
                }
                Value::Object(map) => {
                    out.push(EMPTY_DICT);
                    let entries: Vec<_> = map.iter().collect();
                    for (k, item) in entries.into_iter().rev() {
                        stack.push(Step::Op(SETITEM));
                        stack.push(Step::Json(item));
                        stack.push(Step::Key(k));
                    }
                }
            },
        }
    }
}

fn unicode(out: &mut Vec<u8>, s: &str) {
    out.push(BINUNICODE);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, i: i128) {
    if let Ok(small) = i32::try_from(i) {
        out.push(BININT);
        out.extend_from_slice(&small.to_le_bytes());
        return;
    }
    // LONG1: little-endian two's complement, shortest length that keeps the sign.
    let bytes = i.to_le_bytes();
    let mut len = bytes.len();
    while len > 1 {
        let top = bytes[len - 1];
        let next_sign = bytes[len - 2] & 0x80;
        if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
            len -= 1;
        } else {
            break;
        }
    }
    out.push(LONG1);
    out.push(len as u8);
    out.extend_from_slice(&bytes[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_values_match_pythons_opcodes() {
        // pickle.dumps((None, 1, "a"), protocol=2) without memo opcodes.
        let one = json!(1);
        let v = Pickled::Tuple(vec![Pickled::None, Pickled::Json(&one), Pickled::Str("a")]);
        assert_eq!(
            dumps(&v),
            b"\x80\x02(NJ\x01\x00\x00\x00X\x01\x00\x00\x00at.".to_vec()
        );
        assert_eq!(
            dumps(&Pickled::Json(&json!([true, {"k": 2.5}]))),
            b"\x80\x02]\x88a}X\x01\x00\x00\x00kG\x40\x04\x00\x00\x00\x00\x00\x00sa.".to_vec()
        );
    }

    #[test]
    fn big_integers_are_long1() {
        let mut out = Vec::new();
        int(&mut out, 1 << 40);
        assert_eq!(out, vec![LONG1, 6, 0, 0, 0, 0, 0, 1]);
        let mut out = Vec::new();
        int(&mut out, -(1 << 40));
        assert_eq!(out, vec![LONG1, 6, 0, 0, 0, 0, 0, 0xff]);
        let mut out = Vec::new();
        int(&mut out, u64::MAX as i128);
        assert_eq!(
            out,
            vec![LONG1, 9, 255, 255, 255, 255, 255, 255, 255, 255, 0]
        );
    }
}
