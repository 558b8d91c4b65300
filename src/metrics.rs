//! Process-wide counters the ingest pipeline and the store update, and `/healthz`, the overview
//! and (later) `/metrics` read. Plain atomics and one small mutex-guarded map: cheap enough to
//! bump on the hot path.

use broker_adapters::Broker;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Where an ingested event came from (the `source` label of `taskscope_ingest_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A keyspace notification.
    Keyspace,
    /// A pub/sub message (results, worker events).
    Pubsub,
    /// A reply to a read (after a notification, a reconciliation, a scan or a sample).
    Read,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Keyspace => "keyspace",
            Source::Pubsub => "pubsub",
            Source::Read => "read",
        }
    }
}

/// How taskscope learns that keys changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeFeed {
    /// Not connected yet.
    Unknown,
    /// Keyspace notifications are on.
    Notifications,
    /// Notifications unavailable: periodic reads only.
    Polling,
}

#[derive(Debug)]
pub struct Metrics {
    pub redis_connected: AtomicBool,
    ingest_events: Mutex<BTreeMap<Source, u64>>,
    decode_errors: Mutex<BTreeMap<Broker, u64>>,
    /// Pub/sub messages fred dropped because this process lagged (then a reconcile runs).
    pub lagged_events: AtomicU64,
    /// Redis commands taskscope issued (pipelined commands count one each).
    pub redis_commands: AtomicU64,
    change_feed: Mutex<ChangeFeed>,
    /// Adapters running, for `/` and `/healthz`.
    brokers: Mutex<Vec<Broker>>,
    /// Warnings worth showing on the overview (e.g. "keyspace notifications are off").
    warnings: Mutex<Vec<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            redis_connected: AtomicBool::new(false),
            ingest_events: Mutex::new(BTreeMap::new()),
            decode_errors: Mutex::new(BTreeMap::new()),
            lagged_events: AtomicU64::new(0),
            redis_commands: AtomicU64::new(0),
            change_feed: Mutex::new(ChangeFeed::Unknown),
            brokers: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
        }
    }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K, n: u64) {
    if let Ok(mut map) = map.lock() {
        *map.entry(key).or_default() += n;
    }
}

fn snapshot<K: Ord + Copy>(map: &Mutex<BTreeMap<K, u64>>) -> Vec<(K, u64)> {
    map.lock()
        .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
        .unwrap_or_default()
}

impl Metrics {
    pub fn ingested(&self, source: Source, n: u64) {
        bump(&self.ingest_events, source, n);
    }

    pub fn decode_error(&self, broker: Broker) {
        bump(&self.decode_errors, broker, 1);
    }

    pub fn ingest_events(&self) -> Vec<(Source, u64)> {
        snapshot(&self.ingest_events)
    }

    pub fn decode_errors(&self) -> Vec<(Broker, u64)> {
        snapshot(&self.decode_errors)
    }

    pub fn decode_errors_total(&self) -> u64 {
        self.decode_errors().iter().map(|(_, n)| n).sum()
    }

    pub fn redis_connected(&self) -> bool {
        self.redis_connected.load(Ordering::Relaxed)
    }

    pub fn set_change_feed(&self, feed: ChangeFeed) {
        if let Ok(mut f) = self.change_feed.lock() {
            *f = feed;
        }
    }

    pub fn change_feed(&self) -> ChangeFeed {
        self.change_feed
            .lock()
            .map(|f| *f)
            .unwrap_or(ChangeFeed::Unknown)
    }

    pub fn set_brokers(&self, brokers: Vec<Broker>) {
        if let Ok(mut b) = self.brokers.lock() {
            *b = brokers;
        }
    }

    pub fn brokers(&self) -> Vec<Broker> {
        self.brokers.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Replaces the warning with the same `topic:` prefix, or adds it.
    pub fn set_warning(&self, topic: &str, text: Option<String>) {
        if let Ok(mut w) = self.warnings.lock() {
            w.retain(|existing| !existing.starts_with(topic));
            if let Some(text) = text {
                w.push(format!("{topic}: {text}"));
            }
        }
    }

    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().map(|w| w.clone()).unwrap_or_default()
    }
}
