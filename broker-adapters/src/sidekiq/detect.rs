//! Sidekiq's rules for `--brokers auto`: its `processes` set (written at every heartbeat of
//! every process) and its `stat:processed` / `stat:failed` counters, bare or under a
//! `redis-namespace` namespace, which they teach ([`Setting::SidekiqNamespace`]); and a job
//! waiting in a `queue:<name>` list before any process runs, recognised by its JSON
//! ([`finding_for_list_entry`]). The `queues` set alone is not evidence: the name is too common.

use crate::detect::{Anchor, Finding, KeyRules, KeyVerdict, Setting};
use crate::model::Broker;
use serde_json::{Map, Value};

/// Names that alone show Sidekiq without a namespace.
const BARE: [&str; 3] = ["processes", "stat:processed", "stat:failed"];
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
        let mut keys: Vec<String> = ["processes", "stat:processed"]
            .iter()
            .map(|k| k.to_string())
            .collect();
        if let Some(ns) = &self.namespace {
            keys.push(format!("{ns}:processes"));
            keys.push(format!("{ns}:stat:processed"));
        }
        keys
    }

    /// `queue:default`: jobs pushed before any process started wait there.
    fn well_known_queues(&self) -> Vec<String> {
        let mut queues = vec!["queue:default".to_string()];
        if let Some(ns) = &self.namespace {
            queues.push(format!("{ns}:queue:default"));
        }
        queues
    }
}

/// Whether a decoded list entry is a Sidekiq job: `class`, `jid` and `queue` strings and an
/// `args` array, as `Sidekiq::Client` pushes it.
pub fn looks_like_job(object: &Map<String, Value>) -> bool {
    ["class", "jid", "queue"]
        .iter()
        .all(|f| object.get(*f).is_some_and(Value::is_string))
        && object.get("args").is_some_and(Value::is_array)
}

/// A Sidekiq finding from an entry sampled in the list `key`, when the list is named like a
/// Sidekiq queue (`queue:<name>`, or `<ns>:queue:<name>`, which teaches the namespace) and
/// the entry is a Sidekiq job.
pub fn finding_for_list_entry(key: &str, object: &Map<String, Value>) -> Option<Finding> {
    if !looks_like_job(object) {
        return None;
    }
    let setting = if key.starts_with("queue:") {
        None
    } else {
        let (ns, _) = key.split_once(":queue:")?;
        Some(Setting::SidekiqNamespace(ns.to_string()))
    };
    Some(Finding::new(Broker::Sidekiq, key, setting))
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
        for key in ["processes", "stat:processed", "stat:failed"] {
            assert_eq!(verdict(&rules, key), Some(None), "{key}");
        }
        assert_eq!(verdict(&rules, "queues"), None, "too common a name alone");
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

    #[test]
    fn a_job_waiting_in_a_queue_list_shows_sidekiq_and_its_namespace() {
        let job: Value = serde_json::json!({
            "retry": true, "queue": "parked", "args": [2, 2, 0.0], "class": "AddJob",
            "jid": "05eef078e884cf97cb430167", "created_at": 1796549993.18
        });
        let object = job.as_object().expect("an object");
        let bare = finding_for_list_entry("queue:parked", object).expect("Sidekiq");
        assert_eq!((bare.broker, bare.setting), (Broker::Sidekiq, None));
        let namespaced = finding_for_list_entry("app:queue:parked", object).expect("Sidekiq");
        assert_eq!(
            namespaced.setting,
            Some(Setting::SidekiqNamespace("app".into()))
        );
        assert!(
            finding_for_list_entry("jobs", object).is_none(),
            "not a queue's name"
        );
        let mut other = object.clone();
        other.remove("jid");
        assert!(finding_for_list_entry("queue:parked", &other).is_none());
    }
}
