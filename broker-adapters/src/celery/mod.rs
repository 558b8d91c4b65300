//! Celery on Redis (kombu's Redis transport and Celery's Redis result backend).
//!
//! Where each state comes from:
//! - `queued`: the queue lists (`<queue>` and the priority lists `<queue>\x06\x16<p>`), read on
//!   `lpush` notifications and at every reconciliation; `task-sent` events.
//! - `running`: the `unacked` hash (the message a worker took, until it acks: with Celery's
//!   default early ack that is only a few milliseconds), a `STARTED` result
//!   (`task_track_started`), `task-received` / `task-started` events.
//! - `success` / `failure` / `retried`: result records (`celery-task-meta-<id>`, read from their
//!   pub/sub channel, and from the keys on start and for open tasks), task events.
//! - workers: `worker-online/heartbeat/offline` events, which workers send even without `-E`.
//!
//! Queues are found in kombu's `_kombu.binding.*` sets (workers and producers declare them) and
//! from configuration.

mod attempts;
pub mod control;
pub mod detect;
pub mod events;
pub mod layout;
pub mod message;
pub mod result;

use crate::adapter::{
    glob_escape, unknown_tag, Adapter, DecodeError, Interest, OpenTask, Output, Publish, Read,
    ReadRequest, Reply, Tag,
};
use crate::bounded::{key128, FifoMap, FifoSet, QueueNames, MAX_QUEUES};
use crate::model::{Broker, Observation, QueueSample, TaskEvent, TaskObservation};
use chrono::{DateTime, Utc};
use message::CeleryMessage;
use std::collections::{BTreeMap, HashMap, HashSet};

use layout::{KeyKind, UNACKED};
pub use layout::{PRIORITY_STEPS, SEP};

crate::read_reasons! {
    /// Why the Celery adapter reads (the tag of each of its reads).
    pub enum Why {
        /// A page of a queue list (`LRANGE`), from its head or its tail.
        QueuePage,
        /// The `unacked` hash (`HGETALL`); it also closes a sampling round.
        Unacked,
        /// Result records (`GET`/`MGET` of `celery-task-meta-*`).
        Results,
        /// A binding set (`SMEMBERS` of `_kombu.binding.*`): the queues it names.
        Bindings,
        /// A queue list's length (`LLEN`) for a sampling round.
        Length,
    }
}

/// How far ahead of ours a worker's clock may be when it starts an ETA message: a held message
/// that leaves `unacked` more than this before its ETA was given back, not started.
const ETA_CLOCK_MARGIN_MS: i64 = 2_000;
/// Queue entries read per LRANGE page.
const PAGE: i64 = 200;
/// How deep into one queue a reconciliation reads (a deeper backlog is counted, not listed).
const MAX_QUEUE_DEPTH: i64 = 100_000;
/// How many message identities are remembered to skip decoding the same entry twice.
const SEEN_CAPACITY: usize = 200_000;
/// Result keys read per MGET.
const MGET_CHUNK: usize = 100;

/// What the user told taskscope about their Celery setup.
#[derive(Debug, Clone)]
pub struct CeleryConfig {
    /// The Redis database number: event channels are prefixed with it (`/0.celeryev/...`).
    pub db: u32,
    /// Queues to watch even before any binding names them.
    pub queues: Vec<String>,
    /// The result backend's Redis when it is not the broker's (e.g. another database): result
    /// keys are then scanned and read there. Result channels need nothing: pub/sub spans
    /// databases.
    pub result_url: Option<String>,
    /// Broadcast `enable_events` every [`ENABLE_EVENTS_EVERY`] (`--celery-enable-events`, as
    /// Flower does), so task events flow without restarting workers with `-E`.
    pub enable_events: bool,
}

/// How often `enable_events` is broadcast when asked for: a worker started since gets it
/// within this long.
pub const ENABLE_EVENTS_EVERY: chrono::Duration = chrono::Duration::seconds(30);

impl Default for CeleryConfig {
    fn default() -> Self {
        CeleryConfig {
            db: 0,
            queues: vec!["celery".to_string()],
            result_url: None,
            enable_events: false,
        }
    }
}

/// The Celery adapter's memory between replies. Everything in it can be rebuilt from Redis.
pub struct CeleryAdapter {
    config: CeleryConfig,
    queues: QueueNames,
    /// Message identities reported queued, and bad payloads counted, as [`key128`]s.
    seen: FifoSet<u128>,
    /// The last read of `unacked`, by delivery tag: a new tag is a newly taken message; a tag
    /// that vanished was acknowledged, which with Celery's default early ack means the task
    /// just started executing.
    unacked: HashMap<String, InFlight>,
    /// Queue lengths read by the current sampling round, emitted with the `unacked` read that
    /// ends the round.
    sampled_lengths: Option<Sampling>,
    /// Attempt numbers for observations whose payload does not name one.
    attempts: attempts::Attempts,
    /// The messages of each queue list at its last complete read (a list shorter than a page):
    /// one gone at the next complete read was taken by a worker. This is how passive mode sees
    /// a waiting message start, even when its `unacked` entry lived too briefly to be read.
    listed: HashMap<String, HashMap<String, InFlight>>,
    /// List keys whose last notification was a pop: the `del` that follows a pop emptying the
    /// list is not a purge.
    popped: HashSet<String>,
    /// Queue entries whose body did not decode, by hash of their bytes, as decoded: every
    /// reconciliation reads the queue again, and such a body (a zlib bomb decompressed up to
    /// its cap, say) costs its whole budget each time. At most [`BAD_BODIES`], oldest
    /// forgotten first.
    bad_bodies: FifoMap<u64, CeleryMessage>,
    /// When `enable_events` was last broadcast, and how many times.
    enable_events_sent: Option<(DateTime<Utc>, u64)>,
}

/// Undecodable bodies remembered (see `CeleryAdapter::bad_bodies`).
const BAD_BODIES: usize = 1_024;

impl CeleryAdapter {
    pub fn new(config: CeleryConfig) -> CeleryAdapter {
        let mut queues = QueueNames::new("celery", MAX_QUEUES);
        for q in &config.queues {
            queues.insert(q);
        }
        CeleryAdapter {
            config,
            queues,
            seen: FifoSet::new(SEEN_CAPACITY),
            unacked: HashMap::new(),
            sampled_lengths: None,
            attempts: attempts::Attempts::new(SEEN_CAPACITY),
            listed: HashMap::new(),
            popped: HashSet::new(),
            bad_bodies: FifoMap::new(BAD_BODIES),
            enable_events_sent: None,
        }
    }

    /// Whether a payload that does not decode is reported for the first time: one that stays in
    /// Redis is read again by every reconciliation and must be counted once, not every time.
    fn first_time_bad(&mut self, bytes: &[u8]) -> bool {
        self.seen
            .insert(key128(&format!("undecodable:{:016x}", hash_of(bytes))))
    }

    /// Decodes a queue entry, or takes it from `bad_bodies` when its body failed before.
    fn decode_queued(&mut self, bytes: &[u8]) -> Result<CeleryMessage, message::MessageError> {
        let hash = hash_of(bytes);
        if let Some(msg) = self.bad_bodies.get(&hash) {
            return Ok(msg.clone());
        }
        let msg = message::decode(bytes)?;
        if msg.body_error.is_some() {
            self.bad_bodies.insert(hash, msg.clone());
        }
        Ok(msg)
    }

    /// A read of result keys: on the side connection when the results live elsewhere.
    fn result_read(&self, read: ReadRequest) -> Read {
        Why::Results.read(if self.config.result_url.is_some() {
            ReadRequest::Side(Box::new(read))
        } else {
            read
        })
    }

    /// Numbers the attempts of `out`'s task observations (see [`attempts`]), in order.
    /// `pubsub_result`: the observations come from a result record published on its channel.
    fn number_attempts(&mut self, out: &mut Output, pubsub_result: bool) {
        for obs in &mut out.observations {
            let Observation::Task(obs) = obs else {
                continue;
            };
            let from_event = obs.source == "event";
            match obs.attempt {
                Some(a) => self.attempts.explicit(&obs.task_id, a),
                None => {
                    use attempts::Unnumbered as U;
                    let source = match (from_event, pubsub_result, obs.event) {
                        (true, _, TaskEvent::Retried) => Some(U::RetryEvent),
                        (true, _, TaskEvent::Running) => Some(U::StartedEvent),
                        (false, true, TaskEvent::Retried) => Some(U::RetryResult),
                        (false, true, TaskEvent::Running) => Some(U::StartedResult),
                        _ => None,
                    };
                    if let Some(source) = source {
                        obs.attempt = self.attempts.number(&obs.task_id, source);
                    }
                }
            }
        }
    }

    /// The queues known so far.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.queues.iter().map(String::as_str)
    }

    /// The queue a list key belongs to (`celery` for `celery` and `celery\x06\x163`).
    fn read_queue(key: &str, start: i64) -> Read {
        Why::QueuePage.read(ReadRequest::LRange {
            key: key.to_string(),
            start,
            stop: start + PAGE - 1,
        })
    }

    fn read_unacked() -> Read {
        Why::Unacked.read(ReadRequest::HGetAll(UNACKED.to_string()))
    }

    /// A new queue: remember it and read what it holds.
    fn add_queue(&mut self, queue: &str, out: &mut Vec<Read>) {
        if self.queues.insert(queue) {
            out.extend(layout::queue_keys(queue).map(|k| Self::read_queue(&k, 0)));
        }
    }

    fn on_queue_page(&mut self, key: &str, start: i64, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let queue = layout::queue_of(key).to_string();
        let items = reply.into_items();
        let full_page = items.len() as i64 >= PAGE;
        let complete = start == 0 && !full_page;
        let mut listing = HashMap::new();
        let mut unseen = 0usize;
        for item in items {
            let Some(bytes) = item.as_bytes() else {
                continue;
            };
            match self.decode_queued(bytes) {
                Ok(msg) => {
                    let identity = message_identity(&msg);
                    if self.seen.insert(key128(&identity)) {
                        unseen += 1;
                        out.observations.push(queued_observation(&msg, &queue, now));
                        out.decode_errors.extend(body_error(&msg, key));
                    }
                    if complete {
                        listing.insert(
                            identity,
                            InFlight {
                                task_id: msg.task_id.clone(),
                                attempt: msg.retries,
                                queue: queue.clone(),
                                waiting_eta: msg.eta,
                            },
                        );
                    }
                }
                Err(e) if self.first_time_bad(bytes) => {
                    out.decode_errors
                        .push(decode_error(e.kind(), key, e.to_string()))
                }
                Err(_) => {}
            }
        }
        // A page of nothing but new messages: there may be more new ones behind it.
        if full_page && unseen > 0 && start >= 0 && start + PAGE < MAX_QUEUE_DEPTH {
            out.follow_up.push(Self::read_queue(key, start + PAGE));
        }
        if complete {
            self.popped.remove(key);
            if let Some(before) = self.listed.insert(key.to_string(), listing) {
                let after = &self.listed[key];
                for (identity, gone) in before {
                    // A message due later is held by the worker that took it (kombu keeps
                    // it in `unacked` until its ETA): it starts when that entry is
                    // acknowledged, or when its result says so.
                    let held = gone.waiting_eta.is_some_and(|eta| eta > now);
                    if !after.contains_key(&identity) && !held {
                        out.observations
                            .push(gone.running(now, "queue: taken by a worker"));
                    }
                }
            }
        } else if start == 0 {
            // Too long to list whole: nothing can be inferred from what is missing.
            self.listed.remove(key);
        }
        out
    }

    fn on_unacked(&mut self, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let mut tags = HashMap::new();
        let mut running: BTreeMap<String, u64> = BTreeMap::new();
        let mut delayed: BTreeMap<String, u64> = BTreeMap::new();
        for (tag, value) in reply.into_pairs() {
            let Some(tag) = tag
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
            else {
                continue;
            };
            let Some(bytes) = value.as_bytes() else {
                continue;
            };
            let decoded = crate::codec::json_value(bytes)
                .map_err(message::MessageError::from)
                .and_then(|v| {
                    // [message, exchange, routing_key]
                    let envelope = v.get(0).cloned().unwrap_or(v);
                    message::decode_envelope(&envelope)
                });
            match decoded {
                Ok(msg) => {
                    let queue = msg.routing_key.clone().unwrap_or_else(|| "celery".into());
                    let is_delayed = msg.eta.is_some_and(|eta| eta > now);
                    *if is_delayed {
                        &mut delayed
                    } else {
                        &mut running
                    }
                    .entry(queue.clone())
                    .or_default() += 1;
                    let waiting_eta = match self.unacked.get(&tag) {
                        None => {
                            out.observations
                                .extend(taken_observations(&msg, &queue, now));
                            if self.first_time_bad(msg.task_id.as_bytes()) {
                                out.decode_errors.extend(body_error(&msg, UNACKED));
                            }
                            msg.eta.filter(|eta| *eta > now)
                        }
                        // A held ETA message still held after its ETA: the worker runs it now
                        // (with late acks it stays here until it finishes).
                        Some(held) => match held.waiting_eta {
                            Some(eta) if eta <= now => {
                                out.observations.push(held.running(now, "unacked: due"));
                                None
                            }
                            other => other,
                        },
                    };
                    tags.insert(
                        tag,
                        InFlight {
                            task_id: msg.task_id,
                            attempt: msg.retries,
                            queue,
                            waiting_eta,
                        },
                    );
                }
                Err(e) if self.first_time_bad(bytes) => {
                    out.decode_errors
                        .push(decode_error(e.kind(), UNACKED, e.to_string()))
                }
                Err(_) => {}
            }
        }
        for (tag, gone) in &self.unacked {
            // A message held for an ETA still ahead was not acknowledged but given back to
            // its queue (a warm shutdown, or kombu's visibility-timeout restore): a worker acks
            // an ETA message only once it starts it. Its identity is already seen, so it stays
            // queued until a worker takes it again. The margin absorbs a worker's clock ahead
            // of ours.
            let given_back = gone
                .waiting_eta
                .is_some_and(|eta| eta > now + chrono::Duration::milliseconds(ETA_CLOCK_MARGIN_MS));
            if !tags.contains_key(tag) && !given_back {
                out.observations
                    .push(gone.running(now, "unacked: acknowledged"));
            }
        }
        self.unacked = tags;
        // A round whose length reads did not all arrive (a failed pipeline) is dropped.
        if let Some(Sampling {
            lengths,
            awaiting: 0,
        }) = self.sampled_lengths.take()
        {
            for (queue, length) in lengths {
                out.queue_samples.push(QueueSample {
                    broker: Broker::Celery,
                    running: running.get(&queue).copied().unwrap_or(0),
                    delayed: delayed.get(&queue).copied().unwrap_or(0),
                    name: queue,
                    length,
                    dead: 0,
                    sampled_at: now,
                    // Protocol 2 messages carry no enqueue time (headers: eta, expires, retries,
                    // origin...; `unacked_index` scores are delivery times, not enqueueing).
                    oldest_enqueued_at: None,
                });
            }
        }
        out
    }

    fn on_results(&mut self, keys: &[String], reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let items = match reply {
            Reply::Array(items) => items,
            single => vec![single],
        };
        for (key, item) in keys.iter().zip(items) {
            if let Some(bytes) = item.as_bytes() {
                out.merge(self.result_record(key, bytes, now));
            }
        }
        out
    }

    fn result_record(&mut self, key: &str, bytes: &[u8], now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let key_id = match layout::classify(key, |_| false) {
            Some(KeyKind::Result(id)) => Some(id),
            _ => None,
        };
        match result::decode(bytes, key_id) {
            Ok(meta) => out.observations.extend(result_observation(meta, now)),
            Err(e) if self.first_time_bad(bytes) => {
                out.decode_errors
                    .push(decode_error("result", key, e.to_string()))
            }
            Err(_) => {}
        }
        out
    }

    fn on_bindings(&mut self, key: &str, reply: Reply) -> Output {
        let mut out = Output::default();
        for member in reply.into_items() {
            let Some(bytes) = member.as_bytes() else {
                continue;
            };
            let text = String::from_utf8_lossy(bytes);
            // routing_key \x06\x16 pattern \x06\x16 queue
            let Some(queue) = layout::binding_queue(&text) else {
                continue;
            };
            if layout::is_task_queue(key, queue) {
                let mut reads = Vec::new();
                self.add_queue(queue, &mut reads);
                out.follow_up.extend(reads);
            }
        }
        out
    }
}

/// One round of queue sampling: lengths summed over a queue's priority lists, and how many
/// length replies are still to come before the closing `unacked` read emits the samples.
struct Sampling {
    lengths: BTreeMap<String, u64>,
    awaiting: usize,
}

/// A message as last read from a queue list or from `unacked`.
struct InFlight {
    task_id: String,
    attempt: u32,
    queue: String,
    /// The ETA it was reported waiting for (a held message in `unacked`, or a listed one),
    /// not yet reported running.
    waiting_eta: Option<DateTime<Utc>>,
}

impl InFlight {
    /// The message left where it was: a worker has it (and, after an early ack, runs it).
    fn running(&self, now: DateTime<Utc>, source: &'static str) -> Observation {
        let mut obs = TaskObservation::new(
            Broker::Celery,
            self.task_id.clone(),
            now,
            TaskEvent::Running,
            source,
        );
        obs.attempt = Some(self.attempt);
        obs.fields.queue = Some(self.queue.clone());
        Observation::Task(obs)
    }
}

fn message_identity(msg: &CeleryMessage) -> String {
    match &msg.delivery_tag {
        Some(tag) => tag.clone(),
        None => format!("{}#{}", msg.task_id, msg.retries),
    }
}

fn message_fields(msg: &CeleryMessage, queue: &str, obs: &mut TaskObservation) {
    obs.attempt = Some(msg.retries);
    obs.fields.queue = Some(queue.to_string());
    obs.fields.name = msg.name.clone();
    obs.fields.args = msg.args.clone();
    obs.fields.kwargs = msg.kwargs.clone();
    obs.fields.eta = msg.eta;
    if let Some(e) = &msg.body_error {
        // Listed all the same (name from the headers), saying why it has no arguments.
        obs.fields.error = Some(format!("message body does not decode: {e}"));
    }
}

/// A payload's identity in the adapter's memories of bad payloads.
fn hash_of(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// The decode error of a message whose envelope decoded but whose body did not.
fn body_error(msg: &CeleryMessage, key: &str) -> Option<DecodeError> {
    let e = msg.body_error.as_ref()?;
    Some(decode_error(
        "body-decode",
        key,
        format!("task {}: {e}", msg.task_id),
    ))
}

fn queued_observation(msg: &CeleryMessage, queue: &str, now: DateTime<Utc>) -> Observation {
    let mut obs = TaskObservation::new(
        Broker::Celery,
        &msg.task_id,
        now,
        TaskEvent::Queued,
        "queue",
    );
    message_fields(msg, queue, &mut obs);
    Observation::Task(obs)
}

/// A message in `unacked`: taken by a worker; still waiting if its ETA is in the future.
///
/// A re-sent message (`retries` > 0) first seen already due was queued as that attempt before
/// it ran: it is reported queued, then running. Under load a `self.retry()` with a short delay
/// (`default_retry_delay=0.3`) publishes the next attempt's message, and that message can be
/// due before the worker has stored the `RETRY` record of the attempt that failed; the record
/// then comes after the next attempt's start, which makes it late (the state machine keeps it
/// behind), and without the queued report the task would go from running to running with no
/// `retried` in its timeline.
fn taken_observations(msg: &CeleryMessage, queue: &str, now: DateTime<Utc>) -> Vec<Observation> {
    let observe = |event| {
        let mut obs = TaskObservation::new(Broker::Celery, &msg.task_id, now, event, "unacked");
        message_fields(msg, queue, &mut obs);
        Observation::Task(obs)
    };
    if msg.eta.is_some_and(|eta| eta > now) {
        vec![observe(TaskEvent::Queued)]
    } else if msg.retries > 0 {
        vec![observe(TaskEvent::Queued), observe(TaskEvent::Running)]
    } else {
        vec![observe(TaskEvent::Running)]
    }
}

/// What a result record says about its task; `None` for `PENDING` and custom states.
fn result_observation(meta: result::ResultMeta, now: DateTime<Utc>) -> Option<Observation> {
    let event = match meta.status.as_str() {
        "STARTED" => TaskEvent::Running,
        "RETRY" => TaskEvent::Retried,
        "SUCCESS" => TaskEvent::Succeeded,
        "FAILURE" | "REVOKED" | "REJECTED" => TaskEvent::Failed,
        _ => return None,
    };
    let at = meta.date_done.unwrap_or(now);
    let mut obs = TaskObservation::new(Broker::Celery, &meta.task_id, at, event, "result");
    obs.attempt = meta.retries;
    let f = &mut obs.fields;
    f.name = meta.name;
    f.args = meta.args;
    f.kwargs = meta.kwargs;
    f.queue = meta.queue;
    f.worker = meta.worker;
    match event {
        TaskEvent::Running => {
            // STARTED carries {"pid", "hostname"}.
            if f.worker.is_none() {
                f.worker = meta.result.get("hostname").and_then(message::as_string);
            }
            f.started_at = meta.date_done;
        }
        TaskEvent::Succeeded => f.result = Some(meta.result),
        _ => {
            f.error = if meta.status == "REVOKED" {
                Some(
                    result::error_line(&meta.result, None)
                        .unwrap_or_else(|| "TaskRevokedError: revoked".into()),
                )
            } else {
                result::error_line(&meta.result, meta.traceback.as_deref())
            };
            f.traceback = meta.traceback;
        }
    }
    Some(Observation::Task(obs))
}

fn decode_error(kind: &'static str, key: &str, message: String) -> DecodeError {
    DecodeError {
        broker: Broker::Celery,
        kind,
        key: key.to_string(),
        message,
    }
}

impl Adapter for CeleryAdapter {
    fn broker(&self) -> Broker {
        Broker::Celery
    }

    fn on_detected(&mut self, setting: &crate::detect::Setting) -> Vec<Read> {
        let mut reads = Vec::new();
        match setting {
            crate::detect::Setting::CeleryQueue(queue) => self.add_queue(queue, &mut reads),
            // A result backend the user named wins; results found in another database are
            // read there from now on (the ingest layer connects on `side_url`).
            crate::detect::Setting::CeleryResultDb { url, .. }
                if self.config.result_url.is_none() =>
            {
                self.config.result_url = Some(url.clone());
            }
            _ => {}
        }
        reads
    }

    fn interest(&self) -> Interest {
        let mut key_patterns = vec![UNACKED.to_string(), layout::bindings_pattern()];
        for q in &self.queues {
            let escaped = glob_escape(q);
            key_patterns.push(layout::priority_lists_pattern(&escaped));
            key_patterns.push(escaped);
        }
        Interest {
            channel_patterns: vec![
                layout::results_pattern(),
                layout::events_pattern(self.config.db),
                "celeryev*".to_string(),
            ],
            key_patterns,
            scan_patterns: if self.config.result_url.is_some() {
                vec![layout::bindings_pattern()]
            } else {
                vec![layout::bindings_pattern(), layout::results_pattern()]
            },
            side_scan_patterns: if self.config.result_url.is_some() {
                vec![layout::results_pattern()]
            } else {
                Vec::new()
            },
            notify_classes: "lhsg".to_string(),
            prefetch: vec![crate::adapter::Prefetch {
                key: UNACKED.to_string(),
                ops: vec!["hset".to_string(), "hdel".to_string()],
                reads: vec![crate::adapter::PrefetchRead::Read(Self::read_unacked())],
                coalesce: false,
            }],
            first_sight: Vec::new(),
        }
    }

    /// The interest follows from the queues (which only grow) and whether results live
    /// elsewhere (which, once learned, stays).
    fn interest_version(&self) -> Option<u64> {
        Some(((self.queues.len() as u64) << 1) | u64::from(self.config.result_url.is_some()))
    }

    fn on_scan(&mut self, pattern: &str, keys: Vec<String>, _now: DateTime<Utc>) -> Vec<Read> {
        if pattern == layout::bindings_pattern() {
            keys.into_iter()
                .map(|k| Why::Bindings.read(ReadRequest::SMembers(k)))
                .collect()
        } else if pattern == layout::results_pattern() {
            keys.chunks(MGET_CHUNK)
                .map(|c| self.result_read(ReadRequest::MGet(c.to_vec())))
                .collect()
        } else {
            Vec::new()
        }
    }

    fn on_key_event(&mut self, key: &str, op: &str, _now: DateTime<Utc>) -> Vec<Read> {
        match layout::classify(key, |q| self.queues.contains(q)) {
            Some(KeyKind::Unacked) if matches!(op, "hset" | "hdel") => vec![Self::read_unacked()],
            Some(KeyKind::Binding(_)) if op == "sadd" => {
                vec![Why::Bindings.read(ReadRequest::SMembers(key.to_string()))]
            }
            Some(KeyKind::Queue(_)) => match op {
                "lpush" | "linsert" => vec![Self::read_queue(key, 0)],
                // A worker took a message (BRPOP fires `rpop`): see which one.
                "rpop" | "lpop" => {
                    self.popped.insert(key.to_string());
                    vec![Self::read_queue(key, 0)]
                }
                // A `del` right after a pop is the pop emptying the list; alone, a purge: what
                // was listed was not taken by anyone.
                "del" => {
                    if !self.popped.remove(key) {
                        self.listed.remove(key);
                    }
                    Vec::new()
                }
                // kombu restores unacked messages with RPUSH-like pushes at the tail.
                "rpush" => vec![Why::QueuePage.read(ReadRequest::LRange {
                    key: key.to_string(),
                    start: -PAGE,
                    stop: -1,
                })],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn on_message(&mut self, channel: &str, payload: &[u8], now: DateTime<Utc>) -> Output {
        if channel.starts_with(layout::RESULT_PREFIX) {
            let mut out = self.result_record(channel, payload, now);
            self.number_attempts(&mut out, true);
            return out;
        }
        let mut out = Output::default();
        if channel.contains("celeryev") {
            match events::observe_message(payload, now) {
                Ok(observations) => out.observations.extend(observations),
                Err(e) => out
                    .decode_errors
                    .push(decode_error(e.kind(), channel, e.to_string())),
            }
            self.number_attempts(&mut out, false);
        }
        out
    }

    /// A failed length read still arrived: that list counts as empty in this round.
    fn on_read_error(
        &mut self,
        tag: Tag,
        request: &ReadRequest,
        error: &str,
        _now: DateTime<Utc>,
    ) -> Output {
        if let (Ok(Why::Length), Some(sampling)) =
            (Why::try_from(tag), self.sampled_lengths.as_mut())
        {
            sampling.awaiting = sampling.awaiting.saturating_sub(1);
        }
        Output {
            decode_errors: vec![decode_error(
                "redis-reply",
                request.key(),
                error.to_string(),
            )],
            ..Output::default()
        }
    }

    fn on_reply(
        &mut self,
        tag: Tag,
        request: &ReadRequest,
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output {
        let Ok(why) = Why::try_from(tag) else {
            return unknown_tag(Broker::Celery, request, tag);
        };
        let mut out = match (why, request.inner()) {
            (Why::QueuePage, ReadRequest::LRange { key, start, .. }) => {
                self.on_queue_page(key, *start, reply, now)
            }
            (Why::Unacked, _) => self.on_unacked(reply, now),
            (Why::Results, ReadRequest::MGet(keys)) => self.on_results(keys, reply, now),
            (Why::Results, ReadRequest::Get(key)) => {
                self.on_results(std::slice::from_ref(key), reply, now)
            }
            (Why::Bindings, request) => self.on_bindings(request.key(), reply),
            (Why::Length, request) => {
                if let Some(sampling) = self.sampled_lengths.as_mut() {
                    let queue = layout::queue_of(request.key());
                    *sampling.lengths.entry(queue.to_string()).or_default() +=
                        reply.as_i64().unwrap_or(0).max(0) as u64;
                    sampling.awaiting = sampling.awaiting.saturating_sub(1);
                }
                Output::default()
            }
            _ => Output::default(),
        };
        self.number_attempts(&mut out, false);
        out
    }

    fn reconcile(&mut self, open: &[OpenTask], _now: DateTime<Utc>) -> Vec<Read> {
        for task in open {
            self.attempts.stored(&task.id);
        }
        let mut reads: Vec<Read> = self
            .queues
            .iter()
            .flat_map(|q| layout::queue_keys(q))
            .map(|k| Self::read_queue(&k, 0))
            .collect();
        reads.push(Self::read_unacked());
        let result_keys: Vec<String> = open.iter().map(|t| layout::result_key(&t.id)).collect();
        reads.extend(
            result_keys
                .chunks(MGET_CHUNK)
                .map(|c| self.result_read(ReadRequest::MGet(c.to_vec()))),
        );
        reads
    }

    fn side_url(&self) -> Option<String> {
        self.config.result_url.clone()
    }

    /// `enable_events` at start and every [`ENABLE_EVENTS_EVERY`], when configured.
    fn due_publishes(&mut self, now: DateTime<Utc>) -> Vec<Publish> {
        if !self.config.enable_events {
            return Vec::new();
        }
        let sent = match self.enable_events_sent {
            Some((last, _)) if now - last < ENABLE_EVENTS_EVERY => return Vec::new(),
            Some((_, n)) => n + 1,
            None => 1,
        };
        self.enable_events_sent = Some((now, sent));
        let (channel, payload) =
            control::enable_events(self.config.db, &control::delivery_tag(now, sent), now);
        vec![Publish { channel, payload }]
    }

    fn on_gap(&mut self) {
        self.listed.clear();
        self.popped.clear();
        self.unacked.clear();
        self.sampled_lengths = None;
    }

    fn sample_queues(&mut self, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads: Vec<Read> = self
            .queues
            .iter()
            .flat_map(|q| layout::queue_keys(q))
            .map(|k| Why::Length.read(ReadRequest::LLen(k)))
            .collect();
        self.sampled_lengths = Some(Sampling {
            lengths: self.queues.iter().map(|q| (q.clone(), 0)).collect(),
            awaiting: reads.len(),
        });
        reads.push(Self::read_unacked());
        reads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Setting;

    fn result_db(url: &str) -> Setting {
        Setting::CeleryResultDb {
            db: 1,
            url: url.to_string(),
        }
    }

    #[test]
    fn results_found_in_another_database_move_result_reads_there() {
        let mut adapter = CeleryAdapter::new(CeleryConfig::default());
        assert_eq!(adapter.side_url(), None);
        assert!(adapter.interest().side_scan_patterns.is_empty());
        adapter.on_detected(&result_db("redis://h:6379/1"));
        assert_eq!(adapter.side_url().as_deref(), Some("redis://h:6379/1"));
        assert_eq!(
            adapter.interest().side_scan_patterns,
            vec!["celery-task-meta-*".to_string()]
        );
        let open = [OpenTask {
            id: "t1".into(),
            queue: None,
            name: None,
        }];
        let reads = adapter.reconcile(&open, Utc::now());
        assert!(
            reads.iter().any(
                |r| matches!(&r.request, ReadRequest::Side(inner) if matches!(**inner, ReadRequest::MGet(_)))
            ),
            "open tasks' results are read on the side connection: {reads:?}"
        );
    }

    #[test]
    fn a_given_result_url_wins_over_detection() {
        let mut adapter = CeleryAdapter::new(CeleryConfig {
            result_url: Some("redis://other:6379/2".into()),
            ..CeleryConfig::default()
        });
        adapter.on_detected(&result_db("redis://h:6379/1"));
        assert_eq!(adapter.side_url().as_deref(), Some("redis://other:6379/2"));
    }

    #[test]
    fn enable_events_is_published_only_when_asked_then_every_30_s() {
        let now = Utc::now();
        let mut quiet = CeleryAdapter::new(CeleryConfig::default());
        assert!(quiet.due_publishes(now).is_empty(), "read-only by default");
        let mut a = CeleryAdapter::new(CeleryConfig {
            db: 3,
            enable_events: true,
            ..CeleryConfig::default()
        });
        let first = a.due_publishes(now);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].channel, "/3.celery.pidbox");
        let body: serde_json::Value =
            serde_json::from_slice(&first[0].payload).expect("a kombu envelope");
        assert_eq!(
            body["properties"]["delivery_info"]["exchange"],
            "celery.pidbox"
        );
        assert!(a
            .due_publishes(now + chrono::Duration::seconds(29))
            .is_empty());
        let again = a.due_publishes(now + ENABLE_EVENTS_EVERY);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].payload, first[0].payload, "a new delivery tag");
    }
}
