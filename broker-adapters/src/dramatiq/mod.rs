//! Dramatiq's RedisBroker (namespace `dramatiq` by default), with no middleware in the workers.
//!
//! Where each state comes from (fixtures and notes: `tests/fixtures/dramatiq/README.md`):
//! - `queued`: a message enqueued into `<ns>:<q>` / `<ns>:<q>.msgs` (read on the `hset` of the
//!   `.msgs` hash: the new ids are at the tail of the list, or already in an ack set);
//!   delayed and retried copies in `<q>.DQ` with `options.eta` (a retry has `options.retries`
//!   and the failure's traceback).
//! - `running`: the id in `<ns>:__acks__.<worker>.<q>` (fetched by that worker process; with
//!   prefetch it may still wait for a thread). Ack sets of `<q>.DQ` hold delayed messages a
//!   worker keeps in memory until due: those stay `queued`.
//! - `success`: an id leaving an ack set that is neither still in `.msgs` (requeued), nor in
//!   `.XQ.msgs` (dead-lettered), nor followed by a retry copy of the same `message_id`.
//! - `failure`: an id in `<q>.XQ` / `<q>.XQ.msgs`.
//! - `retried`: a copy of the same `message_id` with `options.retries` increased.
//! - results and errors from the Results middleware when its keys exist.
//! - workers from `<ns>:__heartbeats__` (sampled, never followed notification by notification:
//!   every dispatch call of every process writes it).

pub mod detect;
pub mod layout;
pub mod message;

use crate::adapter::{
    unknown_tag, Adapter, DecodeError, FirstSight, FirstSightRead, FollowTags, Interest, OpenTask,
    Output, Prefetch, PrefetchRead, Read, ReadRequest, Reply, Tag,
};
use layout::{KeyKind, Layout, Part};

crate::read_reasons! {
    /// Why the Dramatiq adapter reads (the tag of each of its reads).
    pub enum Why {
        /// A page of redis ids of `<q>` or `<q>.DQ` (`LRANGE`): new ids are read next.
        NewMessages,
        /// The head of `<q>` for its sample (`LRANGE 0 0`).
        Head,
        /// Payloads of ids not known yet (`HMGET` of a `.msgs` hash).
        Messages,
        /// The first page of a `.msgs` hash first notified (the prefetcher's first sight).
        FirstSight,
        /// The newest dead letters (`ZRANGE` of `<q>.XQ`).
        DeadList,
        /// An ack set (`SMEMBERS`): running messages, and those that left.
        Acks,
        /// Whether departed ids are still in `.msgs` (requeued).
        CheckQueued,
        /// `.DQ.msgs` whole, read for departed ids: a retry copy of them.
        CheckRetried,
        /// Whether departed ids are in `.XQ.msgs` (dead-lettered): the last of the three.
        CheckDead,
        /// The prefetcher's `HMGET` of departed ids in `.XQ.msgs`.
        DepartedDead,
        /// The prefetcher's `HKEYS` snapshot of a followed `.msgs`.
        Snapshot,
        /// The prefetcher's `HMGET` of a followed hash's new fields.
        Followed,
        /// A `.msgs` hash whole for the post-gap settlement of open tasks.
        Settlement,
        /// A Results-middleware record (`LRANGE 0 0` of its key).
        Result,
        /// `LLEN`/`ZCARD` of a queue's three lists for its sample.
        Length,
        /// The heartbeats sorted set: closes a sampling round.
        Heartbeats,
    }
}
use crate::bounded::{FifoMap, FifoSet};
use crate::model::{
    Broker, Observation, QueueSample, TaskEvent, TaskObservation, WorkerEvent, WorkerObservation,
};
use chrono::{DateTime, Utc};
use message::DramatiqMessage;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Ids read per list or dead-letter page.
const PAGE: i64 = 200;
/// How deep into a waiting list the reads go (a deeper backlog is counted, not listed).
const MAX_LIST_DEPTH: i64 = 100_000;
/// Reads of a result record that came back empty before it is given up (one per
/// reconciliation).
const RESULT_TRIES: u32 = 3;
/// Messages remembered by redis id (and each per-message memory of the adapter; oldest forgotten
/// first).
const KNOWN_CAPACITY: usize = 200_000;
/// Unsettled messages of a queue checked when one of its messages is acknowledged.
const CHECK_ON_ACK: usize = 64;
/// Unsettled messages remembered per queue (older ones are settled by reconciliation only).
const IN_FLIGHT_CAPACITY: usize = 10_000;
/// A queue is followed by the prefetcher (see [`DramatiqAdapter::interest`]) while it holds at
/// most this many messages (waiting plus fetched, at the last sample); past it, its messages
/// live long enough for the batching loop, and `HKEYS` of its hash would cost too much.
const FOLLOW_MAX: u64 = 2_000;
/// Settled tasks whose result key is read before any was found (then one in
/// [`RESULT_SAMPLE_EVERY`]): without the Results middleware every such read is wasted.
const RESULT_PROBES: u64 = 20;
const RESULT_SAMPLE_EVERY: u64 = 256;

#[derive(Debug, Clone)]
pub struct DramatiqConfig {
    pub namespace: String,
}

impl Default for DramatiqConfig {
    fn default() -> Self {
        DramatiqConfig {
            namespace: "dramatiq".to_string(),
        }
    }
}

/// A decoded message, remembered by its `redis_message_id`.
#[derive(Debug, Clone)]
struct Known {
    message_id: String,
    queue: String,
    actor: String,
    retries: u32,
    /// Since when it waits: `message_timestamp`, or `options.eta` when later. The oldest age of
    /// a queue it heads. A delayed message moved to its queue when due keeps its first
    /// `message_timestamp` and has no `eta` any more (dramatiq deletes it on the move): its
    /// age then counts the delay as well.
    waiting_since: Option<DateTime<Utc>>,
}

/// An id that left a worker's ack set, waiting for the reads that tell what became of it.
#[derive(Debug, Clone)]
struct Leaving {
    known: Known,
    /// The worker whose ack set it left; `None` when the ack was noticed on `.msgs` instead.
    worker: Option<String>,
    /// Whether the id is still in `<q>.msgs` (a requeue keeps it there; an ack deletes it).
    still_queued: Option<bool>,
}

pub struct DramatiqAdapter {
    layout: Layout,
    /// Per queue, reads that may find new messages of it still unanswered (a page of `<q>`,
    /// an `HMGET` of `<q>.msgs`): a departure is not settled while one is in flight, since it
    /// may carry the retry copy that makes the departure no success.
    discovering: HashMap<String, HashSet<ReadRequest>>,
    /// Departures whose settlement waits for `discovering` of their queue to drain (settled at
    /// the next reconciliation at the latest).
    deferred: HashMap<String, Vec<(String, Leaving)>>,
    /// Base queue names found so far.
    queues: BTreeSet<String>,
    known: FifoMap<String, Known>,
    /// The highest `options.retries` seen per `message_id` (a retry copy outranks its ack).
    highest_retry: FifoMap<String, u32>,
    /// Members of each ack set at its last read, by key.
    acks: HashMap<String, BTreeSet<String>>,
    /// Ids seen in an ack set before their message was read: (worker, list key).
    pending_running: HashMap<String, String>,
    leaving: HashMap<String, Leaving>,
    /// Ids of dead-lettered messages already reported.
    dead_seen: HashSet<String>,
    /// Worker ids seen owning an ack set: heartbeats of other ids are producers.
    consumers: BTreeSet<String>,
    /// Per queue: (length, delayed, dead) read by the current sampling round.
    sampling: Option<BTreeMap<String, (u64, u64, u64)>>,
    /// Per queue, the first redis id of `<ns>:<q>` read by the current sampling round (the
    /// enqueue script `RPUSH`es, `fetch` `LPOP`s: the next delivered, normally the oldest).
    sampled_heads: HashMap<String, String>,
    /// Result keys asked for, and the task each belongs to.
    result_owner: FifoMap<String, String>,
    /// Main-queue messages not settled yet, oldest first, per queue: an ack can come and go
    /// between two reads of the ack set, and is then noticed by the `hdel` on `.msgs`.
    in_flight: HashMap<String, FifoSet<String>>,
    /// Result keys read empty so far, with how many times: re-read by reconciliation.
    result_retries: HashMap<String, u32>,
    /// Set at start and after every gap: the next reconciliation settles the open tasks whose
    /// message is gone from Redis (acknowledged while taskscope was not looking).
    needs_settlement: bool,
    settlement: Option<Settlement>,
    /// Queues not followed by the prefetcher (found by a scan and not sampled yet, or long).
    unfollowed: HashSet<String>,
    /// Per followed queue, the fields of `<q>.msgs` at the prefetcher's last snapshot.
    snapshot: HashMap<String, HashSet<String>>,
    /// Ids that left `.msgs` and were looked up in `.XQ.msgs` by the prefetcher (not there, or
    /// reported dead): the departure can be settled.
    xq_checked: FifoSet<String>,
    /// Ids whose message did not decode, reported once (reconciliation reads them again).
    undecodable: FifoSet<String>,
    /// Ids that left an ack set of a followed queue, with the worker: requeued if the next
    /// snapshot of `.msgs` still has them.
    acks_left: FifoMap<String, String>,
    /// The worker whose ack set holds each main-queue id.
    running_on: FifoMap<String, String>,
    /// Whether a Results-middleware record was ever found, and how many settled tasks had
    /// their result key read without one.
    results_seen: bool,
    result_probes: u64,
}

/// Open tasks being checked against every message Redis still holds for their queues.
struct Settlement {
    /// `message_id` of each open task.
    open: HashSet<String>,
    /// Hashes (`.msgs`, `.DQ.msgs`, `.XQ.msgs`) still to be read.
    awaiting: HashSet<String>,
    /// `message_id`s found in them.
    present: HashSet<String>,
}

impl DramatiqAdapter {
    pub fn new(config: DramatiqConfig) -> DramatiqAdapter {
        DramatiqAdapter {
            layout: Layout::new(&config.namespace),
            discovering: HashMap::new(),
            deferred: HashMap::new(),
            queues: BTreeSet::new(),
            known: FifoMap::new(KNOWN_CAPACITY),
            highest_retry: FifoMap::new(KNOWN_CAPACITY),
            acks: HashMap::new(),
            pending_running: HashMap::new(),
            leaving: HashMap::new(),
            dead_seen: HashSet::new(),
            consumers: BTreeSet::new(),
            sampling: None,
            sampled_heads: HashMap::new(),
            result_owner: FifoMap::new(KNOWN_CAPACITY),
            in_flight: HashMap::new(),
            result_retries: HashMap::new(),
            needs_settlement: true,
            settlement: None,
            unfollowed: HashSet::new(),
            snapshot: HashMap::new(),
            xq_checked: FifoSet::new(KNOWN_CAPACITY),
            undecodable: FifoSet::new(KNOWN_CAPACITY),
            acks_left: FifoMap::new(KNOWN_CAPACITY),
            running_on: FifoMap::new(KNOWN_CAPACITY),
            results_seen: false,
            result_probes: 0,
        }
    }

    /// Records what a whole `.msgs` hash read for a settlement holds; settles when the last is in.
    fn settle_open(
        &mut self,
        key: &str,
        fields: &[String],
        values: &[Reply],
        now: DateTime<Utc>,
    ) -> Vec<Observation> {
        let Some(settlement) = self.settlement.as_mut() else {
            return Vec::new();
        };
        if !settlement.awaiting.remove(key) {
            return Vec::new();
        }
        for (field, value) in fields.iter().zip(values) {
            match value.as_bytes().map(message::decode) {
                Some(Ok(msg)) => {
                    settlement.present.insert(msg.message_id);
                }
                // There but unreadable (too large, or does not decode): its field names it.
                Some(Err(_)) => {
                    settlement.present.insert(field.clone());
                }
                None if value.too_large().is_some() => {
                    settlement.present.insert(field.clone());
                }
                None => {}
            }
        }
        if !settlement.awaiting.is_empty() {
            return Vec::new();
        }
        let Some(settlement) = self.settlement.take() else {
            return Vec::new();
        };
        settlement
            .open
            .difference(&settlement.present)
            .map(|id| {
                // Neither waiting, nor running, nor retried, nor dead: it was acknowledged.
                Observation::Task(TaskObservation::new(
                    Broker::Dramatiq,
                    id.clone(),
                    now,
                    TaskEvent::Succeeded,
                    "acknowledged while taskscope was away",
                ))
            })
            .collect()
    }

    fn forget_in_flight(&mut self, queue: &str, id: &str) {
        if let Some(ids) = self.in_flight.get_mut(queue) {
            ids.remove(id);
        }
    }

    /// An `hdel` on `<q>.msgs`: some message of `q` was acknowledged (or nacked). Check the
    /// oldest unsettled ones (consumers take the oldest first).
    fn check_acked(&mut self, queue: &str) -> Vec<Read> {
        let ids: Vec<String> = self
            .in_flight
            .get(queue)
            .map(|ids| ids.iter().take(CHECK_ON_ACK).cloned().collect())
            .unwrap_or_default();
        let mut fresh = Vec::new();
        for id in ids {
            if self.leaving.contains_key(&id) {
                continue;
            }
            if let Some(k) = self.known.get(&id).cloned() {
                self.leaving.insert(
                    id.clone(),
                    Leaving {
                        known: k,
                        worker: None,
                        still_queued: None,
                    },
                );
                fresh.push(id);
            }
        }
        if fresh.is_empty() {
            return Vec::new();
        }
        self.settlement_reads(queue, fresh)
    }

    /// The three reads that tell what became of ids that left an ack set of `queue`, in this
    /// order, the last one settling: a requeue keeps the id in `.msgs`; a retry put a copy in
    /// `.DQ.msgs` just before the ack (read whole: the delay-queue consumer may already have
    /// taken the copy off the `.DQ` list); a nack moved the id to `.XQ.msgs`.
    fn settlement_reads(&self, queue: &str, ids: Vec<String>) -> Vec<Read> {
        vec![
            Why::CheckQueued.read(ReadRequest::HMGet {
                key: self.layout.messages(queue, Part::Main),
                fields: ids.clone(),
            }),
            Why::CheckRetried.read(ReadRequest::HGetAll(
                self.layout.messages(queue, Part::Delayed),
            )),
            Why::CheckDead.read(ReadRequest::HMGet {
                key: self.layout.messages(queue, Part::Dead),
                fields: ids,
            }),
        ]
    }

    /// `<ns>:__acks__.<worker>.<queue>` -> (worker, queue as named, e.g. `default.DQ`).
    fn parse_acks_key<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        self.layout.parse_acks(key)
    }

    /// Notes the reads of `reads` that may find new messages of a main queue (see
    /// `discovering`).
    fn track_discovery(&mut self, reads: &[Read]) {
        for read in reads {
            if !matches!(
                Why::try_from(read.tag),
                Ok(Why::NewMessages | Why::Messages)
            ) {
                continue;
            }
            let queue = match self.layout.classify(read.request.key()) {
                Some(KeyKind::List {
                    queue,
                    part: Part::Main,
                })
                | Some(KeyKind::Messages {
                    queue,
                    part: Part::Main,
                }) => queue.to_string(),
                _ => continue,
            };
            self.discovering
                .entry(queue)
                .or_default()
                .insert(read.request.clone());
        }
    }

    /// A discovery read answered (or refused): when it was its queue's last in flight, the
    /// departures deferred meanwhile are settled now.
    fn discovered(&mut self, request: &ReadRequest, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let queue = match self.layout.classify(request.key()) {
            Some(KeyKind::List { queue, .. }) | Some(KeyKind::Messages { queue, .. }) => {
                queue.to_string()
            }
            _ => return out,
        };
        let drained = match self.discovering.get_mut(&queue) {
            Some(reads) => {
                reads.remove(request);
                reads.is_empty()
            }
            None => true,
        };
        if !drained {
            return out;
        }
        self.discovering.remove(&queue);
        for (id, leaving) in self.deferred.remove(&queue).unwrap_or_default() {
            self.settle_departure(&id, leaving, now, &mut out);
        }
        out
    }

    /// Settles an id that left an ack set and is neither requeued-and-checked nor dead, or
    /// defers it while a read that may carry its retry copy is in flight.
    fn depart(&mut self, id: &str, leaving: Leaving, now: DateTime<Utc>, out: &mut Output) {
        let queue = leaving.known.queue.clone();
        if self.discovering.get(&queue).is_some_and(|r| !r.is_empty()) {
            self.deferred
                .entry(queue)
                .or_default()
                .push((id.to_string(), leaving));
            return;
        }
        self.settle_departure(id, leaving, now, out);
    }

    fn settle_departure(
        &mut self,
        id: &str,
        leaving: Leaving,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let (queue, actor, message_id) = (
            leaving.known.queue.clone(),
            leaving.known.actor.clone(),
            leaving.known.message_id.clone(),
        );
        if let Some(obs) = self.settle(id, leaving, now) {
            let succeeded = matches!(&obs, Observation::Task(o) if o.event == TaskEvent::Succeeded);
            out.observations.push(obs);
            if succeeded {
                out.follow_up
                    .extend(self.probe_result(&queue, &actor, &message_id));
            }
        }
    }

    fn remember(&mut self, redis_id: &str, msg: &DramatiqMessage) {
        self.known.insert(
            redis_id.to_string(),
            Known {
                message_id: msg.message_id.clone(),
                queue: msg.queue.clone(),
                actor: msg.actor.clone(),
                retries: msg.retries,
                waiting_since: msg.sent_at.max(msg.eta),
            },
        );
        let highest = self
            .highest_retry
            .get_or_insert_with(msg.message_id.clone(), || 0);
        *highest = (*highest).max(msg.retries);
        self.queues.insert(msg.queue.clone());
    }

    fn observation(
        &self,
        msg: &DramatiqMessage,
        event: TaskEvent,
        at: DateTime<Utc>,
        source: &'static str,
    ) -> Observation {
        let mut obs = TaskObservation::new(Broker::Dramatiq, &msg.message_id, at, event, source);
        obs.attempt = Some(msg.retries);
        let f = &mut obs.fields;
        f.queue = Some(msg.queue.clone());
        f.name = Some(msg.actor.clone());
        f.args = msg.args.clone();
        f.kwargs = msg.kwargs.clone();
        f.enqueued_at = msg.sent_at;
        f.eta = msg.eta;
        if matches!(event, TaskEvent::Failed) || msg.retries > 0 {
            f.error = msg.error.clone();
            f.traceback = msg.traceback.clone();
        }
        Observation::Task(obs)
    }

    fn known_observation(
        &self,
        k: &Known,
        event: TaskEvent,
        at: DateTime<Utc>,
        source: &'static str,
    ) -> TaskObservation {
        let mut obs = TaskObservation::new(Broker::Dramatiq, &k.message_id, at, event, source);
        obs.attempt = Some(k.retries);
        obs.fields.queue = Some(k.queue.clone());
        obs.fields.name = Some(k.actor.clone());
        obs
    }

    fn read_tail(key: String) -> Read {
        Why::NewMessages.read(ReadRequest::LRange {
            key,
            start: -PAGE,
            stop: -1,
        })
    }

    fn dead_read(&self, queue: &str) -> Read {
        Why::DeadList.read(ReadRequest::ZRangeWithScores {
            key: self.layout.list(queue, Part::Dead),
            start: -PAGE,
            stop: -1,
        })
    }

    fn queue_reads(&self, queue: &str) -> Vec<Read> {
        vec![
            Self::read_tail(self.layout.list(queue, Part::Main)),
            Self::read_tail(self.layout.list(queue, Part::Delayed)),
            self.dead_read(queue),
        ]
    }

    /// A list page of redis ids (`<ns>:<q>` or `<ns>:<q>.DQ`): read the messages not known yet.
    /// A page of ids from the tail of a list (`start` counted from the end, negative).
    fn on_list(&mut self, key: &str, start: i64, reply: Reply) -> Output {
        let items = reply.into_items();
        let full_page = items.len() as i64 >= PAGE;
        let unknown: Vec<String> = items
            .iter()
            .filter_map(|r| {
                r.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .filter(|id| !self.known.contains_key(id))
            .collect();
        let mut out = Output::default();
        // A full page of new ids (a backlog found at start): older ones wait before it.
        if full_page && !unknown.is_empty() && start < 0 && -start < MAX_LIST_DEPTH {
            out.follow_up
                .push(Why::NewMessages.read(ReadRequest::LRange {
                    key: key.to_string(),
                    start: start - PAGE,
                    stop: start - 1,
                }));
        }
        if !unknown.is_empty() {
            out.follow_up.push(Why::Messages.read(ReadRequest::HMGet {
                key: Layout::messages_of_list(key),
                fields: unknown,
            }));
        }
        out
    }

    fn on_dead_list(&mut self, key: &str, reply: Reply) -> Output {
        let fresh: Vec<String> = reply
            .into_pairs()
            .into_iter()
            .filter_map(|(id, _)| {
                id.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .filter(|id| !self.dead_seen.contains(id))
            .collect();
        let mut out = Output::default();
        if !fresh.is_empty() {
            out.follow_up.push(Why::Messages.read(ReadRequest::HMGet {
                key: Layout::messages_of_list(key),
                fields: fresh,
            }));
        }
        out
    }

    /// HMGET of a `.msgs` hash: decode what is there, settle what left an ack set.
    /// A message of `hash` too large to read or that does not decode: its task is shown
    /// (queued, or failed in the dead letters) with `error` saying why; the actor is unknown.
    fn undecodable_observation(
        &self,
        hash: &str,
        id: &str,
        error: String,
        dead: bool,
        delayed: bool,
        now: DateTime<Utc>,
    ) -> Observation {
        let (event, source) = match (dead, delayed) {
            (true, _) => (TaskEvent::Failed, "dead letters"),
            (_, true) => (TaskEvent::Queued, "delay queue"),
            _ => (TaskEvent::Queued, "queue"),
        };
        let mut obs = TaskObservation::new(Broker::Dramatiq, id, now, event, source);
        let queue = match self.layout.classify(hash) {
            Some(KeyKind::Messages { queue, .. }) => queue,
            _ => hash,
        };
        obs.fields.queue = Some(queue.to_string());
        obs.fields.error = Some(error);
        Observation::Task(obs)
    }

    /// A hash's messages (`.msgs`, `.DQ.msgs` or `.XQ.msgs`) as `[field, value, ...]`: all of
    /// them (`HGETALL`), or a first page (`HSCAN`), which tells nothing of the fields it lacks.
    fn on_hash_entries(
        &mut self,
        key: &str,
        reply: Reply,
        whole: bool,
        now: DateTime<Utc>,
    ) -> Output {
        let (fields, values): (Vec<String>, Vec<Reply>) = reply
            .into_pairs()
            .into_iter()
            .filter_map(|(f, v)| {
                f.as_bytes()
                    .map(|b| (String::from_utf8_lossy(b).into_owned(), v))
            })
            .unzip();
        // Empty unless this hash is one a settlement waits for.
        let settled = if whole {
            self.settle_open(key, &fields, &values, now)
        } else {
            Vec::new()
        };
        let mut out = self.on_messages(key, &fields, Reply::Array(values), now);
        out.observations.extend(settled);
        out
    }

    fn on_messages(
        &mut self,
        key: &str,
        fields: &[String],
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output {
        let mut out = Output::default();
        let hash = key;
        let part = match self.layout.classify(key) {
            Some(KeyKind::Messages { part, .. }) => part,
            _ => Part::Main,
        };
        let dead = part == Part::Dead;
        let delayed = part == Part::Delayed;
        let values = reply.into_items();
        for (id, value) in fields.iter().zip(values) {
            let bytes = value.as_bytes();
            // A message over `--max-payload-bytes` is there, only not read.
            let too_large = value.too_large();
            let present = bytes.is_some() || too_large.is_some();
            if dead {
                self.xq_checked.insert(id.clone());
            }
            if let Some(leaving) = self.leaving.get_mut(id) {
                if dead {
                    // The second of the two reads for a leaving id: settle it.
                    let Some(leaving) = self.leaving.remove(id) else {
                        continue;
                    };
                    if !present {
                        self.depart(id, leaving, now, &mut out);
                    }
                } else if !delayed {
                    leaving.still_queued = Some(present);
                    continue;
                }
            }
            if let Some(n) = too_large {
                let error = crate::adapter::too_large_error(n);
                out.observations
                    .push(self.undecodable_observation(hash, id, error, dead, delayed, now));
                continue;
            }
            let Some(bytes) = bytes else {
                if !dead && !self.known.contains_key(id) {
                    // The payload was gone before it could be read (a fast worker took and
                    // acknowledged it): only a settlement can tell what became of its task.
                    self.needs_settlement = true;
                }
                continue;
            };
            let msg = match message::decode(bytes) {
                Ok(msg) => msg,
                Err(e) => {
                    // Listed all the same (its id is the field), once.
                    if self.undecodable.insert(id.clone()) {
                        out.decode_errors.push(DecodeError {
                            broker: Broker::Dramatiq,
                            kind: e.kind(),
                            key: key.to_string(),
                            message: format!("message {id}: {e}"),
                        });
                        out.observations.push(self.undecodable_observation(
                            hash,
                            id,
                            format!("message does not decode: {e}"),
                            dead,
                            delayed,
                            now,
                        ));
                    }
                    continue;
                }
            };
            let first_time = !self.known.contains_key(id);
            self.remember(id, &msg);
            if first_time && !dead && !delayed {
                self.in_flight
                    .entry(msg.queue.clone())
                    .or_insert_with(|| FifoSet::new(IN_FLIGHT_CAPACITY))
                    .insert(id.clone());
            }
            if dead {
                if self.dead_seen.insert(id.clone()) {
                    let queue = msg.queue.clone();
                    self.forget_in_flight(&queue, id);
                    out.observations.push(self.observation(
                        &msg,
                        TaskEvent::Failed,
                        now,
                        "dead letters",
                    ));
                    let read = self.probe_result(&msg.queue, &msg.actor, &msg.message_id);
                    out.follow_up.extend(read);
                }
            } else if let Some(worker) = self.pending_running.remove(id).filter(|_| !delayed) {
                let mut obs = self.observation(&msg, TaskEvent::Running, now, "ack set");
                if let Observation::Task(o) = &mut obs {
                    o.fields.worker = Some(worker);
                }
                out.observations.push(obs);
            } else if first_time {
                out.observations.push(self.observation(
                    &msg,
                    TaskEvent::Queued,
                    now,
                    if delayed { "delay queue" } else { "queue" },
                ));
            }
        }
        out
    }

    /// What became of an id that left an ack set of a main queue and is not dead-lettered.
    fn settle(&mut self, id: &str, leaving: Leaving, now: DateTime<Utc>) -> Option<Observation> {
        let k = &leaving.known;
        if leaving.still_queued == Some(true) && leaving.worker.is_none() {
            // Checked on an ack of another message: this one is simply still there.
            return None;
        }
        if leaving.still_queued == Some(true) {
            // Requeued (a graceful stop, or maintenance after the worker died): waiting again.
            return Some(Observation::Task(self.known_observation(
                k,
                TaskEvent::Queued,
                now,
                "requeued",
            )));
        }
        if self
            .highest_retry
            .get(&k.message_id)
            .is_some_and(|r| *r > k.retries)
        {
            // The Retries middleware enqueued a copy before acking this one.
            let queue = k.queue.clone();
            self.forget_in_flight(&queue, id);
            self.known.remove(id);
            return None;
        }
        self.known.remove(id);
        let mut obs = self.known_observation(k, TaskEvent::Succeeded, now, "acknowledged");
        obs.fields.worker = leaving.worker;
        let queue = k.queue.clone();
        self.forget_in_flight(&queue, id);
        Some(Observation::Task(obs))
    }

    /// [`Self::result_read`] once the Results middleware was seen; before, only for the first
    /// [`RESULT_PROBES`] settled tasks and then one in [`RESULT_SAMPLE_EVERY`].
    fn probe_result(&mut self, queue: &str, actor: &str, message_id: &str) -> Option<Read> {
        if !self.results_seen {
            self.result_probes += 1;
            if self.result_probes > RESULT_PROBES
                && !self.result_probes.is_multiple_of(RESULT_SAMPLE_EVERY)
            {
                return None;
            }
        }
        Some(self.result_read(queue, actor, message_id))
    }

    /// A read of the Results middleware's record of a task (nothing when it is not used).
    fn result_read(&mut self, queue: &str, actor: &str, message_id: &str) -> Read {
        let key = message::result_key(queue, actor, message_id);
        self.result_owner
            .insert(key.clone(), message_id.to_string());
        Self::result_key_read(key)
    }

    fn result_key_read(key: String) -> Read {
        Why::Result.read(ReadRequest::LRange {
            key,
            start: 0,
            stop: 0,
        })
    }

    /// SMEMBERS of an ack set: new members are taken, departed ones are settled by reads.
    fn on_acks(&mut self, key: &str, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let Some((worker, queue_name)) = self.parse_acks_key(key) else {
            return out;
        };
        let (worker, queue_name) = (worker.to_string(), queue_name.to_string());
        self.consumers.insert(worker.clone());
        let delayed = queue_name.ends_with(".DQ");
        let base = message::base_queue(&queue_name).to_string();
        self.queues.insert(base.clone());
        let members: BTreeSet<String> = reply.into_strings();
        let before = self
            .acks
            .insert(key.to_string(), members.clone())
            .unwrap_or_default();
        let mut to_read = Vec::new();
        for id in members.difference(&before) {
            if !delayed {
                self.running_on.insert(id.clone(), worker.clone());
            }
            match self.known.get(id) {
                Some(k) if !delayed => {
                    let mut obs = self.known_observation(k, TaskEvent::Running, now, "ack set");
                    obs.fields.worker = Some(worker.clone());
                    out.observations.push(Observation::Task(obs));
                }
                Some(_) => {}
                None => {
                    if !delayed {
                        self.pending_running.insert(id.clone(), worker.clone());
                    }
                    to_read.push(id.clone());
                }
            }
        }
        if !to_read.is_empty() {
            let (queue, part) = layout::split_queue(&queue_name);
            out.follow_up.push(Why::Messages.read(ReadRequest::HMGet {
                key: self.layout.messages(queue, part),
                fields: to_read,
            }));
        }
        if !delayed && self.followed(&base) {
            // Acknowledged, dead-lettered and retried ids leave `.msgs` too, where the
            // prefetcher's snapshots see them go; one still there at the next snapshot was
            // requeued.
            for id in before.difference(&members) {
                if self.known.contains_key(id) {
                    self.acks_left.insert(id.clone(), worker.clone());
                }
            }
        } else if !delayed {
            let departed: Vec<String> = before
                .difference(&members)
                .filter(|id| self.known.contains_key(*id))
                .cloned()
                .collect();
            if !departed.is_empty() {
                for id in &departed {
                    if let Some(k) = self.known.get(id).cloned() {
                        self.leaving.insert(
                            id.clone(),
                            Leaving {
                                known: k,
                                worker: Some(worker.clone()),
                                still_queued: None,
                            },
                        );
                    }
                }
                out.follow_up.extend(self.settlement_reads(&base, departed));
            }
        }
        out
    }

    /// Whether the prefetcher follows `queue` (a base queue name).
    fn followed(&self, queue: &str) -> bool {
        !self.unfollowed.contains(queue)
    }

    /// The prefetcher's `HKEYS` of a followed `<q>.msgs` (after the `HMGET`s of its new fields
    /// and of the departed ones in `.XQ.msgs`): ids gone since the previous snapshot were
    /// acknowledged (success, or a retry whose copy is already known), or dead-lettered
    /// (reported from `.XQ.msgs`); ids that left an ack set and are still here were requeued.
    fn on_snapshot(&mut self, key: &str, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let Some(KeyKind::Messages {
            queue,
            part: Part::Main,
        }) = self.layout.classify(key)
        else {
            return out; // `.DQ.msgs`: its new messages came in the HMGET before
        };
        let queue = queue.to_string();
        if !self.followed(&queue) {
            return out;
        }
        let current: HashSet<String> = reply.into_strings();
        let left: Vec<(String, String)> = self
            .acks_left
            .iter()
            .filter(|(id, _)| self.known.get(*id).is_some_and(|k| k.queue == queue))
            .map(|(id, w)| (id.clone(), w.clone()))
            .collect();
        for (id, worker) in left {
            self.acks_left.remove(&id);
            if current.contains(&id) {
                if let Some(k) = self.known.get(&id) {
                    let mut obs = self.known_observation(k, TaskEvent::Queued, now, "requeued");
                    obs.fields.worker = Some(worker);
                    out.observations.push(Observation::Task(obs));
                }
                self.running_on.remove(&id);
            }
        }
        let departed: Vec<String> = match self.snapshot.get(&queue) {
            Some(previous) => previous.difference(&current).cloned().collect(),
            // The first snapshot since the queue is followed (or since a gap): what was read
            // before and is gone now left meanwhile.
            None => self
                .in_flight
                .get(&queue)
                .map(|ids| {
                    ids.iter()
                        .filter(|id| !current.contains(*id) && !self.leaving.contains_key(*id))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        };
        self.snapshot.insert(queue.clone(), current);
        let mut gone = HashSet::new();
        let mut unchecked = Vec::new();
        for id in departed {
            if self.dead_seen.contains(&id) {
                // Reported from `.XQ.msgs` already.
                self.known.remove(&id);
                self.running_on.remove(&id);
                self.xq_checked.remove(&id);
                gone.insert(id);
                continue;
            }
            let Some(k) = self.known.get(&id).cloned() else {
                continue; // never read (gone before its HMGET)
            };
            if !self.xq_checked.remove(&id) {
                unchecked.push((id, k));
                continue;
            }
            self.known.remove(&id);
            let worker = self.running_on.remove(&id);
            gone.insert(id);
            if self
                .highest_retry
                .get(&k.message_id)
                .is_some_and(|r| *r > k.retries)
            {
                // The Retries middleware enqueued a copy (read already) before the ack.
                continue;
            }
            let mut obs = self.known_observation(&k, TaskEvent::Succeeded, now, "acknowledged");
            obs.fields.worker = worker;
            out.observations.push(Observation::Task(obs));
            out.follow_up
                .extend(self.probe_result(&k.queue, &k.actor, &k.message_id));
        }
        if !gone.is_empty() {
            if let Some(ids) = self.in_flight.get_mut(&queue) {
                ids.retain(|id| !gone.contains(id));
            }
        }
        if !unchecked.is_empty() {
            // Not looked up by the prefetcher (its snapshots and ours differ after a gap):
            // the loop reads `.XQ.msgs`, then `settle` decides.
            let mut fields = Vec::with_capacity(unchecked.len());
            for (id, k) in unchecked {
                let worker = self.running_on.get(&id).cloned();
                self.leaving.insert(
                    id.clone(),
                    Leaving {
                        known: k,
                        worker,
                        still_queued: Some(false),
                    },
                );
                fields.push(id);
            }
            out.follow_up.push(Why::CheckDead.read(ReadRequest::HMGet {
                key: self.layout.messages(&queue, Part::Dead),
                fields,
            }));
        }
        out
    }

    /// The prefetch rule that follows `queue`: any of its writes (an enqueue, a fetch, an ack or
    /// a nack, a retry copy) runs one pipeline of its ack sets' `SMEMBERS` and the `HKEYS` of
    /// `<q>.msgs` and `<q>.DQ.msgs`, then `HMGET`s of the new messages only and of the departed
    /// ids in `.XQ.msgs`. Coalesced: reads follow round trips, not messages.
    fn follow_rules(&self, queue: &str) -> Vec<Prefetch> {
        let msgs = self.layout.messages(queue, Part::Main);
        let delayed = self.layout.messages(queue, Part::Delayed);
        let mut ack_keys: Vec<(&String, bool)> = self
            .acks
            .keys()
            .filter_map(|k| {
                let (_, q) = self.parse_acks_key(k)?;
                (message::base_queue(q) == queue).then_some((k, q.ends_with(".DQ")))
            })
            .collect();
        ack_keys.sort();
        let mut reads: Vec<PrefetchRead> = ack_keys
            .iter()
            .map(|(k, _)| PrefetchRead::Read(Why::Acks.read(ReadRequest::SMembers((*k).clone()))))
            .collect();
        let tags = FollowTags {
            snapshot: Why::Snapshot.into(),
            new: Why::Followed.into(),
            departed: Why::DepartedDead.into(),
        };
        reads.push(PrefetchRead::FollowHash {
            key: msgs.clone(),
            departed_to: Some(self.layout.messages(queue, Part::Dead)),
            tags,
        });
        reads.push(PrefetchRead::FollowHash {
            key: delayed.clone(),
            departed_to: None,
            tags,
        });
        let rule = |key: String, ops: &[&str]| Prefetch {
            key,
            ops: ops.iter().map(|o| o.to_string()).collect(),
            reads: reads.clone(),
            coalesce: true,
        };
        let mut rules = vec![rule(msgs, &["hset", "hdel"]), rule(delayed, &["hset"])];
        rules.extend(
            ack_keys
                .iter()
                .filter(|(_, delayed)| !delayed)
                .map(|(k, _)| rule((*k).clone(), &["sadd"])),
        );
        rules
    }

    fn on_result(&mut self, key: &str, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let Some(bytes) = reply
            .into_items()
            .into_iter()
            .next()
            .and_then(|r| r.as_bytes().map(<[u8]>::to_vec))
        else {
            // Not written yet (the middleware stores a failure just after the nack) or no
            // Results middleware: look again at the next reconciliations, a few times.
            // (Counted whether or not its owner is still remembered: a forgotten owner must
            // not leave the key re-read at every reconciliation.)
            let tries = self.result_retries.entry(key.to_string()).or_insert(0);
            *tries += 1;
            if *tries > RESULT_TRIES || !self.result_owner.contains_key(key) {
                self.result_retries.remove(key);
                self.result_owner.remove(key);
            }
            return out;
        };
        self.result_retries.remove(key);
        self.results_seen = true;
        let Some(message_id) = self.result_owner.remove(key) else {
            return out;
        };
        match message::decode_result(&bytes) {
            Ok(outcome) => {
                let (event, result, error) = match outcome {
                    Ok(value) => (TaskEvent::Succeeded, Some(value), None),
                    Err(error) => (TaskEvent::Failed, None, Some(error)),
                };
                let mut obs =
                    TaskObservation::new(Broker::Dramatiq, message_id, now, event, "result");
                obs.fields.result = result;
                obs.fields.error = error;
                out.observations.push(Observation::Task(obs));
            }
            Err(e) => out.decode_errors.push(DecodeError {
                broker: Broker::Dramatiq,
                kind: e.kind(),
                key: key.to_string(),
                message: e.to_string(),
            }),
        }
        out
    }
}

impl Adapter for DramatiqAdapter {
    fn broker(&self) -> Broker {
        Broker::Dramatiq
    }

    fn interest(&self) -> Interest {
        let l = &self.layout;
        Interest {
            channel_patterns: Vec::new(),
            key_patterns: vec![l.messages_pattern(), l.acks_pattern(), l.dead_pattern()],
            scan_patterns: vec![l.messages_pattern(), l.acks_pattern()],
            side_scan_patterns: Vec::new(),
            notify_classes: "hsz".to_string(),
            prefetch: self
                .queues
                .iter()
                .filter(|q| self.followed(q))
                .flat_map(|q| self.follow_rules(q))
                .collect(),
            // A queue's first messages, read the instant its `.msgs` hash is written: with an
            // idle worker they are fetched and acknowledged within milliseconds, before the
            // queue's prefetch rule exists.
            first_sight: vec![FirstSight {
                pattern: l.messages_pattern(),
                ops: vec!["hset".to_string()],
                read: FirstSightRead::HashFirstPage { count: PAGE as u64 },
                tag: Why::FirstSight.into(),
            }],
        }
    }

    fn on_scan(&mut self, _pattern: &str, keys: Vec<String>, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = Vec::new();
        for key in keys {
            match self.layout.classify(&key) {
                Some(KeyKind::Acks { queue, .. }) => {
                    // A queue found here may hold a backlog: followed once a sample says it is
                    // short.
                    if !self.queues.contains(queue) {
                        self.unfollowed.insert(queue.to_string());
                    }
                    reads.push(Why::Acks.read(ReadRequest::SMembers(key)));
                }
                Some(KeyKind::Messages { queue, .. }) => {
                    let base = queue.to_string();
                    if self.queues.insert(base.clone()) {
                        self.unfollowed.insert(base.clone());
                        reads.extend(self.queue_reads(&base));
                    }
                }
                _ => {}
            }
        }
        self.track_discovery(&reads);
        reads
    }

    fn on_key_event(&mut self, key: &str, op: &str, _now: DateTime<Utc>) -> Vec<Read> {
        let reads = match self.layout.classify(key) {
            Some(KeyKind::Acks { queue, .. }) => {
                // A followed queue's known ack sets are read by its prefetch rule.
                let followed = self.acks.contains_key(key) && self.followed(queue);
                match op {
                    "sadd" | "srem" | "del" if !followed => {
                        vec![Why::Acks.read(ReadRequest::SMembers(key.to_string()))]
                    }
                    _ => Vec::new(),
                }
            }
            Some(KeyKind::List {
                queue,
                part: Part::Dead,
            }) => {
                // Dead letters of a followed queue are looked up as their ids leave `.msgs`.
                let queue = queue.to_string();
                let new_queue = self.queues.insert(queue.clone());
                if op == "zadd" && (new_queue || !self.followed(&queue)) {
                    vec![self.dead_read(&queue)]
                } else {
                    Vec::new()
                }
            }
            Some(KeyKind::Messages { queue, part }) => {
                let queue = queue.to_string();
                if self.queues.contains(&queue) && self.followed(&queue) {
                    Vec::new() // the prefetch rule reads it
                } else if op == "hdel" && part == Part::Main {
                    self.check_acked(&queue)
                } else if op != "hset" {
                    Vec::new()
                } else {
                    self.queues.insert(queue.clone());
                    match part {
                        Part::Dead => vec![self.dead_read(&queue)],
                        part => vec![Self::read_tail(self.layout.list(&queue, part))],
                    }
                }
            }
            _ => Vec::new(),
        };
        self.track_discovery(&reads);
        reads
    }

    fn on_message(&mut self, _channel: &str, _payload: &[u8], _now: DateTime<Utc>) -> Output {
        Output::default()
    }

    fn on_reply(
        &mut self,
        tag: Tag,
        request: &ReadRequest,
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output {
        let Ok(why) = Why::try_from(tag) else {
            return unknown_tag(Broker::Dramatiq, request, tag);
        };
        let key = request.key();
        let mut out = match (why, request.inner()) {
            (Why::Result, _) => self.on_result(key, reply, now),
            (Why::Head, _) => {
                let items = reply.into_items();
                if let (Some(head), Some(KeyKind::List { queue, .. })) = (
                    items.first().and_then(Reply::as_bytes),
                    self.layout.classify(key),
                ) {
                    if self.sampling.is_some() {
                        self.sampled_heads.insert(
                            queue.to_string(),
                            String::from_utf8_lossy(head).into_owned(),
                        );
                    }
                }
                // A head not read yet is read now (for the next round).
                self.on_list(key, 0, Reply::Array(items))
            }
            (Why::NewMessages, ReadRequest::LRange { start, .. }) => {
                self.on_list(key, *start, reply)
            }
            (
                Why::Messages
                | Why::Followed
                | Why::DepartedDead
                | Why::CheckQueued
                | Why::CheckDead,
                ReadRequest::HMGet { fields, .. },
            ) => self.on_messages(key, fields, reply, now),
            (Why::CheckRetried | Why::Settlement, _) => self.on_hash_entries(key, reply, true, now),
            (Why::FirstSight, _) => {
                // `[cursor, [field, value, ...]]`: the first messages of a queue new to us.
                let page = reply.into_items().into_iter().nth(1).unwrap_or(Reply::Nil);
                self.on_hash_entries(key, page, false, now)
            }
            (Why::Acks, _) => self.on_acks(key, reply, now),
            (Why::Snapshot, _) => self.on_snapshot(key, reply, now),
            (Why::Heartbeats, _) => self.on_heartbeats(reply, now),
            (Why::DeadList, _) => self.on_dead_list(key, reply),
            (Why::Length, _) => {
                self.on_length(key, reply.as_i64().unwrap_or(0).max(0) as u64);
                Output::default()
            }
            _ => Output::default(),
        };
        // The reads this reply asks for first: a page of new ids keeps its queue discovering
        // until their payloads are read.
        self.track_discovery(&out.follow_up);
        if matches!(why, Why::NewMessages | Why::Messages) {
            out.merge(self.discovered(request, now));
        }
        out
    }

    fn on_read_error(
        &mut self,
        tag: Tag,
        request: &ReadRequest,
        error: &str,
        now: DateTime<Utc>,
    ) -> Output {
        let mut out = Output {
            decode_errors: vec![crate::adapter::read_error(Broker::Dramatiq, request, error)],
            ..Output::default()
        };
        if matches!(Why::try_from(tag), Ok(Why::NewMessages | Why::Messages)) {
            out.merge(self.discovered(request, now));
        }
        out
    }

    fn reconcile(&mut self, open: &[OpenTask], _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads: Vec<Read> = self
            .acks
            .keys()
            .cloned()
            .map(|k| Why::Acks.read(ReadRequest::SMembers(k)))
            .collect();
        reads.extend(
            self.result_retries
                .keys()
                .map(|key| Self::result_key_read(key.clone())),
        );
        let queues: Vec<String> = self.queues.iter().cloned().collect();
        for q in &queues {
            reads.extend(self.queue_reads(q));
        }
        // Departures deferred for a discovery read whose reply never came (a gap, or a read the
        // ingest layer merged with an identical one): checked again now, and settled.
        self.discovering.clear();
        for (queue, departed) in std::mem::take(&mut self.deferred) {
            let ids: Vec<String> = departed.iter().map(|(id, _)| id.clone()).collect();
            for (id, leaving) in departed {
                self.leaving.insert(id, leaving);
            }
            reads.extend(self.settlement_reads(&queue, ids));
        }
        // Messages read but not seen leaving an ack set (both moves fell between two reads)
        // are checked here too, not only on the next `hdel` of their queue.
        // (A followed queue's departures are in the prefetcher's snapshots, re-read now too.)
        let unsettled: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(q, ids)| !ids.is_empty() && !self.followed(q))
            .map(|(q, _)| q.clone())
            .collect();
        for q in &unsettled {
            reads.extend(self.check_acked(q));
        }
        if self.results_seen {
            for task in open {
                if let (Some(queue), Some(name)) = (&task.queue, &task.name) {
                    let read = self.result_read(queue, name, &task.id);
                    reads.push(read);
                }
            }
        }
        if std::mem::take(&mut self.needs_settlement) {
            let queues: BTreeSet<&str> = open.iter().filter_map(|t| t.queue.as_deref()).collect();
            let awaiting: HashSet<String> = queues
                .iter()
                .flat_map(|q| {
                    [Part::Main, Part::Delayed, Part::Dead].map(|p| self.layout.messages(q, p))
                })
                .collect();
            if !awaiting.is_empty() {
                reads.extend(
                    awaiting
                        .iter()
                        .cloned()
                        .map(|k| Why::Settlement.read(ReadRequest::HGetAll(k))),
                );
                self.settlement = Some(Settlement {
                    open: open
                        .iter()
                        .filter(|t| t.queue.is_some())
                        .map(|t| t.id.clone())
                        .collect(),
                    awaiting,
                    present: HashSet::new(),
                });
            }
        }
        self.track_discovery(&reads);
        reads
    }

    fn sample_queues(&mut self, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = Vec::new();
        for q in &self.queues {
            let l = &self.layout;
            reads.push(Why::Length.read(ReadRequest::LLen(l.list(q, Part::Main))));
            reads.push(Why::Length.read(ReadRequest::LLen(l.list(q, Part::Delayed))));
            reads.push(Why::Length.read(ReadRequest::ZCard(l.list(q, Part::Dead))));
            // The head's redis id: its message's timestamp is the queue's oldest.
            reads.push(Why::Head.read(ReadRequest::LRange {
                key: l.list(q, Part::Main),
                start: 0,
                stop: 0,
            }));
        }
        self.sampling = Some(self.queues.iter().map(|q| (q.clone(), (0, 0, 0))).collect());
        self.sampled_heads.clear();
        reads.push(Why::Heartbeats.read(ReadRequest::ZRangeWithScores {
            key: self.layout.heartbeats(),
            start: 0,
            stop: -1,
        }));
        reads
    }

    fn on_gap(&mut self) {
        self.needs_settlement = true;
        self.settlement = None;
        self.acks.clear();
        self.leaving.clear();
        self.pending_running.clear();
        self.sampling = None;
        self.sampled_heads.clear();
        self.snapshot.clear();
        self.acks_left.clear();
        self.discovering.clear();
        self.deferred.clear();
    }
}

impl DramatiqAdapter {
    fn on_length(&mut self, key: &str, n: u64) {
        let Some(KeyKind::List { queue, part }) = self.layout.classify(key) else {
            return;
        };
        let Some(entry) = self.sampling.as_mut().and_then(|s| s.get_mut(queue)) else {
            return;
        };
        match part {
            Part::Main => entry.0 += n,
            Part::Delayed => entry.1 += n,
            Part::Dead => entry.2 += n,
        }
    }

    /// The heartbeats ZSET closes a sampling round: worker observations and queue samples.
    fn on_heartbeats(&mut self, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        for (worker, score) in reply.into_pairs() {
            let Some(worker) = worker
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
            else {
                continue;
            };
            if !self.consumers.contains(&worker) {
                continue; // a producer's broker: it dispatches, it does not consume
            }
            let Some(at) = score
                .as_f64()
                .and_then(|ms| crate::codec::unix_seconds(ms / 1000.0))
            else {
                continue;
            };
            out.observations
                .push(Observation::Worker(WorkerObservation {
                    broker: Broker::Dramatiq,
                    id: worker,
                    hostname: None,
                    pid: None,
                    at,
                    event: WorkerEvent::Heartbeat,
                    active: None,
                    heartbeat_every_s: None,
                }));
        }
        if let Some(sampling) = self.sampling.take() {
            let mut heads = std::mem::take(&mut self.sampled_heads);
            for (queue, (length, delayed, dead)) in sampling {
                let oldest_enqueued_at = heads
                    .remove(&queue)
                    .and_then(|id| self.known.get(&id).and_then(|k| k.waiting_since));
                let fetched: u64 = self
                    .acks
                    .iter()
                    .filter(|(key, _)| self.parse_acks_key(key).is_some_and(|(_, q)| q == queue))
                    .map(|(_, members)| members.len() as u64)
                    .sum();
                let size = length + fetched;
                if size > FOLLOW_MAX {
                    if self.unfollowed.insert(queue.clone()) {
                        self.snapshot.remove(&queue);
                    }
                } else if size <= FOLLOW_MAX / 2 {
                    self.unfollowed.remove(&queue);
                }
                let running: u64 = self
                    .acks
                    .iter()
                    .filter(|(key, _)| self.parse_acks_key(key).is_some_and(|(_, q)| q == queue))
                    .map(|(_, members)| members.len() as u64)
                    .sum();
                let held: u64 = self
                    .acks
                    .iter()
                    .filter(|(key, _)| {
                        self.parse_acks_key(key)
                            .is_some_and(|(_, q)| q.strip_suffix(".DQ") == Some(queue.as_str()))
                    })
                    .map(|(_, members)| members.len() as u64)
                    .sum();
                out.queue_samples.push(QueueSample {
                    broker: Broker::Dramatiq,
                    name: queue,
                    length,
                    delayed: delayed + held,
                    dead,
                    running,
                    sampled_at: now,
                    oldest_enqueued_at,
                });
            }
        }
        out
    }
}
