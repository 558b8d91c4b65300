//! arq's key-name rules for `--brokers auto`: its fixed per-job prefixes, the abort set, and
//! health-check keys, which also name a queue ([`Setting::ArqQueue`]: a custom `queue_name`).

use super::layout::{
    ABORT_KEY, DEFAULT_QUEUE, HEALTH_CHECK_SUFFIX, IN_PROGRESS_PREFIX, JOB_PREFIX, RESULT_PREFIX,
    RETRY_PREFIX,
};
use crate::detect::{Anchor, Finding, KeyRules, KeyVerdict, Setting};
use crate::model::Broker;

/// arq's key rules.
#[derive(Debug, Clone, Default)]
pub struct ArqKeys {
    /// The queues configured (`--arq-queues`), whose health checks are well known too.
    queues: Vec<String>,
}

impl ArqKeys {
    pub fn new(queues: &[String]) -> ArqKeys {
        ArqKeys {
            queues: queues.to_vec(),
        }
    }
}

impl KeyRules for ArqKeys {
    fn broker(&self) -> Broker {
        Broker::Arq
    }

    fn anchor(&self) -> Anchor {
        Anchor::Prefix
    }

    fn classify(&self, key: &str) -> Option<KeyVerdict> {
        let finding = |setting| Some(KeyVerdict::Broker(Finding::new(Broker::Arq, key, setting)));
        let by_prefix = [JOB_PREFIX, IN_PROGRESS_PREFIX, RETRY_PREFIX, RESULT_PREFIX]
            .iter()
            .any(|p| key.len() > p.len() && key.starts_with(p));
        if by_prefix || key == ABORT_KEY || key == DEFAULT_QUEUE {
            return finding(None);
        }
        // `<queue>:health-check`: arq's own suffix, on a queue arq's default or one named
        // `arq:...` (any other name ending so would be a guess).
        let queue = key.strip_suffix(HEALTH_CHECK_SUFFIX)?;
        if queue == DEFAULT_QUEUE {
            return finding(None);
        }
        if queue.starts_with("arq:") || self.queues.iter().any(|q| q == queue) {
            return finding(Some(Setting::ArqQueue(queue.to_string())));
        }
        None
    }

    /// `arq:queue` (a sorted set while jobs wait), the health checks of the default and
    /// configured queues, and the abort set.
    fn well_known_keys(&self) -> Vec<String> {
        let mut keys = vec![
            DEFAULT_QUEUE.to_string(),
            format!("{DEFAULT_QUEUE}{HEALTH_CHECK_SUFFIX}"),
            ABORT_KEY.to_string(),
        ];
        for q in self.queues.iter().filter(|q| q.as_str() != DEFAULT_QUEUE) {
            keys.push(q.clone());
            keys.push(format!("{q}{HEALTH_CHECK_SUFFIX}"));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(rules: &ArqKeys, key: &str) -> Option<Option<Setting>> {
        match rules.classify(key)? {
            KeyVerdict::Broker(f) => {
                assert_eq!(f.broker, Broker::Arq);
                Some(f.setting)
            }
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn arq_keys_are_found_by_name() {
        let rules = ArqKeys::default();
        for key in [
            "arq:queue",
            "arq:job:0ee5837440ba433db50192e2c634f8d0",
            "arq:in-progress:x",
            "arq:retry:x",
            "arq:result:x",
            "arq:abort",
            "arq:queue:health-check",
        ] {
            assert_eq!(verdict(&rules, key), Some(None), "{key}");
        }
        assert_eq!(
            verdict(&rules, "arq:billing:health-check"),
            Some(Some(Setting::ArqQueue("arq:billing".into())))
        );
        assert_eq!(verdict(&rules, "billing:health-check"), None, "a guess");
        assert_eq!(verdict(&rules, "arq:job:"), None);
        assert_eq!(verdict(&rules, "rq:job:x"), None);
        let configured = ArqKeys::new(&["billing".to_string()]);
        assert_eq!(
            verdict(&configured, "billing:health-check"),
            Some(Some(Setting::ArqQueue("billing".into())))
        );
        assert!(configured
            .well_known_keys()
            .contains(&"billing:health-check".to_string()));
    }
}
