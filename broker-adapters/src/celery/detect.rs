//! Celery's key-name rules for `--brokers auto`: kombu's `_kombu.binding.*` sets (workers and
//! producers declare every queue there) and the result backend's `celery-task-meta-*` keys.
//! The sampled-message and channel rules that also know Celery (a kombu envelope in a list, an
//! event on `celeryev`) live in [`crate::detect`] beside taskiq's.

use crate::detect::{Anchor, Finding, KeyRules, KeyVerdict};
use crate::model::Broker;

/// Kombu's Redis transport keys (Celery is the kombu user taskscope watches).
pub(crate) const KOMBU_BINDING: &str = "_kombu.binding.";
/// Result backend keys (and their pub/sub channels) of one task.
pub(crate) const CELERY_RESULT: &str = "celery-task-meta-";
/// Result backend keys of a group.
pub(crate) const CELERY_GROUP_RESULT: &str = "celery-taskset-meta-";

/// Celery's key rules: no setting changes its key names.
#[derive(Debug, Clone, Copy, Default)]
pub struct CeleryKeys;

impl KeyRules for CeleryKeys {
    fn broker(&self) -> Broker {
        Broker::Celery
    }

    fn anchor(&self) -> Anchor {
        Anchor::Prefix
    }

    fn classify(&self, key: &str) -> Option<KeyVerdict> {
        let celery = key.starts_with(KOMBU_BINDING)
            || key.starts_with(CELERY_RESULT)
            || key.starts_with(CELERY_GROUP_RESULT);
        celery.then(|| KeyVerdict::Broker(Finding::new(Broker::Celery, key, None)))
    }

    fn well_known_keys(&self) -> Vec<String> {
        ["celery", "celeryev", "celery.pidbox"]
            .iter()
            .map(|suffix| format!("{KOMBU_BINDING}{suffix}"))
            .collect()
    }

    fn well_known_queues(&self) -> Vec<String> {
        vec!["celery".to_string()]
    }
}
