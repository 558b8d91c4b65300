//! BullMQ's key-name rules for `--brokers auto`: a queue's `<prefix>:<queue>:meta` or
//! `:events` key under the default prefix `bull` shows it by name ([`Setting::BullmqQueue`]);
//! under any other prefix, the `:events` stream is sampled and its entry judged by
//! [`crate::detect::classify_message`] (its first value names a BullMQ event).

use super::layout::{QueueName, DEFAULT_PREFIX, EVENTS_SUFFIX, META_SUFFIX};
use crate::detect::{Anchor, Finding, KeyRules, KeyVerdict, Setting};
use crate::model::Broker;

/// BullMQ's key rules.
#[derive(Debug, Clone, Default)]
pub struct BullmqKeys {
    /// The queues configured (`--bullmq-queues`), whose metadata hashes are well known.
    queues: Vec<QueueName>,
}

impl BullmqKeys {
    pub fn new(queues: &[QueueName]) -> BullmqKeys {
        BullmqKeys {
            queues: queues.to_vec(),
        }
    }
}

/// The finding of a queue shown by `key`.
pub fn finding(key: &str, queue: &QueueName) -> Finding {
    Finding::new(
        Broker::Bullmq,
        key,
        Some(Setting::BullmqQueue(queue.qualified())),
    )
}

impl KeyRules for BullmqKeys {
    fn broker(&self) -> Broker {
        Broker::Bullmq
    }

    fn anchor(&self) -> Anchor {
        Anchor::Suffix
    }

    fn classify(&self, key: &str) -> Option<KeyVerdict> {
        let queue = if key.ends_with(META_SUFFIX) {
            QueueName::from_meta_key(key)?
        } else if key.ends_with(EVENTS_SUFFIX) {
            QueueName::from_events_key(key)?
        } else {
            return None;
        };
        let configured = self.queues.contains(&queue);
        (queue.prefix == DEFAULT_PREFIX || configured)
            .then(|| KeyVerdict::Broker(finding(key, &queue)))
    }

    fn well_known_keys(&self) -> Vec<String> {
        self.queues.iter().map(|q| q.key("meta")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(rules: &BullmqKeys, key: &str) -> Option<Option<Setting>> {
        match rules.classify(key)? {
            KeyVerdict::Broker(f) => Some(f.setting),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn default_prefix_queues_are_found_by_name() {
        let rules = BullmqKeys::default();
        let q = |s: &str| Some(Some(Setting::BullmqQueue(s.into())));
        assert_eq!(setting(&rules, "bull:emails:meta"), q("bull:emails"));
        assert_eq!(setting(&rules, "bull:emails:events"), q("bull:emails"));
        assert_eq!(setting(&rules, "shop:emails:meta"), None, "a guess");
        assert_eq!(setting(&rules, "bull:emails:wait"), None);
        let configured = BullmqKeys::new(&[QueueName::new("shop", "emails")]);
        assert_eq!(setting(&configured, "shop:emails:meta"), q("shop:emails"));
    }
}
