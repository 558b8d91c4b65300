//! `--brokers auto`: finds which brokers live in the watched Redis, on start and every
//! `--detect-every`, and tells the pipeline, which starts their adapters.
//!
//! Each pass is bounded and never blocks Redis:
//! 1. one pipelined round trip of `EXISTS` on the keys each broker writes in its default layout
//!    (and `TYPE` + one sample of the default queue names), which finds the common case in a
//!    Redis of any size;
//! 2. three resumable SCANs (`COUNT` [`SCAN_COUNT`], at most `pages_per_pass` pages each): all
//!    names (judged by [`broker_adapters::detect::classify_key`]), `TYPE stream` and `TYPE list`
//!    (one entry of each unknown one sampled: taskiq messages have any queue name);
//! 3. a prefix (`GETRANGE 0 4095`) of a few keys named like taskiq task ids, for result keys.
//!
//! A cursor left mid-keyspace is resumed by the next pass, so a huge keyspace is covered over
//! several passes at a bounded cost each. The classification is pure and lives in the adapters
//! crate; this module only does the I/O.

use super::redis;
use crate::metrics::Metrics;
use broker_adapters::detect::{self, Finding, KeyVerdict, Setting};
use broker_adapters::{Broker, Reply};
use fred::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

/// Keys asked for per SCAN page.
const SCAN_COUNT: u32 = 1_000;
/// Keys whose sample was read, remembered so they are read once; cleared when this full.
const SAMPLED_MEMORY: usize = 100_000;
/// Keys named like taskiq task ids whose value prefix is read per pass.
const RESULT_SAMPLES_PER_PASS: usize = 16;
/// Bytes read of a candidate taskiq result.
const RESULT_PREFIX_BYTES: i64 = 4_095;

/// What detection needs to know.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    pub every: Duration,
    /// SCAN pages per kind of scan per pass (each page is one non-blocking `SCAN`).
    pub pages_per_pass: usize,
    /// Dramatiq namespace to probe first (the configured one, or `dramatiq`).
    pub dramatiq_namespace: String,
    /// RQ key prefix to recognise (besides the default `rq:`).
    pub rq_prefix: String,
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

/// The outcome of one pass, for logs and `/healthz`.
#[derive(Debug, Default)]
pub struct PassSummary {
    /// Findings not reported before.
    pub findings: Vec<Finding>,
    pub keys_examined: u64,
    /// Every scan has gone once through the whole keyspace since start.
    pub covered_keyspace: bool,
}

/// Detection state kept across passes.
pub struct Detector {
    client: Client,
    opts: DetectOptions,
    cursors: [u64; 3],
    /// Whether each scan has wrapped around at least once.
    wrapped: [bool; 3],
    sampled: HashSet<String>,
    reported: HashSet<(Broker, Option<Setting>)>,
}

impl Detector {
    pub fn new(client: Client, opts: DetectOptions) -> Detector {
        Detector {
            client,
            opts,
            cursors: [0; 3],
            wrapped: [false; 3],
            sampled: HashSet::new(),
            reported: HashSet::new(),
        }
    }

    fn rq_prefixes(&self) -> Vec<String> {
        let mut prefixes = vec!["rq:".to_string()];
        if self.opts.rq_prefix != "rq:" && !self.opts.rq_prefix.is_empty() {
            prefixes.push(self.opts.rq_prefix.clone());
        }
        prefixes
    }

    /// One bounded pass; findings already reported by an earlier pass are left out.
    pub async fn pass(&mut self, metrics: &Metrics) -> anyhow::Result<PassSummary> {
        let mut summary = PassSummary::default();
        let mut found = self.probe_well_known(metrics).await?;
        let prefixes = self.rq_prefixes();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let mut result_candidates = Vec::new();
        for (index, kind) in ScanKind::ALL.into_iter().enumerate() {
            let mut to_sample = Vec::new();
            for _ in 0..self.opts.pages_per_pass {
                metrics.count_redis_commands(1);
                let (next, keys) = redis::scan_page_of_type(
                    &self.client,
                    self.cursors[index],
                    "*",
                    kind.key_type(),
                    SCAN_COUNT,
                )
                .await?;
                summary.keys_examined += keys.len() as u64;
                for key in keys {
                    match detect::classify_key(&key, &prefixes) {
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
            found.extend(self.sample_queues(kind, to_sample, metrics).await?);
        }
        found.extend(self.sample_results(result_candidates, metrics).await?);
        summary.covered_keyspace = self.wrapped.iter().all(|w| *w);
        for finding in found {
            if self
                .reported
                .insert((finding.broker, finding.setting.clone()))
            {
                summary.findings.push(finding);
            }
        }
        Ok(summary)
    }

    /// The default layouts, in one round trip: `EXISTS` of each broker's well-known keys, and
    /// `TYPE` of the default queue names (sampled when they are lists or streams).
    async fn probe_well_known(&mut self, metrics: &Metrics) -> anyhow::Result<Vec<Finding>> {
        let prefix = self.rq_prefixes().pop().unwrap_or_else(|| "rq:".into());
        let keys = detect::well_known_keys(&self.opts.dramatiq_namespace, &prefix);
        let mut commands: Vec<(&'static str, Vec<Value>)> = keys
            .iter()
            .map(|k| ("EXISTS", vec![Value::from(k.clone())]))
            .collect();
        commands.extend(
            detect::WELL_KNOWN_QUEUES
                .iter()
                .map(|q| ("TYPE", vec![Value::from(*q)])),
        );
        metrics.count_redis_commands(commands.len() as u64);
        let replies = redis::run_commands(&self.client, commands).await?;
        let (exists, types) = replies.split_at(keys.len().min(replies.len()));
        let prefixes = self.rq_prefixes();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let mut found: Vec<Finding> = keys
            .iter()
            .zip(exists)
            .filter(|(_, reply)| reply.as_i64() == Some(1))
            .filter_map(|(key, _)| match detect::classify_key(key, &prefixes) {
                KeyVerdict::Broker(finding) => Some(finding),
                _ => None,
            })
            .collect();
        for (queue, reply) in detect::WELL_KNOWN_QUEUES.iter().zip(types) {
            let kind = match reply.as_bytes() {
                Some(b"stream") => ScanKind::Streams,
                Some(b"list") => ScanKind::Lists,
                _ => continue,
            };
            // Default queue names are sampled at every pass: they are few and may hold a
            // different broker's messages later.
            self.sampled.remove(*queue);
            found.extend(
                self.sample_queues(kind, vec![queue.to_string()], metrics)
                    .await?,
            );
        }
        Ok(found)
    }

    /// Reads one entry of each stream or list (the oldest) and judges it.
    async fn sample_queues(
        &mut self,
        kind: ScanKind,
        keys: Vec<String>,
        metrics: &Metrics,
    ) -> anyhow::Result<Vec<Finding>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let commands: Vec<(&'static str, Vec<Value>)> = keys
            .iter()
            .map(|k| match kind {
                ScanKind::Streams => (
                    "XRANGE",
                    vec![
                        Value::from(k.clone()),
                        Value::from("-"),
                        Value::from("+"),
                        Value::from("COUNT"),
                        Value::from(1),
                    ],
                ),
                _ => (
                    "LRANGE",
                    vec![Value::from(k.clone()), Value::from(-1), Value::from(-1)],
                ),
            })
            .collect();
        metrics.count_redis_commands(commands.len() as u64);
        let replies = redis::run_commands(&self.client, commands).await?;
        let stream = kind == ScanKind::Streams;
        let mut found = Vec::new();
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
            if let Some(finding) = entries
                .iter()
                .find_map(|e| detect::classify_message(&key, e, stream))
            {
                found.push(finding);
            }
            // An empty stream (a consumer group made it with MKSTREAM) is judged again later.
            if !entries.is_empty() {
                self.remember(key);
            }
        }
        Ok(found)
    }

    /// Reads a prefix of keys named like taskiq task ids: a taskiq result shows the broker even
    /// when its queues are empty.
    async fn sample_results(
        &mut self,
        keys: Vec<String>,
        metrics: &Metrics,
    ) -> anyhow::Result<Vec<Finding>> {
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
        metrics.count_redis_commands(keys.len() as u64);
        let replies = redis::run_commands(&self.client, commands).await?;
        let mut found = Vec::new();
        for (key, reply) in keys.into_iter().zip(replies) {
            // A WRONGTYPE error (a hash, a set...) simply is not a result.
            if reply.as_bytes().is_some_and(detect::is_taskiq_result) {
                found.push(Finding {
                    broker: Broker::Taskiq,
                    key: key.clone(),
                    setting: detect::taskiq_result_prefix_of(&key).map(Setting::TaskiqResultPrefix),
                });
            }
            self.remember(key);
        }
        Ok(found)
    }

    fn remember(&mut self, key: String) {
        if self.sampled.len() >= SAMPLED_MEMORY {
            self.sampled.clear();
        }
        self.sampled.insert(key);
    }
}

/// Runs passes until shutdown, sending new findings to the pipeline.
pub fn spawn(
    client: Client,
    opts: DetectOptions,
    findings: mpsc::Sender<Finding>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = opts.every;
        let mut detector = Detector::new(client, opts);
        let mut logged_empty = false;
        loop {
            let span = info_span!("detect_pass");
            let started = std::time::Instant::now();
            match detector.pass(&metrics).instrument(span).await {
                Ok(summary) => {
                    metrics.detection_pass(summary.keys_examined);
                    debug!(keys = summary.keys_examined, took = ?started.elapsed(), found = summary.findings.len(), "Detection pass done.");
                    for finding in summary.findings {
                        info!(broker = %finding.broker, key = %finding.key, setting = ?finding.setting, "Detected a broker in Redis.");
                        metrics.detected(&finding);
                        if findings.send(finding).await.is_err() {
                            return;
                        }
                    }
                    let none_yet =
                        metrics.brokers().is_empty() && metrics.detection().found.is_empty();
                    if none_yet && summary.covered_keyspace && !logged_empty {
                        logged_empty = true;
                        info!(every = ?every, "No task broker found in this Redis yet; looking again periodically.");
                    }
                    metrics.set_warning(
                        "detection",
                        (none_yet && summary.covered_keyspace).then(|| format!(
                            "no Celery, Dramatiq, RQ or taskiq keys found in this Redis yet; taskscope looks again every {}. Pass --brokers to watch one anyway.",
                            humantime::format_duration(every)
                        )),
                    );
                }
                Err(e) => warn!(error = %e, "Broker detection pass failed; retrying next time."),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}
