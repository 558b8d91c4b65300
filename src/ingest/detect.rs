//! `--brokers auto`: finds which brokers live in the watched Redis and tells the pipeline,
//! which starts their adapters. It reacts to keys as Redis creates them, and passes over the
//! keyspace as a safety net.
//!
//! Three sources of evidence, fastest first:
//! 1. **new keys**, as they are created: the subscriber forwards Redis 7's new-key key events
//!    (`__keyevent@*__:new`, class `n`, which `A` does not include) here, and each name is judged
//!    at once (each broker's rules, [`broker_adapters::detect::KeyRuleSet`]): a broker's first key (kombu's
//!    `_kombu.binding.celery`, Dramatiq's `__heartbeats__`, RQ's `rq:queues`...) starts its
//!    adapter within milliseconds. A name that says nothing is typed (`TYPE`, pipelined per
//!    batch, at most [`TYPE_PROBES_PER_SECOND`]) and a stream or list has one entry sampled; a
//!    family of keys ([`broker_adapters::detect::key_shape`]) that is not a queue
//!    [`MISSES_TO_REJECT`] times is not typed again, so a cache writing a million keys costs a
//!    few reads. An empty stream (a consumer group made with `MKSTREAM` before any message) is
//!    sampled again every [`PENDING_REPROBE`] until its first entry. Celery result keys created
//!    in *another* database show where the result backend lives
//!    ([`Setting::CeleryResultDb`]).
//! 2. **a quick probe** every [`QUICK_PROBE_EVERY`] while no broker is watched (one pipelined
//!    round trip of `EXISTS` on the default layouts' keys): the same reaction where keyspace
//!    notifications are unavailable.
//! 3. **a full pass** at start and every `--detect-every`, bounded and never blocking Redis:
//!    the quick probe; three resumable SCANs (`COUNT` [`SCAN_COUNT`], at most `pages_per_pass`
//!    pages each: all names, `TYPE stream`, `TYPE list`), one entry of each unknown stream or
//!    list sampled; a prefix (`GETRANGE 0 4095`) of a few keys named like taskiq task ids; and
//!    `INFO keyspace` with a bounded SCAN of every other database holding keys, for Celery
//!    results kept there. A cursor left mid-keyspace is resumed by the next pass.
//!
//! The classification is pure and lives in the adapters crate; this module only does the I/O.

use super::redis;
use crate::metrics::{Metrics, Via};
use broker_adapters::bounded::{FifoMap, FifoSet};
use broker_adapters::detect::{self, Finding, KeyVerdict, Setting};
use broker_adapters::{Broker, ReadRequest, Reply};
use fred::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

/// Keys asked for per SCAN page.
const SCAN_COUNT: u32 = 1_000;
/// Keys whose sample was read, remembered so they are read once (the oldest forgotten first).
const SAMPLED_MEMORY: usize = 100_000;
/// Findings (broker and setting) remembered as reported.
const REPORTED_MEMORY: usize = 10_000;
/// Keys named like taskiq task ids whose value prefix is read per pass.
const RESULT_SAMPLES_PER_PASS: usize = 16;
/// Bytes read of a candidate taskiq result.
const RESULT_PREFIX_BYTES: i64 = 4_095;
/// The quick probe's period while no broker is watched.
pub const QUICK_PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often streams seen empty are sampled again.
pub const PENDING_REPROBE: Duration = Duration::from_millis(250);
/// How long an empty stream is sampled again before it is left to the full passes.
const PENDING_FOR: Duration = Duration::from_secs(600);
/// Empty streams sampled again at most (the oldest is dropped first).
const PENDING_CAPACITY: usize = 64;
/// Unknown new keys typed per second at most; the rest are left to the full passes.
pub const TYPE_PROBES_PER_SECOND: u32 = 500;
/// A key family that was not a queue this many times is not typed again.
pub const MISSES_TO_REJECT: u8 = 3;
/// Key families remembered (the oldest forgotten first).
const SHAPES_MEMORY: usize = 10_000;
/// New-key notifications handled per batch.
const HINT_BATCH: usize = 4_096;
/// New-key notifications per second (averaged over [`RATE_WINDOW`]) above which listening to
/// them costs Redis more than it is worth: a cache writing keys at this rate pays a notification
/// per key. Listening pauses for [`PAUSE_FOR`]; the quick probe and the passes go on.
pub const NEW_KEY_RATE_CAP: u64 = 1_000;
const RATE_WINDOW: Duration = Duration::from_secs(10);
pub const PAUSE_FOR: Duration = Duration::from_secs(600);
/// Other databases looked into per pass, and SCAN pages per database.
const OTHER_DBS_PER_PASS: usize = 16;
const OTHER_DB_PAGES: usize = 10;

/// A key Redis just created (`__keyevent@<db>__:new`), forwarded by the subscriber.
#[derive(Debug)]
pub struct NewKey {
    pub db: u32,
    pub key: String,
    /// When the notification reached taskscope.
    pub at: Instant,
}

/// A finding, with when its evidence reached taskscope and by which way.
#[derive(Debug)]
pub struct Detected {
    pub finding: Finding,
    pub seen: Instant,
    pub via: Via,
}

/// What detection needs to know.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    pub every: Duration,
    /// SCAN pages per kind of scan per pass (each page is one non-blocking `SCAN`).
    pub pages_per_pass: usize,
    /// Every registered broker's key rules (configured: Dramatiq's namespace to probe first,
    /// RQ's prefix to recognise besides the default `rq:`...).
    pub rules: Arc<detect::KeyRuleSet>,
    /// The watched Redis (other databases of it are looked into for Celery results).
    pub redis_url: String,
    pub db: u32,
}

/// The kinds of resumable scans a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    Names,
    Streams,
    Lists,
}

impl ScanKind {
    const ALL: [ScanKind; 3] = [ScanKind::Names, ScanKind::Streams, ScanKind::Lists];

    fn key_type(self) -> Option<&'static str> {
        match self {
            ScanKind::Names => None,
            ScanKind::Streams => Some("stream"),
            ScanKind::Lists => Some("list"),
        }
    }
}

/// What one sampled stream or list showed.
enum Sample {
    Broker(Finding),
    /// Nothing to judge yet (an empty stream).
    Empty,
    /// Entries that belong to no broker.
    Other,
}

/// The outcome of one pass, for logs and `/healthz`.
#[derive(Debug, Default)]
pub struct PassSummary {
    /// Findings not reported before.
    pub findings: Vec<Finding>,
    pub keys_examined: u64,
    /// Every scan has gone once through the whole keyspace since start.
    pub covered_keyspace: bool,
}

/// Detection state kept across passes and notifications.
pub struct Detector {
    client: redis::Redis,
    opts: DetectOptions,
    cursors: [u64; 3],
    /// Whether each scan has wrapped around at least once.
    wrapped: [bool; 3],
    sampled: FifoSet<String>,
    /// Bounded (queue names come from producers); one forgotten and found again is handed
    /// to its adapter again, which already has it.
    reported: FifoSet<(Broker, Option<Setting>)>,
    /// Key families and how often one of them turned out not to be a queue.
    shapes: FifoMap<String, u8>,
    /// Streams seen empty, sampled again until their first entry, with when they were seen.
    pending: FifoMap<String, Instant>,
    /// The current second of `TYPE` probes and how many were spent in it.
    type_window: (Instant, u32),
    /// Databases whose Celery results were found (reported once each).
    result_dbs: HashSet<u32>,
    /// Pairs pushes on lists nobody classified with taskiq results (idle list workers).
    lists: detect::ListCorrelator,
}

impl Detector {
    pub fn new(client: redis::Redis, opts: DetectOptions) -> Detector {
        Detector {
            client,
            opts,
            cursors: [0; 3],
            wrapped: [false; 3],
            sampled: FifoSet::new(SAMPLED_MEMORY),
            reported: FifoSet::new(REPORTED_MEMORY),
            shapes: FifoMap::new(SHAPES_MEMORY),
            pending: FifoMap::new(PENDING_CAPACITY),
            type_window: (Instant::now(), 0),
            result_dbs: HashSet::new(),
            lists: detect::ListCorrelator::default(),
        }
    }

    /// Keeps the findings not reported before.
    fn fresh(&mut self, found: Vec<Finding>) -> Vec<Finding> {
        found.into_iter().filter(|f| self.first_report(f)).collect()
    }

    /// Whether `finding` (its broker and setting) is reported for the first time.
    fn first_report(&mut self, finding: &Finding) -> bool {
        self.reported
            .insert((finding.broker, finding.setting.clone()))
    }

    /// One bounded pass; findings already reported are left out.
    pub async fn pass(&mut self) -> anyhow::Result<PassSummary> {
        let mut summary = PassSummary::default();
        let mut found = self.probe_well_known().await?;
        let mut result_candidates = Vec::new();
        for (index, kind) in ScanKind::ALL.into_iter().enumerate() {
            let mut to_sample = Vec::new();
            for _ in 0..self.opts.pages_per_pass {
                let (next, keys) = self
                    .client
                    .scan_page_of_type(self.cursors[index], "*", kind.key_type(), SCAN_COUNT)
                    .await?;
                summary.keys_examined += keys.len() as u64;
                for key in keys {
                    match self.opts.rules.classify_key(&key) {
                        KeyVerdict::Broker(finding) => found.push(finding),
                        KeyVerdict::MaybeTaskiqResult
                            if kind == ScanKind::Names
                                && result_candidates.len() < RESULT_SAMPLES_PER_PASS
                                && !self.sampled.contains(&key) =>
                        {
                            result_candidates.push(key);
                        }
                        KeyVerdict::SampleIfStreamOrList | KeyVerdict::MaybeTaskiqResult
                            if kind != ScanKind::Names && !self.sampled.contains(&key) =>
                        {
                            to_sample.push(key);
                        }
                        _ => {}
                    }
                }
                self.cursors[index] = next;
                if next == 0 {
                    self.wrapped[index] = true;
                    break;
                }
            }
            let samples = self.sample_queues(kind, to_sample).await?;
            found.extend(samples.into_iter().filter_map(|(_, s)| match s {
                Sample::Broker(f) => Some(f),
                _ => None,
            }));
        }
        let results = self.sample_results(result_candidates).await?;
        found.extend(results.into_iter().filter_map(|(_, f)| f));
        match self.scan_other_databases().await {
            Ok(more) => found.extend(more),
            Err(e) => debug!(error = %e, "Could not look into the other databases."),
        }
        summary.covered_keyspace = self.wrapped.iter().all(|w| *w);
        summary.findings = self.fresh(found);
        Ok(summary)
    }

    /// The quick probe: the default layouts' keys in one round trip.
    pub async fn quick(&mut self) -> anyhow::Result<Vec<Finding>> {
        let found = self.probe_well_known().await?;
        Ok(self.fresh(found))
    }

    /// Judges keys Redis just created (see the module doc): names first, then one pipelined
    /// `TYPE` of the unknown ones and a sample of each stream or list among them.
    pub async fn on_new_keys(
        &mut self,
        keys: Vec<NewKey>,
        metrics: &Metrics,
    ) -> anyhow::Result<Vec<(Finding, Instant)>> {
        let mut found: Vec<(Finding, Instant)> = Vec::new();
        let mut to_type: Vec<(String, Instant)> = Vec::new();
        let mut results: Vec<(String, Instant)> = Vec::new();
        let mut batch_keys = HashSet::new();
        for NewKey { db, key, at } in keys {
            if db != self.opts.db {
                if detect::is_celery_result_key(&key) && !self.result_dbs.contains(&db) {
                    if let Some(finding) = self.result_db_finding(db, &key) {
                        found.push((finding, at));
                    }
                }
                continue;
            }
            if !batch_keys.insert(key.clone()) {
                continue;
            }
            match self.opts.rules.classify_key(&key) {
                KeyVerdict::Broker(finding) => found.push((finding, at)),
                KeyVerdict::MaybeTaskiqResult => {
                    // A result under a prefix already known to be taskiq's needs no read: it
                    // only says that a task just finished (which may give a list queue away).
                    let known = detect::taskiq_result_prefix_of(&key).is_some_and(|p| {
                        self.reported
                            .contains(&(Broker::Taskiq, Some(Setting::TaskiqResultPrefix(p))))
                    });
                    if known {
                        found.extend(self.taskiq_result_written(at));
                    } else if !self.rejected(&key) {
                        results.push((key, at));
                    }
                }
                KeyVerdict::SampleIfStreamOrList if !self.rejected(&key) => {
                    if self.may_type() {
                        to_type.push((key, at));
                    } else {
                        metrics.detection_hint_skipped();
                    }
                }
                _ => {}
            }
        }
        if !to_type.is_empty() {
            let commands = to_type
                .iter()
                .map(|(k, _)| ("TYPE", vec![Value::from(k.clone())]))
                .collect();
            let types = self.client.commands(commands).await?;
            let mut streams = Vec::new();
            let mut lists = Vec::new();
            let mut seen_at = HashMap::new();
            for ((key, at), kind) in to_type.into_iter().zip(types) {
                match kind.as_bytes() {
                    Some(b"stream") => streams.push(key.clone()),
                    Some(b"list") => lists.push(key.clone()),
                    // Gone already (a list popped inside its push, a short-lived key): nothing
                    // to judge, and no evidence against its family either.
                    // A list an idle worker emptied inside its push looks like this: timing
                    // may still give it away ([`detect::ListCorrelator`]).
                    Some(b"none") => self.lists.on_push(&key, chrono::Utc::now()),
                    _ => self.miss(&key),
                }
                seen_at.insert(key, at);
            }
            for (kind, keys) in [(ScanKind::Streams, streams), (ScanKind::Lists, lists)] {
                for (key, sample) in self.sample_queues(kind, keys).await? {
                    let at = seen_at.get(&key).copied().unwrap_or_else(Instant::now);
                    // Classified by its content from now on, not by timing.
                    if !matches!(sample, Sample::Empty) {
                        self.lists.forget(&key);
                    }
                    match sample {
                        Sample::Broker(f) => found.push((f, at)),
                        Sample::Empty if kind == ScanKind::Streams => self.pend(key, at),
                        Sample::Empty => {}
                        Sample::Other => self.miss(&key),
                    }
                }
            }
        }
        if !results.is_empty() {
            let seen_at: HashMap<String, Instant> = results.iter().cloned().collect();
            let keys = results.into_iter().map(|(k, _)| k).collect();
            for (key, finding) in self.sample_results(keys).await? {
                let at = seen_at.get(&key).copied().unwrap_or_else(Instant::now);
                match finding {
                    Some(f) => {
                        found.push((f, at));
                        found.extend(self.taskiq_result_written(at));
                    }
                    None => self.miss(&key),
                }
            }
        }
        Ok(found
            .into_iter()
            .filter(|(f, _)| self.first_report(f))
            .collect())
    }

    /// Samples the streams seen empty again; the ones with an entry are judged and dropped.
    pub async fn reprobe_pending(&mut self) -> anyhow::Result<Vec<(Finding, Instant)>> {
        self.pending.retain(|_, at| at.elapsed() <= PENDING_FOR);
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = self.pending.iter().map(|(k, _)| k.clone()).collect();
        let samples = self.sample_queues(ScanKind::Streams, keys).await?;
        let mut found = Vec::new();
        for (key, sample) in samples {
            match sample {
                Sample::Empty => continue,
                Sample::Broker(f) => found.push(f),
                Sample::Other => self.miss(&key),
            }
            self.pending.remove(&key);
        }
        Ok(self
            .fresh(found)
            .into_iter()
            .map(|f| (f, Instant::now()))
            .collect())
    }

    fn pend(&mut self, key: String, at: Instant) {
        if !self.pending.contains_key(&key) {
            self.pending.insert(key, at);
        }
    }

    /// A taskiq result was just written: a list an idle worker empties inside every push is
    /// found when its pushes keep coming right before results.
    fn taskiq_result_written(&mut self, at: Instant) -> Option<(Finding, Instant)> {
        let list = self.lists.on_taskiq_result(chrono::Utc::now())?;
        info!(list = %list, "Pushes on this list keep being followed by taskiq results: watching it as a taskiq list queue.");
        let setting = Setting::TaskiqList(list.clone());
        Some((
            Finding {
                broker: Broker::Taskiq,
                key: list,
                setting: Some(setting),
            },
            at,
        ))
    }

    /// Whether this key's family was not a queue often enough to stop looking at it.
    fn rejected(&self, key: &str) -> bool {
        self.shapes
            .get(&family(key))
            .is_some_and(|misses| *misses >= MISSES_TO_REJECT)
    }

    fn miss(&mut self, key: &str) {
        let misses = self.shapes.get_or_insert_with(family(key), u8::default);
        *misses = misses.saturating_add(1);
    }

    /// Spends one of this second's `TYPE` probes, if any is left.
    fn may_type(&mut self) -> bool {
        let (start, spent) = &mut self.type_window;
        if start.elapsed() >= Duration::from_secs(1) {
            *start = Instant::now();
            *spent = 0;
        }
        *spent += 1;
        *spent <= TYPE_PROBES_PER_SECOND
    }

    fn result_db_finding(&mut self, db: u32, key: &str) -> Option<Finding> {
        let url = match redis::url_with_db(&self.opts.redis_url, db) {
            Ok(url) => url,
            Err(e) => {
                debug!(error = %e, db, "Cannot name another database of this Redis.");
                return None;
            }
        };
        self.result_dbs.insert(db);
        Some(Finding {
            broker: Broker::Celery,
            key: format!("db{db}:{key}"),
            setting: Some(Setting::CeleryResultDb { db, url }),
        })
    }

    /// The default layouts, in one round trip: `EXISTS` of each broker's well-known keys, and
    /// `TYPE` of the default queue names (sampled when they are lists or streams).
    async fn probe_well_known(&mut self) -> anyhow::Result<Vec<Finding>> {
        let rules = self.opts.rules.clone();
        let keys = rules.well_known_keys();
        let queues = rules.well_known_queues();
        let mut commands: Vec<(&'static str, Vec<Value>)> = keys
            .iter()
            .map(|(k, _)| ("EXISTS", vec![Value::from(k.clone())]))
            .collect();
        commands.extend(
            queues
                .iter()
                .map(|q| ("TYPE", vec![Value::from(q.clone())])),
        );
        let replies = self.client.commands(commands).await?;
        let (exists, types) = replies.split_at(keys.len().min(replies.len()));
        let mut found: Vec<Finding> = keys
            .iter()
            .zip(exists)
            .filter(|(_, reply)| reply.as_i64() == Some(1))
            .filter_map(|((key, rules), _)| match rules.classify(key) {
                Some(KeyVerdict::Broker(finding)) => Some(finding),
                _ => None,
            })
            .collect();
        for (queue, reply) in queues.iter().zip(types) {
            let kind = match reply.as_bytes() {
                Some(b"stream") => ScanKind::Streams,
                Some(b"list") => ScanKind::Lists,
                _ => continue,
            };
            // Default queue names are sampled at every pass: they are few and may hold a
            // different broker's messages later.
            self.sampled.remove(queue);
            let samples = self.sample_queues(kind, vec![queue.to_string()]).await?;
            found.extend(samples.into_iter().filter_map(|(_, s)| match s {
                Sample::Broker(f) => Some(f),
                _ => None,
            }));
        }
        Ok(found)
    }

    /// Reads one entry of each stream or list (the oldest) and judges it.
    async fn sample_queues(
        &mut self,
        kind: ScanKind,
        keys: Vec<String>,
    ) -> anyhow::Result<Vec<(String, Sample)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Bounded reads: an entry over `--max-payload-bytes` comes back as its length only.
        let reads: Vec<ReadRequest> = keys
            .iter()
            .map(|k| match kind {
                ScanKind::Streams => ReadRequest::XRange {
                    key: k.clone(),
                    start: "-".into(),
                    end: "+".into(),
                    count: 1,
                },
                _ => ReadRequest::LRange {
                    key: k.clone(),
                    start: -1,
                    stop: -1,
                },
            })
            .collect();
        let replies = self.client.reads(&reads).await?;
        let stream = kind == ScanKind::Streams;
        let mut samples = Vec::new();
        for (key, reply) in keys.into_iter().zip(replies) {
            let entries: Vec<Vec<u8>> = if stream {
                // [[id, [field, value, ...]]]: every field value is a candidate message.
                reply
                    .into_items()
                    .into_iter()
                    .flat_map(|entry| entry.into_items().into_iter().nth(1))
                    .flat_map(|fields| fields.into_pairs())
                    .filter_map(|(_, v)| v.as_bytes().map(<[u8]>::to_vec))
                    .collect()
            } else {
                reply
                    .into_items()
                    .into_iter()
                    .filter_map(|v| match v {
                        Reply::Bytes(b) => Some(b),
                        _ => None,
                    })
                    .collect()
            };
            let sample = match entries
                .iter()
                .find_map(|e| detect::classify_message(&key, e, stream))
            {
                Some(finding) => Sample::Broker(finding),
                None if entries.is_empty() => Sample::Empty,
                None => Sample::Other,
            };
            // An empty stream (a consumer group made it with MKSTREAM) is judged again later.
            if !entries.is_empty() {
                self.remember(key.clone());
            }
            samples.push((key, sample));
        }
        Ok(samples)
    }

    /// Reads a prefix of keys named like taskiq task ids: a taskiq result shows the broker even
    /// when its queues are empty.
    async fn sample_results(
        &mut self,
        keys: Vec<String>,
    ) -> anyhow::Result<Vec<(String, Option<Finding>)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let commands = keys
            .iter()
            .map(|k| {
                (
                    "GETRANGE",
                    vec![
                        Value::from(k.clone()),
                        Value::from(0),
                        Value::from(RESULT_PREFIX_BYTES),
                    ],
                )
            })
            .collect();
        let replies = self.client.commands(commands).await?;
        let mut judged = Vec::new();
        for (key, reply) in keys.into_iter().zip(replies) {
            // A WRONGTYPE error (a hash, a set...) simply is not a result.
            let finding = reply
                .as_bytes()
                .is_some_and(detect::is_taskiq_result)
                .then(|| Finding {
                    broker: Broker::Taskiq,
                    key: key.clone(),
                    setting: detect::taskiq_result_prefix_of(&key).map(Setting::TaskiqResultPrefix),
                });
            self.remember(key.clone());
            judged.push((key, finding));
        }
        Ok(judged)
    }

    /// `INFO keyspace`, then a bounded SCAN for Celery result keys in every other database that
    /// holds keys (`result_backend = redis://.../1` is the most common Celery setup). Finds
    /// results written while taskscope was down; new ones are seen as they are created.
    async fn scan_other_databases(&mut self) -> anyhow::Result<Vec<Finding>> {
        let info = self.client.info_keyspace().await?;
        let dbs: Vec<u32> = parse_keyspace_dbs(&info)
            .into_iter()
            .filter(|db| *db != self.opts.db && !self.result_dbs.contains(db))
            .take(OTHER_DBS_PER_PASS)
            .collect();
        let mut found = Vec::new();
        for db in dbs {
            let url = redis::url_with_db(&self.opts.redis_url, db)?;
            let client = self.client.sibling(redis::builder(&url)?.build()?);
            let connected =
                tokio::time::timeout(Duration::from_secs(5), client.client().init()).await;
            if !matches!(connected, Ok(Ok(_))) {
                let _ = client.client().quit().await;
                continue;
            }
            let mut cursor = 0;
            for _ in 0..OTHER_DB_PAGES {
                let (next, keys) = client
                    .scan_page_of_type(cursor, "celery-task-*", None, SCAN_COUNT)
                    .await?;
                if let Some(key) = keys.iter().find(|k| detect::is_celery_result_key(k)) {
                    found.extend(self.result_db_finding(db, key));
                    break;
                }
                cursor = next;
                if next == 0 {
                    break;
                }
            }
            let _ = client.client().quit().await;
        }
        Ok(found)
    }

    fn remember(&mut self, key: String) {
        self.sampled.insert(key);
    }
}

/// The family of a key for the detector's memory of misses: keys named like result keys under
/// one prefix are one family (`results:<id>`), others go by [`detect::key_shape`].
fn family(key: &str) -> String {
    match detect::taskiq_result_prefix_of(key) {
        Some(prefix) => format!("{prefix}:<task id>"),
        None => detect::key_shape(key).to_string(),
    }
}

/// The database numbers `INFO keyspace` lists (`db1:keys=5,expires=0,avg_ttl=0`).
fn parse_keyspace_dbs(info: &str) -> Vec<u32> {
    info.lines()
        .filter_map(|line| line.strip_prefix("db")?.split_once(':'))
        .filter_map(|(n, _)| n.parse().ok())
        .collect()
}

/// Whether new-key notifications are worth listening to: while a broker is not watched yet,
/// unless they arrive faster than [`NEW_KEY_RATE_CAP`] (then not for [`PAUSE_FOR`]).
struct ListenPolicy {
    window_start: Instant,
    in_window: u64,
    paused_until: Option<Instant>,
}

impl ListenPolicy {
    fn new(now: Instant) -> ListenPolicy {
        ListenPolicy {
            window_start: now,
            in_window: 0,
            paused_until: None,
        }
    }

    fn count(&mut self, n: u64) {
        self.in_window += n;
    }

    /// Whether to listen now; `all_watched`: every broker this build knows has its adapter.
    fn listen(&mut self, all_watched: bool, now: Instant) -> bool {
        let window = now.duration_since(self.window_start);
        if window >= RATE_WINDOW {
            let rate = self.in_window * 1_000 / (window.as_millis().max(1) as u64);
            if rate > NEW_KEY_RATE_CAP && self.paused_until.is_none() {
                warn!(per_second = rate, cap = NEW_KEY_RATE_CAP, pause = ?PAUSE_FOR, "New keys are created too fast for detection to react to each one at a fair cost to Redis; pausing that (the quick probe and the passes go on).");
                self.paused_until = Some(now + PAUSE_FOR);
            }
            self.window_start = now;
            self.in_window = 0;
        }
        if self.paused_until.is_some_and(|until| now >= until) {
            info!("Reacting to new keys again.");
            self.paused_until = None;
        }
        !all_watched && self.paused_until.is_none()
    }
}

/// The detector's task: passes, quick probes and new-key notifications until shutdown,
/// sending new findings to the pipeline, and telling it (`listen`) whether new-key
/// notifications are wanted ([`ListenPolicy`]).
pub fn spawn(
    client: redis::Redis,
    opts: DetectOptions,
    mut hints: mpsc::Receiver<NewKey>,
    findings: mpsc::Sender<Detected>,
    listen: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = opts.every;
        let brokers = opts.rules.brokers();
        let mut detector = Detector::new(client, opts);
        let mut logged_empty = false;
        let mut policy = ListenPolicy::new(Instant::now());
        let mut next_pass = tokio::time::Instant::now();
        let mut quick = tokio::time::interval(QUICK_PROBE_EVERY);
        let mut reprobe = tokio::time::interval(PENDING_REPROBE);
        for t in [&mut quick, &mut reprobe] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let send = |found: Vec<(Finding, Instant)>, via: Via| {
            let findings = findings.clone();
            let metrics = metrics.clone();
            async move {
                for (finding, seen) in found {
                    info!(broker = %finding.broker, key = %finding.key, setting = ?finding.setting, via = via.as_str(), "Detected a broker in Redis.");
                    metrics.detected(&finding, via);
                    if findings
                        .send(Detected { finding, seen, via })
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                true
            }
        };
        loop {
            let watched = metrics.brokers();
            let none_watched = watched.is_empty();
            let all_watched = brokers.iter().all(|b| watched.contains(b));
            let wanted = policy.listen(all_watched, Instant::now());
            listen.send_if_modified(|on| std::mem::replace(on, wanted) != wanted);
            let sent = tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                Some(first) = hints.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < HINT_BATCH {
                        match hints.try_recv() {
                            Ok(hint) => batch.push(hint),
                            Err(_) => break,
                        }
                    }
                    metrics.detection_hints(batch.len() as u64);
                    policy.count(batch.len() as u64);
                    match detector.on_new_keys(batch, &metrics).instrument(info_span!("detect_new_keys")).await {
                        Ok(found) => send(found, Via::NewKey).await,
                        Err(e) => {
                            debug!(error = %e, "Could not judge new keys; the next pass will.");
                            true
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_pass) => {
                    next_pass = tokio::time::Instant::now() + every;
                    let started = Instant::now();
                    match detector.pass().instrument(info_span!("detect_pass")).await {
                        Ok(summary) => {
                            metrics.detection_pass(summary.keys_examined);
                            debug!(keys = summary.keys_examined, took = ?started.elapsed(), found = summary.findings.len(), "Detection pass done.");
                            let none_yet = metrics.brokers().is_empty()
                                && metrics.detection().found.is_empty()
                                && summary.findings.is_empty();
                            if none_yet && summary.covered_keyspace && !logged_empty {
                                logged_empty = true;
                                info!(every = ?every, "No task broker found in this Redis yet; watching for its first key.");
                            }
                            metrics.set_warning(
                                "detection",
                                (none_yet && summary.covered_keyspace).then(|| format!(
                                    "no {} keys found in this Redis yet; taskscope watches for new keys and looks again every {}. Pass --brokers to watch one anyway.",
                                    crate::brokers::names_for_humans(),
                                    humantime::format_duration(every)
                                )),
                            );
                            let found = summary.findings.into_iter().map(|f| (f, started)).collect();
                            send(found, Via::Pass).await
                        }
                        Err(e) => {
                            warn!(error = %e, "Broker detection pass failed; retrying next time.");
                            true
                        }
                    }
                }
                _ = quick.tick(), if none_watched => {
                    let started = Instant::now();
                    match detector.quick().await {
                        Ok(found) => send(found.into_iter().map(|f| (f, started)).collect(), Via::Probe).await,
                        Err(e) => {
                            debug!(error = %e, "Quick detection probe failed.");
                            true
                        }
                    }
                }
                _ = reprobe.tick() => {
                    match detector.reprobe_pending().await {
                        Ok(found) => send(found, Via::NewKey).await,
                        Err(e) => {
                            debug!(error = %e, "Could not sample the empty streams again.");
                            true
                        }
                    }
                }
            };
            if !sent {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_stops_when_every_broker_is_watched_or_keys_come_too_fast() {
        let t0 = Instant::now();
        let mut policy = ListenPolicy::new(t0);
        assert!(policy.listen(false, t0));
        assert!(!policy.listen(true, t0), "nothing left to find");
        // A cache creating 5,000 keys a second for a whole window.
        policy.count(5_000 * RATE_WINDOW.as_secs());
        assert!(!policy.listen(false, t0 + RATE_WINDOW), "paused");
        assert!(!policy.listen(false, t0 + RATE_WINDOW * 2), "still paused");
        assert!(
            policy.listen(false, t0 + RATE_WINDOW + PAUSE_FOR),
            "resumed"
        );
        // A slow trickle never pauses it.
        policy.count(RATE_WINDOW.as_secs() * NEW_KEY_RATE_CAP / 2);
        assert!(policy.listen(false, t0 + RATE_WINDOW * 2 + PAUSE_FOR));
    }

    #[test]
    fn result_keys_under_one_prefix_are_one_family() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(family(&format!("results:{id}")), "results:<task id>");
        assert_eq!(family(id), ":<task id>");
        assert_eq!(family("cache:user:42"), "cache:user:");
    }

    #[test]
    fn keyspace_info_lists_databases() {
        let info =
            "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\ndb12:keys=1,expires=1,avg_ttl=5\r\n";
        assert_eq!(parse_keyspace_dbs(info), vec![0, 12]);
        assert!(parse_keyspace_dbs("# Keyspace\r\n").is_empty());
    }
}
