//! taskiq's key-name rules for `--brokers auto`: a key named like a result key (a task id, bare
//! or after a `prefix_str`) may be one, and its value is read to tell
//! ([`crate::detect::is_taskiq_result`]). taskiq's queues have any name: they are found by
//! sampling streams, lists and channels ([`crate::detect::classify_message`],
//! [`crate::detect::classify_channel`]).

use crate::detect::{Anchor, KeyRules, KeyVerdict};
use crate::model::Broker;

/// taskiq's key rules: no setting changes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskiqKeys;

impl KeyRules for TaskiqKeys {
    fn broker(&self) -> Broker {
        Broker::Taskiq
    }

    fn anchor(&self) -> Anchor {
        Anchor::Suffix
    }

    fn classify(&self, key: &str) -> Option<KeyVerdict> {
        taskiq_result_prefix_of(key).map(|_| KeyVerdict::MaybeTaskiqResult)
    }

    fn well_known_queues(&self) -> Vec<String> {
        vec!["taskiq".to_string()]
    }
}

/// The `prefix_str` of a key named like a taskiq result: `""` for a bare task id,
/// `"results"` for `results:<task id>`, `"app:results"` for `app:results:<task id>` (the id is
/// what follows the last `:`). `None` when the name cannot be a result key.
///
/// Only task ids of a recognisable shape count: taskiq's default `uuid4().hex` (32 lower-case
/// hex digits) and the dashed `str(uuid4())` of a common custom `id_generator`. taskiq accepts
/// any string (`with_task_id`, `with_id_generator`), but a name alone cannot tell such an id
/// from any other key: those results are read by id once their task is known.
/// Progress keys (`<task id>__progress`) are not results and never match.
pub fn taskiq_result_prefix_of(key: &str) -> Option<String> {
    if is_task_id(key) {
        return Some(String::new());
    }
    let (prefix, id) = key.rsplit_once(':')?;
    (!prefix.is_empty() && is_task_id(id)).then(|| prefix.to_string())
}

/// A task id of a shape taskiq makes: `uuid4().hex` (its default) or `str(uuid4())`.
fn is_task_id(id: &str) -> bool {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    match id.len() {
        32 => id.bytes().all(hex),
        36 => id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => hex(b),
        }),
        _ => false,
    }
}
