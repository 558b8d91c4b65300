//! Celery's key layout on the broker's Redis (kombu's Redis transport) and on the result
//! backend's: building the keys taskscope reads, and classifying a key named by a notification
//! or a SCAN. Knows nothing about their content.

/// kombu's separator in binding entries and priority queue names (`\x06\x16`).
pub const SEP: &str = "\x06\x16";
/// Celery's default priority steps beyond 0; each has its own list `<queue>\x06\x16<p>`.
pub const PRIORITY_STEPS: [u8; 3] = [3, 6, 9];
/// The hash of messages taken by workers and not acknowledged yet, by delivery tag.
pub const UNACKED: &str = "unacked";
/// kombu's binding sets: `_kombu.binding.<exchange>`, members `routing_key SEP pattern SEP queue`.
pub const BINDING_PREFIX: &str = "_kombu.binding.";
/// Result backend keys (and their pub/sub channels): `celery-task-meta-<task id>`.
pub use super::result::RESULT_PREFIX;

/// Which of Celery's keys a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'k> {
    /// [`UNACKED`].
    Unacked,
    /// `_kombu.binding.<exchange>`.
    Binding(&'k str),
    /// `celery-task-meta-<task id>`.
    Result(&'k str),
    /// A queue list, `<queue>` or `<queue>\x06\x16<priority>`, of one of the `known` queues.
    Queue(&'k str),
}

/// Classifies `key`; a list is a queue only when its base name is one of `known`.
pub fn classify<'k>(key: &'k str, known: impl Fn(&str) -> bool) -> Option<KeyKind<'k>> {
    if key == UNACKED {
        return Some(KeyKind::Unacked);
    }
    if let Some(exchange) = key.strip_prefix(BINDING_PREFIX) {
        return Some(KeyKind::Binding(exchange));
    }
    if let Some(id) = key.strip_prefix(RESULT_PREFIX) {
        return Some(KeyKind::Result(id));
    }
    let base = queue_of(key);
    known(base).then_some(KeyKind::Queue(base))
}

/// The queue a list key belongs to (`celery` for `celery` and `celery\x06\x163`).
pub fn queue_of(key: &str) -> &str {
    key.split_once(SEP).map_or(key, |(q, _)| q)
}

/// The lists of one queue: its own and one per priority step.
pub fn queue_keys(queue: &str) -> impl Iterator<Item = String> + '_ {
    std::iter::once(queue.to_string()).chain(
        PRIORITY_STEPS
            .iter()
            .map(move |p| format!("{queue}{SEP}{p}")),
    )
}

/// The result backend's key of a task.
pub fn result_key(task_id: &str) -> String {
    format!("{RESULT_PREFIX}{task_id}")
}

/// The glob of every binding set.
pub fn bindings_pattern() -> String {
    format!("{BINDING_PREFIX}*")
}

/// The glob of every result key (and result channel).
pub fn results_pattern() -> String {
    format!("{RESULT_PREFIX}*")
}

/// The glob of a queue's priority lists (`queue` already glob-escaped).
pub fn priority_lists_pattern(escaped_queue: &str) -> String {
    format!("{escaped_queue}{SEP}*")
}

/// The exchange a binding set belongs to (its key without [`BINDING_PREFIX`]).
pub fn binding_exchange(key: &str) -> &str {
    key.strip_prefix(BINDING_PREFIX).unwrap_or(key)
}

/// The queue a binding entry (`routing_key SEP pattern SEP queue`) names.
pub fn binding_queue(entry: &str) -> Option<&str> {
    entry.rsplit(SEP).next()
}

/// Bindings also name Celery's own broadcast queues (pidbox, events, replies): not task queues.
pub fn is_task_queue(binding_key: &str, queue: &str) -> bool {
    let exchange = binding_exchange(binding_key);
    !queue.is_empty()
        && !exchange.ends_with(".pidbox")
        && exchange != "celeryev"
        && !queue.ends_with(".pidbox")
        && !queue.starts_with("celeryev.")
}

/// The pattern of Celery's event channels in database `db` (`/<db>.celeryev/...`; without the
/// database prefix they are `celeryev*`).
pub fn events_pattern(db: u32) -> String {
    format!("/{db}.celeryev*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_classify_as_what_they_name() {
        let known = |q: &str| q == "celery";
        assert_eq!(classify("unacked", known), Some(KeyKind::Unacked));
        assert_eq!(
            classify("_kombu.binding.celery", known),
            Some(KeyKind::Binding("celery"))
        );
        assert_eq!(
            classify("celery-task-meta-t1", known),
            Some(KeyKind::Result("t1"))
        );
        assert_eq!(
            classify(&format!("celery{SEP}3"), known),
            Some(KeyKind::Queue("celery"))
        );
        assert_eq!(classify("other", known), None);
        assert_eq!(queue_keys("q").count(), 1 + PRIORITY_STEPS.len());
        assert!(is_task_queue("_kombu.binding.celery", "celery"));
        assert!(!is_task_queue(
            "_kombu.binding.celery.pidbox",
            "w1.celery.pidbox"
        ));
        assert!(!is_task_queue("_kombu.binding.celeryev", "celeryev.abc"));
    }
}
