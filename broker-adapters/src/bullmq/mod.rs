//! BullMQ (Node), read as bullmq 6 writes it: from each queue's events stream, with the job
//! hashes for what the stream does not carry.
//!
//! Where each state comes from (fixtures: `tests/fixtures/bullmq/`, captured by
//! `tests/node/capture.sh`):
//! - the events stream `<prefix>:<queue>:events` is read with `XRANGE` from the last id seen
//!   (on its `xadd` notification, coalesced to one read in flight per queue, and at every
//!   reconciliation); the first read of a queue takes its newest [`INITIAL_WINDOW`] entries
//!   (`XREVRANGE`), so a restarted taskscope resumes from what the stream still holds;
//! - `queued`: `added` (the job's name) then `waiting`, `waiting-children` (a flow parent) or
//!   `delayed` (its `delay` is the `eta`);
//! - `running`: `active` (the hash's `pb` names the worker);
//! - `success`: `completed` (its `returnvalue`); `failure`: `failed` (its `failedReason`; the
//!   hash adds the stack trace), which BullMQ writes only once no attempt is left;
//! - `retried`: a failed attempt with attempts left: `delayed` right after `active` (a backoff)
//!   or `waiting` with `prev=active` not followed by `stalled` (no backoff); the hash's
//!   `failedReason` is that attempt's error;
//! - `abandoned`: the job's lock `<prefix>:<queue>:<id>:lock` *expired* (keyspace class `x`)
//!   while it was active: its worker died; later BullMQ's stalled checker moves it back to
//!   `wait` (`waiting` `prev=active` then `stalled`), also read as abandoned, and another
//!   worker runs it again (`active`: running again, same attempt: a stall is not an attempt).
//!
//! The job hash (data, enqueue time, worker, stack trace: what the stream does not carry) is
//! read once per job where possible, never once per event: at the job's end (`completed`,
//! `failed`), or [`HASH_READ_DEFER_MS`] after its `added` or `active` when it is still queued
//! (for its data) or running (for its worker) by then, and at each failed attempt (its error).
//! The reads a round of notifications calls for are asked for at its end
//! ([`Adapter::end_of_batch`]), together: one `SORT_RO <set> BY nosort LIMIT 0 n GET # GET
//! <prefix>:<queue>:*->field...` ([`ReadRequest::SortGet`]) per queue for the jobs just
//! finished (`completed`, `failed`, newest first), running (`active`) or retried (`wait`), with
//! a slack for jobs that joined the set since; a job not found there is read on its own
//! (`HMGET`), and so is every job when Redis refuses `SORT_RO` (< 7.0, an ACL). A queue whose finished jobs' hashes are found
//! gone (`removeOnComplete`) is read at once from then on, at `added` and `active`, while the
//! hash is there; its jobs that finish before any read are still recorded whole from the
//! stream (name, result, times), without their data.
//!
//! A trimmed stream (`maxLenEvents`, 10,000 by default, `MAXLEN ~`): at every reconciliation
//! the stream's first id is compared with the last id read; when the last one read is gone,
//! events may have been lost, and the queue's `active` list and newest `completed` and `failed`
//! entries are read, and each job hash not known finished judged on its own
//! ([`BullmqAdapter::on_job`]). At every reconciliation, the hash of an open task is read when
//! the stream never named it (older than taskscope's window) or when events may have been lost
//! since the last one (a trimmed stream, a gap), so nothing is lost silently.
//!
//! Queues: configured (`--bullmq-queues`), found by detection, or found by this adapter from
//! any `*:events` stream (any prefix) whose first entry is a BullMQ event. Task ids are the
//! job keys, `<prefix>:<queue>:<job id>` (job ids are only unique per queue).
//!
//! Workers: BullMQ workers keep no key of their own; they name their connections, which
//! `CLIENT LIST` shows (read at every sample, unless Redis refuses it): each named worker of a
//! followed queue is listed as `<prefix>:<queue>:<name>`, with a heartbeat per sample and
//! `offline` once its connections are gone. A task's `worker` is its hash's `pb`, the bare name:
//! deliberately not the listed id, so that the sweep of `--abandon-after`, whose only signal
//! here would be the sampling period, never judges a BullMQ task; the job's lock and the
//! `stalled` event, BullMQ's own verdict, do.

pub mod detect;
pub mod event;
pub mod job;
pub mod layout;
pub mod workers;

use crate::adapter::{
    glob_escape, unknown_tag, Adapter, DecodeError, Interest, OpenTask, Output, Read, ReadRequest,
    Reply, Tag,
};

use crate::bounded::{FifoMap, FifoSet};
use crate::detect::Setting;
use crate::model::{
    Broker, Observation, QueueSample, TaskEvent, TaskObservation, WorkerEvent, WorkerObservation,
};
use crate::taskiq::stream::{self, Entry, StreamId};
use chrono::{DateTime, Utc};
use event::{Event, EventKind};
use job::JobHash;
use layout::QueueName;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

crate::read_reasons! {
    /// Why the BullMQ adapter reads (the tag of each of its reads).
    pub enum Why {
        /// A stream's first entry (`XRANGE - + COUNT 1`): a probe of a stream not followed yet,
        /// or whether a followed one was trimmed past the last entry read.
        FirstEntry,
        /// A followed stream's newest window, read the first time (`XREVRANGE`).
        Window,
        /// A followed stream's entries after the last one read.
        NewEntries,
        /// A job hash.
        Job,
        /// The hashes of the jobs at the head of a list or sorted set (`SORT_RO ... GET`).
        Jobs,
        /// `CLIENT LIST`: the workers.
        Clients,
        /// A job lock's time to live after its `expired` notification.
        LockTtl,
        /// The next job of `wait`, for its queue sample.
        Head,
        /// The ids of a queue's `wait` or `active` list.
        ListIds,
        /// The newest ids of `completed` or `failed`.
        SetIds,
        /// A list's or set's size for its queue sample.
        Count,
    }
}

/// Entries read per `XRANGE`.
const PAGE: u64 = 1_000;
/// How far back the first read of a queue's stream goes.
pub const INITIAL_WINDOW: u64 = 1_000;
/// Jobs read from each of `completed` and `failed` (newest) and `active` after a gap.
const GAP_DEPTH: i64 = 1_000;
/// Jobs remembered between reads.
const JOB_CAPACITY: usize = 200_000;
/// Streams found not to be BullMQ's, remembered so each is probed once.
const PROBED_CAPACITY: usize = 100_000;
/// Queues followed at most.
const MAX_QUEUES: usize = 10_000;
/// Most members one `SORT_RO` of a list or set brings back with their hashes.
const SORT_MAX: u64 = 1_000;
/// Members a `SORT_RO` first reads beyond the jobs it is for (jobs that joined the list or set
/// after the events that asked for the read); then learned per list or set
/// ([`BullmqAdapter::on_sorted`]): each member read costs Redis a dozen hash lookups.
const SORT_SLACK: u64 = 4;
/// The most slack a `SORT_RO` learns: a job not in its set at all (removed at its end, moved
/// on) is a miss too, and must not make every later read of the set a long one.
const SORT_MAX_SLACK: u64 = 100;
/// How long a job's hash read waits for the job to finish: a job that finishes sooner is read
/// once, at its end, for all of it (data, enqueue time, worker, stack trace); one still queued
/// or running then is read for its data, or its worker.
pub const HASH_READ_DEFER_MS: i64 = 1_000;

/// Configuration of the BullMQ adapter.
#[derive(Debug, Clone, Default)]
pub struct BullmqConfig {
    /// Queues to follow from the start (others are found from their events streams).
    pub queues: Vec<QueueName>,
}

/// How far a queue's stream was read.
#[derive(Debug, Clone, Default)]
struct StreamState {
    last_id: Option<StreamId>,
    /// A read of new entries is in flight; `true` inside when a notification came since.
    in_flight: Option<bool>,
    /// Its finished jobs' hashes were found gone (`removeOnComplete`, `removeOnFail`): its
    /// jobs are read at once, at `added` and `active`, not at their end.
    eager: bool,
    /// Events may have been lost (a gap, a trimmed stream): the next reconciliation reads the
    /// hash of every open task of the queue, not only of those the stream never named.
    reread_open: bool,
}

/// Where a job stood at its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Unknown,
    Waiting,
    Active,
    Finished,
}

/// What the adapter remembers about a job.
#[derive(Debug, Clone, Default)]
struct JobMemo {
    /// Retries before the current attempt, when its `added` was read.
    attempt: Option<u32>,
    phase: Phase,
    /// When its current attempt became active.
    active_at: Option<DateTime<Utc>>,
    /// When it was added (its `added` event, or its hash's `timestamp`).
    added_at: Option<DateTime<Utc>>,
    /// Its hash was read (or asked for) once for its fields (data, enqueue time).
    fields_read: bool,
    /// Its hash was read (or asked for) since its current attempt became active: the worker.
    worker_read: bool,
    /// A deferred read of its hash is waiting in [`BullmqAdapter::deferred`].
    deferred: bool,
    /// Its end was `failed` (it is in the queue's `failed` set, not `completed`).
    failed: bool,
    /// When its last `delayed` event said it may run: kept on the `waiting` that follows.
    eta: Option<DateTime<Utc>>,
}

/// A queue's sampling round.
#[derive(Debug, Clone, Default)]
struct SampleRound {
    counts: HashMap<&'static str, u64>,
    /// The oldest job id of `wait` (its tail: BullMQ `LPUSH`es and takes from the right),
    /// once read (`Some(None)`: empty).
    head: Option<Option<String>>,
}

/// When an event calls for its job's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashRead {
    None,
    /// In this round: the job finished (or failed an attempt), or its queue is eager.
    Now(Where),
    /// After [`HASH_READ_DEFER_MS`], unless the job finished by then.
    Later,
}

impl HashRead {
    /// Later, or now (where the job is) when its queue is eager.
    fn later_unless(eager: bool, at: Where) -> HashRead {
        if eager {
            HashRead::Now(at)
        } else {
            HashRead::Later
        }
    }
}

/// Where a job whose hash is wanted is expected: the list or set of its queue whose `SORT_RO`
/// reads it with its neighbours (the newest members first), or elsewhere (read on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Where {
    Completed,
    Failed,
    Active,
    /// The head of `wait` (just added, or retried without backoff).
    Wait,
    Elsewhere,
}

/// The lists and sorted sets a queue sample counts.
const SAMPLED: [(&str, bool); 6] = [
    ("wait", false),
    ("paused", false),
    ("prioritized", true),
    ("delayed", true),
    ("active", false),
    ("failed", true),
];

pub struct BullmqAdapter {
    queues: BTreeMap<QueueName, StreamState>,
    jobs: FifoMap<String, JobMemo>,
    probed: FifoSet<String>,
    sampling: HashMap<QueueName, SampleRound>,
    /// Worker ids seen in the last `CLIENT LIST`.
    workers: BTreeSet<String>,
    /// Redis refused `CLIENT LIST` (ACL): workers are not listed, and it is not asked again.
    client_list_refused: bool,
    /// Job hash reads waiting for their time ([`HASH_READ_DEFER_MS`]), oldest first.
    deferred: std::collections::VecDeque<(DateTime<Utc>, String)>,
    /// Job hashes to read at the end of this round of notifications, with where each job is
    /// ([`BullmqAdapter::end_of_batch`] reads them together).
    wanted: Vec<(String, Where)>,
    /// The jobs each `SORT_RO` in flight was asked for, per list or set, in asking order.
    sorting: HashMap<String, std::collections::VecDeque<Vec<String>>>,
    /// Per list or set, the members its next `SORT_RO` reads beyond the jobs it is for.
    sort_slack: HashMap<String, u64>,
    /// Redis refused `SORT_RO` (older than 7.0, or an ACL): every hash is read on its own.
    sort_refused: bool,
}

impl BullmqAdapter {
    pub fn new(config: BullmqConfig) -> BullmqAdapter {
        BullmqAdapter {
            queues: config
                .queues
                .into_iter()
                .map(|q| (q, StreamState::default()))
                .collect(),
            jobs: FifoMap::new(JOB_CAPACITY),
            probed: FifoSet::new(PROBED_CAPACITY),
            sampling: HashMap::new(),
            workers: BTreeSet::new(),
            client_list_refused: false,
            deferred: std::collections::VecDeque::new(),
            wanted: Vec::new(),
            sorting: HashMap::new(),
            sort_slack: HashMap::new(),
            sort_refused: false,
        }
    }

    /// The queues followed, qualified (`bull:emails`).
    pub fn queues(&self) -> impl Iterator<Item = String> + '_ {
        self.queues.keys().map(QueueName::qualified)
    }

    fn decode_error(key: &str, kind: &'static str, message: String) -> DecodeError {
        DecodeError {
            broker: Broker::Bullmq,
            kind,
            key: key.to_string(),
            message,
        }
    }

    /// Starts following a queue: its stream from the newest window, and its sets (jobs older
    /// than the window). Nothing when it is followed already.
    fn adopt(&mut self, queue: QueueName) -> Vec<Read> {
        if self.queues.contains_key(&queue) || self.queues.len() >= MAX_QUEUES {
            return Vec::new();
        }
        tracing::info!(queue = %queue.qualified(), "Found a BullMQ queue; following its events stream.");
        self.queues.insert(queue.clone(), StreamState::default());
        self.stream_read(&queue)
    }

    /// The read of a queue's new entries, unless one is in flight (then it is asked again when
    /// that one answers). The first read (at first sight, after a restart of taskscope or a
    /// gap) also reads the queue's lists and sets: jobs older than the stream's window.
    fn stream_read(&mut self, queue: &QueueName) -> Vec<Read> {
        let Some(state) = self.queues.get_mut(queue) else {
            return Vec::new();
        };
        if let Some(dirty) = state.in_flight.as_mut() {
            *dirty = true;
            return Vec::new();
        }
        state.in_flight = Some(false);
        let key = queue.events();
        match state.last_id {
            Some(last) => vec![Why::NewEntries.read(ReadRequest::XRange {
                key,
                start: format!("({last}"),
                end: "+".to_string(),
                count: PAGE,
            })],
            None => {
                let mut reads = Self::set_reads(queue);
                reads.push(Why::Window.read(ReadRequest::XRevRange {
                    key,
                    end: "+".to_string(),
                    start: "-".to_string(),
                    count: INITIAL_WINDOW,
                }));
                reads
            }
        }
    }

    /// The stream's first entry: whether the last entry read was trimmed away.
    fn first_entry_read(queue: &QueueName) -> Read {
        Why::FirstEntry.read(ReadRequest::XRange {
            key: queue.events(),
            start: "-".to_string(),
            end: "+".to_string(),
            count: 1,
        })
    }

    /// The jobs of a queue's `wait` and `active` lists and newest `completed` and `failed`
    /// entries: read when the stream cannot tell (first sight, or a trimmed stream).
    fn set_reads(queue: &QueueName) -> Vec<Read> {
        vec![
            Why::ListIds.read(ReadRequest::LRange {
                key: queue.key("wait"),
                start: -GAP_DEPTH,
                stop: -1,
            }),
            Why::ListIds.read(ReadRequest::LRange {
                key: queue.key("active"),
                start: 0,
                stop: GAP_DEPTH - 1,
            }),
            Why::SetIds.read(ReadRequest::ZRangeWithScores {
                key: queue.key("completed"),
                start: -GAP_DEPTH,
                stop: -1,
            }),
            Why::SetIds.read(ReadRequest::ZRangeWithScores {
                key: queue.key("failed"),
                start: -GAP_DEPTH,
                stop: -1,
            }),
        ]
    }

    /// One `HMGET` of a job's hash.
    fn job_read(task_id: &str) -> Read {
        Why::Job.read(ReadRequest::HMGet {
            key: task_id.to_string(),
            fields: job::FIELDS.iter().map(|f| f.to_string()).collect(),
        })
    }

    fn memo(&mut self, task_id: &str) -> &mut JobMemo {
        self.jobs
            .get_or_insert_with(task_id.to_string(), JobMemo::default)
    }

    /// Asks for a job's hash at the end of this round ([`BullmqAdapter::end_of_batch`]);
    /// what the read will tell is noted, so that no other read of the job is asked for the
    /// same thing. `at` is where the job is expected (a hint: a job not found there is read
    /// on its own).
    fn read_now(&mut self, task_id: &str, at: Where) {
        let memo = self.memo(task_id);
        memo.fields_read = true;
        if matches!(memo.phase, Phase::Active | Phase::Finished) {
            memo.worker_read = true;
        }
        self.wanted.push((task_id.to_string(), at));
    }

    /// The `SORT_RO` of a queue's list or set that brings back the hashes of `jobs` (and of
    /// their neighbours), or `None` when it cannot (the queue's name holds the pattern's `*`).
    fn sort_read(&mut self, queue: &QueueName, at: Where, jobs: Vec<String>) -> Option<Read> {
        let (suffix, desc) = match at {
            Where::Completed => ("completed", true),
            Where::Failed => ("failed", true),
            Where::Active => ("active", false),
            Where::Wait => ("wait", false),
            Where::Elsewhere => return None,
        };
        let pattern = queue.job("*");
        if self.sort_refused || pattern.matches('*').count() != 1 {
            return None;
        }
        let key = queue.key(suffix);
        let slack = self.sort_slack.get(&key).copied().unwrap_or(SORT_SLACK);
        let count = (jobs.len() as u64 + slack).min(SORT_MAX);
        self.sorting.entry(key.clone()).or_default().push_back(jobs);
        Some(
            Why::Jobs.read(ReadRequest::SortGet {
                key,
                desc,
                count,
                gets: job::FIELDS
                    .iter()
                    .map(|f| format!("{pattern}->{f}"))
                    .collect(),
            }),
        )
    }

    /// The reads of the job hashes wanted this round: one `SORT_RO` per queue and place for
    /// the jobs of a list or set, one `HMGET` for each other job.
    fn wanted_reads(&mut self) -> Vec<Read> {
        let wanted = std::mem::take(&mut self.wanted);
        let mut seen = std::collections::HashSet::new();
        let mut groups: BTreeMap<(QueueName, Where), Vec<String>> = BTreeMap::new();
        let mut reads = Vec::new();
        // A job wanted twice this round is where its last event put it.
        for (task_id, at) in wanted.into_iter().rev() {
            if !seen.insert(task_id.clone()) {
                continue;
            }
            match self.followed_job_of(&task_id) {
                Some((queue, _)) if at != Where::Elsewhere => {
                    groups.entry((queue, at)).or_default().push(task_id)
                }
                _ => reads.push(Self::job_read(&task_id)),
            }
        }
        for ((queue, at), jobs) in groups {
            // One job: its own `HMGET`, as many commands and less for Redis to do.
            if jobs.len() == 1 || jobs.len() as u64 >= SORT_MAX {
                reads.extend(jobs.iter().map(|j| Self::job_read(j)));
                continue;
            }
            match self.sort_read(&queue, at, jobs.clone()) {
                Some(read) => reads.push(read),
                None => reads.extend(jobs.iter().map(|j| Self::job_read(j))),
            }
        }
        reads
    }

    /// A `SORT_RO` reply: the hashes of the jobs it was asked for, handed to
    /// [`BullmqAdapter::on_job`]; those not in it are read on their own.
    fn on_sorted(&mut self, key: &str, reply: Option<Reply>, now: DateTime<Utc>, out: &mut Output) {
        let Some(asked) = self.sorting.get_mut(key).and_then(|q| q.pop_front()) else {
            return;
        };
        if self.sorting.get(key).is_some_and(|q| q.is_empty()) {
            self.sorting.remove(key);
        }
        let asked_count = asked.len() as u64;
        let mut missing: std::collections::HashSet<String> = asked.into_iter().collect();
        // How deep the last job asked for was: the slack the next read needs.
        let mut depth = 0u64;
        if let (Some(reply), Some((queue, _))) = (reply, self.queue_of_key(key)) {
            let items = reply.into_items();
            for (i, chunk) in items.chunks(1 + job::FIELDS.len()).enumerate() {
                let Some(id) = chunk.first().and_then(Reply::as_bytes) else {
                    continue;
                };
                let task_id = queue.job(&String::from_utf8_lossy(id));
                if chunk.len() == 1 + job::FIELDS.len() && missing.remove(&task_id) {
                    depth = i as u64 + 1;
                    self.on_job(&task_id, chunk[1..].to_vec(), now, out);
                }
            }
        }
        // Newer members above the jobs asked for, with a margin; twice as many after a miss.
        let found = asked_count - missing.len() as u64;
        let above = depth.saturating_sub(found);
        let slack = self.sort_slack.entry(key.to_string()).or_insert(SORT_SLACK);
        *slack = if missing.is_empty() {
            above + above / 2 + 2
        } else {
            (*slack * 2).max(above + above / 2 + 2)
        }
        .min(SORT_MAX_SLACK);
        out.follow_up
            .extend(missing.iter().map(|task_id| Self::job_read(task_id)));
    }

    /// Reads a job's hash [`HASH_READ_DEFER_MS`] from now, if by then the job has not finished
    /// (its end reads it) and the hash still has something to tell ([`BullmqAdapter::due_reads`]).
    fn defer_read(&mut self, task_id: &str, now: DateTime<Utc>) {
        let memo = self.memo(task_id);
        if std::mem::replace(&mut memo.deferred, true) {
            return;
        }
        let due = now + chrono::Duration::milliseconds(HASH_READ_DEFER_MS);
        self.deferred.push_back((due, task_id.to_string()));
    }

    /// The deferred hash reads that are due (or that overflow [`JOB_CAPACITY`]) and still
    /// needed: a job queued whose data was not read yet, a job running whose worker was not.
    fn due_reads(&mut self, now: DateTime<Utc>) {
        while let Some((due, _)) = self.deferred.front() {
            if *due > now && self.deferred.len() <= JOB_CAPACITY {
                break;
            }
            let Some((_, task_id)) = self.deferred.pop_front() else {
                break;
            };
            let Some(memo) = self.jobs.get_mut(&task_id) else {
                continue;
            };
            memo.deferred = false;
            let wanted = match memo.phase {
                Phase::Finished => false,
                Phase::Active => !memo.fields_read || !memo.worker_read,
                Phase::Waiting | Phase::Unknown => !memo.fields_read,
            };
            if wanted {
                let at = if memo.phase == Phase::Active {
                    Where::Active
                } else {
                    Where::Elsewhere
                };
                self.read_now(&task_id, at);
            }
        }
    }

    /// The followed queue a job key (`<prefix>:<queue>:<job id>`, a task id) belongs to, and
    /// the job id. A job scheduler's job ids hold colons (`repeat:<scheduler>:<ms>`), and so
    /// may a prefix: the queue is the longest followed `<prefix>:<queue>` the key starts with.
    fn followed_job_of<'k>(&self, key: &'k str) -> Option<(QueueName, &'k str)> {
        key.rmatch_indices(':').map(|(i, _)| i).find_map(|i| {
            let queue = QueueName::parse_qualified(&key[..i])?;
            let id = &key[i + 1..];
            (!id.is_empty() && self.queues.contains_key(&queue)).then_some((queue, id))
        })
    }

    /// The queue followed whose key `key` is (`<prefix>:<queue>:<suffix>`), and the suffix.
    fn queue_of_key<'k>(&self, key: &'k str) -> Option<(QueueName, &'k str)> {
        let (queue, suffix) = key.rsplit_once(':')?;
        let queue = QueueName::parse_qualified(queue)?;
        self.queues.contains_key(&queue).then_some((queue, suffix))
    }

    /// New entries of a queue's stream, in order.
    fn on_entries(
        &mut self,
        queue: &QueueName,
        entries: Vec<Entry>,
        more: bool,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let key = queue.events();
        let last = self.queues.get(queue).and_then(|s| s.last_id);
        let mut events = Vec::with_capacity(entries.len());
        for entry in entries {
            if last.is_some_and(|l| entry.id <= l) {
                continue; // read already
            }
            match event::decode(&entry) {
                Ok(e) => events.push(e),
                Err(e) => out
                    .decode_errors
                    .push(Self::decode_error(&key, e.kind(), e.to_string())),
            }
        }
        // A stall is `waiting` (prev=active) then `stalled`, written by one script: a page that
        // ends between the two is read again from the `waiting`.
        let mut upto = events.len();
        if more {
            if let Some(e) = events.last() {
                if e.kind == EventKind::Waiting && e.prev.as_deref() == Some("active") {
                    upto -= 1;
                }
            }
        }
        let newest = if upto == 0 {
            None
        } else {
            Some(events[upto - 1].id)
        };
        for i in 0..upto {
            let stalled_next = events
                .get(i + 1)
                .is_some_and(|n| n.kind == EventKind::Stalled && n.job_id == events[i].job_id);
            self.on_event(queue, &events[i], stalled_next, now, out);
        }
        if let (Some(n), Some(state)) = (newest, self.queues.get_mut(queue)) {
            state.last_id = Some(state.last_id.map_or(n, |l| l.max(n)));
        }
        // One hash read per job and batch: a job added and started (or retried) between two
        // reads is read once, after its last event, for all of it.
        let mut asked = std::collections::HashSet::new();
        out.follow_up.retain(|read| match &read.request {
            ReadRequest::HMGet { key, .. } => asked.insert(key.clone()),
            _ => true,
        });
    }

    /// One event: its observation, and the job hash read it calls for.
    fn on_event(
        &mut self,
        queue: &QueueName,
        e: &Event,
        stalled_next: bool,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let Some(job_id) = e.job_id.as_deref() else {
            return;
        };
        let task_id = queue.job(job_id);
        let eager = self.queues.get(queue).is_some_and(|s| s.eager);
        let at = e.at().unwrap_or(now).min(now);
        let new_obs = |event, source| {
            let mut obs = TaskObservation::new(Broker::Bullmq, task_id.clone(), at, event, source);
            obs.fields.queue = Some(queue.qualified());
            obs
        };
        let memo = self.memo(&task_id);
        let attempt = memo.attempt;
        let mut hash_read = HashRead::None;
        let obs = match e.kind {
            EventKind::Added => {
                memo.attempt.get_or_insert(0);
                memo.added_at = Some(at);
                memo.phase = Phase::Waiting;
                let mut obs = new_obs(TaskEvent::Queued, "events");
                obs.attempt = Some(0);
                obs.fields.name = e.name.clone();
                obs.fields.enqueued_at = Some(at);
                if !memo.fields_read {
                    hash_read = HashRead::later_unless(eager, Where::Wait);
                }
                obs
            }
            EventKind::Waiting | EventKind::WaitingChildren | EventKind::Delayed
                if memo.phase == Phase::Active && !stalled_next =>
            {
                // Back from `active` without finishing: a failed attempt with attempts left.
                memo.phase = Phase::Waiting;
                memo.attempt = attempt.map(|a| a + 1);
                let mut obs = new_obs(TaskEvent::Retried, "events");
                obs.attempt = attempt;
                if e.kind == EventKind::Delayed {
                    memo.eta = e.delay_until;
                    obs.fields.eta = e.delay_until;
                }
                // Its error is that attempt's `failedReason`, in the hash (until the next attempt
                // fails).
                hash_read = HashRead::Now(if e.kind == EventKind::Waiting {
                    Where::Wait
                } else {
                    Where::Elsewhere
                });
                obs
            }
            EventKind::Waiting | EventKind::Stalled
                if stalled_next || e.kind == EventKind::Stalled =>
            {
                if e.kind == EventKind::Stalled && memo.phase != Phase::Active {
                    return; // told by the `waiting` before it
                }
                memo.phase = Phase::Waiting;
                let mut obs = new_obs(TaskEvent::Abandoned, "events");
                obs.attempt = attempt;
                obs.detail = Some(
                    "abandoned: stalled (its worker lost the lock: died or blocked); BullMQ moved it back to wait"
                        .to_string(),
                );
                obs
            }
            EventKind::Waiting | EventKind::WaitingChildren | EventKind::Delayed => {
                if memo.phase == Phase::Finished {
                    return;
                }
                memo.phase = Phase::Waiting;
                let mut obs = new_obs(TaskEvent::Queued, "events");
                obs.attempt = attempt;
                if e.kind == EventKind::Delayed {
                    memo.eta = e.delay_until;
                }
                // Promoted from `delayed`: still the task that waited until its eta.
                if e.kind == EventKind::Delayed || e.prev.as_deref() == Some("delayed") {
                    obs.fields.eta = memo.eta;
                }
                if e.kind == EventKind::WaitingChildren {
                    obs.detail = Some("waiting for its children (flow)".to_string());
                }
                obs
            }
            EventKind::Active => {
                memo.phase = Phase::Active;
                memo.active_at = Some(at);
                memo.worker_read = false;
                let mut obs = new_obs(TaskEvent::Running, "events");
                obs.attempt = attempt;
                obs.fields.started_at = Some(at);
                // The worker is the hash's `pb`.
                hash_read = HashRead::later_unless(eager, Where::Active);
                obs
            }
            EventKind::Completed => {
                memo.phase = Phase::Finished;
                // What the hash adds (data, worker), unless read already.
                if !memo.fields_read || !memo.worker_read {
                    hash_read = HashRead::Now(Where::Completed);
                }
                let started = memo.active_at;
                let mut obs = new_obs(TaskEvent::Succeeded, "events");
                obs.attempt = attempt;
                obs.fields.started_at = started;
                obs.fields.runtime_ms = runtime(started, at);
                if let Some(v) = &e.returnvalue {
                    match crate::codec::json_from_slice(v) {
                        Ok(v) => obs.fields.result = Some(v),
                        Err(err) => out.decode_errors.push(Self::decode_error(
                            &queue.events(),
                            "returnvalue-json",
                            format!("job {job_id}: {err}"),
                        )),
                    }
                }
                obs
            }
            EventKind::Failed => {
                memo.phase = Phase::Finished;
                memo.failed = true;
                let started = memo.active_at;
                let mut obs = new_obs(TaskEvent::Failed, "events");
                obs.attempt = attempt;
                obs.fields.started_at = started;
                obs.fields.runtime_ms = runtime(started, at);
                obs.fields.error = e.failed_reason.clone();
                // The stack trace is in the hash (when `removeOnFail` kept it).
                hash_read = HashRead::Now(Where::Failed);
                obs
            }
            _ => return,
        };
        out.observations.push(Observation::Task(obs));
        match hash_read {
            HashRead::None => {}
            HashRead::Now(at) => self.read_now(&task_id, at),
            HashRead::Later => self.defer_read(&task_id, now),
        }
    }

    /// A job hash read: its fields, and, when the stream could not tell (a gap, a restart, a
    /// reconciliation of an open task), its outcome.
    fn on_job(&mut self, task_id: &str, values: Vec<Reply>, now: DateTime<Utc>, out: &mut Output) {
        if values.len() != job::FIELDS.len() {
            return;
        }
        let hash = job::decode(
            job::FIELDS
                .iter()
                .copied()
                .zip(values.iter().map(Reply::as_bytes)),
        );
        for (field, message) in &hash.errors {
            let kind = if *field == "data" {
                "data-json"
            } else {
                "returnvalue-json"
            };
            out.decode_errors
                .push(Self::decode_error(task_id, kind, message.clone()));
        }
        if !hash.exists() {
            // Removed (removeOnComplete): the stream told its life. A queue whose jobs go at
            // their end is read at once from now on, while their hashes are there.
            let finished = self
                .jobs
                .get(task_id)
                .is_some_and(|m| m.phase == Phase::Finished);
            if let Some(state) = self
                .followed_job_of(task_id)
                .and_then(|(q, _)| self.queues.get_mut(&q))
                .filter(|s| finished && !s.eager)
            {
                tracing::info!(
                    job = task_id,
                    "BullMQ job hash gone at its end (removeOnComplete): its queue's jobs are read as they start"
                );
                state.eager = true;
            }
            return;
        }
        let queue = self.followed_job_of(task_id).map(|(q, _)| q.qualified());
        let memo = self.memo(task_id);
        if memo.added_at.is_none() {
            memo.added_at = hash.added_at;
        }
        let memo = memo.clone();
        let fill = |obs: &mut TaskObservation| {
            obs.fields.queue = queue.clone();
            fill_fields(obs, &hash);
        };
        let at = |t: Option<DateTime<Utc>>| t.unwrap_or(now).min(now);
        // The job's fields, on its first state (behind a task that moved on: fields only).
        let mut queued = TaskObservation::new(
            Broker::Bullmq,
            task_id,
            at(hash.added_at),
            TaskEvent::Queued,
            "job",
        );
        queued.attempt = Some(0);
        fill(&mut queued);
        queued.fields.eta = hash
            .added_at
            .zip(hash.delay_ms.filter(|d| *d > 0))
            .and_then(|(t, d)| t.checked_add_signed(chrono::Duration::milliseconds(d)));
        out.observations.push(Observation::Task(queued));
        let made = hash.attempts_made.unwrap_or(0);
        match memo.phase {
            _ if hash.finished_on.is_some() => {}
            Phase::Active => {
                // The worker of the running attempt.
                if let Some(worker) = &hash.worker {
                    let mut running = TaskObservation::new(
                        Broker::Bullmq,
                        task_id,
                        at(memo.active_at),
                        TaskEvent::Running,
                        "job",
                    );
                    running.attempt = memo.attempt;
                    running.fields.queue = queue.clone();
                    running.fields.worker = Some(worker.clone());
                    running.fields.started_at = memo.active_at;
                    out.observations.push(Observation::Task(running));
                }
            }
            Phase::Waiting if made > 0 && memo.attempt.is_some_and(|a| a > 0) => {
                // A retried attempt's error.
                let mut retried = TaskObservation::new(
                    Broker::Bullmq,
                    task_id,
                    at(hash.finished_on),
                    TaskEvent::Retried,
                    "job",
                );
                retried.attempt = memo.attempt.map(|a| a - 1);
                retried.fields.queue = queue.clone();
                retried.fields.error = hash.failed_reason.clone();
                retried.fields.traceback = hash.stacktrace.clone();
                out.observations.push(Observation::Task(retried));
            }
            _ => {}
        }
        // A finished job: its outcome, which the stream may never tell (trimmed, or before
        // taskscope's window). `finishedOn` is written only by the final `moveToFinished`.
        if let Some(finished) = hash.finished_on {
            let mut obs = TaskObservation::new(
                Broker::Bullmq,
                task_id,
                at(Some(finished)),
                if hash.completed {
                    TaskEvent::Succeeded
                } else {
                    TaskEvent::Failed
                },
                "job",
            );
            obs.attempt = Some(made.saturating_sub(1));
            fill(&mut obs);
            obs.fields.started_at = hash.processed_on;
            obs.fields.runtime_ms = runtime(hash.processed_on, finished);
            if hash.completed {
                // An earlier attempt's error is not this outcome's.
                obs.fields.error = None;
                obs.fields.traceback = None;
            }
            out.observations.push(Observation::Task(obs));
            self.memo(task_id).phase = Phase::Finished;
        }
    }

    /// Job ids of a queue's set or list: the hashes of those not known finished. At first
    /// sight, read after [`HASH_READ_DEFER_MS`] unless the stream's window (asked for with the
    /// sets) told their end; after a trimmed stream, at once.
    fn on_set(
        &mut self,
        queue: &QueueName,
        ids: Vec<String>,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let first_sight = self.queues.get(queue).is_some_and(|s| s.last_id.is_none());
        for id in ids {
            let task_id = queue.job(&id);
            if self
                .jobs
                .get(&task_id)
                .is_some_and(|m| m.phase == Phase::Finished)
            {
                continue;
            }
            if first_sight {
                self.defer_read(&task_id, now);
            } else {
                out.follow_up.push(Self::job_read(&task_id));
            }
        }
    }

    /// One count of a sampling round; the round's last makes the sample.
    fn on_count(
        &mut self,
        queue: &QueueName,
        what: &str,
        n: u64,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let Some(round) = self.sampling.get_mut(queue) else {
            return;
        };
        if let Some((name, _)) = SAMPLED.iter().find(|(s, _)| *s == what) {
            round.counts.insert(name, n);
        }
        self.close_round(queue, now, out);
    }

    /// `CLIENT LIST`: a heartbeat of every worker connected now, and `offline` for those gone
    /// since the last one.
    fn on_clients(&mut self, reply: Reply, now: DateTime<Utc>, out: &mut Output) {
        let Some(bytes) = reply.as_bytes() else {
            return;
        };
        let text = String::from_utf8_lossy(bytes);
        let mut seen = BTreeSet::new();
        for client in workers::parse(&text, self.queues.keys()) {
            let id = client.id();
            if !seen.insert(id.clone()) {
                continue; // a worker has several connections
            }
            out.observations
                .push(Observation::Worker(WorkerObservation {
                    broker: Broker::Bullmq,
                    id,
                    hostname: client
                        .addr
                        .as_deref()
                        .and_then(|a| a.rsplit_once(':'))
                        .map(|(host, _)| host.to_string()),
                    pid: None,
                    at: now,
                    event: WorkerEvent::Heartbeat,
                    active: None,
                    heartbeat_every_s: None,
                }));
        }
        for gone in self.workers.difference(&seen) {
            out.observations
                .push(Observation::Worker(WorkerObservation {
                    broker: Broker::Bullmq,
                    id: gone.clone(),
                    hostname: None,
                    pid: None,
                    at: now,
                    event: WorkerEvent::Offline,
                    active: None,
                    heartbeat_every_s: None,
                }));
        }
        self.workers = seen;
    }

    /// The oldest waiting job of a sampling round.
    fn on_head(&mut self, queue: &QueueName, reply: Reply, now: DateTime<Utc>, out: &mut Output) {
        let Some(round) = self.sampling.get_mut(queue) else {
            return;
        };
        let ids: Vec<String> = reply.into_strings();
        round.head = Some(ids.into_iter().next());
        self.close_round(queue, now, out);
    }

    /// A sampling round with every reply in: its sample.
    fn close_round(&mut self, queue: &QueueName, now: DateTime<Utc>, out: &mut Output) {
        let Some(round) = self.sampling.get(queue) else {
            return;
        };
        if round.counts.len() < SAMPLED.len() {
            return;
        }
        let Some(head) = &round.head else {
            return;
        };
        let oldest_enqueued_at = head
            .as_ref()
            .and_then(|id| self.jobs.get(&queue.job(id)))
            .and_then(|m| m.added_at);
        let c = |k: &str| round.counts.get(k).copied().unwrap_or(0);
        let sample = QueueSample {
            broker: Broker::Bullmq,
            name: queue.qualified(),
            length: c("wait") + c("paused") + c("prioritized"),
            delayed: c("delayed"),
            dead: c("failed"),
            running: c("active"),
            sampled_at: now,
            oldest_enqueued_at,
        };
        self.sampling.remove(queue);
        out.queue_samples.push(sample);
    }
}

/// The fields of a job hash, on an observation.
fn fill_fields(obs: &mut TaskObservation, hash: &JobHash) {
    let f = &mut obs.fields;
    f.name = hash.name.clone();
    match &hash.data {
        Some(Value::Object(_)) => f.kwargs = hash.data.clone(),
        Some(other) => f.args = Some(Value::Array(vec![other.clone()])),
        None => {}
    }
    f.enqueued_at = hash.added_at;
    f.worker = hash.worker.clone();
    f.result = hash.returnvalue.clone();
    f.error = hash.failed_reason.clone();
    f.traceback = hash.stacktrace.clone();
}

fn runtime(started: Option<DateTime<Utc>>, finished: DateTime<Utc>) -> Option<f64> {
    let ms = (finished - started?).num_microseconds()? as f64 / 1000.0;
    (ms >= 0.0).then_some(ms)
}

impl Adapter for BullmqAdapter {
    fn broker(&self) -> Broker {
        Broker::Bullmq
    }

    fn interest(&self) -> Interest {
        let events = format!("*{}", glob_escape(layout::EVENTS_SUFFIX));
        Interest {
            channel_patterns: Vec::new(),
            key_patterns: vec![
                events.clone(),
                format!("*{}", glob_escape(layout::LOCK_SUFFIX)),
            ],
            scan_patterns: vec![events],
            side_scan_patterns: Vec::new(),
            // Streams (`xadd`: every state change of every job) and expired (a job's lock:
            // its worker died).
            notify_classes: "tx".to_string(),
            prefetch: Vec::new(),
            first_sight: Vec::new(),
        }
    }

    fn on_scan(&mut self, _pattern: &str, keys: Vec<String>, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = Vec::new();
        for key in keys {
            let Some(queue) = QueueName::from_events_key(&key) else {
                continue;
            };
            if self.queues.contains_key(&queue) {
                reads.extend(self.stream_read(&queue));
            } else if self.probed.insert(key.clone()) {
                reads.push(Self::first_entry_read(&queue));
            }
        }
        reads
    }

    fn on_key_event(&mut self, key: &str, op: &str, _now: DateTime<Utc>) -> Vec<Read> {
        if op == "expired" {
            let Some((queue, id)) = key
                .strip_suffix(layout::LOCK_SUFFIX)
                .and_then(|job| self.followed_job_of(job))
            else {
                return Vec::new();
            };
            let task_id = queue.job(id);
            let Some(memo) = self.jobs.get(&task_id) else {
                return Vec::new();
            };
            if memo.phase != Phase::Active {
                return Vec::new();
            }
            // Judged with this read's reply: the lock expired while the job was active, and no
            // worker set it again since.
            return vec![Why::LockTtl.read(ReadRequest::PTtl(key.to_string()))];
        }
        if op != "xadd" {
            return Vec::new();
        }
        let Some(queue) = QueueName::from_events_key(key) else {
            return Vec::new();
        };
        if self.queues.contains_key(&queue) {
            return self.stream_read(&queue);
        }
        if self.probed.insert(key.to_string()) {
            return vec![Self::first_entry_read(&queue)];
        }
        Vec::new()
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
            return unknown_tag(Broker::Bullmq, request, tag);
        };
        let mut out = Output::default();
        match (why, request.inner()) {
            (Why::FirstEntry, ReadRequest::XRange { key, .. }) => {
                let Some(queue) = QueueName::from_events_key(key) else {
                    return out;
                };
                let entries = stream::entries(reply);
                match self.queues.get(&queue) {
                    // A followed stream's first entry: after the last one read, the stream was
                    // trimmed past what taskscope read; the sets tell what the stream lost.
                    Some(state) => {
                        let first = entries.first().map(|e| e.id);
                        if let (Some(first), Some(last)) = (first, state.last_id) {
                            if first > last {
                                tracing::warn!(
                                    queue = %queue.qualified(),
                                    "BullMQ events stream trimmed past the last entry read; reconciling from its sets"
                                );
                                out.follow_up.extend(Self::set_reads(&queue));
                                out.follow_up.extend(self.stream_read(&queue));
                                if let Some(state) = self.queues.get_mut(&queue) {
                                    state.reread_open = true;
                                }
                            }
                        }
                    }
                    // A probe: adopted when its entry is a BullMQ event.
                    None => {
                        if entries.first().is_some_and(event::is_bullmq_entry) {
                            self.probed.remove(key);
                            out.follow_up = self.adopt(queue);
                        }
                    }
                }
            }
            (
                Why::Window | Why::NewEntries,
                ReadRequest::XRange { key, count, .. } | ReadRequest::XRevRange { key, count, .. },
            ) => {
                let Some(queue) = QueueName::from_events_key(key) else {
                    return out;
                };
                let first_read = why == Why::Window;
                let mut entries = stream::entries(reply);
                if first_read {
                    entries.reverse();
                }
                let full = entries.len() as u64 >= *count;
                self.on_entries(&queue, entries, full && !first_read, now, &mut out);
                let again = match self.queues.get_mut(&queue) {
                    Some(state) => {
                        let dirty = state.in_flight.take().unwrap_or(false);
                        if first_read && state.last_id.is_none() {
                            // An empty stream: read from its start from now on.
                            state.last_id = Some(StreamId { ms: 0, seq: 0 });
                        }
                        dirty || (full && !first_read)
                    }
                    None => false,
                };
                if again {
                    out.follow_up.extend(self.stream_read(&queue));
                }
            }
            (Why::Job, request) => self.on_job(request.key(), reply.into_items(), now, &mut out),
            (Why::Jobs, request) => self.on_sorted(request.key(), Some(reply), now, &mut out),
            (Why::Clients, _) => self.on_clients(reply, now, &mut out),
            (Why::LockTtl, ReadRequest::PTtl(key)) => {
                // A lock expired: abandoned unless it is back (a live worker renewed it).
                if reply.as_i64().is_some_and(|t| t >= 0 || t == -1) {
                    return out;
                }
                let Some((queue, id)) = key
                    .strip_suffix(layout::LOCK_SUFFIX)
                    .and_then(|job| self.followed_job_of(job))
                else {
                    return out;
                };
                let task_id = queue.job(id);
                let Some(memo) = self.jobs.get(&task_id).cloned() else {
                    return out;
                };
                if memo.phase != Phase::Active {
                    return out;
                }
                let mut obs = TaskObservation::new(
                    Broker::Bullmq,
                    task_id,
                    now,
                    TaskEvent::Abandoned,
                    "lock",
                );
                obs.attempt = memo.attempt;
                obs.fields.queue = Some(queue.qualified());
                obs.detail = Some(
                    "abandoned: its lock expired while it ran (the worker died or blocked)"
                        .to_string(),
                );
                out.observations.push(Observation::Task(obs));
            }
            (Why::Head, request) => {
                if let Some((queue, "wait")) = self.queue_of_key(request.key()) {
                    self.on_head(&queue, reply, now, &mut out)
                }
            }
            (Why::ListIds, request) => {
                if let Some((queue, "active" | "wait")) = self.queue_of_key(request.key()) {
                    let ids: Vec<String> = reply.into_strings();
                    self.on_set(&queue, ids, now, &mut out);
                }
            }
            (Why::SetIds, ReadRequest::ZRangeWithScores { key, .. }) => {
                if let Some((queue, "completed" | "failed")) = self.queue_of_key(key) {
                    let ids: Vec<String> = reply
                        .into_pairs()
                        .into_iter()
                        .filter_map(|(m, _)| {
                            m.as_bytes()
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                        })
                        .collect();
                    self.on_set(&queue, ids, now, &mut out);
                }
            }
            (Why::Count, request) => {
                if let Some((queue, what)) = self.queue_of_key(request.key()) {
                    let n = reply.as_i64().unwrap_or(0).max(0) as u64;
                    let what = what.to_string();
                    self.on_count(&queue, &what, n, now, &mut out);
                }
            }
            _ => {}
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
        let why = Why::try_from(tag);
        if why == Ok(Why::Jobs) {
            // Its jobs are read on their own, and so is every job from now on.
            if !self.sort_refused {
                tracing::info!(
                    error,
                    "Redis refused SORT_RO: BullMQ job hashes are read one by one."
                );
            }
            self.sort_refused = true;
            let mut out = Output::default();
            self.on_sorted(request.key(), None, now, &mut out);
            out.decode_errors
                .push(crate::adapter::read_error(Broker::Bullmq, request, error));
            return out;
        }
        if why == Ok(Why::Clients) {
            tracing::info!(
                error,
                "Redis refused CLIENT LIST: BullMQ workers are not listed."
            );
            self.client_list_refused = true;
        }
        // A stream read that failed is no longer in flight.
        if matches!(why, Ok(Why::Window | Why::NewEntries)) {
            if let Some(state) =
                QueueName::from_events_key(request.key()).and_then(|q| self.queues.get_mut(&q))
            {
                state.in_flight = None;
            }
        }
        Output {
            decode_errors: vec![crate::adapter::read_error(Broker::Bullmq, request, error)],
            ..Output::default()
        }
    }

    fn reconcile(&mut self, open: &[OpenTask], _now: DateTime<Utc>) -> Vec<Read> {
        let queues: Vec<QueueName> = self.queues.keys().cloned().collect();
        let mut reads = Vec::new();
        for q in &queues {
            if self.queues.get(q).is_some_and(|s| s.last_id.is_some()) {
                reads.push(Self::first_entry_read(q));
            }
            reads.extend(self.stream_read(q));
        }
        // An open task the stream told of settles from the stream; its hash is read when the
        // stream never named it (a job older than taskscope's window, or forgotten), or when
        // events may have been lost since.
        for task in open {
            let Some((queue, _)) = self.followed_job_of(&task.id) else {
                continue;
            };
            let reread = self.queues.get(&queue).is_some_and(|s| s.reread_open);
            if reread || !self.jobs.contains_key(&task.id) {
                reads.push(Self::job_read(&task.id));
            }
        }
        for state in self.queues.values_mut() {
            state.reread_open = false;
        }
        reads
    }

    fn sample_queues(&mut self, _now: DateTime<Utc>) -> Vec<Read> {
        self.sampling.clear();
        let mut reads = Vec::new();
        if !self.client_list_refused && !self.queues.is_empty() {
            reads.push(Why::Clients.read(ReadRequest::ClientList));
        }
        for q in self.queues.keys() {
            self.sampling.insert(q.clone(), SampleRound::default());
            reads.push(Why::Head.read(ReadRequest::LRange {
                key: q.key("wait"),
                start: -1,
                stop: -1,
            }));
            for (what, sorted) in SAMPLED {
                let key = q.key(what);
                reads.push(Why::Count.read(if sorted {
                    ReadRequest::ZCard(key)
                } else {
                    ReadRequest::LLen(key)
                }));
            }
        }
        reads
    }

    fn end_of_batch(&mut self, now: DateTime<Utc>) -> Output {
        self.due_reads(now);
        Output {
            follow_up: self.wanted_reads(),
            ..Output::default()
        }
    }

    fn on_detected(&mut self, setting: &Setting) -> Vec<Read> {
        match setting {
            Setting::BullmqQueue(q) => match QueueName::parse_qualified(q) {
                Some(q) => self.adopt(q),
                None => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn on_gap(&mut self) {
        // A Redis restarted empty has new stream ids; replies in flight are lost.
        for state in self.queues.values_mut() {
            state.last_id = None;
            state.in_flight = None;
            state.reread_open = true;
        }
        // Replies in flight are lost: the jobs they were for are read again with the open
        // tasks at the next reconciliation.
        self.sorting.clear();
        self.sampling.clear();
    }
}
