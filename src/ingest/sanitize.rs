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
//! - **Length caps**: task ids, queue and worker names are cut to [`MAX_ID_BYTES`], task names
//!   to [`MAX_NAME_BYTES`], on a character boundary, with a marker holding a hash of the whole
//!   (two long ids that share a prefix stay two tasks).
//!
//! Linear in the size of what it is given. Pure and deterministic: the same input always gives
//! the same output.

use broker_adapters::{Observation, QueueSample, TaskFields};
use serde_json::Value;

pub const REDACTED: &str = "[redacted]";
/// Strings are never cut below this many bytes.
const MIN_STRING: usize = 64;
/// Longest-string cuts tried before dropping top-level entries.
const MAX_STRING_CUTS: usize = 32;

/// Longest task id, queue name, worker id or hostname stored, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest task name stored, in bytes.
pub const MAX_NAME_BYTES: usize = 512;

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

    /// Caps the identifiers of one observation and sanitizes its payload: what the store is
    /// given.
    pub fn apply_observation(&self, observation: &mut Observation) {
        match observation {
            Observation::Task(t) => {
                cap_identifier(&mut t.task_id, MAX_ID_BYTES);
                self.apply(&mut t.fields);
            }
            Observation::Worker(w) => {
                cap_identifier(&mut w.id, MAX_ID_BYTES);
                if let Some(host) = &mut w.hostname {
                    cap_identifier(host, MAX_ID_BYTES);
                }
            }
        }
    }

    /// Caps a sampled queue's name.
    pub fn apply_sample(&self, sample: &mut QueueSample) {
        cap_identifier(&mut sample.name, MAX_ID_BYTES);
    }

    /// Caps the names and redacts and truncates every payload field of one observation.
    pub fn apply(&self, fields: &mut TaskFields) {
        for (text, max) in [
            (&mut fields.name, MAX_NAME_BYTES),
            (&mut fields.queue, MAX_ID_BYTES),
            (&mut fields.worker, MAX_ID_BYTES),
        ] {
            if let Some(text) = text {
                cap_identifier(text, max);
            }
        }
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
        // Every key of every payload comes here: ASCII keys (nearly all) are compared in
        // place, without a lower-case copy.
        if key.is_ascii() {
            let key = key.as_bytes();
            return self.redact.iter().any(|w| {
                let w = w.as_bytes();
                w.is_empty() || key.windows(w.len()).any(|k| k.eq_ignore_ascii_case(w))
            });
        }
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

/// Cuts an identifier longer than `max` bytes on a character boundary and ends it with a
/// marker naming the bytes cut and a hash of the whole: `abc…[+1200 bytes #9f2c…]`.
pub fn cap_identifier(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    // FNV-1a: stable across runs and versions, which a restart needs to find the same task.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // The marker with the whole length is at least as long as the final one.
    let room = format!("…[+{} bytes #{hash:016x}]", text.len()).len();
    let at = floor_char_boundary(text, max.saturating_sub(room));
    let dropped = text.len() - at;
    text.truncate(at);
    text.push_str(&format!("…[+{dropped} bytes #{hash:016x}]"));
}

/// Counts the bytes written to it: the length of a JSON text without building it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of `value`'s compact JSON text (what the store keeps).
fn size(value: &Value) -> usize {
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Whether `value`'s JSON text fits in `max` bytes, stopping at the first byte over: a value of
/// a million items that does not fit costs only the bytes up to `max`.
fn fits(value: &Value, max: usize) -> bool {
    struct Capped {
        written: usize,
        max: usize,
    }
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written += buf.len();
            if self.written > self.max {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Capped { written: 0, max }, value).is_ok()
}

fn str_size(s: &str) -> usize {
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, s) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
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

/// What one walk learns about the JSON size of `value` by nesting level, so that the size after
/// collapsing any level is known without collapsing it: `containers[d]` (brackets, commas, keys
/// of the containers at depth `d`), `scalars[d]` (scalars at depth `d`), `markers[d]` (the
/// markers that would replace the containers at depth `d`).
#[derive(Default)]
struct LevelSizes {
    containers: Vec<usize>,
    scalars: Vec<usize>,
    markers: Vec<usize>,
}

impl LevelSizes {
    fn of(value: &Value) -> LevelSizes {
        let mut sizes = LevelSizes::default();
        sizes.walk(value, 0);
        sizes
    }

    fn add(v: &mut Vec<usize>, d: usize, n: usize) {
        if v.len() <= d {
            v.resize(d + 1, 0);
        }
        v[d] += n;
    }

    fn walk(&mut self, value: &Value, d: usize) {
        let (own, n) = match value {
            Value::Array(items) => {
                items.iter().for_each(|v| self.walk(v, d + 1));
                (2, items.len())
            }
            Value::Object(map) => {
                let keys: usize = map.keys().map(|k| str_size(k) + 1).sum();
                map.values().for_each(|v| self.walk(v, d + 1));
                (2 + keys, map.len())
            }
            scalar => {
                Self::add(&mut self.scalars, d, size(scalar));
                return;
            }
        };
        Self::add(&mut self.containers, d, own + n.saturating_sub(1));
        if let Some(marker) = marker_for(value) {
            Self::add(&mut self.markers, d, size(&marker));
        }
    }

    /// The size of the value once every container at `level` is collapsed into its marker.
    fn collapsed_at(&self, level: usize) -> usize {
        let at = |v: &Vec<usize>, d: usize| v.get(d).copied().unwrap_or(0);
        (0..level)
            .map(|d| at(&self.containers, d) + at(&self.scalars, d))
            .sum::<usize>()
            + at(&self.scalars, level)
            + at(&self.markers, level)
    }
}

fn longest_string_len(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(longest_string_len).max().unwrap_or(0),
        Value::Object(map) => map.values().map(longest_string_len).max().unwrap_or(0),
        _ => 0,
    }
}

/// Every string in `value`, in the order a depth-first walk meets them.
fn strings_of<'a>(value: &'a mut Value, out: &mut Vec<&'a mut String>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter_mut().for_each(|v| strings_of(v, out)),
        Value::Object(map) => map.values_mut().for_each(|v| strings_of(v, out)),
        _ => {}
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

/// Shrinks `value` until its JSON text fits in `max` bytes (see the module docs), in time
/// linear in the size of the value: sizes are measured once and then updated, never
/// re-measured per step.
pub fn truncate_value(value: &mut Value, max: usize) {
    if fits(value, max) {
        return;
    }
    // Collapse the deepest level that makes it fit (the levels below it go with it), else
    // level 1.
    let levels = depth(value);
    if levels > 1 {
        let sizes = LevelSizes::of(value);
        let level = (1..levels)
            .rev()
            .find(|l| sizes.collapsed_at(*l) <= max)
            .unwrap_or(1);
        collapse_at(value, level);
        if fits(value, max) {
            return;
        }
    }
    // Cut the longest string, again and again; a heap keeps "the longest" at hand. The whole
    // size is measured only when there is a string to cut.
    if longest_string_len(value) > MIN_STRING {
        let mut current = size(value);
        let mut strings: Vec<&mut String> = Vec::new();
        strings_of(value, &mut strings);
        // Ties go to the last string met, like `max_by_key`.
        let mut longest: std::collections::BinaryHeap<(usize, usize)> = strings
            .iter()
            .enumerate()
            .map(|(i, s)| (s.len(), i))
            .collect();
        for _ in 0..MAX_STRING_CUTS {
            let Some((len, i)) = longest.pop() else {
                break;
            };
            if len <= MIN_STRING {
                break;
            }
            let s = &mut *strings[i];
            let excess = current - max;
            // The marker adds ~25 bytes; JSON escapes may make the text longer than the bytes.
            let keep = s.len().saturating_sub(excess + 32).max(MIN_STRING);
            let before = str_size(s);
            cut_string(s, keep);
            current = current - before + str_size(s);
            if current <= max {
                return;
            }
            longest.push((s.len(), i));
        }
    }
    drop_trailing_entries(value, max);
}

/// Removes the last entries of a top-level list or object until it fits, with one marker entry:
/// each entry is measured once, and the number kept found from the running total.
fn drop_trailing_entries(value: &mut Value, max: usize) {
    match value {
        Value::Array(items) => {
            let total = items.len();
            let marker = |kept: usize| format!("[truncated: {} more items]", total - kept);
            // [a,b,marker]: brackets, one comma per kept entry.
            let mut fits = None;
            let mut prefix = 2;
            for (kept, item) in std::iter::once(None)
                .chain(items.iter().map(Some))
                .enumerate()
            {
                if let Some(item) = item {
                    prefix += size(item) + 1;
                }
                if kept < total && prefix + str_size(&marker(kept)) <= max {
                    fits = Some(kept);
                }
                if prefix > max {
                    break;
                }
            }
            match fits {
                Some(kept) => {
                    items.truncate(kept);
                    items.push(Value::String(marker(kept)));
                }
                None => {
                    items.clear();
                    items.push(Value::String(format!("[truncated: {total} items]")));
                }
            }
        }
        Value::Object(map) => {
            let total = map.len();
            let marker = |kept: usize| format!("[truncated: {} more keys]", total - kept);
            let marker_key = str_size("…") + 1;
            let mut fits = None;
            let mut prefix = 2;
            let entries = std::iter::once(None).chain(map.iter().map(Some));
            for (kept, entry) in entries.enumerate() {
                if let Some((k, v)) = entry {
                    prefix += str_size(k) + 1 + size(v) + 1;
                }
                if kept < total && prefix + marker_key + str_size(&marker(kept)) <= max {
                    fits = Some(kept);
                }
                if prefix > max {
                    break;
                }
            }
            match fits {
                Some(kept) => {
                    let gone: Vec<String> = map.keys().skip(kept).cloned().collect();
                    for key in gone {
                        map.remove(&key);
                    }
                    map.insert("…".to_string(), Value::String(marker(kept)));
                }
                None => {
                    map.clear();
                    map.insert(
                        "…".to_string(),
                        Value::String(format!("[truncated: {total} keys]")),
                    );
                }
            }
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
    use proptest::strategy::Strategy;
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

    /// The step-by-step truncation this module had before it was made linear: re-measure after
    /// every step. The linear one must give the same result.
    fn reference_truncate(value: &mut Value, max: usize) {
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
            let keep = s.len().saturating_sub(excess + 32).max(MIN_STRING);
            cut_string(s, keep);
            current = size(value);
            if current <= max {
                return;
            }
        }
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
                let mut kept = map.clone();
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

    #[test]
    fn long_ids_names_queues_and_workers_are_capped_and_stay_distinct() {
        let s = sanitizer(65_536);
        let long_id = |tail: &str| format!("{}{tail}", "é".repeat(400));
        let mut a = Observation::Task(broker_adapters::TaskObservation::new(
            broker_adapters::Broker::Rq,
            long_id("a"),
            chrono::Utc::now(),
            broker_adapters::TaskEvent::Queued,
            "queue",
        ));
        let mut b = a.clone();
        if let Observation::Task(t) = &mut b {
            t.task_id = long_id("b");
        }
        for obs in [&mut a, &mut b] {
            if let Observation::Task(t) = obs {
                t.fields.name = Some("n".repeat(2000));
                t.fields.queue = Some("q".repeat(300));
                t.fields.worker = Some("w".repeat(256));
            }
            s.apply_observation(obs);
        }
        let (Observation::Task(a), Observation::Task(b)) = (a, b) else {
            unreachable!()
        };
        assert!(a.task_id.len() <= MAX_ID_BYTES, "{}", a.task_id.len());
        assert!(a.task_id.starts_with("éé") && a.task_id.contains("…[+"));
        assert_ne!(a.task_id, b.task_id, "the hash keeps them apart");
        let name = a.fields.name.unwrap();
        assert!(
            name.len() <= MAX_NAME_BYTES && name.starts_with("nnn"),
            "{name}"
        );
        assert!(a.fields.queue.unwrap().len() <= MAX_ID_BYTES);
        assert_eq!(
            a.fields.worker,
            Some("w".repeat(256)),
            "at the cap: untouched"
        );
        let mut sample = QueueSample {
            broker: broker_adapters::Broker::Celery,
            name: "x".repeat(10_000),
            length: 1,
            delayed: 0,
            dead: 0,
            running: 0,
            sampled_at: chrono::Utc::now(),
            oldest_enqueued_at: None,
        };
        s.apply_sample(&mut sample);
        assert!(sample.name.len() <= MAX_ID_BYTES);
    }

    #[test]
    fn level_sizes_predict_the_size_after_collapsing() {
        let v = json!({"a": [1, "x\n\"y", {"b": [true, null, 2.5]}], "é": {"c": []}, "d": "s"});
        let sizes = LevelSizes::of(&v);
        for level in 1..depth(&v) {
            let mut c = v.clone();
            collapse_at(&mut c, level);
            assert_eq!(sizes.collapsed_at(level), size(&c), "level {level}");
        }
    }

    #[test]
    fn a_million_item_result_is_cut_with_a_count() {
        let mut v = json!((0..1_000_000).collect::<Vec<u32>>());
        truncate_value(&mut v, 65_536);
        let items = v.as_array().unwrap();
        assert!(size(&v) <= 65_536);
        let last = items.last().unwrap().as_str().unwrap();
        assert_eq!(
            last,
            format!("[truncated: {} more items]", 1_000_000 - (items.len() - 1))
        );
    }

    proptest::proptest! {
        #[test]
        fn linear_truncation_gives_what_the_step_by_step_one_gave(
            text in ".{0,300}",
            n in 0usize..60,
            // Not "…" itself: the marker entry's key (a value under it is replaced).
            keys in proptest::collection::vec("[a-zé…]{0,6}".prop_filter("not the marker key", |k| k != "…"), 0..30),
            max in 256usize..3000,
        ) {
            let obj: serde_json::Map<String, Value> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), json!([i, text.clone(), {"n": [i]}])))
                .collect();
            let cases = [
                json!({"s": text.repeat(5), "list": vec![text.clone(); n],
                    "deep": [[[[text.clone()]]]], "nums": (0..n).collect::<Vec<_>>()}),
                Value::Object(obj.clone()),
                json!((0..n * 20).collect::<Vec<_>>()),
                json!(vec![text.clone(); n]),
                json!([obj, text.repeat(3)]),
            ];
            for v in cases {
                let mut linear = v.clone();
                let mut reference = v.clone();
                truncate_value(&mut linear, max);
                reference_truncate(&mut reference, max);
                proptest::prop_assert_eq!(linear, reference);
            }
        }

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
