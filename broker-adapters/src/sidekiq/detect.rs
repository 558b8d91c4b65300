//! Sidekiq's key-name rules for `--brokers auto`: its `processes` set (written at every
//! heartbeat of every process), its `queues` set (at every push) and its `stat:processed` /
//! `stat:failed` counters, bare or under a `redis-namespace` namespace, which they teach
//! ([`Setting::SidekiqNamespace`]).

use crate::detect::{Anchor, Finding, KeyRules, KeyVerdict, Setting};
use crate::model::Broker;

/// Names that alone show Sidekiq without a namespace.
const BARE: [&str; 4] = ["processes", "queues", "stat:processed", "stat:failed"];
/// Names that show it under a namespace (`<ns>:processes`...). Not `<ns>:queues`: RQ's
/// `rq:queues` is named so.
const NAMESPACED: [&str; 3] = ["processes", "stat:processed", "stat:failed"];

/// Sidekiq's key rules.
#[derive(Debug, Clone, Default)]
pub struct SidekiqKeys {
    /// The namespace configured (`--sidekiq-namespace`), if any.
    namespace: Option<String>,
}

impl SidekiqKeys {
    pub fn new(namespace: Option<&str>) -> SidekiqKeys {
        SidekiqKeys {
            namespace: namespace
                .map(|n| n.trim().trim_end_matches(':').to_string())
                .filter(|n| !n.is_empty()),
        }
    }
}

impl KeyRules for SidekiqKeys {
    fn broker(&self) -> Broker {
        Broker::Sidekiq
    }

    /// The names are known by how they end (after a namespace).
    fn anchor(&self) -> Anchor {
        Anchor::Suffix
    }

    fn classify(&self, key: &str) -> Option<KeyVerdict> {
        let finding = |setting| {
            Some(KeyVerdict::Broker(Finding::new(
                Broker::Sidekiq,
                key,
                setting,
            )))
        };
        if BARE.contains(&key) {
            return finding(None);
        }
        for name in NAMESPACED {
            let Some(ns) = key
                .strip_suffix(name)
                .and_then(|rest| rest.strip_suffix(':'))
                .filter(|ns| !ns.is_empty())
            else {
                continue;
            };
            // `stat:processed` itself ends in `:processed`, not `:processes`: no overlap.
            return finding(Some(Setting::SidekiqNamespace(ns.to_string())));
        }
        None
    }

    fn well_known_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = ["processes", "queues", "stat:processed"]
            .iter()
            .map(|k| k.to_string())
            .collect();
        if let Some(ns) = &self.namespace {
            keys.push(format!("{ns}:processes"));
            keys.push(format!("{ns}:stat:processed"));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(rules: &SidekiqKeys, key: &str) -> Option<Option<Setting>> {
        match rules.classify(key)? {
            KeyVerdict::Broker(f) => {
                assert_eq!(f.broker, Broker::Sidekiq);
                Some(f.setting)
            }
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn sidekiq_keys_are_found_by_name() {
        let rules = SidekiqKeys::default();
        for key in ["processes", "queues", "stat:processed", "stat:failed"] {
            assert_eq!(verdict(&rules, key), Some(None), "{key}");
        }
        assert_eq!(
            verdict(&rules, "app:processes"),
            Some(Some(Setting::SidekiqNamespace("app".into())))
        );
        assert_eq!(
            verdict(&rules, "my:app:stat:processed"),
            Some(Some(Setting::SidekiqNamespace("my:app".into())))
        );
        assert_eq!(verdict(&rules, "rq:queues"), None, "RQ's");
        assert_eq!(verdict(&rules, ":processes"), None);
        assert_eq!(verdict(&rules, "queue:default"), None);
        assert!(SidekiqKeys::new(Some("app"))
            .well_known_keys()
            .contains(&"app:processes".to_string()));
    }
}
