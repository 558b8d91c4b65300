//! Dramatiq's key-name rules for `--brokers auto`: keys only its `RedisBroker` writes,
//! whatever the namespace, which they teach ([`Setting::DramatiqNamespace`]).

use crate::detect::{Anchor, Finding, KeyRules, KeyVerdict, Setting};
use crate::model::Broker;

/// Dramatiq's key rules; `namespace` (the configured one, else `dramatiq`) names the
/// well-known keys probed before any scan.
#[derive(Debug, Clone)]
pub struct DramatiqKeys {
    pub namespace: String,
}

impl KeyRules for DramatiqKeys {
    fn broker(&self) -> Broker {
        Broker::Dramatiq
    }

    fn anchor(&self) -> Anchor {
        Anchor::Suffix
    }

    fn classify(&self, key: &str) -> Option<KeyVerdict> {
        let setting = Setting::DramatiqNamespace(namespace_of(key)?);
        Some(KeyVerdict::Broker(Finding::new(
            Broker::Dramatiq,
            key,
            Some(setting),
        )))
    }

    fn well_known_keys(&self) -> Vec<String> {
        let ns = &self.namespace;
        vec![format!("{ns}:__heartbeats__"), format!("{ns}:default.msgs")]
    }
}

/// The namespace of a key only Dramatiq's RedisBroker writes: `<ns>:__heartbeats__`,
/// `<ns>:__acks__.<worker>.<queue>`, `<ns>:<queue>.msgs` (and `.DQ.msgs`, `.XQ.msgs`).
fn namespace_of(key: &str) -> Option<String> {
    let namespace = if let Some(ns) = key.strip_suffix(":__heartbeats__") {
        ns
    } else if let Some((ns, _worker_queue)) = key.split_once(":__acks__.") {
        ns
    } else if key.ends_with(".msgs") {
        let (ns, queue) = key.rsplit_once(':')?;
        queue.strip_suffix(".msgs").filter(|q| !q.is_empty())?;
        ns
    } else {
        return None;
    };
    (!namespace.is_empty()).then(|| namespace.to_string())
}
