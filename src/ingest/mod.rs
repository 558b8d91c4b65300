//! The ingest pipeline: Redis in, observations out to the store.
//!
//! ```text
//! keyspace notifications ─┐                       ┌─▶ adapter.on_key_event ─▶ reads ─┐
//! pub/sub (results, events)┼─▶ Incoming (mpsc) ──▶│                                  │
//! lag / reconnect ────────┘                       └─▶ adapter.on_message ──┐         │
//! ticks: reconcile, sample, rescan, sweep ───────────▶ reads ──────────────┼─────────┤
//!                                  pipelined round trip ◀──────────────────┼─────────┘
//!                                  adapter.on_reply ─▶ observations ───────┴─▶ StoreWriter
//! ```
//!
//! Notifications are hints: they only tell which keys to read. Everything is re-derived from
//! reads, so a lost notification (pub/sub is at-most-once, fred drops messages for a lagging
//! receiver, taskscope may be down) costs latency, never correctness where Redis still holds
//! the data: the reconciliation pass and the scans after every (re)connect read it again.
//!
//! Invariant: adapters only see [`Reply`]s, never fred's types (`clippy.toml` keeps fred out of
//! the adapters and the store).

// fred lives in the Redis I/O layers (clippy.toml): this is one.
#![allow(clippy::disallowed_types)]

mod coalesce;
pub mod detect;
mod forward;
pub mod notifications;
mod oversize;
mod prefetch;
pub mod redis;
pub mod sanitize;
mod slot;
mod subscriber;

use crate::metrics::{ChangeFeed, Metrics, Source};
use crate::store::{StoreReader, StoreWriter};
use anyhow::Context;
use broker_adapters::detect::{self as detection, Setting};
use broker_adapters::{Adapter, Broker, Output, Read, ReadRequest, Reply};
use chrono::Utc;
use coalesce::{coalesce_gets, split_reply};
use fred::bytes::Bytes;
use fred::bytes_utils::Str;
use fred::prelude::*;
use notifications::Feed;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, info_span, warn, Instrument};

/// The knobs of the pipeline (from `ServeSettings`).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub redis_url: String,
    pub redis_db: u32,
    pub config_set: bool,
    pub abandon_after: Duration,
    pub sample_every: Duration,
    pub reconcile_every: Duration,
    pub poll_every: Duration,
    pub rescan_every: Duration,
    /// `--max-payload-bytes`: longer values are not read (see [`redis`]).
    pub max_payload_bytes: usize,
    /// Redaction and truncation applied to every task payload before it is stored.
    pub sanitizer: sanitize::Sanitizer,
}

/// Something that arrived from Redis without being asked for.
#[derive(Debug)]
enum Incoming {
    Key {
        key: String,
        op: String,
    },
    /// The subscriber's read buffer, shared rather than copied (the channel name and payload
    /// of every event pass through here).
    Message {
        channel: Str,
        payload: Bytes,
    },
    /// A prefetch read ran at once on a notification (see [`prefetch`]).
    Prefetched {
        adapter: usize,
        read: Read,
        reply: Result<broker_adapters::Reply, String>,
        /// When the reply arrived: what it shows was true then, whenever the loop gets to it.
        at: chrono::DateTime<Utc>,
    },
    /// This many messages were dropped (a queue was full): resynchronise by reading.
    Lagged(u64),
    /// A connection came back: what happened meanwhile is only in Redis's data.
    Reconnected,
}

/// How many open tasks per broker a reconciliation checks on.
const OPEN_TASKS_PER_RECONCILE: usize = 1_000;
/// Keys a SCAN call asks for at once.
const SCAN_COUNT: u32 = 1_000;
/// Messages waiting for the loop, at most (allocated as they arrive; past it they are dropped,
/// counted as lagged and resynced): tens of seconds of the heaviest notification rates.
const INCOMING_CAP: usize = 200_000;
/// Bytes of channel names, payloads, keys and read replies waiting for the loop, at most (as
/// [`incoming_bytes`] counts them): a stalled loop (it waits for the store when the file falls
/// behind) holds this much, not 200,000 Celery events of a kilobyte or more. 64 MiB is 6-20 s
/// of Celery's events at 3-10k a second.
const INCOMING_BYTE_CAP: usize = 64 << 20;
/// Incoming messages handled before the pending reads run.
const INCOMING_BATCH: usize = 20_000;
/// A batch of fewer messages than this waits [`incoming_linger`] for more, once.
const LINGER_UNDER: usize = 64;
/// The small-batch linger unless `TASKSCOPE_INGEST_LINGER_MS` says otherwise: off. With 5 ms,
/// CI's `tests/celery.rs` `events::failure` lost a task's queue: the notification of kombu's
/// `unacked` hash waited in the linger, and the 8 ms task was gone from the hash when it was
/// read (a fast task's queue is only there). Delays before reads lose what short-lived keys
/// hold; a linger for pub/sub messages alone (which carry their data) would not.
const DEFAULT_LINGER_MS: u64 = 0;
/// The linger of a small batch of pub/sub messages alone unless `TASKSCOPE_PUBSUB_LINGER_MS`
/// says otherwise. Such messages carry their data (Celery's events), so waiting delays no read;
/// measured on Celery's event stream (`bench/flower_compare.sh`): 5 ms took the process from
/// 0.616 to 0.428 CPU s per 10k events. A notification or a read reply arriving meanwhile ends
/// the wait at once (its sender wakes the thread).
const DEFAULT_PUBSUB_LINGER_MS: u64 = 5;

/// How long a small batch of pub/sub messages alone waits for more
/// (`TASKSCOPE_PUBSUB_LINGER_MS`, [`DEFAULT_PUBSUB_LINGER_MS`] by default, `0` turns it off, at
/// most 100).
fn pubsub_linger() -> Option<Duration> {
    static LINGER: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *LINGER.get_or_init(|| {
        linger_ms(
            std::env::var("TASKSCOPE_PUBSUB_LINGER_MS").ok().as_deref(),
            DEFAULT_PUBSUB_LINGER_MS,
        )
    })
}

/// How long a small batch waits for more messages before its reads run and its observations
/// go to the store (`TASKSCOPE_INGEST_LINGER_MS`, [`DEFAULT_LINGER_MS`] by default, `0` turns it
/// off, at most 100): a few ms of latency, against a fixed cost per batch paid per message when
/// messages come one by one (measured on Celery's event stream). Correctness never depends on
/// it: what one batch reads at once (two re-sends of a taskiq task, say) is told apart by the
/// adapters (the taskiq adapter holds an outcome until the stream written before it is read).
fn incoming_linger() -> Option<Duration> {
    static LINGER: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *LINGER.get_or_init(|| linger_from(std::env::var("TASKSCOPE_INGEST_LINGER_MS").ok().as_deref()))
}

/// The linger a `TASKSCOPE_INGEST_LINGER_MS` value asks for (unset or unreadable: the default).
fn linger_from(value: Option<&str>) -> Option<Duration> {
    linger_ms(value, DEFAULT_LINGER_MS)
}

/// A linger in ms from an environment value, `default` when unset or unreadable; 0 is none.
fn linger_ms(value: Option<&str>, default: u64) -> Option<Duration> {
    let ms = value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(default);
    (ms > 0).then(|| Duration::from_millis(ms.min(100)))
}

/// What an incoming item holds in memory, roughly: its strings and reply bytes.
fn incoming_bytes(item: &Incoming) -> usize {
    match item {
        Incoming::Key { key, op } => key.len() + op.len(),
        Incoming::Message { channel, payload } => channel.len() + payload.len(),
        Incoming::Prefetched { read, reply, .. } => {
            std::mem::size_of_val(read)
                + match reply {
                    Ok(reply) => reply_memory(reply),
                    Err(e) => e.len(),
                }
        }
        Incoming::Lagged(_) | Incoming::Reconnected => 0,
    }
}

/// The memory a reply holds, roughly: its strings, its errors and a slot per array item
/// (unlike `slot::reply_bytes`, the payload size that decides where a reply is decoded).
/// Replies are arrays of bulk strings, a few levels deep at most: taskscope's own reads build
/// them.
fn reply_memory(reply: &broker_adapters::Reply) -> usize {
    use broker_adapters::Reply;
    match reply {
        Reply::Bytes(b) => b.len(),
        Reply::Error(e) => e.len(),
        Reply::Array(items) => items.iter().map(|r| 16 + reply_memory(r)).sum(),
        Reply::Nil | Reply::Int(_) | Reply::Double(_) | Reply::TooLarge(_) => 0,
    }
}

/// A pub/sub message (it carries its data; not the read barrier, which releases what waits
/// for reads), or a key's creation (its write's own event follows): what a linger may wait
/// with.
fn is_message(item: &Incoming) -> bool {
    match item {
        Incoming::Message { channel, .. } => &**channel != BARRIER_CHANNEL,
        Incoming::Key { op, .. } => op == "new",
        _ => false,
    }
}

/// Every this many periodic rescans, patterns the live feed covers are scanned too: a safety
/// net for what the feed missed without a lag or reconnect showing it (hourly with the 5-minute
/// default). Between, a rescan skips them: re-reading every Celery result key every 5 minutes
/// cost a soak at 500 lifecycles/s a burst of ~45,000 observations (and ~90 MiB of resident
/// memory) each time, and grows with what Redis holds.
const FULL_RESCAN_EVERY: u64 = 12;
/// Commands a scan lets wait in the writer's channel before it reads its next page (each page
/// is one or two: its observations, its queue samples).
const SCAN_WRITER_BACKLOG: usize = 4;

/// Read rounds (follow-ups of follow-ups) per batch before yielding to incoming messages.
const MAX_READ_ROUNDS: usize = 64;
/// Observations a batch's reads gather before they go to the store, whatever is still to read:
/// a catch-up round of 200,000 reads (after a gap) once gathered ~100 MB in one vector.
const DELIVER_EVERY: usize = 5_000;
/// The channel of the read barrier ([`Adapter::wants_read_barrier`]): a `PUBLISH` on it after a
/// round of reads comes back on the prefetcher's subscriber (the one of the keyspace events),
/// which forwards it after every notification Redis sent before it.
pub(crate) const BARRIER_CHANNEL: &str = "__taskscope:barrier";
/// How long a round of reads waits for its barrier before its replies are handled anyway.
const BARRIER_WAIT: Duration = Duration::from_millis(250);
/// How long a scan waits for the prefetcher to confirm its keyspace subscriptions.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for adapters decoding off the loop, so their observations are kept.
const SETTLE_AT_SHUTDOWN: Duration = Duration::from_secs(2);
/// New-key notifications waiting for the detector; more are dropped (the passes find them).
const HINT_QUEUE: usize = 65_536;
/// Notification classes auto-detection needs: key events (`E`) of new keys (`n`).
const DETECT_CLASSES: &str = "En";
/// The key-event channel of new keys in every database (Celery results may live in another).
const NEW_KEY_EVENTS: &str = "__keyevent@*__:new";

/// Builds the adapter of a broker that auto-detection found, given the settings detection
/// learned about it; `None` when this build has no adapter for it.
pub type AdapterFactory = Box<dyn Fn(Broker, &[Setting]) -> Option<Box<dyn Adapter>> + Send + Sync>;

/// `--brokers auto`: how to detect brokers and start their adapters.
pub struct AutoDetect {
    pub options: detect::DetectOptions,
    pub factory: AdapterFactory,
}

/// [`run`] on a thread of its own with its own single-threaded runtime (its Redis connections,
/// forwarders and auto-detection run there too), so that decoding never holds a thread of the
/// runtime that serves HTTP: `/healthz` and the API answer whatever payload is being decoded.
/// The receiver gets `run`'s result; it fails (closed) when the thread panicked.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    cfg: IngestConfig,
    adapters: Vec<Box<dyn Adapter>>,
    auto: Option<AutoDetect>,
    writer: StoreWriter,
    reader: StoreReader,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<()>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the ingest runtime")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("taskscope-ingest".into())
        .spawn(move || {
            let result =
                runtime.block_on(run(cfg, adapters, auto, writer, reader, metrics, shutdown));
            let _ = done_tx.send(result);
        })
        .context("cannot start the ingest thread")?;
    Ok(done_rx)
}

/// Runs until `shutdown` flips to true. Never returns early on Redis trouble: it reconnects.
/// `adapters` run from the start; with `auto`, detected brokers' adapters join them.
pub async fn run(
    cfg: IngestConfig,
    adapters: Vec<Box<dyn Adapter>>,
    auto: Option<AutoDetect>,
    writer: StoreWriter,
    reader: StoreReader,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    redis::set_max_payload_bytes(cfg.max_payload_bytes);
    let client = redis::builder(&cfg.redis_url)?.build()?;
    let (tx, rx) =
        forward::queue_with::<Incoming>(INCOMING_CAP, INCOMING_BYTE_CAP, incoming_bytes, |item| {
            !is_message(item)
        });
    let (rules_tx, rules_rx) = watch::channel(Arc::new(prefetch::Subscriptions::default()));
    let (applied_tx, applied_rx) = watch::channel(None);
    let kick = prefetch::Kick::default();
    // `--brokers auto`: new-key notifications go straight to the detector.
    let (hint_tx, hint_rx) = match auto {
        Some(_) => {
            let (tx, rx) = mpsc::channel(HINT_QUEUE);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    // The one pub/sub connection: keyspace events, key events and messages, in Redis's order.
    let prefetcher = prefetch::spawn(
        &cfg.redis_url,
        cfg.redis_db,
        tx.clone(),
        hint_tx,
        prefetch::SubscriptionLink {
            wanted: rules_rx,
            applied: applied_tx,
        },
        kick.clone(),
        metrics.clone(),
    )?;
    forward_reconnects(&client, tx);

    info!(url = %redact(&cfg.redis_url), "Connecting to Redis.");
    tokio::select! {
        r = client.init() => { r?; }
        _ = shutdown.changed() => return Ok(()),
    }
    let side_urls: Vec<(Broker, Option<String>)> = adapters
        .iter()
        .map(|a| (a.broker(), a.side_url()))
        .collect();
    let side_urls_at_start: Vec<Option<String>> =
        side_urls.iter().map(|(_, url)| url.clone()).collect();
    let mut side = Vec::with_capacity(side_urls.len());
    for (broker, url) in side_urls {
        side.push(match url {
            Some(url) => tokio::select! {
                c = connect_side(&url, broker) => Some(redis::Redis::new(c?, metrics.clone())),
                _ = shutdown.changed() => return Ok(()),
            },
            None => None,
        });
    }
    let (detect_rx, factory, listen_rx) = match (auto, hint_rx) {
        (Some(AutoDetect { options, factory }), Some(hints)) => {
            let (found_tx, found_rx) = mpsc::channel(256);
            let (listen_tx, listen_rx) = watch::channel(true);
            metrics.enable_detection();
            detect::spawn(
                redis::Redis::new(client.clone(), metrics.clone()),
                options,
                hints,
                found_tx,
                listen_tx,
                metrics.clone(),
                shutdown.clone(),
            );
            (Some(found_rx), Some(factory), Some(listen_rx))
        }
        _ => (None, None, None),
    };
    metrics.redis_connected.store(true, Ordering::Relaxed);
    info!("Connected to Redis.");

    let (decoded_tx, decoded_rx) = mpsc::unbounded_channel();
    let mut pipeline = Pipeline {
        cfg,
        client: redis::Redis::new(client, metrics.clone()),
        slots: adapters
            .into_iter()
            .enumerate()
            .map(|(i, a)| slot::Slot::new(i, a))
            .collect(),
        decoded_tx,
        decoded_rx,
        writer,
        reader,
        metrics,
        rx,
        pending: Vec::new(),
        pending_set: HashSet::new(),
        feed: Feed::Polling {
            reason: "not checked yet".into(),
        },
        logged_errors: HashSet::new(),
        writer_error: None,
        resync_requested: false,
        fully_scanned: HashSet::new(),
        rescans: 0,
        rules_tx,
        applied_rx,
        kick,
        side_urls: side_urls_at_start,
        side,
        detect_rx,
        factory,
        listen_rx,
        new_key_class_added: false,
        learned: BTreeMap::new(),
        unsupported: HashSet::new(),
        barrier_seq: 0,
        oversize: oversize::Oversize::default(),
        subscribed_for: None,
    };
    pipeline.resync().await;
    pipeline.run_loop(&mut shutdown).await;
    pipeline.settle_all(SETTLE_AT_SHUTDOWN).await;
    let _ = pipeline.client.client().quit().await;
    for side in pipeline.side.iter().flatten() {
        let _ = side.client().quit().await;
    }
    // Dropping the loop's receiver stops the prefetcher.
    drop(pipeline.rx);
    let _ = tokio::task::spawn_blocking(move || prefetcher.join()).await;
    match pipeline.writer_error {
        Some(e) => anyhow::bail!("{e}; the history file may be unwritable (disk full?)"),
        None => Ok(()),
    }
}

/// Connects an adapter's second Redis ([`Adapter::side_url`]).
async fn connect_side(url: &str, broker: Broker) -> anyhow::Result<Client> {
    let c = redis::builder(url)?.build()?;
    info!(url = %redact(url), %broker, "Connecting to a second Redis.");
    c.init().await?;
    Ok(c)
}

/// `redis://user:secret@host/0` -> `redis://***@host/0` for logs and error messages, whether
/// or not the URL parses: everything before the last `@` after the scheme (user and password,
/// which may themselves hold `@`, `/` or `:`) and any query string (`?password=`) is hidden.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(s) => url.split_at(s + 3),
        None => ("", url),
    };
    let (rest, query) = match rest.find('?') {
        Some(q) => (&rest[..q], "?***"),
        None => (rest, ""),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***{}{query}", &rest[at..]),
        None => format!("{scheme}{rest}{query}"),
    }
}

/// Tells the loop when the command client reconnects (the subscriber's own reconnections
/// come through the prefetcher as [`Incoming::Reconnected`]).
fn forward_reconnects(client: &Client, tx: forward::Sender<Incoming>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut reconnects = client.reconnect_rx();
    tokio::spawn(async move {
        // The first event is the initial connection, which `run` handles itself.
        let mut initial = true;
        loop {
            match reconnects.recv().await {
                Ok(_) if initial => initial = false,
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if tx.send(Incoming::Reconnected).is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

struct Pipeline {
    cfg: IngestConfig,
    client: redis::Redis,
    /// The adapters, each in its slot (see [`slot`]).
    slots: Vec<slot::Slot>,
    /// Adapters coming back from decoding off the loop.
    decoded_tx: mpsc::UnboundedSender<slot::Decoded>,
    decoded_rx: mpsc::UnboundedReceiver<slot::Decoded>,
    writer: StoreWriter,
    reader: StoreReader,
    metrics: Arc<Metrics>,
    rx: forward::Receiver<Incoming>,
    /// Reads asked for and not yet run, with the index of the adapter that asked.
    pending: Vec<(usize, Read)>,
    pending_set: HashSet<(usize, Read)>,
    feed: Feed,
    /// (broker, kind) pairs of decode errors already logged: each is logged once.
    logged_errors: HashSet<(Broker, &'static str)>,
    /// Set when the store writer stopped: ingest ends with this error.
    writer_error: Option<String>,
    /// A reconnect or a pub/sub lag asked for a resync (run on the next sweep tick).
    resync_requested: bool,
    /// (adapter, pattern) pairs a full scan has covered: a periodic rescan skips those the
    /// live feed covers ([`Pipeline::heard_live`]), but for every [`FULL_RESCAN_EVERY`]th.
    fully_scanned: HashSet<(usize, String)>,
    /// Periodic rescans so far.
    rescans: u64,
    /// Each adapter's side connection ([`Adapter::side_url`]), by adapter index, and the URL
    /// it was made for (an adapter may learn its side URL later, from detection).
    side: Vec<Option<redis::Redis>>,
    side_urls: Vec<Option<String>>,
    /// The adapters' keyspace patterns and prefetch rules, for the prefetcher's subscriber.
    rules_tx: watch::Sender<Arc<prefetch::Subscriptions>>,
    /// What the prefetcher has subscribed to so far.
    applied_rx: watch::Receiver<Option<Arc<prefetch::Subscriptions>>>,
    /// Runs the coalesced prefetch rules at every reconciliation.
    kick: prefetch::Kick,
    /// Findings of auto-detection (`--brokers auto`), and how to start their adapters.
    detect_rx: Option<mpsc::Receiver<detect::Detected>>,
    /// Whether the detector wants new-key notifications (see `detect::ListenPolicy`).
    listen_rx: Option<watch::Receiver<bool>>,
    /// taskscope turned on the new-key class (`n`) itself: it turns it off when done.
    new_key_class_added: bool,
    factory: Option<AdapterFactory>,
    /// Settings detection learned, per broker (for adapters started later).
    learned: BTreeMap<Broker, Vec<Setting>>,
    /// Detected brokers without an adapter in this build (logged once).
    unsupported: HashSet<Broker>,
    /// The last read-barrier token published.
    barrier_seq: u64,
    /// Values over `--max-payload-bytes` already counted.
    oversize: oversize::Oversize,
    /// What the subscriptions were last brought up to date for (see
    /// [`Pipeline::update_subscriptions`]); `None` when they must be worked out again.
    subscribed_for: Option<SubscriptionInputs>,
}

/// What the subscriptions follow from: each adapter's interest, the change feed, and whether
/// new keys are listened to.
#[derive(PartialEq)]
struct SubscriptionInputs {
    interests: Vec<broker_adapters::Interest>,
    notifications: bool,
    listening_new_keys: bool,
}

impl Pipeline {
    async fn run_loop(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let mut reconcile = tokio::time::interval(self.reconcile_period());
        let mut sample = tokio::time::interval(self.cfg.sample_every);
        let mut rescan = tokio::time::interval(self.cfg.rescan_every);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        for t in [&mut reconcile, &mut sample, &mut rescan, &mut sweep] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // The first tick of an interval fires at once; resync() already did that work.
        reconcile.tick().await;
        rescan.tick().await;
        let mut was_connected = true;
        loop {
            if self.writer_error.is_some() {
                return;
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                Some(first) = self.rx.recv() => {
                    self.handle_incoming(first).await;
                }
                Some(decoded) = self.decoded_rx.recv() => self.on_decoded(decoded).await,
                _ = sweep.tick() => {
                    let connected = self.client.client().is_connected();
                    self.metrics.redis_connected.store(connected, Ordering::Relaxed);
                    self.resync_requested |= connected && !was_connected;
                    was_connected = connected;
                    if connected && std::mem::take(&mut self.resync_requested) {
                        self.resync().await;
                    }
                    if connected {
                        self.publish_due().await;
                        // Reads an adapter put off until a time (BullMQ's job hashes) go out
                        // within a second of it, even when no notification comes.
                        let mut output = Output::default();
                        self.run_pending(Utc::now(), &mut output).await;
                        self.deliver(output).await;
                    }
                    let swept = self.writer.sweep(Utc::now(), chrono_duration(self.cfg.abandon_after)).await;
                    self.check_writer(swept);
                }
                _ = reconcile.tick() => {
                    let period = self.reconcile_period();
                    if reconcile.period() != period {
                        reconcile = tokio::time::interval(period);
                        reconcile.tick().await;
                    }
                    self.reconcile().await;
                }
                Some(finding) = next_finding(&mut self.detect_rx) => self.on_detected(finding).await,
                Some(()) = listen_changed(&mut self.listen_rx) => self.apply_listening().await,
                _ = sample.tick() => self.sample().await,
                _ = rescan.tick() => self.rescan().await,
            }
        }
    }

    /// A broker auto-detection found: start its adapter, or hand a new setting (another
    /// queue, a result database) to the one running. Logs how long after its evidence reached
    /// taskscope the broker is watched.
    async fn on_detected(&mut self, detected: detect::Detected) {
        let detect::Detected { finding, seen, via } = detected;
        let broker = finding.broker;
        let running = self.slots.iter().position(|a| a.broker() == broker);
        if let (None, Some(setting)) = (running, &finding.setting) {
            // Kept for the adapter started below; a running one is handed it directly.
            self.learned
                .entry(broker)
                .or_default()
                .push(setting.clone());
        }
        if let Some(i) = running {
            if let Some(setting) = &finding.setting {
                // A new setting is rare: it waits for the adapter to be back from decoding.
                self.settle(i).await;
                let Some(adapter) = self.slots[i].here() else {
                    return;
                };
                let mut reads = adapter.on_detected(setting);
                // The key that showed the setting is read as a scanned one (a result written
                // before its prefix was known belongs to a task never seen otherwise).
                reads.extend(adapter.on_scan("", vec![finding.key.clone()], Utc::now()));
                if self.slots[i].side_url() != self.side_urls[i] {
                    self.connect_side_of(i).await;
                    // Its side keys need scanning and its open tasks' results reading there.
                    self.resync().await;
                }
                if !reads.is_empty() {
                    self.queue_reads(i, reads);
                    let mut output = Output::default();
                    self.run_pending(Utc::now(), &mut output).await;
                    self.deliver(output).await;
                }
            }
            return;
        }
        let settings = self.learned.get(&broker).cloned().unwrap_or_default();
        let Some(mut adapter) = self.factory.as_ref().and_then(|f| f(broker, &settings)) else {
            if self.unsupported.insert(broker) {
                warn!(%broker, key = %finding.key, "Found this broker in Redis, but this version of taskscope has no adapter for it.");
            }
            return;
        };
        let i = self.slots.len();
        let reads = adapter.on_scan("", vec![finding.key.clone()], Utc::now());
        self.slots.push(slot::Slot::new(i, adapter));
        self.side.push(None);
        self.side_urls.push(None);
        self.connect_side_of(i).await;
        self.metrics
            .set_brokers(self.slots.iter().map(|a| a.broker()).collect());
        self.metrics.set_warning("detection", None);
        // Its key classes may need notifications turned on, its keys subscribing and scanning:
        // it catches up as on start-up, and reads the key that showed it as a scanned one.
        self.queue_reads(i, reads);
        self.resync().await;
        let delay = seen.elapsed();
        self.metrics.watching(broker, &finding.key, delay);
        info!(%broker, key = %finding.key, via = via.as_str(), delay_ms = delay.as_secs_f64() * 1e3, "Watching a detected broker.");
    }

    /// (Re)connects adapter `i`'s side connection to its current [`Adapter::side_url`].
    async fn connect_side_of(&mut self, i: usize) {
        let url = self.slots[i].side_url();
        let broker = self.slots[i].broker();
        if let Some(old) = self.side[i].take() {
            let _ = old.client().quit().await;
        }
        self.side_urls[i] = url.clone();
        let Some(url) = url else {
            return;
        };
        self.side[i] = match tokio::time::timeout(
            Duration::from_secs(10),
            connect_side(&url, broker),
        )
        .await
        {
            Ok(Ok(c)) => Some(redis::Redis::new(c, self.metrics.clone())),
            Ok(Err(e)) => {
                warn!(error = %e, %broker, "Cannot connect to the second Redis; reading everything from the first.");
                None
            }
            Err(_) => {
                warn!(%broker, "The second Redis did not answer in 10s; reading everything from the first.");
                None
            }
        };
    }

    /// A message on a channel detection listens to before any adapter does: the broker it
    /// shows is started at once, so this message and the next reach its adapter.
    async fn detect_from_message(&mut self, channel: &str, payload: &[u8]) {
        let unwatched = |b| !self.slots.iter().any(|a| a.broker() == b);
        let Some(finding) = detection::classify_channel(channel, payload, unwatched) else {
            return;
        };
        info!(broker = %finding.broker, channel, "Detected a broker from its pub/sub message.");
        self.metrics
            .detected(&finding, crate::metrics::Via::Message);
        self.on_detected(detect::Detected {
            finding,
            seen: std::time::Instant::now(),
            via: crate::metrics::Via::Message,
        })
        .await;
    }

    /// The writer only fails once it has stopped: nothing more can be recorded, so stop too.
    fn check_writer(&mut self, result: Result<(), crate::store::StoreError>) {
        if let Err(e) = result {
            if self.writer_error.is_none() {
                error!(error = %e, "The store writer stopped; stopping ingest.");
                self.writer_error = Some(e.to_string());
            }
        }
    }

    fn reconcile_period(&self) -> Duration {
        match self.feed {
            Feed::Notifications { .. } => self.cfg.reconcile_every,
            Feed::Polling { .. } => self.cfg.poll_every,
        }
    }

    /// After a (re)connect: notifications may be off again (a restarted Redis forgets CONFIG
    /// SET), pub/sub messages were lost: check, subscribe, scan and reconcile.
    async fn resync(&mut self) {
        let span = info_span!("resync");
        for i in 0..self.slots.len() {
            // A gap waits its turn behind the calls before it; what it asks for is nothing.
            let _ = self.slots[i].call(slot::Call::Gap, &self.decoded_tx);
        }
        async {
            self.ensure_feed().await;
            // A reconnect re-subscribes what fred tracks; we only add what is new (worked out
            // afresh: the prefetcher may have restarted its subscriptions).
            self.subscribed_for = None;
            self.update_subscriptions().await;
            self.scan().await;
            self.reconcile().await;
            self.sample().await;
        }
        .instrument(span)
        .await
    }

    /// Makes sure notifications cover the adapters' classes (and new keys while the detector
    /// listens), or settles for polling; the overview and `/healthz` say which.
    async fn ensure_feed(&mut self) {
        let mut classes: String = self
            .slots
            .iter_mut()
            .map(|a| a.interest().notify_classes)
            .collect();
        let listening = self.listening_new_keys();
        if listening {
            classes.push_str(DETECT_CLASSES);
        }
        let (feed, previous) =
            notifications::ensure(self.client.client(), &classes, self.cfg.config_set).await;
        self.feed = feed;
        if listening && previous.is_some_and(|p| !p.contains('n')) {
            self.new_key_class_added |= matches!(self.feed, Feed::Notifications { changed: true });
        }
        match &self.feed {
            // `/healthz` says `notifications` once the subscriptions are answered
            // ([`Self::update_subscriptions`]), which follows.
            Feed::Notifications { .. } => self.metrics.set_warning("notifications", None),
            Feed::Polling { reason } => {
                warn!(%reason, every = ?self.cfg.poll_every, "Keyspace notifications are unavailable; polling instead.");
                self.metrics.set_change_feed(ChangeFeed::Polling);
                self.metrics.set_warning(
                    "notifications",
                    Some(format!(
                        "keyspace notifications are off, polling every {:?}: {reason}",
                        self.cfg.poll_every
                    )),
                );
            }
        }
    }

    fn listening_new_keys(&self) -> bool {
        self.listen_rx.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// The detector started or stopped wanting new-key notifications: (un)subscribe, and turn
    /// the class on, or off again when taskscope turned it on.
    async fn apply_listening(&mut self) {
        if self.listening_new_keys() {
            // Nothing was missed meanwhile (the probe and the passes went on): only the class
            // and the subscription come back, without a resync.
            info!("Listening to new keys for auto-detection.");
            self.ensure_feed().await;
            self.update_subscriptions().await;
            return;
        }
        info!("No longer listening to new keys for auto-detection.");
        // Worked out afresh without the new-key channel: the prefetcher unsubscribes it.
        self.subscribed_for = None;
        self.update_subscriptions().await;
        if std::mem::take(&mut self.new_key_class_added) && self.cfg.config_set {
            notifications::drop_class(self.client.client(), 'n').await;
        }
    }

    async fn update_subscriptions(&mut self) {
        // Runs after every batch: ask each adapter for its interest once. Nearly always it is
        // what was subscribed for last time, and then there is nothing to do.
        let notifications = matches!(self.feed, Feed::Notifications { .. });
        let listening_new_keys = self.listening_new_keys();
        let mut unchanged = self.subscribed_for.as_ref().is_some_and(|s| {
            s.notifications == notifications
                && s.listening_new_keys == listening_new_keys
                && s.interests.len() == self.slots.len()
        });
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let interest = slot.refresh_interest();
            unchanged &= self
                .subscribed_for
                .as_ref()
                .is_some_and(|s| s.interests.get(i) == Some(interest));
        }
        if unchanged {
            return;
        }
        let interests: Vec<_> = self.slots.iter_mut().map(|a| a.interest()).collect();
        let inputs = SubscriptionInputs {
            interests: interests.clone(),
            notifications,
            listening_new_keys,
        };
        let rules = prefetch::rules(
            interests
                .iter()
                .enumerate()
                .map(|(i, interest)| (i, interest.prefetch.clone())),
        );
        let mut channels = BTreeSet::new();
        let mut patterns = BTreeSet::new();
        if self.factory.is_some() {
            channels.extend(detection::early_channels(self.cfg.redis_db));
        }
        if self.listening_new_keys() {
            channels.insert(NEW_KEY_EVENTS.to_string());
        }
        let first_sight = if matches!(self.feed, Feed::Notifications { .. }) {
            interests
                .iter()
                .enumerate()
                .flat_map(|(i, interest)| interest.first_sight.iter().map(move |f| (i, f.clone())))
                .collect()
        } else {
            Vec::new()
        };
        for interest in interests {
            channels.extend(interest.channel_patterns);
            if matches!(self.feed, Feed::Notifications { .. }) {
                // Keyspace notifications are the prefetcher's, which forwards what its rules
                // do not keep (a pattern equal to a rule's key stays its own).
                patterns.extend(
                    interest
                        .key_patterns
                        .into_iter()
                        .filter(|p| !rules.keys().any(|k| prefetch::key_pattern(k) == *p)),
                );
            }
        }
        let subscriptions = prefetch::Subscriptions {
            patterns,
            channels,
            rules,
            first_sight,
        };
        let mut all_applied = true;
        if **self.rules_tx.borrow() != subscriptions {
            let sent = Arc::new(subscriptions);
            self.rules_tx.send_replace(sent.clone());
            all_applied = self.await_prefetch_subscriptions(&sent).await;
        }
        if matches!(self.feed, Feed::Notifications { .. })
            && self.metrics.change_feed() != ChangeFeed::Notifications
        {
            self.metrics.set_change_feed(ChangeFeed::Notifications);
        }
        self.subscribed_for = all_applied.then_some(inputs);
    }

    /// Waits (a bounded time) until the prefetcher has subscribed to `sent`: a scan or a
    /// reconciliation that runs before keyspace events flow misses what happens in between.
    /// Whether they were (a `PSUBSCRIBE` Redis refused is retried by the prefetcher).
    async fn await_prefetch_subscriptions(&mut self, sent: &Arc<prefetch::Subscriptions>) -> bool {
        let applied = self
            .applied_rx
            .wait_for(|a| a.as_ref().is_some_and(|a| Arc::ptr_eq(a, sent)));
        match tokio::time::timeout(SUBSCRIBE_WAIT, applied).await {
            Ok(Ok(_)) => true,
            Ok(Err(_)) => {
                debug!("The prefetcher is gone; its subscriptions are not awaited.");
                false
            }
            Err(_) => {
                warn!(
                    waited = ?SUBSCRIBE_WAIT,
                    "The subscriptions were not confirmed in time; carrying on (the next reconciliation reads what was missed)."
                );
                false
            }
        }
    }

    async fn handle_incoming(&mut self, first: Incoming) {
        let mut now = Utc::now();
        let mut output = Output::default();
        let mut resync = false;
        let mut next = Some(first);
        let mut handled = 0usize;
        let mut lingered = false;
        // Whether the batch holds pub/sub messages alone (their own linger applies).
        let mut only_messages = true;
        let (mut keyspace, mut pubsub) = (0u64, 0u64);
        loop {
            while let Some(item) = next.take() {
                only_messages &= is_message(&item);
                match item {
                    // The key's creation: its write's own event follows.
                    Incoming::Key { op, .. } if op == "new" => {}
                    Incoming::Key { key, op } => {
                        keyspace += 1;
                        self.on_key_event(key, op, now, &mut output);
                    }
                    Incoming::Message { channel, payload } => {
                        pubsub += 1;
                        if self.factory.is_some() {
                            self.detect_from_message(&channel, &payload).await;
                        }
                        self.on_message(channel, payload, now, &mut output).await;
                    }
                    Incoming::Prefetched {
                        adapter,
                        read,
                        reply,
                        at,
                    } => match reply {
                        Ok(reply) => {
                            self.metrics.ingested(Source::Read, 1);
                            self.on_reply(adapter, &read, reply, at, &mut output).await;
                        }
                        Err(e) => {
                            debug!(error = %e, key = read.request.key(), "A prefetch read failed.")
                        }
                    },
                    Incoming::Lagged(n) => {
                        warn!(
                            dropped = n,
                            "Fell behind Redis pub/sub; re-reading to catch up."
                        );
                        self.metrics.lagged_events.fetch_add(n, Ordering::Relaxed);
                        resync = true;
                    }
                    Incoming::Reconnected => {
                        info!("Reconnected to Redis; re-reading what may have been missed.");
                        resync = true;
                    }
                }
                handled += 1;
                if handled < INCOMING_BATCH {
                    next = self.rx.try_recv();
                }
            }
            // A small batch waits a moment for more: what a batch costs besides its messages
            // (the reads' round trip, the hand-over to the store, the subscriptions check) is
            // then shared by the messages of [`incoming_linger`], not paid per message.
            if lingered || resync || handled >= LINGER_UNDER {
                break;
            }
            // Messages alone (no read waits on the batch) have their own linger.
            let messages_alone = only_messages && self.pending.is_empty();
            let linger = match messages_alone {
                true => pubsub_linger().or_else(incoming_linger),
                false => incoming_linger(),
            };
            let Some(linger) = linger else {
                break;
            };
            lingered = true;
            // The whole thread sleeps (this runtime is the loop's own) while the prefetcher's
            // thread queues what Redis pushes meanwhile: one wake-up for all of it, instead of
            // one per message.
            if messages_alone {
                self.sleep_unless_a_read_is_asked(linger);
            } else {
                std::thread::sleep(linger);
            }
            next = self.rx.try_recv();
            if next.is_none() {
                break;
            }
            now = Utc::now();
        }
        let dropped = self.rx.take_dropped();
        if dropped > 0 {
            warn!(
                dropped,
                "Too many messages waited for the loop; re-reading to catch up."
            );
            self.metrics
                .lagged_events
                .fetch_add(dropped, Ordering::Relaxed);
            resync = true;
        }
        self.metrics.ingested(Source::Keyspace, keyspace);
        self.metrics.ingested(Source::Pubsub, pubsub);
        let span = tracing::debug_span!(
            "ingest_batch",
            events = handled,
            reads = self.pending.len(),
            observations = tracing::field::Empty
        );
        async {
            self.run_pending(now, &mut output).await;
            tracing::Span::current().record("observations", output.observations.len());
            self.deliver(output).await;
        }
        .instrument(span)
        .await;
        // Both clients report a reconnect, and a lag can come in bursts: the next sweep tick
        // runs one resync for all of them.
        self.resync_requested |= resync;
    }

    /// Sleeps the thread for `linger`, ending early once anything but a pub/sub message waits
    /// (a notification from the prefetcher's thread, a read's reply): what it asks for is read
    /// now, not after the linger. The queue's sender wakes it ([`forward::Receiver::linger`]).
    fn sleep_unless_a_read_is_asked(&self, linger: Duration) {
        self.rx.linger(linger);
    }

    fn queue_reads(&mut self, adapter: usize, reads: Vec<Read>) {
        for r in reads {
            if self.pending_set.insert((adapter, r.clone())) {
                self.pending.push((adapter, r));
            }
        }
    }

    /// Hands a reply to the adapter that asked for it; values too large to read are counted.
    async fn on_reply(
        &mut self,
        adapter: usize,
        read: &Read,
        reply: Reply,
        at: chrono::DateTime<Utc>,
        into: &mut Output,
    ) {
        let broker = self.slots[adapter].broker();
        let oversize = self.oversize.in_reply(broker, read.request.key(), &reply);
        let mut out = Output {
            decode_errors: oversize.into_iter().collect(),
            ..Output::default()
        };
        let call = slot::Call::Reply {
            read: read.clone(),
            reply,
            at,
        };
        if let slot::Outcome::Ran(o) = self.slots[adapter].call(call, &self.decoded_tx) {
            out.merge(o);
        }
        self.collect(adapter, out, into);
    }

    /// Hands a keyspace event to every adapter.
    fn on_key_event(
        &mut self,
        key: String,
        op: String,
        now: chrono::DateTime<Utc>,
        into: &mut Output,
    ) {
        for i in 0..self.slots.len() {
            let call = slot::Call::Key {
                key: key.clone(),
                op: op.clone(),
                now,
            };
            if let slot::Outcome::Ran(out) = self.slots[i].call(call, &self.decoded_tx) {
                self.collect(i, out, into);
            }
        }
    }

    /// An adapter is back from decoding off the loop: its output is delivered and the calls
    /// that waited for it run.
    async fn on_decoded(&mut self, decoded: slot::Decoded) {
        let i = decoded.slot;
        let now = Utc::now();
        let mut out = self.slots[i].restore(decoded);
        out.merge(self.slots[i].resume(&self.decoded_tx));
        if self.slots[i].take_overflow() {
            warn!(broker = %self.slots[i].broker(), "Too many events waited for an adapter decoding a large payload; re-reading to catch up.");
            self.resync_requested = true;
        }
        let mut output = Output::default();
        self.collect(i, out, &mut output);
        self.run_pending(now, &mut output).await;
        self.deliver(output).await;
    }

    /// Waits until adapter `i` is back from decoding and has run the calls that waited.
    async fn settle(&mut self, i: usize) {
        while self.slots[i].is_away() {
            let Some(decoded) = self.decoded_rx.recv().await else {
                return;
            };
            Box::pin(self.on_decoded(decoded)).await;
        }
    }

    /// Waits (at most `limit`) for every adapter decoding off the loop, so what they decode
    /// is stored before shutdown.
    async fn settle_all(&mut self, limit: Duration) {
        let settle = async {
            for i in 0..self.slots.len() {
                self.settle(i).await;
            }
        };
        if tokio::time::timeout(limit, settle).await.is_err() {
            warn!(waited = ?limit, "Shutting down while a large payload was still decoding; its observations are lost.");
        }
    }

    /// Hands a pub/sub message to every adapter, unless it is over `--max-payload-bytes`: then
    /// it is a decode error of the adapters that subscribed to its channel.
    async fn on_message(
        &mut self,
        channel: Str,
        payload: Bytes,
        now: chrono::DateTime<Utc>,
        into: &mut Output,
    ) {
        if payload.len() > self.cfg.max_payload_bytes {
            for i in 0..self.slots.len() {
                let subscribed = self.slots[i]
                    .interest()
                    .channel_patterns
                    .iter()
                    .any(|p| prefetch::glob_match(p, &channel));
                let broker = self.slots[i].broker();
                let error = subscribed
                    .then(|| oversize::message_error(broker, &channel, payload.len() as u64));
                let out = Output {
                    decode_errors: error.into_iter().collect(),
                    ..Output::default()
                };
                self.collect(i, out, into);
            }
            return;
        }
        for i in 0..self.slots.len() {
            let call = slot::Call::Message {
                channel: channel.clone(),
                payload: payload.clone(),
                now,
            };
            if let slot::Outcome::Ran(out) = self.slots[i].call(call, &self.decoded_tx) {
                self.collect(i, out, into);
            }
        }
    }

    /// Takes an adapter's output apart: follow-up reads are queued, the rest is gathered.
    fn collect(&mut self, adapter: usize, mut out: Output, into: &mut Output) {
        for e in out.decode_errors.drain(..) {
            self.metrics.decode_error(e.broker);
            if self.logged_errors.insert((e.broker, e.kind)) {
                warn!(broker = %e.broker, kind = e.kind, key = %e.key, error = %e.message,
                    "Skipped a payload that does not decode (logged once per kind; counted in taskscope_decode_errors_total).");
            } else {
                debug!(broker = %e.broker, kind = e.kind, key = %e.key, error = %e.message, "Skipped a payload that does not decode.");
            }
        }
        let follow_up = std::mem::take(&mut out.follow_up);
        self.queue_reads(adapter, follow_up);
        into.merge(out);
    }

    /// Runs the pending reads (and the reads their replies ask for) as pipelined round trips.
    async fn run_pending(&mut self, now: chrono::DateTime<Utc>, into: &mut Output) {
        for _ in 0..MAX_READ_ROUNDS {
            self.end_of_batch(now, into);
            if self.pending.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut self.pending);
            self.pending_set.clear();
            let barrier = batch
                .iter()
                .any(|(i, _)| self.slots[*i].wants_read_barrier());
            let (wire, merged) = coalesce_gets(batch);
            match execute(&self.client, &self.side, &wire).await {
                Ok(replies) => {
                    if barrier {
                        self.read_barrier(now, into).await;
                    }
                    self.metrics.ingested(Source::Read, replies.len() as u64);
                    for (((adapter, read), reply), merged) in
                        wire.into_iter().zip(replies).zip(merged)
                    {
                        for (read, reply) in split_reply(read, reply, merged) {
                            self.on_reply(adapter, &read, reply, now, into).await;
                        }
                        if into.observations.len() >= DELIVER_EVERY {
                            // A round of many reads (a catch-up after a gap) goes to the store
                            // in parts, never as one vector of all its observations.
                            let part = Output {
                                observations: std::mem::take(&mut into.observations),
                                queue_samples: std::mem::take(&mut into.queue_samples),
                                ..Output::default()
                            };
                            self.deliver(part).await;
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, reads = wire.len(), "Reads failed; they will be redone after reconnecting.");
                    return;
                }
            }
        }
    }

    /// Tells every adapter on the loop that the notifications so far were handed over
    /// ([`Adapter::end_of_batch`]); the reads they defer join this round.
    fn end_of_batch(&mut self, now: chrono::DateTime<Utc>, into: &mut Output) {
        for i in 0..self.slots.len() {
            if self.slots[i].is_away() {
                continue; // its next round asks
            }
            if let slot::Outcome::Ran(out) =
                self.slots[i].call(slot::Call::BatchEnd { now }, &self.decoded_tx)
            {
                self.collect(i, out, into);
            }
        }
    }

    /// Waits until the subscriber has delivered every notification Redis sent before the reads
    /// just run (a `PUBLISH` on [`BARRIER_CHANNEL`] comes back after them), handing those to
    /// the adapters; their reads run in the next round. Gives up after [`BARRIER_WAIT`].
    async fn read_barrier(&mut self, now: chrono::DateTime<Utc>, into: &mut Output) {
        // Without keyspace events (polling) there is nothing to wait for.
        if !matches!(self.feed, Feed::Notifications { .. }) {
            return;
        }
        self.barrier_seq += 1;
        let token = self.barrier_seq.to_string();
        if let Err(e) = self
            .client
            .commands(vec![(
                "PUBLISH",
                vec![Value::from(BARRIER_CHANNEL), Value::from(token.clone())],
            )])
            .await
        {
            debug!(error = %e, "Read barrier PUBLISH failed.");
            return;
        }
        let deadline = tokio::time::Instant::now() + BARRIER_WAIT;
        loop {
            let item = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(item)) => item,
                Ok(None) | Err(_) => return,
            };
            match item {
                Incoming::Message { channel, payload } if &*channel == BARRIER_CHANNEL => {
                    if payload == token.as_bytes() {
                        return;
                    }
                }
                Incoming::Key { op, .. } if op == "new" => {}
                Incoming::Key { key, op } => {
                    self.metrics.ingested(Source::Keyspace, 1);
                    self.on_key_event(key, op, now, into);
                }
                Incoming::Message { channel, payload } => {
                    self.metrics.ingested(Source::Pubsub, 1);
                    self.on_message(channel, payload, now, into).await;
                }
                Incoming::Prefetched {
                    adapter,
                    read,
                    reply,
                    at,
                } => {
                    if let Ok(reply) = reply {
                        self.metrics.ingested(Source::Read, 1);
                        self.on_reply(adapter, &read, reply, at, into).await;
                    }
                }
                Incoming::Lagged(_) | Incoming::Reconnected => {
                    self.resync_requested = true;
                    return;
                }
            }
        }
    }

    /// Hands observations and samples to the store, and subscribes to newly found keys.
    async fn deliver(&mut self, output: Output) {
        let Output {
            mut observations,
            mut queue_samples,
            ..
        } = output;
        for obs in &mut observations {
            self.cfg.sanitizer.apply_observation(obs);
        }
        for sample in &mut queue_samples {
            self.cfg.sanitizer.apply_sample(sample);
        }
        if !observations.is_empty() {
            let sent = self.writer.observe(observations).await;
            self.check_writer(sent);
        }
        if !queue_samples.is_empty() {
            let sent = self.writer.samples(queue_samples).await;
            self.check_writer(sent);
        }
        self.update_subscriptions().await;
    }

    async fn reconcile(&mut self) {
        let now = Utc::now();
        let mut output = Output::default();
        for i in 0..self.slots.len() {
            let broker = self.slots[i].broker();
            let open = match self
                .reader
                .open_tasks(broker, OPEN_TASKS_PER_RECONCILE)
                .await
            {
                Ok(open) => open,
                Err(e) => {
                    error!(error = %e, %broker, "Cannot list open tasks for reconciliation.");
                    Vec::new()
                }
            };
            let call = slot::Call::Reconcile { open, now };
            if let slot::Outcome::Ran(out) = self.slots[i].call(call, &self.decoded_tx) {
                self.collect(i, out, &mut output);
            }
        }
        self.run_pending(now, &mut output).await;
        self.deliver(output).await;
        // What coalesced prefetch rules follow is re-read too (a lost notification costs
        // latency, never a task).
        self.kick.notify_one();
    }

    /// Samples queue sizes: every adapter's sample reads go out as one pipeline (one round trip
    /// per sampling round), each adapter's reads contiguous and in order so it sees its replies
    /// in the order it asked.
    async fn sample(&mut self) {
        let now = Utc::now();
        let mut output = Output::default();
        let mut batch: Vec<(usize, Read)> = Vec::new();
        for i in 0..self.slots.len() {
            // An adapter away decoding skips this round.
            if let Some(adapter) = self.slots[i].here() {
                batch.extend(adapter.sample_queues(now).into_iter().map(|r| (i, r)));
            }
        }
        if !batch.is_empty() {
            match execute(&self.client, &self.side, &batch).await {
                Ok(replies) => {
                    for ((i, read), reply) in batch.into_iter().zip(replies) {
                        self.on_reply(i, &read, reply, now, &mut output).await;
                    }
                }
                Err(e) => warn!(error = %e, "Queue sampling failed; next round will retry."),
            }
        }
        self.run_pending(now, &mut output).await;
        self.deliver(output).await;
    }

    /// The periodic rescan ([`Config::rescan_every`]): what the live feed covers is skipped but
    /// for every [`FULL_RESCAN_EVERY`]th, the rest scanned as at start.
    async fn rescan(&mut self) {
        self.rescans += 1;
        let full = self.rescans % FULL_RESCAN_EVERY == 0;
        self.scan_patterns(full).await;
    }

    /// Between two pages of a scan: handles what arrived meanwhile, then waits (handling what
    /// arrives) until the writer's channel holds at most [`SCAN_WRITER_BACKLOG`] commands. A
    /// scan reads pages faster than the writer folds them (each a known task's lookup in the
    /// file), and the channel is bounded in commands, not observations: a start-up scan of
    /// 300,000 Celery results peaked at 355-422 MiB, and a soak's hourly full rescan of ~1.8M
    /// at 506 MiB, of observations waiting there.
    async fn between_scan_pages(&mut self) {
        loop {
            while let Some(item) = self.rx.try_recv() {
                Box::pin(self.handle_incoming(item)).await;
            }
            if self.writer.backlog() <= SCAN_WRITER_BACKLOG
                || self.writer_error.is_some()
                || self.writer.is_closed()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A full scan (at start, after a reconnect or a lag, for a new adapter).
    async fn scan(&mut self) {
        self.scan_patterns(true).await;
    }

    /// Whether `pattern` of adapter `interest` reaches taskscope live: its keys' notifications
    /// (with notifications on) or its pub/sub channel.
    fn heard_live(&self, interest: &broker_adapters::Interest, pattern: &str) -> bool {
        let notified = matches!(self.feed, Feed::Notifications { .. })
            && interest.key_patterns.iter().any(|p| p == pattern);
        notified || interest.channel_patterns.iter().any(|p| p == pattern)
    }

    /// Bounded SCANs for every adapter's scan patterns (not `full`: those a full scan covered
    /// and the live feed keeps current are skipped); reads run page by page so memory stays
    /// flat on a large keyspace, and incoming messages are handled between pages.
    async fn scan_patterns(&mut self, full: bool) {
        let started = std::time::Instant::now();
        let mut total = 0usize;
        let mut skipped = 0usize;
        for i in 0..self.slots.len() {
            let interest = self.slots[i].interest();
            let main = self.client.clone();
            let side = self
                .side
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| main.clone());
            let (skip, main_patterns): (Vec<String>, Vec<String>) =
                interest.scan_patterns.iter().cloned().partition(|p| {
                    !full
                        && self.fully_scanned.contains(&(i, p.clone()))
                        && self.heard_live(&interest, p)
                });
            skipped += skip.len();
            if full {
                self.fully_scanned
                    .extend(main_patterns.iter().map(|p| (i, p.clone())));
            }
            let patterns: Vec<(redis::Redis, String)> = main_patterns
                .into_iter()
                .map(|p| (main.clone(), p))
                .chain(
                    interest
                        .side_scan_patterns
                        .into_iter()
                        .map(|p| (side.clone(), p)),
                )
                .collect();
            for (client, pattern) in patterns {
                let mut cursor = 0u64;
                loop {
                    let (next, keys) = match client.scan_page(cursor, &pattern, SCAN_COUNT).await {
                        Ok(page) => page,
                        Err(e) => {
                            warn!(error = %e, "Scan interrupted; it will run again after reconnecting.");
                            return;
                        }
                    };
                    total += keys.len();
                    let now = Utc::now();
                    let mut output = Output::default();
                    let call = slot::Call::Scan {
                        pattern: pattern.clone(),
                        keys,
                        now,
                    };
                    if let slot::Outcome::Ran(out) = self.slots[i].call(call, &self.decoded_tx) {
                        self.collect(i, out, &mut output);
                    }
                    self.run_pending(now, &mut output).await;
                    self.deliver(output).await;
                    self.between_scan_pages().await;
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        info!(keys = total, skipped_patterns = skipped, full, took = ?started.elapsed(), "Scanned Redis for queues and results.");
    }

    /// Publishes what adapters schedule themselves ([`Adapter::due_publishes`], e.g. Celery's
    /// `enable_events` with `--celery-enable-events`). An adapter away decoding is asked at
    /// the next tick.
    async fn publish_due(&mut self) {
        let now = Utc::now();
        let mut due = Vec::new();
        for slot in &mut self.slots {
            let broker = slot.broker();
            if let Some(adapter) = slot.here() {
                due.extend(adapter.due_publishes(now).into_iter().map(|p| (broker, p)));
            }
        }
        for (broker, p) in due {
            match self.client.publish(&p.channel, p.payload).await {
                Ok(receivers) => {
                    debug!(%broker, channel = %p.channel, receivers, "Published an adapter's message.")
                }
                Err(e) => {
                    warn!(%broker, channel = %p.channel, error = %e, "Could not publish an adapter's message.")
                }
            }
        }
    }
}

/// Runs reads on the connection each belongs to (the main one, or the asking adapter's side
/// connection for [`ReadRequest::Side`]), pipelined per connection; replies in order.
async fn execute(
    main: &redis::Redis,
    side: &[Option<redis::Redis>],
    batch: &[(usize, Read)],
) -> anyhow::Result<Vec<Reply>> {
    let side_of = |(adapter, read): &(usize, Read)| match read.request {
        ReadRequest::Side(_) => side.get(*adapter).and_then(Option::as_ref),
        _ => None,
    };
    if batch.iter().all(|r| side_of(r).is_none()) {
        let reads: Vec<ReadRequest> = batch.iter().map(|(_, r)| r.request.clone()).collect();
        return main.reads(&reads).await;
    }
    let mut replies: Vec<Option<Reply>> = vec![None; batch.len()];
    let mut groups: Vec<(&redis::Redis, Vec<usize>)> = Vec::new();
    for (index, item) in batch.iter().enumerate() {
        let client = side_of(item).unwrap_or(main);
        match groups.iter_mut().find(|(c, _)| std::ptr::eq(*c, client)) {
            Some((_, indexes)) => indexes.push(index),
            None => groups.push((client, vec![index])),
        }
    }
    for (client, indexes) in groups {
        let reads: Vec<ReadRequest> = indexes
            .iter()
            .map(|i| batch[*i].1.request.clone())
            .collect();
        for (i, reply) in indexes.into_iter().zip(client.reads(&reads).await?) {
            replies[i] = Some(reply);
        }
    }
    Ok(replies
        .into_iter()
        .map(|r| r.unwrap_or(Reply::Nil))
        .collect())
}

/// The next change of whether the detector listens to new keys; pending forever without one.
async fn listen_changed(rx: &mut Option<watch::Receiver<bool>>) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// The next finding of auto-detection; never resolves when detection is off.
async fn next_finding(
    rx: &mut Option<mpsc::Receiver<detect::Detected>>,
) -> Option<detect::Detected> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::{linger_from, Duration};

    #[test]
    fn linger_is_off_by_default_and_a_value_turns_it_on() {
        assert_eq!(linger_from(None), None);
        assert_eq!(linger_from(Some("soon")), None);
        assert_eq!(linger_from(Some("0")), None);
        assert_eq!(linger_from(Some(" 2 ")), Some(Duration::from_millis(2)));
        assert_eq!(linger_from(Some("5000")), Some(Duration::from_millis(100)));
    }

    #[test]
    fn redact_hides_credentials_of_any_url_parsable_or_not() {
        use super::redact;
        assert_eq!(
            redact("redis://:s3cret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://u:p@ss/w@rd@host/1"), "redis://***@host/1");
        assert_eq!(redact("redis//:s3cret@host"), "***@host");
        assert_eq!(
            redact("redis://host/0?password=s3cret"),
            "redis://host/0?***"
        );
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
