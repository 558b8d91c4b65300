//! taskiq with taskiq-redis: `RedisStreamBroker`, `ListQueueBroker`, `PubSubBroker`, and the
//! `RedisAsyncResultBackend`.
//!
//! Where each state comes from (fixtures: `tests/fixtures/taskiq/`):
//! - **Stream** (`XADD <queue> * data <message>`, consumer groups): the stream is read on its own
//!   with `XRANGE` from the last id seen (never `XREADGROUP`: taskscope joins no group and acks
//!   nothing), so every entry is seen even when a worker reads and acks it within milliseconds.
//!   `queued` when added; `running` while the entry is in a group's pending entries list
//!   (`XPENDING`, worker = consumer name); once it has left the PEL behind the group's
//!   `last-delivered-id` it was acknowledged, and the result record tells the outcome. Consumers'
//!   idle times (`XINFO CONSUMERS`) are their heartbeats: the shared sweep abandons a running
//!   task whose consumer fell silent. An `XAUTOCLAIM` by another consumer moves it on.
//! - **List** (`LPUSH` / `BRPOP`): `queued` while the item is in the list, `running` once it is
//!   gone (a worker popped it: no worker name, no acknowledgement exists), outcome from results.
//! - **Pub/sub**: `queued` when published on the channel; outcome from results.
//! - **Results**: key `<task_id>` or `<prefix>:<task_id>`; pickle, JSON or msgpack (see
//!   [`result`]). Any number of prefixes at once (an app with two brokers may use two result
//!   backends), bare ids always: a task's result is read under each, the first record found
//!   tells. Prefixes come from the configuration, or, when it names none, from auto-detection
//!   ([`crate::detect::Setting::TaskiqResultPrefix`]). `retried`: a new message with the same
//!   `task_id` and a higher `_retries` label.
//!
//! Liveness: taskiq-redis has no worker heartbeat. The only workers taskscope knows are a
//! stream's consumers, and only a task in a consumer's pending list carries one as its worker;
//! a list or pub/sub task (and an acknowledged stream entry) runs with no worker, and the
//! sweep never abandons those ([`crate::model::Broker::workers_vouch_for_unnamed_runs`]).
//!
//! An acknowledged stream entry without a result record (no result backend configured): taskiq
//! acknowledges failures too, so the outcome is unknown. When no result record was ever seen for
//! a task of that queue it is settled as `success` with a detail that says it was assumed; when results do
//! exist, taskscope keeps waiting for the record.
//!
//! How a stream is followed: `XRANGE` from the last entry id seen (`XREVRANGE` of the newest
//! 1,000 the first time), then per consumer group `XINFO GROUPS` (`last-delivered-id`, `lag`),
//! `XINFO CONSUMERS` (idle times, emitted as worker heartbeats dated `now - idle`) and
//! `XPENDING`. These run on every `xadd` notification of the stream and at every reconciliation,
//! because `XREADGROUP` and `XACK` raise no keyspace event. taskiq acknowledges after saving the
//! result (`when_saved`), so an acknowledged entry's result is read in one pipelined `MGET`,
//! unless its record was already read on its `set` notification (the usual case). Other streams
//! are probed once at their first `xadd` key event and adopted when their entry is a taskiq
//! message; lists found by timing (`detect::ListCorrelator`) are followed on probation until they
//! hold a taskiq message.

pub mod detect;
mod follow_list;
mod follow_stream;
pub mod layout;
pub mod message;
mod outcome;
pub mod result;
pub mod stream;

use crate::adapter::{
    glob_escape, unknown_tag, Adapter, DecodeError, Interest, OpenTask, Output, Read, ReadRequest,
    Reply, Tag,
};
use layout::KeyKind;

use crate::bounded::{FifoMap, FifoSet, QueueLimit, MAX_QUEUES};
use crate::model::{Broker, Observation, QueueSample, TaskEvent, TaskObservation};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
use stream::StreamId;

pub use message::{looks_like_message, looks_like_stream_entry};
pub use result::looks_like_result;

crate::read_reasons! {
    /// Why the taskiq adapter reads (the tag of each of its reads).
    pub enum Why {
        /// `TYPE` of a configured queue: a stream or a list.
        Kind,
        /// The newest entry of a stream no one named (`XREVRANGE ... COUNT 1`): is it taskiq's?
        Probe,
        /// The newest entries of a followed stream, read the first time (`XREVRANGE`).
        Window,
        /// The entries after the last one read (`XRANGE (last + COUNT`).
        NewEntries,
        /// One entry a pending list names and that was never read (`XRANGE id id`).
        PendingEntry,
        /// The oldest waiting entry of a stream, for its queue sample.
        OldestProbe,
        /// `XINFO GROUPS` (also closes a stream's sampling round).
        Groups,
        /// `XINFO CONSUMERS` of one group.
        Consumers,
        /// `XPENDING` of one group.
        Pending,
        /// `XLEN` of a stream for its sample.
        StreamLength,
        /// The items of a list queue (`LRANGE`).
        ListItems,
        /// `LLEN` of a list queue for its sample.
        ListLength,
        /// Result records (`GET`/`MGET`).
        Results,
    }
}

/// Entries read per `XRANGE` page.
const PAGE: u64 = 500;
/// How far back the first read of a stream goes (older entries are history taskscope skips).
const INITIAL_WINDOW: u64 = 1_000;
/// Pending entries read per group and pass.
const PEL_PAGE: u64 = 1_000;
/// List items read per pass (a deeper backlog is counted by sampling, not listed).
const LIST_DEPTH: i64 = 10_000;
/// Stream keys found not to be taskiq's, remembered so each is probed once.
const PROBED_CAPACITY: usize = 100_000;
/// Result keys per `MGET`.
const MGET_CHUNK: usize = 256;
/// Empty reads of an acknowledged task's result key before, with no result backend in sight,
/// it is settled as an assumed success.
const RESULT_TRIES: u32 = 3;
/// Tasks and unsettled entries remembered (the oldest are forgotten first).
const TASK_CAPACITY: usize = 200_000;
/// Stream consumers remembered (their last heartbeat and pending count).
const CONSUMER_CAPACITY: usize = 10_000;
const ENTRY_CAPACITY: usize = 100_000;

#[derive(Debug, Clone)]
pub struct TaskiqConfig {
    /// Queue names: streams, lists or pub/sub channels (the broker's `queue_name`).
    pub queues: Vec<String>,
    /// The result backends' `prefix_str`s given by the user (bare task ids are always read
    /// too). Empty: the prefixes auto-detection hands over; given: only these, detection's are
    /// ignored (the user's word wins).
    pub result_prefixes: Vec<String>,
    /// The watched database: other taskiq streams are discovered from its `xadd` key events.
    pub db: u32,
}

impl Default for TaskiqConfig {
    fn default() -> Self {
        TaskiqConfig {
            queues: vec!["taskiq".to_string()],
            result_prefixes: Vec::new(),
            db: 0,
        }
    }
}

/// What a configured queue name turned out to be in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueKind {
    /// Not seen as a key yet (absent, or a pub/sub channel).
    Unknown,
    Stream,
    List,
}

/// An entry read from a stream and not settled yet.
#[derive(Debug, Clone)]
struct EntryInfo {
    task_id: String,
    attempt: u32,
    /// The consumer whose PEL held it at the last read.
    consumer: Option<String>,
}

#[derive(Debug)]
struct StreamState {
    last_id: Option<StreamId>,
    entries: BTreeMap<StreamId, EntryInfo>,
    groups: BTreeMap<String, stream::Group>,
    /// `XLEN` of the current sampling round.
    xlen: Option<u64>,
    /// Entries that did not decode (counted once; not re-read when they sit in a PEL).
    undecodable: FifoSet<StreamId>,
    /// Per group, the pending ids of its last `XPENDING` read: with several groups (each gets
    /// every entry) an entry is settled only once no group holds it.
    pels: HashMap<String, HashSet<StreamId>>,
}

impl Default for StreamState {
    fn default() -> Self {
        StreamState {
            last_id: None,
            entries: BTreeMap::new(),
            groups: BTreeMap::new(),
            xlen: None,
            undecodable: FifoSet::new(ENTRY_CAPACITY),
            pels: HashMap::new(),
        }
    }
}

/// A task taskscope learned about from a message.
#[derive(Debug, Clone)]
struct TaskTrack {
    /// The highest `_retries` seen in its messages.
    attempt: u32,
    /// Acknowledged (stream) or popped (list), its result not read yet: empty reads so far.
    awaiting: Option<u32>,
    /// The attempt whose result record was read last (on its `set` notification, usually
    /// before the acknowledgement is seen): an acknowledgement of it or an earlier attempt
    /// needs no second read of the same record.
    result_read: Option<u32>,
    /// The queue its message was seen in.
    queue: String,
}

#[derive(Debug, Clone)]
struct ConsumerSeen {
    pending: u64,
    last_alive: DateTime<Utc>,
}

pub struct TaskiqAdapter {
    /// Configured queue names, then streams discovered from `xadd` key events (at most
    /// [`MAX_QUEUES`]: past it new ones are refused, see `queue_limit`).
    queues: Vec<String>,
    /// At most [`MAX_QUEUES`] discovered queues are watched.
    queue_limit: QueueLimit,
    db: u32,
    /// Streams probed (one entry read) and found not to hold taskiq messages, or being probed.
    probed: FifoSet<String>,
    /// Result key prefixes, longest first (a key is matched against the most specific one).
    prefixes: Vec<String>,
    /// The prefixes came from the configuration: detected ones are not added.
    prefixes_given: bool,
    /// Lists added by auto-detection and not confirmed yet by holding a taskiq message: the
    /// first read that finds items and none of them taskiq's stops following the list.
    probation: HashSet<String>,
    kinds: HashMap<String, QueueKind>,
    streams: HashMap<String, StreamState>,
    /// Per list: the (task id, attempt) of the items at its last read; `None` after a gap.
    lists: HashMap<String, Option<HashSet<(String, u32)>>>,
    tasks: FifoMap<String, TaskTrack>,
    /// Bounded: taskiq-redis names a consumer by a fresh uuid per process, and Redis keeps
    /// every consumer a group ever had. One forgotten and listed again is reported again.
    consumers: FifoMap<String, ConsumerSeen>,
    /// Streams whose next `XINFO GROUPS` reply makes a queue sample.
    sampling: HashSet<String>,
    /// Queue samples of streams with entries waiting, held until the `XRANGE ... COUNT 1`
    /// after the last delivered id answers with the oldest one (keyed by that read).
    oldest_probes: HashMap<ReadRequest, QueueSample>,
    /// Queues with a task whose result record was read: there, a missing one means "not yet"
    /// (a result backend is configured), elsewhere "never" (none is).
    results_seen: HashSet<String>,
    /// Per stream, outcomes read before the stream was read after them ([`outcome`]): handed
    /// out after the next read of its new entries, so that every re-send written before the
    /// record is `retried` first, whatever batch each was read in.
    held: HashMap<String, Vec<Observation>>,
}

/// Prefixes trimmed, without empties and duplicates, longest first.
fn sorted_prefixes(prefixes: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = prefixes
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

fn text(r: &Reply) -> Option<String> {
    r.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

impl TaskiqAdapter {
    pub fn new(config: TaskiqConfig) -> TaskiqAdapter {
        let queues: Vec<String> = config
            .queues
            .into_iter()
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty())
            .collect();
        TaskiqAdapter {
            kinds: queues
                .iter()
                .map(|q| (q.clone(), QueueKind::Unknown))
                .collect(),
            queues,
            queue_limit: QueueLimit::new("taskiq", MAX_QUEUES),
            db: config.db,
            probed: FifoSet::new(PROBED_CAPACITY),
            prefixes_given: config.result_prefixes.iter().any(|p| !p.trim().is_empty()),
            prefixes: sorted_prefixes(config.result_prefixes),
            probation: HashSet::new(),
            streams: HashMap::new(),
            lists: HashMap::new(),
            tasks: FifoMap::new(TASK_CAPACITY),
            consumers: FifoMap::new(CONSUMER_CAPACITY),
            sampling: HashSet::new(),
            oldest_probes: HashMap::new(),
            results_seen: HashSet::new(),
            held: HashMap::new(),
        }
    }

    /// Where `task_id`'s result record may be: under every known prefix, and bare.
    fn result_keys(&self, task_id: &str) -> Vec<String> {
        layout::result_keys(&self.prefixes, task_id)
    }

    /// `MGET`s of the result keys of `ids`, a task's keys never split across two reads (a
    /// miss is judged over all of them).
    fn result_reads<'i>(&self, ids: impl IntoIterator<Item = &'i str>) -> Vec<Read> {
        let per_chunk = (MGET_CHUNK / (self.prefixes.len() + 1)).max(1);
        let ids: Vec<&str> = ids.into_iter().collect();
        ids.chunks(per_chunk)
            .map(|c| {
                Why::Results.read(ReadRequest::MGet(
                    c.iter().flat_map(|id| self.result_keys(id)).collect(),
                ))
            })
            .collect()
    }

    /// A result key's prefix (`None`: a bare id) and task id, if the key may be one.
    fn split_result_key<'s, 'k>(&'s self, key: &'k str) -> Option<(Option<&'s str>, &'k str)> {
        match layout::classify(key, &self.prefixes)? {
            KeyKind::PrefixedResult { prefix, task_id } => Some((Some(prefix), task_id)),
            KeyKind::BareResult(id) => Some((None, id)),
        }
    }

    /// The task id a result key belongs to, if the key is one.
    fn task_of_result_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        self.split_result_key(key).map(|(_, id)| id)
    }

    /// Whether a changed or scanned key may be a result record worth a read: any key under a
    /// known prefix; bare, taskiq's default ids (32 hex digits) and ids of known tasks (other
    /// brokers' keys come through the same notification feed).
    fn is_result_key(&self, key: &str) -> bool {
        match self.split_result_key(key) {
            Some((Some(_), _)) => true,
            Some((None, id)) => layout::is_hex32(id) || self.tasks.contains_key(id),
            None => false,
        }
    }

    fn result_patterns(&self) -> Vec<String> {
        layout::result_patterns(&self.prefixes)
    }

    /// Starts reading results under `prefix` (found by auto-detection): reads of the records of
    /// the tasks followed whose outcome is not known yet (open tasks of the store come with the
    /// next reconciliation, new records with their `set` notification).
    fn add_prefix(&mut self, prefix: &str) -> Vec<Read> {
        let prefix = prefix.trim();
        if prefix.is_empty() || self.prefixes.iter().any(|p| p == prefix) {
            return Vec::new();
        }
        if self.prefixes_given {
            tracing::debug!(%prefix, "Auto-detection found a taskiq result prefix; --taskiq-result-prefix was given, so it is not read.");
            return Vec::new();
        }
        tracing::info!(%prefix, "Auto-detection found a taskiq result prefix; reading results under it.");
        let mut prefixes = std::mem::take(&mut self.prefixes);
        prefixes.push(prefix.to_string());
        self.prefixes = sorted_prefixes(prefixes);
        let keys: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.result_read.is_none_or(|r| r < t.attempt))
            .map(|(id, _)| layout::result_key(prefix, id))
            .collect();
        keys.chunks(MGET_CHUNK)
            .map(|c| Why::Results.read(ReadRequest::MGet(c.to_vec())))
            .collect()
    }

    fn is_queue(&self, key: &str) -> bool {
        self.kinds.contains_key(key)
    }

    fn track(&mut self, task_id: &str, attempt: u32, queue: &str) -> &mut TaskTrack {
        let t = self
            .tasks
            .get_or_insert_with(task_id.to_string(), || TaskTrack {
                attempt,
                awaiting: None,
                result_read: None,
                queue: queue.to_string(),
            });
        if attempt > t.attempt {
            // A retry's copy: whatever the previous attempt awaited is moot now.
            t.attempt = attempt;
            t.awaiting = None;
        }
        t
    }

    /// The read of a stream's entries after the last one read (its newest ones the first time).
    fn entries_read(&self, key: &str) -> Read {
        match self.streams.get(key).and_then(|s| s.last_id) {
            Some(last) => Why::NewEntries.read(ReadRequest::XRange {
                key: key.to_string(),
                start: format!("({last}"),
                end: "+".to_string(),
                count: PAGE,
            }),
            None => Why::Window.read(ReadRequest::XRevRange {
                key: key.to_string(),
                end: "+".to_string(),
                start: "-".to_string(),
                count: INITIAL_WINDOW,
            }),
        }
    }

    /// Reads that bring a stream up to date: new entries, groups, consumers, pending entries.
    fn stream_reads(&self, key: &str) -> Vec<Read> {
        let state = self.streams.get(key);
        let mut reads = vec![self.entries_read(key)];
        reads.push(Why::Groups.read(ReadRequest::XInfoGroups(key.to_string())));
        if let Some(state) = state {
            for group in state.groups.keys() {
                reads.extend(group_reads(key, group));
            }
        }
        reads
    }

    fn list_reads(key: &str) -> Vec<Read> {
        vec![Why::ListItems.read(ReadRequest::LRange {
            key: key.to_string(),
            start: 0,
            stop: LIST_DEPTH - 1,
        })]
    }

    fn queue_reads(&self, key: &str) -> Vec<Read> {
        match self.kinds.get(key) {
            Some(QueueKind::Stream) => self.stream_reads(key),
            Some(QueueKind::List) => Self::list_reads(key),
            _ => vec![Why::Kind.read(ReadRequest::Type(key.to_string()))],
        }
    }

    fn set_kind(&mut self, key: &str, kind: QueueKind) -> bool {
        let slot = self
            .kinds
            .entry(key.to_string())
            .or_insert(QueueKind::Unknown);
        let changed = *slot != kind;
        *slot = kind;
        changed
    }

    fn message_error(key: &str, kind: &'static str, message: String) -> DecodeError {
        DecodeError {
            broker: Broker::Taskiq,
            kind,
            key: key.to_string(),
            message,
        }
    }

    /// A message seen waiting in `queue`: `queued`, or `retried` for a retry middleware's copy.
    fn queued_observation(
        &mut self,
        msg: &message::TaskiqMessage,
        queue: &str,
        at: DateTime<Utc>,
        source: &'static str,
    ) -> Observation {
        self.track(&msg.task_id, msg.retries, queue);
        let mut obs = TaskObservation::new(
            Broker::Taskiq,
            msg.task_id.clone(),
            at,
            TaskEvent::Queued,
            source,
        );
        obs.attempt = Some(msg.retries);
        obs.fields.queue = Some(queue.to_string());
        obs.fields.name = Some(msg.task_name.clone());
        obs.fields.args = msg.args.clone();
        obs.fields.kwargs = msg.kwargs.clone();
        obs.fields.enqueued_at = Some(at);
        if msg.retries > 0 {
            obs.detail = Some(format!(
                "retry {}: re-sent with the same task id ({source})",
                msg.retries
            ));
        }
        Observation::Task(obs)
    }
}

/// The reads of one consumer group: its consumers (heartbeats) and its pending entries.
fn group_reads(key: &str, group: &str) -> [Read; 2] {
    [
        Why::Consumers.read(ReadRequest::XInfoConsumers {
            key: key.to_string(),
            group: group.to_string(),
        }),
        Why::Pending.read(ReadRequest::XPending {
            key: key.to_string(),
            group: group.to_string(),
            count: PEL_PAGE,
        }),
    ]
}

impl Adapter for TaskiqAdapter {
    fn broker(&self) -> Broker {
        Broker::Taskiq
    }

    fn interest(&self) -> Interest {
        let escaped: Vec<String> = self.queues.iter().map(|q| glob_escape(q)).collect();
        let mut key_patterns = escaped.clone();
        key_patterns.extend(self.result_patterns());
        let mut channel_patterns = escaped;
        // Every stream add in the database: streams of other taskiq queues are found by their
        // first entry (`E` turns key events on).
        channel_patterns.push(layout::xadd_channel(self.db));
        Interest {
            channel_patterns,
            key_patterns,
            // No SCAN for result keys: taskiq keeps them forever by default, and re-reading
            // every one each rescan would cost more than the history it adds. Results of
            // known tasks are read by key (notifications, reconciliation).
            scan_patterns: Vec::new(),
            side_scan_patterns: Vec::new(),
            notify_classes: "tl$E".to_string(),
            prefetch: Vec::new(),
            first_sight: Vec::new(),
        }
    }

    fn on_scan(&mut self, _pattern: &str, keys: Vec<String>, _now: DateTime<Utc>) -> Vec<Read> {
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| self.is_result_key(k) && !self.is_queue(k))
            .collect();
        keys.chunks(MGET_CHUNK)
            .map(|c| Why::Results.read(ReadRequest::MGet(c.to_vec())))
            .collect()
    }

    fn on_detected(&mut self, setting: &crate::detect::Setting) -> Vec<Read> {
        use crate::detect::Setting;
        let (key, kind) = match setting {
            Setting::TaskiqStream(k) => (k, QueueKind::Stream),
            Setting::TaskiqList(k) => (k, QueueKind::List),
            Setting::TaskiqChannel(k) => (k, QueueKind::Unknown),
            Setting::TaskiqResultPrefix(p) => return self.add_prefix(p),
            _ => return Vec::new(),
        };
        if self.is_queue(key) {
            return Vec::new();
        }
        if !self.queue_limit.admit(self.queues.len(), key) {
            return Vec::new();
        }
        tracing::info!(queue = %key, "Auto-detection found a taskiq queue; watching it.");
        if kind == QueueKind::List {
            self.probation.insert(key.clone());
        }
        self.probed.remove(key);
        self.queues.push(key.clone());
        self.set_kind(key, kind);
        self.queue_reads(key)
    }

    fn on_key_event(&mut self, key: &str, op: &str, _now: DateTime<Utc>) -> Vec<Read> {
        if self.is_queue(key) {
            match op {
                "xadd" | "xtrim" | "xdel" | "xsetid" | "xgroup-create" | "xautoclaim"
                | "xclaim" => {
                    self.set_kind(key, QueueKind::Stream);
                }
                "lpush" | "rpush" | "lpop" | "rpop" | "lrem" | "ltrim" | "lset" | "linsert" => {
                    self.set_kind(key, QueueKind::List);
                }
                _ => {}
            }
            return self.queue_reads(key);
        }
        if op == "xadd" && !self.probed.contains(key) {
            // An unknown stream: does it carry taskiq messages?
            self.probed.insert(key.to_string());
            return vec![Why::Probe.read(ReadRequest::XRevRange {
                key: key.to_string(),
                end: "+".to_string(),
                start: "-".to_string(),
                count: 1,
            })];
        }
        if op == "set" && self.is_result_key(key) {
            return vec![Why::Results.read(ReadRequest::Get(key.to_string()))];
        }
        Vec::new()
    }

    fn on_message(&mut self, channel: &str, payload: &[u8], now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        if !self.is_queue(channel) {
            return out;
        }
        match message::decode(payload) {
            Ok(msg) => {
                let obs = self.queued_observation(&msg, channel, now, "pub/sub");
                out.observations.push(obs);
            }
            Err(e) => out.decode_errors.push(Self::message_error(
                channel,
                e.kind(),
                format!("published message: {e}"),
            )),
        }
        out
    }

    /// WRONGTYPE (the name is another kind of key now), NOGROUP, ...: a queue's kind is learnt
    /// again, and a sample waiting for its oldest entry goes out without it. Not a decode error.
    fn on_read_error(
        &mut self,
        tag: Tag,
        request: &ReadRequest,
        error: &str,
        _now: DateTime<Utc>,
    ) -> Output {
        let mut out = Output::default();
        if Why::try_from(tag) == Ok(Why::OldestProbe) {
            if let Some(sample) = self.oldest_probes.remove(request) {
                out.queue_samples.push(sample);
            }
            return out;
        }
        tracing::debug!(key = request.key(), error, "taskiq read failed");
        // Outcomes held for this stream's read go out without it.
        self.release_held(request.key(), &mut out);
        if self.is_queue(request.key()) {
            self.set_kind(request.key(), QueueKind::Unknown);
        }
        out
    }

    fn on_reply(
        &mut self,
        tag: Tag,
        request: &ReadRequest,
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output {
        let Ok(why) = Why::try_from(tag) else {
            return unknown_tag(Broker::Taskiq, request, tag);
        };
        let mut out = Output::default();
        match (why, request) {
            (Why::OldestProbe, request) => {
                // Nothing when a gap (or a newer round) dropped the probe's round.
                if let Some(mut sample) = self.oldest_probes.remove(request) {
                    // The oldest undelivered entry's id: when Redis added it.
                    sample.oldest_enqueued_at =
                        stream::entries(reply).first().and_then(|e| e.id.time());
                    out.queue_samples.push(sample);
                }
            }
            (Why::Kind, ReadRequest::Type(key)) => {
                let kind = match text(&reply).as_deref() {
                    Some("stream") => QueueKind::Stream,
                    Some("list") => QueueKind::List,
                    _ => QueueKind::Unknown,
                };
                if kind != QueueKind::Unknown && self.set_kind(key, kind) {
                    out.follow_up = self.queue_reads(key);
                }
            }
            (Why::Probe, ReadRequest::XRevRange { key, .. }) if !self.is_queue(key) => {
                let taskiq = stream::entries(reply).first().is_some_and(|e| {
                    let fields: Vec<(&[u8], &[u8])> = e
                        .fields
                        .iter()
                        .map(|(f, v)| (f.as_slice(), v.as_slice()))
                        .collect();
                    looks_like_stream_entry(&fields)
                });
                if taskiq && self.queue_limit.admit(self.queues.len(), key) {
                    tracing::info!(stream = %key, "Found a taskiq stream; watching it as a queue.");
                    self.probed.remove(key);
                    self.queues.push(key.clone());
                    self.set_kind(key, QueueKind::Stream);
                    out.follow_up = self.stream_reads(key);
                }
            }
            (Why::Probe | Why::Window, ReadRequest::XRevRange { key, .. }) => {
                let mut entries = stream::entries(reply);
                entries.reverse();
                let newest = entries.last().map(|e| e.id);
                let state = self.streams.entry(key.clone()).or_default();
                if newest.is_some() && state.last_id.is_none() {
                    state.last_id = newest;
                }
                self.on_entries(key, entries, now, &mut out);
                if why == Why::Window {
                    self.release_held(key, &mut out);
                }
            }
            (Why::PendingEntry, ReadRequest::XRange { key, .. }) => {
                // One pending entry read by id: known now, its state comes with the next
                // XPENDING read.
                self.on_entries(key, stream::entries(reply), now, &mut out);
            }
            (Why::NewEntries, ReadRequest::XRange { key, count, .. }) => {
                let entries = stream::entries(reply);
                let full = entries.len() as u64 >= *count;
                let newest = entries.last().map(|e| e.id);
                self.on_entries(key, entries, now, &mut out);
                let state = self.streams.entry(key.clone()).or_default();
                if let Some(n) = newest {
                    state.last_id = Some(state.last_id.map_or(n, |l| l.max(n)));
                }
                if full {
                    out.follow_up = self.stream_reads(key);
                } else {
                    self.release_held(key, &mut out);
                }
            }
            (Why::Groups, ReadRequest::XInfoGroups(key)) => {
                self.on_groups(key, reply, now, &mut out)
            }
            (Why::Consumers, _) => self.on_consumers(reply, now, &mut out),
            (Why::Pending, ReadRequest::XPending { key, group, count }) => {
                self.on_pending(key, group, *count, reply, now, &mut out)
            }
            (Why::StreamLength, ReadRequest::XLen(key)) => {
                self.streams.entry(key.clone()).or_default().xlen =
                    reply.as_i64().map(|n| n.max(0) as u64);
            }
            (Why::ListItems, ReadRequest::LRange { key, .. }) => {
                self.on_list(key, reply, now, &mut out)
            }
            (Why::ListLength, ReadRequest::LLen(key)) => out.queue_samples.push(QueueSample {
                broker: Broker::Taskiq,
                name: key.clone(),
                length: reply.as_i64().unwrap_or(0).max(0) as u64,
                delayed: 0,
                dead: 0,
                running: 0,
                sampled_at: now,
                // A list message (`TaskiqMessage`) carries no enqueue time.
                oldest_enqueued_at: None,
            }),
            (Why::Results, ReadRequest::Get(key)) => {
                self.on_results(std::slice::from_ref(key), vec![reply], now, &mut out)
            }
            (Why::Results, ReadRequest::MGet(keys)) => {
                self.on_results(keys, reply.into_items(), now, &mut out)
            }
            _ => {}
        }
        out
    }

    fn reconcile(&mut self, open: &[OpenTask], _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads: Vec<Read> = self
            .queues
            .iter()
            .flat_map(|q| self.queue_reads(q))
            .collect();
        // Results after the queues: a retry's new message is read before the old attempt's
        // result, as they were written.
        reads.extend(self.result_reads(open.iter().map(|t| t.id.as_str())));
        reads
    }

    fn sample_queues(&mut self, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = Vec::new();
        for q in &self.queues {
            match self.kinds.get(q) {
                Some(QueueKind::Stream) => {
                    self.sampling.insert(q.clone());
                    reads.push(Why::StreamLength.read(ReadRequest::XLen(q.clone())));
                    reads.push(Why::Groups.read(ReadRequest::XInfoGroups(q.clone())));
                    if let Some(state) = self.streams.get(q) {
                        for g in state.groups.keys() {
                            reads.push(Why::Consumers.read(ReadRequest::XInfoConsumers {
                                key: q.clone(),
                                group: g.clone(),
                            }));
                        }
                    }
                }
                Some(QueueKind::List) => {
                    reads.push(Why::ListLength.read(ReadRequest::LLen(q.clone())))
                }
                _ => reads.push(Why::Kind.read(ReadRequest::Type(q.clone()))),
            }
        }
        reads
    }

    fn on_gap(&mut self) {
        // A Redis restarted empty is not a drained list nor a stream whose ids went back.
        for snapshot in self.lists.values_mut() {
            *snapshot = None;
        }
        for state in self.streams.values_mut() {
            state.last_id = None;
        }
        self.consumers.clear();
        self.oldest_probes.clear();
    }
}
