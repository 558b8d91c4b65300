//! RQ's key-name rules for `--brokers auto`: RQ's own keys under the default prefix `rq:` and
//! under a configured one, which they teach ([`Setting::RqPrefix`]).

use crate::detect::{Anchor, Finding, KeyRules, KeyVerdict, Setting};
use crate::model::Broker;

/// RQ's keys under its prefix.
const RQ_KEYS: [&str; 2] = ["queues", "workers"];
const RQ_PREFIXES: [&str; 12] = [
    "job:",
    "queue:",
    "wip:",
    "finished:",
    "failed:",
    "deferred:",
    "scheduled:",
    "canceled:",
    "results:",
    "worker:",
    "workers:",
    "executions:",
];

/// The prefix RQ uses unless the application sets `RQ_KEY_PREFIX`.
pub const DEFAULT_PREFIX: &str = "rq:";

/// RQ's key rules: names under the default prefix `rq:` and under the configured one.
#[derive(Debug, Clone)]
pub struct RqKeys {
    /// `rq:` first, then the configured prefix when it is another.
    prefixes: Vec<String>,
}

impl RqKeys {
    /// Rules for the default prefix and `configured` (`--rq-prefix`, else `rq:`).
    pub fn new(configured: &str) -> RqKeys {
        let mut prefixes = vec![DEFAULT_PREFIX.to_string()];
        if configured != DEFAULT_PREFIX && !configured.is_empty() {
            prefixes.push(configured.to_string());
        }
        RqKeys { prefixes }
    }
}

impl KeyRules for RqKeys {
    fn broker(&self) -> Broker {
        Broker::Rq
    }

    fn anchor(&self) -> Anchor {
        Anchor::Prefix
    }

    fn classify(&self, key: &str) -> Option<KeyVerdict> {
        self.prefixes.iter().find_map(|prefix| {
            let rest = key.strip_prefix(prefix.as_str())?;
            (RQ_KEYS.contains(&rest) || RQ_PREFIXES.iter().any(|p| rest.starts_with(p))).then(
                || {
                    let setting = Setting::RqPrefix(prefix.clone());
                    KeyVerdict::Broker(Finding::new(Broker::Rq, key, Some(setting)))
                },
            )
        })
    }

    /// Under the configured prefix (the default one when none is).
    fn well_known_keys(&self) -> Vec<String> {
        let prefix = self.prefixes.last().map_or(DEFAULT_PREFIX, String::as_str);
        vec![format!("{prefix}queues"), format!("{prefix}workers")]
    }
}
