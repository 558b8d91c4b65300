//! taskiq's key layout: result keys (`<prefix>:<task id>`, or the bare task id with no prefix),
//! their progress companions, and the keyspace channel that names new streams. Queue keys are
//! whatever the application configured: they are names, not a layout. Owns the building and
//! the classifying of key names; knows nothing about their content.

use crate::adapter::glob_escape;

/// The suffix of a task's progress record (`<result key>__progress`): not a result.
pub use super::result::PROGRESS_SUFFIX;

/// What a result-shaped key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'k, 'p> {
    /// `<prefix>:<task id>` under one of the known prefixes.
    PrefixedResult { prefix: &'p str, task_id: &'k str },
    /// A key that may be a bare task id (no prefix): taskiq's default result backend.
    BareResult(&'k str),
}

/// Classifies a key as a result key under one of `prefixes` (longest first) or as a possible
/// bare one; `None` for a progress record.
pub fn classify<'k, 'p>(key: &'k str, prefixes: &'p [String]) -> Option<KeyKind<'k, 'p>> {
    if key.ends_with(PROGRESS_SUFFIX) {
        return None;
    }
    for p in prefixes {
        if let Some(task_id) = key
            .strip_prefix(p.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
            .filter(|id| !id.is_empty())
        {
            return Some(KeyKind::PrefixedResult {
                prefix: p.as_str(),
                task_id,
            });
        }
    }
    Some(KeyKind::BareResult(key))
}

/// The result key of `task_id` under `prefix`.
pub fn result_key(prefix: &str, task_id: &str) -> String {
    format!("{prefix}:{task_id}")
}

/// Every key a task's result may be under: one per prefix, then the bare id.
pub fn result_keys(prefixes: &[String], task_id: &str) -> Vec<String> {
    prefixes
        .iter()
        .map(|p| result_key(p, task_id))
        .chain(std::iter::once(task_id.to_string()))
        .collect()
}

/// The globs of result keys: one per prefix, and the bare 32-hex task ids.
pub fn result_patterns(prefixes: &[String]) -> Vec<String> {
    prefixes
        .iter()
        .map(|p| format!("{}:*", glob_escape(p)))
        .chain(std::iter::once(hex32_pattern()))
        .collect()
}

/// A glob of 32 lowercase hex digits (taskiq's default task ids, `uuid4().hex`).
pub fn hex32_pattern() -> String {
    "[0-9a-f]".repeat(32)
}

/// Whether `id` looks like taskiq's default task id.
pub fn is_hex32(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The keyevent channel of `XADD`s in database `db`: how a stream no one named is found.
pub fn xadd_channel(db: u32) -> String {
    format!("__keyevent@{db}__:xadd")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_keys_classify_under_the_longest_prefix() {
        let prefixes = vec!["app:res".to_string(), "app".to_string()];
        assert_eq!(
            classify("app:res:t1", &prefixes),
            Some(KeyKind::PrefixedResult {
                prefix: "app:res",
                task_id: "t1"
            })
        );
        assert_eq!(classify("t2", &prefixes), Some(KeyKind::BareResult("t2")));
        assert_eq!(classify("app:res:t1__progress", &prefixes), None);
        assert_eq!(
            result_keys(&prefixes, "t"),
            vec!["app:res:t".to_string(), "app:t".into(), "t".into()]
        );
        assert!(is_hex32(&"a".repeat(32)) && !is_hex32("A"));
    }
}
