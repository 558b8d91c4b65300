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
pub mod message;

use crate::adapter::{
    glob_escape, Adapter, DecodeError, FirstSight, FirstSightRead, Interest, OpenTask, Output,
    Prefetch, PrefetchRead, ReadRequest, Reply,
};
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
    ns: String,
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
            ns: config.namespace,
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
    fn check_acked(&mut self, queue: &str) -> Vec<ReadRequest> {
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
        vec![
            ReadRequest::HMGet {
                key: self.key(&format!("{queue}.msgs")),
                fields: fresh.clone(),
            },
            ReadRequest::HGetAll(self.key(&format!("{queue}.DQ.msgs"))),
            ReadRequest::HMGet {
                key: self.key(&format!("{queue}.XQ.msgs")),
                fields: fresh,
            },
        ]
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.ns)
    }

    fn acks_prefix(&self) -> String {
        self.key("__acks__.")
    }

    fn heartbeats(&self) -> String {
        self.key("__heartbeats__")
    }

    /// `<ns>:__acks__.<worker>.<queue>` -> (worker, queue as named, e.g. `default.DQ`).
    fn parse_acks_key<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.acks_prefix())?;
        // Worker ids are uuids (no dots); the queue may contain dots.
        rest.split_once('.')
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

    fn read_tail(key: String) -> ReadRequest {
        ReadRequest::LRange {
            key,
            start: -PAGE,
            stop: -1,
        }
    }

    fn queue_reads(&self, queue: &str) -> Vec<ReadRequest> {
        vec![
            Self::read_tail(self.key(queue)),
            Self::read_tail(self.key(&format!("{queue}.DQ"))),
            ReadRequest::ZRangeWithScores {
                key: self.key(&format!("{queue}.XQ")),
                start: -PAGE,
                stop: -1,
            },
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
            out.follow_up.push(ReadRequest::LRange {
                key: key.to_string(),
                start: start - PAGE,
                stop: start - 1,
            });
        }
        if !unknown.is_empty() {
            out.follow_up.push(ReadRequest::HMGet {
                key: format!("{key}.msgs"),
                fields: unknown,
            });
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
            out.follow_up.push(ReadRequest::HMGet {
                key: format!("{key}.msgs"),
                fields: fresh,
            });
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
        let queue = hash
            .strip_prefix(&format!("{}:", self.ns))
            .unwrap_or(hash)
            .trim_end_matches(".DQ")
            .trim_end_matches(".XQ");
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
        let hash = key.strip_suffix(".msgs").unwrap_or(key);
        let dead = hash.ends_with(".XQ");
        let delayed = hash.ends_with(".DQ");
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
                        let (queue, actor, message_id) = (
                            leaving.known.queue.clone(),
                            leaving.known.actor.clone(),
                            leaving.known.message_id.clone(),
                        );
                        if let Some(obs) = self.settle(id, leaving, now) {
                            let succeeded = matches!(&obs, Observation::Task(o) if o.event == TaskEvent::Succeeded);
                            out.observations.push(obs);
                            if succeeded {
                                out.follow_up.extend(self.probe_result(
                                    &queue,
                                    &actor,
                                    &message_id,
                                ));
                            }
                        }
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
    fn probe_result(&mut self, queue: &str, actor: &str, message_id: &str) -> Option<ReadRequest> {
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
    fn result_read(&mut self, queue: &str, actor: &str, message_id: &str) -> ReadRequest {
        let key = message::result_key(queue, actor, message_id);
        self.result_owner
            .insert(key.clone(), message_id.to_string());
        ReadRequest::LRange {
            key,
            start: 0,
            stop: 0,
        }
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
            out.follow_up.push(ReadRequest::HMGet {
                key: self.key(&format!("{queue_name}.msgs")),
                fields: to_read,
            });
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
                // In this order, the last one settling: a requeue keeps the id in `.msgs`; a retry
                // put a copy in `.DQ.msgs` just before the ack (read whole: the delay-queue
                // consumer may already have taken the copy off the `.DQ` list); a nack moved the
                // id to `.XQ.msgs`.
                out.follow_up.push(ReadRequest::HMGet {
                    key: self.key(&format!("{base}.msgs")),
                    fields: departed.clone(),
                });
                out.follow_up
                    .push(ReadRequest::HGetAll(self.key(&format!("{base}.DQ.msgs"))));
                out.follow_up.push(ReadRequest::HMGet {
                    key: self.key(&format!("{base}.XQ.msgs")),
                    fields: departed,
                });
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
        let Some(queue) = key
            .strip_prefix(&format!("{}:", self.ns))
            .and_then(|rest| rest.strip_suffix(".msgs"))
            .filter(|q| !q.ends_with(".DQ") && !q.ends_with(".XQ"))
            .map(str::to_string)
        else {
            return out; // `.DQ.msgs`: its new messages came in the HMGET before
        };
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
            out.follow_up.push(ReadRequest::HMGet {
                key: self.key(&format!("{queue}.XQ.msgs")),
                fields,
            });
        }
        out
    }

    /// The prefetch rule that follows `queue`: any of its writes (an enqueue, a fetch, an ack or
    /// a nack, a retry copy) runs one pipeline of its ack sets' `SMEMBERS` and the `HKEYS` of
    /// `<q>.msgs` and `<q>.DQ.msgs`, then `HMGET`s of the new messages only and of the departed
    /// ids in `.XQ.msgs`. Coalesced: reads follow round trips, not messages.
    fn follow_rules(&self, queue: &str) -> Vec<Prefetch> {
        let msgs = self.key(&format!("{queue}.msgs"));
        let delayed = self.key(&format!("{queue}.DQ.msgs"));
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
            .map(|(k, _)| PrefetchRead::Read(ReadRequest::SMembers((*k).clone())))
            .collect();
        reads.push(PrefetchRead::FollowHash {
            key: msgs.clone(),
            departed_to: Some(self.key(&format!("{queue}.XQ.msgs"))),
        });
        reads.push(PrefetchRead::FollowHash {
            key: delayed.clone(),
            departed_to: None,
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
            if self.result_owner.contains_key(key) {
                let tries = self.result_retries.entry(key.to_string()).or_insert(0);
                *tries += 1;
                if *tries > RESULT_TRIES {
                    self.result_retries.remove(key);
                    self.result_owner.remove(key);
                }
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
        let ns = glob_escape(&self.ns);
        Interest {
            channel_patterns: Vec::new(),
            key_patterns: vec![
                format!("{ns}:*.msgs"),
                format!("{ns}:__acks__.*"),
                format!("{ns}:*.XQ"),
            ],
            scan_patterns: vec![format!("{ns}:*.msgs"), format!("{ns}:__acks__.*")],
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
                pattern: format!("{ns}:*.msgs"),
                ops: vec!["hset".to_string()],
                read: FirstSightRead::HashFirstPage { count: PAGE as u64 },
            }],
        }
    }

    fn on_scan(
        &mut self,
        _pattern: &str,
        keys: Vec<String>,
        _now: DateTime<Utc>,
    ) -> Vec<ReadRequest> {
        let mut reads = Vec::new();
        for key in keys {
            if key.starts_with(&self.acks_prefix()) {
                // A queue found here may hold a backlog: followed once a sample says it is short.
                if let Some(base) = self
                    .parse_acks_key(&key)
                    .map(|(_, q)| message::base_queue(q).to_string())
                    .filter(|q| !self.queues.contains(q))
                {
                    self.unfollowed.insert(base);
                }
                reads.push(ReadRequest::SMembers(key));
            } else if let Some(hash) = key
                .strip_prefix(&format!("{}:", self.ns))
                .and_then(|rest| rest.strip_suffix(".msgs"))
            {
                let base = message::base_queue(hash).to_string();
                if self.queues.insert(base.clone()) {
                    self.unfollowed.insert(base.clone());
                    reads.extend(self.queue_reads(&base));
                }
            }
        }
        reads
    }

    fn on_key_event(&mut self, key: &str, op: &str, _now: DateTime<Utc>) -> Vec<ReadRequest> {
        if key.starts_with(&self.acks_prefix()) {
            // A followed queue's known ack sets are read by its prefetch rule.
            let followed = self.acks.contains_key(key)
                && self
                    .parse_acks_key(key)
                    .is_some_and(|(_, q)| self.followed(message::base_queue(q)));
            return match op {
                "sadd" | "srem" | "del" if !followed => {
                    vec![ReadRequest::SMembers(key.to_string())]
                }
                _ => Vec::new(),
            };
        }
        let Some(rest) = key.strip_prefix(&format!("{}:", self.ns)) else {
            return Vec::new();
        };
        if let Some(dead) = rest.strip_suffix(".XQ") {
            // Dead letters of a followed queue are looked up as their ids leave `.msgs`.
            let new_queue = self.queues.insert(dead.to_string());
            return if op == "zadd" && (new_queue || !self.followed(dead)) {
                vec![ReadRequest::ZRangeWithScores {
                    key: key.to_string(),
                    start: -PAGE,
                    stop: -1,
                }]
            } else {
                Vec::new()
            };
        }
        let Some(hash) = rest.strip_suffix(".msgs") else {
            return Vec::new();
        };
        let base = message::base_queue(hash);
        if self.queues.contains(base) && self.followed(base) {
            return Vec::new(); // the prefetch rule reads it
        }
        if op == "hdel" && !hash.ends_with(".DQ") && !hash.ends_with(".XQ") {
            return self.check_acked(hash);
        }
        if op != "hset" {
            return Vec::new();
        }
        self.queues.insert(message::base_queue(hash).to_string());
        if let Some(dead) = hash.strip_suffix(".XQ") {
            vec![ReadRequest::ZRangeWithScores {
                key: self.key(&format!("{dead}.XQ")),
                start: -PAGE,
                stop: -1,
            }]
        } else {
            vec![Self::read_tail(self.key(hash))]
        }
    }

    fn on_message(&mut self, _channel: &str, _payload: &[u8], _now: DateTime<Utc>) -> Output {
        Output::default()
    }

    fn on_reply(&mut self, request: &ReadRequest, reply: Reply, now: DateTime<Utc>) -> Output {
        match request.inner() {
            ReadRequest::LRange { key, .. } if self.result_owner.contains_key(key) => {
                self.on_result(key, reply, now)
            }
            ReadRequest::LRange {
                key,
                start: 0,
                stop: 0,
            } if self.sampling.is_some() => {
                let items = reply.into_items();
                if let (Some(head), Some(q)) = (
                    items.first().and_then(Reply::as_bytes),
                    key.strip_prefix(&format!("{}:", self.ns)),
                ) {
                    self.sampled_heads
                        .insert(q.to_string(), String::from_utf8_lossy(head).into_owned());
                }
                // A head not read yet is read now (for the next round).
                self.on_list(key, 0, Reply::Array(items))
            }
            ReadRequest::LRange { key, start, .. } => self.on_list(key, *start, reply),
            ReadRequest::HMGet { key, fields } => self.on_messages(key, fields, reply, now),
            ReadRequest::HGetAll(key) => self.on_hash_entries(key, reply, true, now),
            ReadRequest::HScanFirstPage { key, .. } => {
                // `[cursor, [field, value, ...]]`: the first messages of a queue new to us.
                let page = reply.into_items().into_iter().nth(1).unwrap_or(Reply::Nil);
                self.on_hash_entries(key, page, false, now)
            }
            ReadRequest::SMembers(key) => self.on_acks(key, reply, now),
            ReadRequest::HKeys(key) => self.on_snapshot(key, reply, now),
            ReadRequest::ZRangeWithScores { key, .. } if *key == self.heartbeats() => {
                self.on_heartbeats(reply, now)
            }
            ReadRequest::ZRangeWithScores { key, .. } => self.on_dead_list(key, reply),
            ReadRequest::LLen(key) | ReadRequest::ZCard(key) => {
                self.on_length(key, reply.as_i64().unwrap_or(0).max(0) as u64);
                Output::default()
            }
            _ => Output::default(),
        }
    }

    fn reconcile(&mut self, open: &[OpenTask], _now: DateTime<Utc>) -> Vec<ReadRequest> {
        let mut reads: Vec<ReadRequest> = self
            .acks
            .keys()
            .cloned()
            .map(ReadRequest::SMembers)
            .collect();
        reads.extend(self.result_retries.keys().map(|key| ReadRequest::LRange {
            key: key.clone(),
            start: 0,
            stop: 0,
        }));
        let queues: Vec<String> = self.queues.iter().cloned().collect();
        for q in &queues {
            reads.extend(self.queue_reads(q));
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
                    [
                        self.key(&format!("{q}.msgs")),
                        self.key(&format!("{q}.DQ.msgs")),
                        self.key(&format!("{q}.XQ.msgs")),
                    ]
                })
                .collect();
            if !awaiting.is_empty() {
                reads.extend(awaiting.iter().cloned().map(ReadRequest::HGetAll));
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
        reads
    }

    fn sample_queues(&mut self, _now: DateTime<Utc>) -> Vec<ReadRequest> {
        let mut reads = Vec::new();
        for q in &self.queues {
            reads.push(ReadRequest::LLen(self.key(q)));
            reads.push(ReadRequest::LLen(self.key(&format!("{q}.DQ"))));
            reads.push(ReadRequest::ZCard(self.key(&format!("{q}.XQ"))));
            // The head's redis id: its message's timestamp is the queue's oldest.
            reads.push(ReadRequest::LRange {
                key: self.key(q),
                start: 0,
                stop: 0,
            });
        }
        self.sampling = Some(self.queues.iter().map(|q| (q.clone(), (0, 0, 0))).collect());
        self.sampled_heads.clear();
        reads.push(ReadRequest::ZRangeWithScores {
            key: self.heartbeats(),
            start: 0,
            stop: -1,
        });
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
    }
}

impl DramatiqAdapter {
    fn on_length(&mut self, key: &str, n: u64) {
        let Some(rest) = key.strip_prefix(&format!("{}:", self.ns)) else {
            return;
        };
        let Some(sampling) = self.sampling.as_mut() else {
            return;
        };
        if let Some(q) = rest.strip_suffix(".DQ") {
            if let Some(entry) = sampling.get_mut(q) {
                entry.1 += n;
            }
        } else if let Some(q) = rest.strip_suffix(".XQ") {
            if let Some(entry) = sampling.get_mut(q) {
                entry.2 += n;
            }
        } else if let Some(entry) = sampling.get_mut(rest) {
            entry.0 += n;
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
