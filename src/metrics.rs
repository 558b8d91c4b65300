//! Process-wide counters the ingest pipeline and the store update, and `/healthz`, the overview
//! and (later) `/metrics` read. Plain atomics and one small mutex-guarded map: cheap enough to
//! bump on the hot path.

use broker_adapters::detect::Finding;
use broker_adapters::Broker;
use chrono::{DateTime, Utc};
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
    /// Pub/sub messages dropped because this process lagged (then a reconcile runs).
    pub lagged_events: AtomicU64,
    /// The most pushes (keyspace notifications, the read barrier) seen waiting for the
    /// prefetcher when it got to them (its queue holds 65,536; past that they are dropped and
    /// counted in `lagged_events`).
    pub subscriber_backlog_max: AtomicU64,
    /// Redis commands taskscope issued (pipelined commands count one each).
    pub redis_commands: AtomicU64,
    /// Round trips to Redis (a pipeline of up to 512 commands counts once).
    pub redis_round_trips: AtomicU64,
    change_feed: Mutex<ChangeFeed>,
    /// Adapters running, for `/` and `/healthz`.
    brokers: Mutex<Vec<Broker>>,
    /// Warnings worth showing on the overview (e.g. "keyspace notifications are off").
    warnings: Mutex<Vec<String>>,
    /// What `--brokers auto` has found so far.
    detection: Mutex<Detection>,
    /// The last run and next time of each housekeeping job, by job name.
    housekeeping: Mutex<BTreeMap<String, HousekeepingRun>>,
}

/// A housekeeping job's last run (and next time), for `/`, `/healthz` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct HousekeepingRun {
    pub job: String,
    pub started_at: Option<DateTime<Utc>>,
    pub duration_ms: f64,
    pub rows: u64,
    pub detail: String,
    pub error: Option<String>,
    pub next_at: Option<DateTime<Utc>>,
    /// Runs and failed runs by this process.
    pub runs: u64,
    pub failures: u64,
}

impl From<&crate::store::maintenance::RunRecord> for HousekeepingRun {
    fn from(r: &crate::store::maintenance::RunRecord) -> Self {
        HousekeepingRun {
            job: r.job.clone(),
            started_at: Some(r.started_at),
            duration_ms: r.duration_ms,
            rows: r.rows,
            detail: r.detail.clone(),
            error: r.error.clone(),
            next_at: None,
            runs: 0,
            failures: 0,
        }
    }
}

/// How a piece of detection evidence was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A new-key notification (or an empty stream sampled again after one).
    NewKey,
    /// The quick probe of the default layouts.
    Probe,
    /// A full pass over the keyspace.
    Pass,
    /// A message on a broker's pub/sub channel.
    Message,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::NewKey => "new-key",
            Via::Probe => "probe",
            Via::Pass => "pass",
            Via::Message => "message",
        }
    }
}

/// The state of broker auto-detection, for `/healthz` and the overview.
/// Findings `/healthz` lists at most (each queue of a broker is one).
pub const MAX_DETECTION_EVIDENCE: usize = 1_000;

#[derive(Debug, Clone, Default)]
pub struct Detection {
    /// `--brokers auto` is on.
    pub enabled: bool,
    pub passes: u64,
    pub keys_examined: u64,
    /// New-key notifications judged, and those skipped (over the `TYPE` budget).
    pub new_keys: u64,
    pub new_keys_skipped: u64,
    pub last_pass: Option<DateTime<Utc>>,
    /// Evidence, in the order found: broker, the key that showed it, the setting learned (the
    /// first [`MAX_DETECTION_EVIDENCE`]).
    pub found: Vec<DetectedBroker>,
    /// The settings learned, as detection gave them (the actions check them: a namespace or
    /// prefix of the application's own means writes must not go under the default keys).
    pub settings: Vec<broker_adapters::detect::Setting>,
}

/// One piece of detection evidence.
#[derive(Debug, Clone)]
pub struct DetectedBroker {
    pub broker: Broker,
    pub key: String,
    pub setting: Option<String>,
    pub at: DateTime<Utc>,
    pub via: Via,
    /// From the evidence reaching taskscope to the broker's adapter watching (the first
    /// finding of a broker only).
    pub watching_after_ms: Option<f64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            redis_connected: AtomicBool::new(false),
            ingest_events: Mutex::new(BTreeMap::new()),
            decode_errors: Mutex::new(BTreeMap::new()),
            lagged_events: AtomicU64::new(0),
            subscriber_backlog_max: AtomicU64::new(0),
            redis_commands: AtomicU64::new(0),
            redis_round_trips: AtomicU64::new(0),
            change_feed: Mutex::new(ChangeFeed::Unknown),
            brokers: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            detection: Mutex::new(Detection::default()),
            housekeeping: Mutex::new(BTreeMap::new()),
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
    /// `waiting` pushes were seen waiting for the prefetcher at once.
    pub fn saw_subscriber_backlog(&self, waiting: usize) {
        self.subscriber_backlog_max
            .fetch_max(waiting as u64, Ordering::Relaxed);
    }

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

    /// A job ran (`by_this_process`), or at start the previous process's last run was read
    /// back.
    pub fn housekeeping_ran(&self, run: HousekeepingRun, by_this_process: bool) {
        if let Ok(mut map) = self.housekeeping.lock() {
            let entry = map.entry(run.job.clone()).or_default();
            let (runs, failures, next_at) = (entry.runs, entry.failures, entry.next_at);
            let failed = run.error.is_some();
            *entry = run;
            entry.next_at = next_at;
            entry.runs = runs + u64::from(by_this_process);
            entry.failures = failures + u64::from(by_this_process && failed);
        }
    }

    pub fn housekeeping_next(&self, job: &str, at: DateTime<Utc>) {
        if let Ok(mut map) = self.housekeeping.lock() {
            let entry = map.entry(job.to_string()).or_default();
            entry.job = job.to_string();
            entry.next_at = Some(at);
        }
    }

    pub fn housekeeping(&self) -> Vec<HousekeepingRun> {
        self.housekeeping
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Counts Redis commands taskscope issued (pipelined ones one each): called by
    /// `ingest::redis::Redis` only, the one connection type every command goes through.
    pub fn count_redis_commands(&self, n: u64) {
        self.redis_commands.fetch_add(n, Ordering::Relaxed);
        self.count_round_trips(n);
    }

    /// Counts the round trips of `n` commands sent pipelined (one per 512-command chunk).
    pub fn count_round_trips(&self, n: u64) {
        let chunk = crate::ingest::redis::PIPELINE_CHUNK as u64;
        self.redis_round_trips
            .fetch_add(n.div_ceil(chunk), Ordering::Relaxed);
    }

    /// The settings auto-detection learned so far.
    pub fn detected_settings(&self) -> Vec<broker_adapters::detect::Setting> {
        self.detection
            .lock()
            .map(|d| d.settings.clone())
            .unwrap_or_default()
    }

    pub fn enable_detection(&self) {
        if let Ok(mut d) = self.detection.lock() {
            d.enabled = true;
        }
    }

    pub fn detection_pass(&self, keys_examined: u64) {
        if let Ok(mut d) = self.detection.lock() {
            d.passes += 1;
            d.keys_examined += keys_examined;
            d.last_pass = Some(Utc::now());
        }
    }

    pub fn detected(&self, finding: &Finding, via: Via) {
        if let Ok(mut d) = self.detection.lock() {
            if let Some(setting) = &finding.setting {
                if !d.settings.contains(setting) && d.settings.len() < 1_000 {
                    d.settings.push(setting.clone());
                }
            }
            if d.found.len() >= MAX_DETECTION_EVIDENCE {
                // The first findings tell how each broker was found; the rest are its queues.
                return;
            }
            d.found.push(DetectedBroker {
                broker: finding.broker,
                key: finding.key.clone(),
                setting: finding
                    .setting
                    .as_ref()
                    .map(crate::brokers::describe_setting),
                at: Utc::now(),
                via,
                watching_after_ms: None,
            });
        }
    }

    /// A detected broker's adapter is watching, `delay` after its evidence reached taskscope.
    pub fn watching(&self, broker: Broker, key: &str, delay: std::time::Duration) {
        if let Ok(mut d) = self.detection.lock() {
            if let Some(f) = d
                .found
                .iter_mut()
                .find(|f| f.broker == broker && f.key == key)
            {
                f.watching_after_ms = Some(delay.as_secs_f64() * 1e3);
            }
        }
    }

    pub fn detection_hints(&self, n: u64) {
        if let Ok(mut d) = self.detection.lock() {
            d.new_keys += n;
        }
    }

    pub fn detection_hint_skipped(&self) {
        if let Ok(mut d) = self.detection.lock() {
            d.new_keys_skipped += 1;
        }
    }

    pub fn detection(&self) -> Detection {
        self.detection.lock().map(|d| d.clone()).unwrap_or_default()
    }
}
