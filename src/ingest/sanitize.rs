//! Redaction and truncation of task payloads before they reach the store (and the live feed).
//!
//! - **Redaction**: any object value whose key contains one of the configured words
//!   (`password`, `token`, `secret`..., case-insensitive) becomes `"[redacted]"`, at any depth of
//!   args, kwargs and results.
//! - **Truncation**: a value whose JSON text is longer than `max_bytes` is shrunk in steps,
//!   stopping as soon as it fits: nested containers are collapsed into a marker string, deepest
//!   first (`"[truncated: list of 250 items]"`); then the longest strings are cut with a marker;
//!   then the top-level list or object loses its last entries (a marker entry says how many).
//!   Tracebacks keep their end (where the exception is); errors keep their start.
//!
//! Pure and deterministic: the same input always gives the same output.

use broker_adapters::TaskFields;
use serde_json::{Map, Value};

pub const REDACTED: &str = "[redacted]";
/// Strings are never cut below this many bytes.
const MIN_STRING: usize = 64;
/// Longest-string cuts tried before dropping top-level entries.
const MAX_STRING_CUTS: usize = 32;

/// What to redact and how large a stored value may be.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    max_bytes: usize,
    /// Lower-case words; a key containing any of them is redacted.
    redact: Vec<String>,
}

impl Sanitizer {
    pub fn new(max_bytes: usize, redact: Vec<String>) -> Sanitizer {
        Sanitizer {
            max_bytes: max_bytes.max(256),
            redact: redact.into_iter().map(|w| w.to_lowercase()).collect(),
        }
    }

    /// Redacts and truncates every payload field of one observation.
    pub fn apply(&self, fields: &mut TaskFields) {
        for value in [&mut fields.args, &mut fields.kwargs, &mut fields.result]
            .into_iter()
            .flatten()
        {
            self.redact_value(value);
            truncate_value(value, self.max_bytes);
        }
        if let Some(tb) = &mut fields.traceback {
            keep_tail(tb, self.max_bytes);
        }
        if let Some(error) = &mut fields.error {
            keep_head(error, self.max_bytes);
        }
    }

    fn redacts(&self, key: &str) -> bool {
        let key = key.to_lowercase();
        self.redact.iter().any(|w| key.contains(w.as_str()))
    }

    fn redact_value(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if self.redacts(key) {
                        *v = Value::String(REDACTED.to_string());
                    } else {
                        self.redact_value(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            _ => {}
        }
    }
}

fn size(value: &Value) -> usize {
    serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn marker_for(value: &Value) -> Option<Value> {
    match value {
        Value::Array(items) => Some(Value::String(format!(
            "[truncated: list of {} items]",
            items.len()
        ))),
        Value::Object(map) => Some(Value::String(format!(
            "[truncated: object of {} keys]",
            map.len()
        ))),
        _ => None,
    }
}

/// Replaces every container at exactly `level` (the root is level 0) by its marker.
fn collapse_at(value: &mut Value, level: usize) {
    let children: Box<dyn Iterator<Item = &mut Value>> = match value {
        Value::Array(items) => Box::new(items.iter_mut()),
        Value::Object(map) => Box::new(map.values_mut()),
        _ => return,
    };
    for child in children {
        if level == 1 {
            if let Some(marker) = marker_for(child) {
                *child = marker;
            }
        } else {
            collapse_at(child, level - 1);
        }
    }
}

/// The longest string in `value`, as a mutable reference.
fn longest_string(value: &mut Value) -> Option<&mut String> {
    match value {
        Value::String(s) => Some(s),
        Value::Array(items) => items
            .iter_mut()
            .filter_map(longest_string)
            .max_by_key(|s| s.len()),
        Value::Object(map) => map
            .values_mut()
            .filter_map(longest_string)
            .max_by_key(|s| s.len()),
        _ => None,
    }
}

fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Cuts `s` to about `keep` bytes plus a marker naming how much went.
fn cut_string(s: &mut String, keep: usize) {
    let at = floor_char_boundary(s, keep);
    let dropped = s.len() - at;
    s.truncate(at);
    s.push_str(&format!("…[truncated {dropped} bytes]"));
}

/// Shrinks `value` until its JSON text fits in `max` bytes (see the module docs).
pub fn truncate_value(value: &mut Value, max: usize) {
    let mut current = size(value);
    if current <= max {
        return;
    }
    for level in (1..depth(value)).rev() {
        collapse_at(value, level);
        current = size(value);
        if current <= max {
            return;
        }
    }
    for _ in 0..MAX_STRING_CUTS {
        let excess = current - max;
        let Some(s) = longest_string(value) else {
            break;
        };
        if s.len() <= MIN_STRING {
            break;
        }
        // The marker adds ~25 bytes; JSON escapes may make the text longer than the bytes.
        let keep = s.len().saturating_sub(excess + 32).max(MIN_STRING);
        cut_string(s, keep);
        current = size(value);
        if current <= max {
            return;
        }
    }
    drop_trailing_entries(value, max);
}

/// Removes the last entries of a top-level list or object until it fits, with one marker entry.
fn drop_trailing_entries(value: &mut Value, max: usize) {
    match value {
        Value::Array(items) => {
            let total = items.len();
            while !items.is_empty() {
                items.pop();
                let mut probe = items.clone();
                probe.push(Value::String(format!(
                    "[truncated: {} more items]",
                    total - items.len()
                )));
                if size(&Value::Array(probe.clone())) <= max {
                    *items = probe;
                    return;
                }
            }
            items.push(Value::String(format!("[truncated: {total} items]")));
        }
        Value::Object(map) => {
            let total = map.len();
            let keys: Vec<String> = map.keys().cloned().collect();
            let mut kept: Map<String, Value> = map.clone();
            for key in keys.iter().rev() {
                kept.remove(key);
                let mut probe = kept.clone();
                probe.insert(
                    "…".to_string(),
                    Value::String(format!("[truncated: {} more keys]", total - kept.len())),
                );
                if size(&Value::Object(probe.clone())) <= max {
                    *map = probe;
                    return;
                }
            }
            map.clear();
            map.insert(
                "…".to_string(),
                Value::String(format!("[truncated: {total} keys]")),
            );
        }
        Value::String(s) => cut_string(s, max.saturating_sub(32).max(MIN_STRING)),
        _ => {}
    }
}

/// Keeps the last `max` bytes of a traceback (the exception is at its end).
fn keep_tail(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut start = text.len() - max.saturating_sub(32);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    *text = format!("[truncated {start} bytes]…{}", &text[start..]);
}

/// Keeps the first `max` bytes of an error line.
fn keep_head(text: &mut String, max: usize) {
    if text.len() > max {
        cut_string(text, max.saturating_sub(32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sanitizer(max: usize) -> Sanitizer {
        Sanitizer::new(max, vec!["password".into(), "token".into()])
    }

    #[test]
    fn secrets_are_redacted_at_any_depth_and_nothing_else_changes() {
        let s = sanitizer(65_536);
        let mut fields = TaskFields {
            kwargs: Some(json!({"user": "ann", "DB_Password": "hunter2",
                "nested": [{"api_token": "abc", "n": 1}]})),
            args: Some(json!([1, {"token": {"deep": "x"}}])),
            result: Some(json!("ok")),
            ..TaskFields::default()
        };
        s.apply(&mut fields);
        assert_eq!(
            fields.kwargs,
            Some(json!({"user": "ann", "DB_Password": "[redacted]",
                "nested": [{"api_token": "[redacted]", "n": 1}]}))
        );
        assert_eq!(fields.args, Some(json!([1, {"token": "[redacted]"}])));
        assert_eq!(fields.result, Some(json!("ok")));
    }

    #[test]
    fn nested_containers_are_emptied_before_strings_are_cut() {
        let big: Vec<u32> = (0..200).collect();
        let mut v = json!({"id": 7, "name": "short", "rows": [big.clone(), big], "meta": {"a": {"b": [1, 2, 3]}}});
        truncate_value(&mut v, 300);
        assert_eq!(
            v,
            json!({"id": 7, "name": "short",
                "rows": ["[truncated: list of 200 items]", "[truncated: list of 200 items]"],
                "meta": {"a": "[truncated: object of 1 keys]"}}),
            "the deepest level goes first, and it stops as soon as the value fits"
        );
        assert!(size(&v) <= 300);
    }

    #[test]
    fn long_strings_are_cut_with_a_marker() {
        let mut v = json!({"text": "é".repeat(1000), "n": 1});
        truncate_value(&mut v, 400);
        let text = v["text"].as_str().unwrap();
        assert!(text.ends_with("bytes]"), "{text}");
        assert!(text.contains("…[truncated "), "{text}");
        assert_eq!(v["n"], 1);
        assert!(size(&v) <= 400, "{}", size(&v));
    }

    #[test]
    fn a_long_flat_list_loses_its_tail_with_a_count() {
        let mut v = json!((0..1000).collect::<Vec<u32>>());
        truncate_value(&mut v, 300);
        let items = v.as_array().unwrap();
        let last = items.last().unwrap().as_str().unwrap();
        assert!(last.starts_with("[truncated: "), "{last}");
        let kept = items.len() - 1;
        assert_eq!(last, format!("[truncated: {} more items]", 1000 - kept));
        assert!(size(&v) <= 300);
    }

    #[test]
    fn small_values_are_untouched_and_tracebacks_keep_their_end() {
        let mut v = json!({"a": [1, 2]});
        truncate_value(&mut v, 300);
        assert_eq!(v, json!({"a": [1, 2]}));
        let mut fields = TaskFields {
            traceback: Some(format!("{}ValueError: boom", "  File x\n".repeat(100))),
            error: Some("E".repeat(1000)),
            ..TaskFields::default()
        };
        sanitizer(300).apply(&mut fields);
        let tb = fields.traceback.unwrap();
        assert!(
            tb.starts_with("[truncated ") && tb.ends_with("ValueError: boom"),
            "{tb}"
        );
        assert!(tb.len() <= 300);
        assert!(fields.error.unwrap().len() <= 300);
    }

    proptest::proptest! {
        #[test]
        fn any_value_fits_after_truncation(
            text in ".{0,300}",
            n in 0usize..200,
            max in 256usize..2000,
        ) {
            let mut v = json!({"s": text.repeat(5), "list": vec![text.clone(); n],
                "deep": [[[[text.clone()]]]], "nums": (0..n).collect::<Vec<_>>()});
            truncate_value(&mut v, max);
            proptest::prop_assert!(size(&v) <= max, "{} > {max}: {v}", size(&v));
        }
    }
}
