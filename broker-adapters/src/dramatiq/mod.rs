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
//!
//! # Files
//! This file holds the adapter's memory and routes: notifications and replies go, by the read's
//! [`Why`], to one of
//! - [`layout`]: every key name (builders, `classify`);
//! - `messages.rs`: list pages and payloads into `queued` / `running` / `failed`;
//! - `acks.rs`: ack sets (`running`, and departures);
//! - `settle.rs`: the one settlement model (`depart`, `settle`, the post-gap settlement);
//! - `follow.rs`: short queues followed by the prefetcher, and their snapshots;
//! - `requeue.rs`: delayed copies moved back whose new message was never read;
//! - `results.rs`: the Results middleware's records;
//! - `sampling.rs`: queue samples and worker heartbeats.

mod acks;
pub mod detect;
mod follow;
pub mod layout;
pub mod message;
mod messages;
pub mod requeue;
mod results;
mod sampling;
mod settle;

use crate::adapter::{
    unknown_tag, Adapter, DecodeError, FirstSight, FirstSightRead, FollowTags, Interest, OpenTask,
    Output, Prefetch, PrefetchRead, Read, ReadRequest, Reply, Tag,
};
use crate::bounded::{key128, FifoMap, FifoSet, QueueNames, MAX_QUEUES};
use crate::model::{
    Broker, Observation, QueueSample, TaskEvent, TaskObservation, WorkerEvent, WorkerObservation,
};
use chrono::{DateTime, Utc};
use layout::{KeyKind, Layout, Part};
use message::DramatiqMessage;
use settle::{Leaving, Settlement};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

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
        /// The newest dead letters (`ZRANGE` of `<q>.XQ`) for moves being checked.
        MovedDead,
        /// Dead letters of that page never reported (`HMGET` of `<q>.XQ.msgs`).
        MovedDeadMessages,
    }
}

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
/// Worker ids remembered as consumers (the newest first kept).
const CONSUMERS_CAPACITY: usize = 10_000;
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

/// The copies of one `message_id` read so far.
#[derive(Debug, Clone, Copy, Default)]
struct Copies {
    /// The highest `options.retries` of any copy (a retry copy outranks its ack).
    highest: u32,
    /// The highest of a copy read in `.msgs` (a delayed copy's move back was seen).
    main: Option<u32>,
    /// A copy was read in the dead letters.
    dead: bool,
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
    queues: QueueNames,
    known: FifoMap<String, Known>,
    /// The copies read per `message_id`.
    copies: FifoMap<String, Copies>,
    /// Delayed copies and their moves back to the queue (`requeue.rs`).
    requeues: requeue::Requeues,
    /// Members of each ack set at its last read, by key.
    acks: HashMap<String, BTreeSet<String>>,
    /// Ids seen in an ack set before their message was read: (worker, list key).
    /// Bounded: an id whose message is never read (taken and acknowledged first) is
    /// forgotten with the oldest.
    pending_running: FifoMap<String, String>,
    leaving: HashMap<String, Leaving>,
    /// Ids of dead-lettered messages already reported, as [`key128`]s. Bounded: dead letters
    /// stay in Redis for a week (`dead_message_ttl`), and a set of every id ever seen grew
    /// with them; one forgotten and read again is reported again (the same final state).
    dead_seen: FifoSet<u128>,
    /// Worker ids seen owning an ack set: heartbeats of other ids are producers.
    /// Bounded: a fresh id per worker process, and processes come and go with every deploy.
    consumers: FifoSet<String>,
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
    /// Ack sets found empty with no heartbeat of their worker by the last sampling round:
    /// forgotten if the next round finds them so again (`sampling.rs`).
    acks_without_heartbeat: HashSet<String>,
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

impl DramatiqAdapter {
    pub fn new(config: DramatiqConfig) -> DramatiqAdapter {
        DramatiqAdapter {
            layout: Layout::new(&config.namespace),
            discovering: HashMap::new(),
            deferred: HashMap::new(),
            queues: QueueNames::new("dramatiq", MAX_QUEUES),
            known: FifoMap::new(KNOWN_CAPACITY),
            copies: FifoMap::new(KNOWN_CAPACITY),
            requeues: requeue::Requeues::default(),
            acks: HashMap::new(),
            pending_running: FifoMap::new(KNOWN_CAPACITY),
            leaving: HashMap::new(),
            dead_seen: FifoSet::new(KNOWN_CAPACITY),
            consumers: FifoSet::new(CONSUMERS_CAPACITY),
            sampling: None,
            sampled_heads: HashMap::new(),
            result_owner: FifoMap::new(KNOWN_CAPACITY),
            in_flight: HashMap::new(),
            result_retries: HashMap::new(),
            needs_settlement: true,
            settlement: None,
            unfollowed: HashSet::new(),
            acks_without_heartbeat: HashSet::new(),
            snapshot: HashMap::new(),
            xq_checked: FifoSet::new(KNOWN_CAPACITY),
            undecodable: FifoSet::new(KNOWN_CAPACITY),
            acks_left: FifoMap::new(KNOWN_CAPACITY),
            running_on: FifoMap::new(KNOWN_CAPACITY),
            results_seen: false,
            result_probes: 0,
        }
    }
}

impl DramatiqAdapter {
    /// A fingerprint of what [`Adapter::interest`] is built from: equal states give equal
    /// fingerprints; sets are hashed member by member and combined without order (each set
    /// with its own seed), so no sort is needed.
    fn interest_fingerprint(&self) -> u64 {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        fn set_hash<'a>(seed: u64, items: impl Iterator<Item = &'a String>) -> u64 {
            items.fold(0u64, |acc, item| {
                let mut h = DefaultHasher::new();
                seed.hash(&mut h);
                item.hash(&mut h);
                acc ^ h.finish()
            })
        }
        let mut h = DefaultHasher::new();
        (self.queues.len(), self.acks.len(), self.unfollowed.len()).hash(&mut h);
        set_hash(1, self.queues.iter()).hash(&mut h);
        set_hash(2, self.acks.keys()).hash(&mut h);
        set_hash(3, self.unfollowed.iter()).hash(&mut h);
        h.finish()
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

    /// The interest follows from the queues, which of them are followed, and the ack sets
    /// known (their rules read them): a fingerprint of those three, so that the loop, which
    /// asks after every batch, builds the rules again only when one changed (building them
    /// costs a clone of every rule's reads, thousands of times a second at full load).
    fn interest_version(&self) -> Option<u64> {
        Some(self.interest_fingerprint())
    }

    fn on_scan(&mut self, _pattern: &str, keys: Vec<String>, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = Vec::new();
        for key in keys {
            match self.layout.classify(&key) {
                Some(KeyKind::Acks { queue, .. }) => {
                    // A queue found here may hold a backlog: followed once a sample says it is
                    // short.
                    if !self.queues.contains(queue) && !self.queues.is_full() {
                        self.unfollowed.insert(queue.to_string());
                    }
                    reads.push(Why::Acks.read(ReadRequest::SMembers(key)));
                }
                Some(KeyKind::Messages { queue, .. }) => {
                    let base = queue.to_string();
                    if self.queues.insert(&base) {
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
                let new_queue = self.queues.insert(&queue);
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
                    self.queues.insert(&queue);
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
            (Why::MovedDead, _) => self.on_moved_dead_list(key, reply, now),
            (Why::MovedDeadMessages, ReadRequest::HMGet { fields, .. }) => {
                self.on_moved_dead_messages(key, fields, reply, now)
            }
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
        match (Why::try_from(tag), request) {
            (Ok(Why::NewMessages | Why::Messages), _) => out.merge(self.discovered(request, now)),
            // The read that settles leaving ids failed: forgotten as leaving, they are checked
            // again by the next reconciliation (else kept, and skipped, until a gap).
            (Ok(Why::CheckDead | Why::DepartedDead), ReadRequest::HMGet { fields, .. }) => {
                for id in fields {
                    self.leaving.remove(id);
                }
            }
            (Ok(Why::MovedDead | Why::MovedDeadMessages), _) => {
                if let Some(queue) = self.checked_queue(request.key()) {
                    self.moves_undecided(&queue);
                }
            }
            _ => {}
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
        if self.results_seen {
            for task in open {
                if let (Some(queue), Some(name)) = (&task.queue, &task.name) {
                    let read = self.result_read(queue, name, &task.id);
                    reads.push(read);
                }
            }
        }
        self.moves_reconcile();
        reads.extend(self.settlement_reconcile(open));
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
        self.acks_without_heartbeat.clear();
        self.leaving.clear();
        self.pending_running.clear();
        self.sampling = None;
        self.sampled_heads.clear();
        self.snapshot.clear();
        self.acks_left.clear();
        self.discovering.clear();
        self.deferred.clear();
        self.moves_forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = include_bytes!("../../tests/fixtures/dramatiq/queue_message.bin");
    const RID: &str = "16deba5e-78c0-48dd-9722-a2be2c56937d";

    /// A dead worker's ack sets, emptied by another worker's maintenance, are forgotten once
    /// its heartbeat is gone: each deploy brings new worker ids, and they piled up before.
    #[test]
    fn empty_ack_sets_of_workers_without_a_heartbeat_are_forgotten() {
        let now = Utc::now();
        let mut a = DramatiqAdapter::new(DramatiqConfig::default());
        let read = |a: &mut DramatiqAdapter, worker: &str, members: &[&str]| {
            let acks = Why::Acks.read(ReadRequest::SMembers(format!(
                "dramatiq:__acks__.{worker}.default"
            )));
            let reply = Reply::Array(
                members
                    .iter()
                    .map(|m| Reply::Bytes(m.as_bytes().to_vec()))
                    .collect(),
            );
            a.handle_reply(&acks, reply, now);
        };
        read(&mut a, "alive-idle", &[]);
        read(&mut a, "alive-busy", &[RID]);
        read(
            &mut a,
            "dead-busy",
            &["7e0e3a2c-0000-4000-8000-000000000001"],
        );
        read(&mut a, "dead", &[]);
        assert_eq!(a.acks.len(), 4);
        let heartbeats = Why::Heartbeats.read(ReadRequest::ZRangeWithScores {
            key: "dramatiq:__heartbeats__".into(),
            start: 0,
            stop: -1,
        });
        let score = Reply::Bytes(b"1700000000000".to_vec());
        let beating = Reply::Array(vec![
            Reply::Bytes(b"alive-idle".to_vec()),
            score.clone(),
            Reply::Bytes(b"alive-busy".to_vec()),
            score,
        ]);
        a.handle_reply(&heartbeats, beating.clone(), now);
        assert_eq!(
            a.acks.len(),
            4,
            "one round without a heartbeat is not enough"
        );
        a.handle_reply(&heartbeats, beating, now);
        let mut left: Vec<&str> = a.acks.keys().map(String::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "dramatiq:__acks__.alive-busy.default",
                "dramatiq:__acks__.alive-idle.default",
                "dramatiq:__acks__.dead-busy.default",
            ],
            "only the dead worker's empty set goes; a set with members waits for its settlement"
        );
        // An error reply tells nothing: nothing is forgotten.
        a.handle_reply(&heartbeats, Reply::Error("ERR".into()), now);
        assert_eq!(a.acks.len(), 3);
    }

    /// The loop builds the interest again only when its version moves: every change of the
    /// queues, of which are followed, and of the ack sets known moves it, and a version seen
    /// before always comes with the interest it came with then.
    #[test]
    fn the_interest_version_moves_whenever_the_interest_does() {
        let now = Utc::now();
        let mut a = DramatiqAdapter::new(DramatiqConfig::default());
        let mut seen: Vec<(Option<u64>, Interest)> = vec![(a.interest_version(), a.interest())];
        let mut check = |a: &DramatiqAdapter, changed: bool, what: &str| {
            let (version, interest) = (a.interest_version(), a.interest());
            let (last_version, last_interest) = seen.last().expect("a first state").clone();
            assert_eq!(interest != last_interest, changed, "interest after {what}");
            assert_eq!(version != last_version, changed, "version after {what}");
            for (v, i) in &seen {
                // An equal version must mean an equal interest (the loop keeps the old one).
                assert!(
                    *v != version || *i == interest,
                    "a stale version after {what}"
                );
            }
            seen.push((version, interest));
        };
        // The queue's first message, read at first sight: the queue is followed.
        let first = Why::FirstSight.read(ReadRequest::HScanFirstPage {
            key: "dramatiq:default.msgs".into(),
            count: 200,
        });
        let page = Reply::Array(vec![
            Reply::Bytes(b"0".to_vec()),
            Reply::Array(vec![
                Reply::Bytes(RID.as_bytes().to_vec()),
                Reply::Bytes(MSG.to_vec()),
            ]),
        ]);
        a.handle_reply(&first, page, now);
        check(&a, true, "a new queue");
        // A worker's ack set: its rule and a read in every rule of the queue.
        let acks = Why::Acks.read(ReadRequest::SMembers("dramatiq:__acks__.w1.default".into()));
        let members = Reply::Array(vec![Reply::Bytes(RID.as_bytes().to_vec())]);
        a.handle_reply(&acks, members.clone(), now);
        check(&a, true, "a new ack set");
        a.handle_reply(&acks, Reply::Array(vec![]), now);
        check(&a, false, "the ack set read again");
        // A sample finds the queue long: unfollowed, no rule.
        let sample = |a: &mut DramatiqAdapter, length: i64| {
            for read in a.sample_queues(now) {
                let reply = match &read.request {
                    ReadRequest::LLen(k) if !k.ends_with(".DQ") => Reply::Int(length),
                    ReadRequest::LLen(_) | ReadRequest::ZCard(_) => Reply::Int(0),
                    _ => Reply::Array(vec![]),
                };
                a.handle_reply(&read, reply, now);
            }
        };
        sample(&mut a, 5_000);
        check(&a, true, "the queue unfollowed");
        sample(&mut a, 0);
        check(&a, true, "the queue followed again");
    }
}
