//! RQ (Redis Queue) under its key prefix (`rq:` by default).
//!
//! Where each state comes from (notes and fixtures: `tests/fixtures/rq/README.md`):
//! - every state: the job hash `<p>job:<id>` (`status`, timestamps, `origin`, `worker_name`,
//!   `retries_left`, `number_of_retries`), read at its first `hset` notification, for open
//!   tasks at every reconciliation, and for ids found in queue lists and registries; after its
//!   first read, once per batch of notifications that wrote it, unless the batch tells its
//!   news without it ([`RqAdapter::end_of_batch`]): a new attempt whose transaction named its
//!   worker is `running` on that worker, a results entry is the outcome and the attempt's start
//!   (`execution_started_at`; read with the batch's other entries in one `XREAD`; the hash is
//!   read then only when the entry's `exc_string` is no traceback: RQ 3.0 writes a stopped job
//!   as a failure with a sentence). Notifications that come while a job's first read is under
//!   way are news of the batch too. The hashes a batch wants are read together where their ids
//!   are ([`RqAdapter::job_reads`]): the notifications name a job's keys and then, in the same
//!   transaction, the list or registry that takes its id (`RPUSH <p>queue:<q>` at the enqueue
//!   or a `Retry`'s requeue, `ZADD <p>finished:<q>` / `<p>failed:<q>` at the end; a worker of
//!   one queue's `BLMOVE` to `<p>queue:<q>:intermediate` moves the oldest pushed, a plain
//!   `LPOP` takes it out of every list); two or more jobs pushed to one key are read with one
//!   `SORT_RO <key> BY nosort DESC LIMIT 0 n GET # GET <p>job:*->field ...` (the list's tail,
//!   the registry's highest expiries: the newest; `n` the jobs plus a slack learned per key,
//!   at most [`SORT_MAX_SLACK`] more: a registry of 100k entries is never read whole; a key
//!   whose reads keep finding none of their jobs at the deepest is paused a while), each other
//!   job (running: `rq:wip` members are no job ids; pushed alone; not found there) with its
//!   own `HMGET`, and every job so when Redis refuses `SORT_RO` (< 7.0, an ACL, a cluster). A
//!   job whose attempt started and ended within one batch without a results entry, its hash
//!   then found deleted (`result_ttl=0`), is shown running on the worker its start's
//!   transaction named (at the batch's time). Per lifecycle that succeeds or fails:
//!   one `HMGET` or a share of a `SORT_RO`, and a share of one `XREAD`; a `Retry` adds one
//!   (its requeue has no results entry);
//! - `queued`: statuses `queued`, `deferred` (`depends_on`), `scheduled` (`enqueue_at/in`, with
//!   `eta` from the score of `<p>scheduled:<q>`), `created`, `rate_limited`, `ready_to_enqueue`;
//! - `running`: status `started`, with the worker's name and the attempt's `started_at`;
//! - `success` / `failure`: statuses `finished` / `failed` (`stopped` and `canceled` are
//!   failures too), with the return value or the traceback from the newest entry of the results
//!   stream `<p>results:<id>`;
//! - `retried`: a job waiting again (`queued` or `scheduled`) after an attempt started: RQ's
//!   `Retry` keeps the job id. Retries are counted from the attempts' execution ids (RQ 3 gives
//!   each attempt a hash `<p>execution:<job>:<execution id>`, deleted as the attempt ends: the
//!   `hset` notifications name it, `rq:wip` members and results entries carry it; attempts seen
//!   less one), from `number_of_retries` (a job that returned `Retry`) and from `retries_left`
//!   going down (from the highest value seen); a job waiting again with a `started_at` has been
//!   retried at least once. Nothing RQ keeps counts `Retry(max=...)` attempts (`rq:executions:
//!   <job>` holds only the running one), so a retry between two reads of the job hash is known
//!   only from its execution's notification. (`started_at` cannot tell attempts apart: RQ
//!   writes it twice per attempt, with different times.)
//! - `abandoned`: by the shared sweep, from worker heartbeats (see [`worker`]); RQ's own
//!   cleanup of a dead worker's job later moves it to `failed` (`AbandonedJobError`) or retries
//!   it, which taskscope follows;
//! - workers: `<p>workers` and `<p>worker:<name>` hashes with their TTL;
//! - queue samples: `LLEN <p>queue:<q>`, and the sizes of the `scheduled` (delayed), `failed`
//!   (dead) and `wip` (running) registries.

pub mod detect;
pub mod job;
pub mod layout;
pub mod result;
pub mod worker;

use crate::adapter::{
    glob_escape, unknown_tag, Adapter, DecodeError, Interest, OpenTask, Output, Read, ReadRequest,
    Reply, Tag,
};
use crate::bounded::{FifoMap, QueueNames, MAX_QUEUES};
use crate::model::{
    Broker, Observation, QueueSample, TaskEvent, TaskObservation, WorkerEvent, WorkerObservation,
};
use chrono::{DateTime, Duration, Utc};
use job::{JobError, JobRecord, JobStatus, DATA_FIELD, JOB_FIELDS};
use layout::{Layout, Registry, RqKey};
use result::ResultType;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

crate::read_reasons! {
    /// Why the RQ adapter reads (the tag of each of its reads).
    pub enum Why {
        /// A job hash (`HMGET`).
        Job,
        /// A job's results stream, newest entry (`XREVRANGE`).
        Results,
        /// A worker hash (`HMGET`).
        Worker,
        /// A worker key's time to live (`PTTL`).
        WorkerTtl,
        /// The set of worker keys; closes a sampling round.
        Workers,
        /// The set of queue keys.
        Queues,
        /// A page of a queue's waiting job ids (`LRANGE`).
        QueueIds,
        /// The head of a queue for its sample (`LRANGE 0 0`).
        QueueHead,
        /// A page of a registry (`ZRANGE WITHSCORES`).
        Registry,
        /// A queue's or registry's length for its sample (`LLEN`/`ZCARD`).
        Length,
        /// The hashes of a batch's jobs from the list or registry holding their ids
        /// (`SORT_RO ... GET`).
        Jobs,
    }
}

/// Ids read per list or registry page.
const PAGE: i64 = 500;
/// Jobs remembered (decoded call, retry counting); older ones are decoded again when seen.
const KNOWN_CAPACITY: usize = 200_000;
/// How long past its `rq:wip` score a started job must be to count as abandoned (the score
/// comes from the worker's clock).
const WIP_SKEW_MARGIN: Duration = Duration::seconds(30);
/// A worker hash is read at most this often on notifications (every job writes it 3-4 times).
const WORKER_READ_EVERY: Duration = Duration::seconds(1);
/// Execution ids remembered per job (attempts counted beyond this are not told apart).
const EXECUTIONS_PER_JOB: usize = 64;
/// Results streams read per `XREAD` (one command for a batch's outcomes).
const RESULTS_PER_READ: usize = 256;
/// Entries of each results stream an `XREAD` brings (from the oldest; a job has one per
/// outcome, `MAXLEN ~ 10`): a stream that gives this many may hold newer ones, and its newest
/// is read on its own (`XREVRANGE COUNT 1`).
const RESULTS_ENTRIES_PER_READ: u64 = 8;
/// Most members one `SORT_RO` of a queue or registry brings back with their hashes.
const SORT_MAX: u64 = 1_000;
/// Members a `SORT_RO` first reads beyond the jobs it is for (ids that joined the list or
/// registry after the notifications that asked for the read); then learned per key
/// ([`RqAdapter::on_sorted`]): each member read costs Redis a dozen hash lookups.
const SORT_SLACK: u64 = 8;
/// The most slack a `SORT_RO` learns: a job no longer in its list (popped by a worker) is a
/// miss too, and must not make every later read of the list a long one.
const SORT_MAX_SLACK: u64 = 256;
/// `SORT_RO`s in a row of one queue or registry that found none of their jobs with the
/// slack at its most (a registry topped by jobs kept longer, workers popping faster than
/// taskscope reads) before that key is paused ([`SORT_BARREN_PAUSE`]).
const SORT_BARREN_STREAK: u32 = 3;
/// Batches a paused queue or registry is not read with `SORT_RO`: its jobs are read with
/// `HMGET` meanwhile, without a `SORT_RO` miss before.
const SORT_BARREN_PAUSE: u32 = 16;
/// Queues and registries whose `SORT_RO` slack and pause are remembered (then forgotten).
const SORT_KEYS: usize = 10_000;

/// Configuration of the RQ adapter.
#[derive(Debug, Clone)]
pub struct RqConfig {
    /// Key prefix, `rq:` by default (RQ's `RQ_KEY_PREFIX` plus `:`; a missing `:` is added).
    pub prefix: String,
}

impl Default for RqConfig {
    fn default() -> Self {
        RqConfig {
            prefix: "rq:".to_string(),
        }
    }
}

/// What the adapter remembers about a job between reads.
#[derive(Debug, Clone, Default)]
struct JobMemo {
    /// Whether `data` was decoded (or found undecodable): later reads skip it.
    call_read: bool,
    /// Retries counted so far.
    retries: u32,
    /// The highest `retries_left` seen (the `Retry(max=...)` it was enqueued with, if seen).
    first_retries_left: Option<u32>,
    /// What the last observation was made of: a read that changes nothing emits nothing.
    fingerprint: Option<String>,
    /// The status of the last read.
    status: Option<JobStatus>,
    /// The `rq:wip` member (`<job>:<execution>`) already reported expired.
    expired_execution: Option<String>,
    /// The execution ids of its attempts seen so far (`<p>execution:<job>:<id>` notifications,
    /// `rq:wip` members, results entries): one per attempt, whatever was missed in between.
    executions: Vec<String>,
    /// A results-stream read was asked for by an `xadd` and has not been answered yet: a read
    /// of the job hash finding it finished does not ask for another.
    results_pending: bool,
    /// Its first hash read was asked for and not answered yet: notifications meanwhile (those
    /// the read barrier hands over before the reply) are batch news, judged once it is read.
    first_read_asked: bool,
    /// The outcome a read of the job hash found, held until the results stream is read: the
    /// read may have overtaken the notification naming the last attempt's execution, and an
    /// outcome is final (its attempt cannot be corrected later). The results entry names that
    /// execution; without one (no results stream) these go out as they are.
    held_outcome: Vec<TaskObservation>,
    /// The attempt of the outcome a results entry gave (the job hash's outcome goes out at
    /// once then).
    results_outcome: Option<u32>,
    /// A failed results entry read without the hash (the batch had the entry): held until the
    /// hash is read, whose status tells a stopped job from a failed one (RQ writes both with
    /// type 2), and which then goes first, as when the hash is read before the entry.
    held_entry: Option<TaskObservation>,
    /// `enqueued_at` at the last read of its hash: the oldest age of a queue it heads.
    enqueued_at: Option<DateTime<Utc>>,
    /// An attempt started (on the worker its transaction named) and ended within one batch
    /// without a results entry (`result_ttl=0`, a `Retry`): its hash, read then, tells the rest;
    /// when it is gone (`result_ttl=0` deletes it at the end), this is all there is of it.
    ran_unread: Option<TaskObservation>,
}

impl JobMemo {
    /// Records an attempt's execution id; true when it is new.
    fn saw_execution(&mut self, id: &str) -> bool {
        if id.is_empty()
            || self.executions.len() >= EXECUTIONS_PER_JOB
            || self.executions.iter().any(|e| e == id)
        {
            return false;
        }
        self.executions.push(id.to_string());
        true
    }
}

pub struct RqAdapter {
    layout: Layout,
    /// Queue names found (`<p>queues`, job origins).
    queues: QueueNames,
    known: FifoMap<String, JobMemo>,
    /// Due times from the `scheduled` registries, by job id. Bounded: an id whose hash is
    /// gone or does not decode has no memo to take it away with it.
    etas: FifoMap<String, DateTime<Utc>>,
    /// Per worker, the birth of the process last announced, and whether its pid is reported
    /// (see [`RqAdapter::on_worker`]).
    workers_born: HashMap<String, (Option<DateTime<Utc>>, bool)>,
    /// When each worker was last read on a notification.
    worker_read_at: HashMap<String, DateTime<Utc>>,
    /// When worker keys expire, from the `PTTL` read just before their hash, by worker name.
    worker_expiry: HashMap<String, DateTime<Utc>>,
    /// Jobs asked for by reconciliation: a hash found gone settles them.
    reconciling: HashSet<String>,
    /// Per queue: (length, delayed, dead, running) of the current sampling round.
    sampling: Option<BTreeMap<String, [u64; 4]>>,
    /// Per queue, the first job id of `<p>queue:<q>` (RQ `RPUSH`es and workers `LPOP`: the
    /// next to run, normally the oldest) read by the current sampling round.
    sampled_heads: HashMap<String, String>,
    /// What the notifications of the current batch told about jobs read before (see
    /// [`RqAdapter::end_of_batch`]): their hashes are read, if at all, once the batch is over.
    batch: HashMap<String, BatchNews>,
    /// The job whose new execution was the last notification (with its executions `zadd`):
    /// the worker key notified next, in the same transaction, names its worker.
    starting: Option<String>,
    /// Jobs whose results stream got an entry during the batch: read together at its end.
    results_due: Vec<String>,
    /// Jobs whose hash is to be read at the end of the batch (first reads, and hashes the batch
    /// wrote without telling their news): together, from the key holding their ids.
    wanted: Vec<String>,
    /// Where the batch's notifications last put each job's id: the queue list or finished /
    /// failed registry its transaction pushed it to ([`RqAdapter::on_key_event`]).
    placed: HashMap<String, Place>,
    /// The job the last notification was about (its hash, results, execution keys): RQ's
    /// transactions write a job's keys, then push its id to a queue or registry.
    last_job: Option<String>,
    /// Per queue, the jobs the batch pushed to its tail, oldest first: a worker's pop takes
    /// the oldest (when the queue held nothing older: else a guess that costs a miss).
    pushed: HashMap<String, std::collections::VecDeque<String>>,
    /// Per queue, pops told by the push to its intermediate list whose `lpop` (notified after
    /// the push: `LMOVE`) is still to come.
    moved: HashMap<String, u32>,
    /// Per queue or registry key, the jobs of each `SORT_RO` in flight, in the order asked.
    sorting: HashMap<String, std::collections::VecDeque<SortAsk>>,
    /// Per queue or registry key, the slack its next `SORT_RO` reads ([`SORT_SLACK`]).
    sort_slack: HashMap<String, u64>,
    /// Per queue or registry key, the `SORT_RO`s in a row that found none of their jobs, and
    /// the batches its jobs are still read with `HMGET` ([`SORT_BARREN_PAUSE`]).
    sort_paused: HashMap<String, (u32, u32)>,
    /// Redis refused `SORT_RO` (older than 7.0, an ACL, a cluster): every hash is read on its
    /// own from then on.
    sort_refused: bool,
}

/// Where a job's id was pushed: a queue list (at its head for `LPUSH`, its tail for `RPUSH`)
/// or a registry (scored by expiry: the newest at the top).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    key: String,
    head: bool,
}

/// The jobs one `SORT_RO` was asked for, and whether it reads `data` too.
#[derive(Debug, Clone)]
struct SortAsk {
    jobs: Vec<String>,
    with_data: bool,
}

/// What one batch of notifications told about one job read before.
#[derive(Debug, Clone, Default)]
struct BatchNews {
    /// Its hash was written (`hset`).
    hset: bool,
    /// A new attempt started (a new execution id).
    started: bool,
    /// The worker that started it (the worker key written in the attempt's transaction).
    worker: Option<String>,
    /// An attempt ended (`zrem` on `<p>executions:<job>`).
    ended: bool,
    /// Its results stream got an entry (read at once: it tells the outcome).
    result: bool,
}

impl RqAdapter {
    pub fn new(config: RqConfig) -> RqAdapter {
        RqAdapter {
            layout: Layout::new(&config.prefix),
            queues: QueueNames::new("rq", MAX_QUEUES),
            known: FifoMap::new(KNOWN_CAPACITY),
            etas: FifoMap::new(KNOWN_CAPACITY),
            workers_born: HashMap::new(),
            worker_read_at: HashMap::new(),
            worker_expiry: HashMap::new(),
            reconciling: HashSet::new(),
            sampling: None,
            sampled_heads: HashMap::new(),
            batch: HashMap::new(),
            starting: None,
            results_due: Vec::new(),
            wanted: Vec::new(),
            placed: HashMap::new(),
            last_job: None,
            pushed: HashMap::new(),
            moved: HashMap::new(),
            sorting: HashMap::new(),
            sort_slack: HashMap::new(),
            sort_paused: HashMap::new(),
            sort_refused: false,
        }
    }

    /// The reads of the job hashes wanted at the end of a batch: one `SORT_RO` per queue or
    /// registry for the jobs the batch pushed there (two or more), one `HMGET` for each other
    /// job (running, pushed alone, or where a `SORT_RO` cannot go).
    fn job_reads(&mut self, wanted: Vec<String>) -> Vec<Read> {
        let mut seen = HashSet::new();
        let mut groups: BTreeMap<Place, Vec<String>> = BTreeMap::new();
        let mut reads = Vec::new();
        for id in wanted {
            if !seen.insert(id.clone()) {
                continue;
            }
            match self.placed.get(&id) {
                Some(place) if !self.sort_refused => {
                    groups.entry(place.clone()).or_default().push(id)
                }
                _ => reads.push(self.job_read(&id)),
            }
        }
        let pattern = self.layout.job("*");
        let sortable = pattern.matches('*').count() == 1 && !pattern.contains("->");
        for (place, jobs) in groups {
            let paused = match self.sort_paused.get_mut(&place.key) {
                Some((_, n)) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            };
            // One job: its own `HMGET`, as many commands and less for Redis to do.
            if paused || !sortable || jobs.len() < 2 || jobs.len() as u64 >= SORT_MAX {
                reads.extend(jobs.iter().map(|j| self.job_read(j)));
                continue;
            }
            let with_data = jobs
                .iter()
                .any(|j| !self.known.get(j).is_some_and(|m| m.call_read));
            let slack = self
                .sort_slack
                .get(&place.key)
                .copied()
                .unwrap_or(SORT_SLACK);
            let count = (jobs.len() as u64 + slack).min(SORT_MAX);
            let mut gets: Vec<String> = JOB_FIELDS
                .iter()
                .map(|f| format!("{pattern}->{f}"))
                .collect();
            if with_data {
                gets.push(format!("{pattern}->{DATA_FIELD}"));
            }
            self.sorting
                .entry(place.key.clone())
                .or_default()
                .push_back(SortAsk { jobs, with_data });
            reads.push(Why::Jobs.read(ReadRequest::SortGet {
                key: place.key,
                // A list's tail, or a registry's newest (highest expiry), first.
                desc: !place.head,
                count,
                gets,
            }));
        }
        reads
    }

    /// A `SORT_RO` reply (`None`: refused): the hashes of the jobs it was asked for go where
    /// `HMGET` replies go ([`RqAdapter::on_job`]); those not in it are read on their own.
    fn on_sorted(&mut self, key: &str, reply: Option<Reply>, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let Some(asked) = self.sorting.get_mut(key).and_then(|q| q.pop_front()) else {
            return out;
        };
        if self.sorting.get(key).is_some_and(|q| q.is_empty()) {
            self.sorting.remove(key);
        }
        let asked_count = asked.jobs.len() as u64;
        let mut missing: HashSet<String> = asked.jobs.into_iter().collect();
        let mut fields: Vec<String> = JOB_FIELDS.iter().map(|f| f.to_string()).collect();
        if asked.with_data {
            fields.push(DATA_FIELD.to_string());
        }
        // How deep the last job asked for was: the slack the next read needs.
        let mut depth = 0u64;
        if let Some(reply) = reply {
            let items = reply.into_items();
            for (i, chunk) in items.chunks(1 + fields.len()).enumerate() {
                if chunk.len() != 1 + fields.len() {
                    continue;
                }
                let Some(id) = chunk[0]
                    .as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                else {
                    continue;
                };
                if !missing.remove(&id) {
                    continue;
                }
                depth = i as u64 + 1;
                // A call decoded once is not decoded again (as its `HMGET` would not read it).
                let n = if self.known.get(&id).is_some_and(|m| m.call_read) {
                    JOB_FIELDS.len()
                } else {
                    fields.len()
                };
                let values = Reply::Array(chunk[1..=n].to_vec());
                let job_key = self.layout.job(&id);
                out.merge(self.on_job(&job_key, &id, &fields[..n], values, now));
            }
        }
        // Newer members above the jobs asked for, with a margin; twice as many after a miss.
        let found = asked_count - missing.len() as u64;
        let above = depth.saturating_sub(found);
        if self.sort_slack.len() >= SORT_KEYS || self.sort_paused.len() >= SORT_KEYS {
            self.sort_slack.clear();
            self.sort_paused.clear();
        }
        let slack = self.sort_slack.entry(key.to_string()).or_insert(SORT_SLACK);
        let at_most = *slack >= SORT_MAX_SLACK;
        let streak = self.sort_paused.entry(key.to_string()).or_default();
        if found > 0 || !at_most {
            streak.0 = 0;
        } else {
            streak.0 += 1;
            if streak.0 >= SORT_BARREN_STREAK {
                *streak = (0, SORT_BARREN_PAUSE);
            }
        }
        *slack = if missing.is_empty() {
            above + above / 2 + 2
        } else {
            (*slack * 2).max(above + above / 2 + 2)
        }
        .min(SORT_MAX_SLACK);
        let mut missing: Vec<String> = missing.into_iter().collect();
        missing.sort();
        out.follow_up
            .extend(missing.iter().map(|id| self.job_read(id)));
        out
    }

    /// A notification's part in placing jobs: the job it is about becomes the last one named,
    /// and a push to a queue or a finished / failed registry right after a job's keys were
    /// written places that job's id there (RQ's `MULTI`s: `HSET` the hash, then `RPUSH` the
    /// queue; the end writes the hash and results, then `ZADD`s the registry). A wrong guess
    /// costs a `SORT_RO` miss, read again with `HMGET`.
    fn place(&mut self, key: &str, class: &Option<RqKey<'_>>, op: &str) {
        let previous = self.last_job.take();
        match (class, op) {
            (Some(RqKey::Job(id) | RqKey::Results(id) | RqKey::Executions(id)), _) => {
                self.last_job = Some(id.to_string());
            }
            (Some(RqKey::Execution(id, _)), _) => {
                if matches!(op, "hset" | "hmset") {
                    // An attempt started: running, in no list or registry `SORT_RO` can
                    // read (`rq:wip` members are `<job>:<execution>`, not job ids).
                    self.placed.remove(*id);
                }
                self.last_job = Some(id.to_string());
            }
            (Some(RqKey::Queue(_)), "rpush" | "lpush") => {
                if let Some(id) = previous {
                    let head = op == "lpush";
                    if !head {
                        self.pushed
                            .entry(key.to_string())
                            .or_default()
                            .push_back(id.clone());
                    }
                    let key = key.to_string();
                    self.placed.insert(id, Place { key, head });
                }
            }
            // A worker of this one queue moved its head to its intermediate list (`BLMOVE`;
            // the queue's `lpop` is notified after): there until the job starts.
            (Some(RqKey::Intermediate(queue)), "rpush") => {
                let queue = self.layout.queue(queue);
                if let Some(id) = self.pushed.get_mut(&queue).and_then(|q| q.pop_front()) {
                    *self.moved.entry(queue).or_default() += 1;
                    if self.placed.contains_key(&id) {
                        let key = key.to_string();
                        self.placed.insert(id, Place { key, head: false });
                    }
                }
            }
            // A worker popped the queue's head (`LPOP`): running soon, in no list.
            (Some(RqKey::Queue(_)), "lpop") => {
                if let Some(n) = self.moved.get_mut(key).filter(|n| **n > 0) {
                    *n -= 1;
                } else if let Some(id) = self.pushed.get_mut(key).and_then(|q| q.pop_front()) {
                    self.placed.remove(&id);
                }
            }
            (Some(RqKey::Registry(Registry::Finished | Registry::Failed, _)), "zadd") => {
                if let Some(id) = previous {
                    let key = key.to_string();
                    self.placed.insert(id, Place { key, head: false });
                }
            }
            _ => {}
        }
    }

    /// One `XREAD` of many jobs' results streams, each from its first entry.
    fn results_reads(&self, ids: &[String]) -> Vec<Read> {
        ids.chunks(RESULTS_PER_READ)
            .map(|chunk| {
                Why::Results.read(ReadRequest::XReadFirst {
                    keys: chunk.iter().map(|id| self.layout.results(id)).collect(),
                    count: RESULTS_ENTRIES_PER_READ,
                })
            })
            .collect()
    }

    /// An `XREAD` of results streams: each job's newest entry goes where an `XREVRANGE COUNT 1`
    /// reply would; a stream that gave as many entries as asked is read again for its newest.
    fn on_results_batch(
        &mut self,
        keys: &[String],
        count: u64,
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output {
        let mut out = Output::default();
        // Nil when no stream has an entry.
        let mut found: HashMap<String, Vec<Reply>> = HashMap::new();
        for stream in reply.into_items() {
            let mut parts = stream.into_items().into_iter();
            let (Some(key), Some(entries)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(key) = key
                .as_bytes()
                .map(|k| String::from_utf8_lossy(k).into_owned())
            else {
                continue;
            };
            found.insert(key, entries.into_items());
        }
        let layout = self.layout.clone();
        for key in keys {
            let Some(RqKey::Results(id)) = layout.classify(key) else {
                continue;
            };
            let entries = found.remove(key).unwrap_or_default();
            if entries.len() as u64 >= count {
                out.follow_up.push(self.results_read(id));
                continue;
            }
            let newest = entries.into_iter().last().into_iter().collect();
            out.merge(self.on_results(key, id, Reply::Array(newest), now));
        }
        out
    }

    /// The news of the current batch about a job read before, or whose first read is under
    /// way (`None`: not read yet, its notifications ask for reads at once as before).
    fn news(&mut self, id: &str) -> Option<&mut BatchNews> {
        let asked = self.known.get(id).is_some_and(|m| m.first_read_asked);
        if !asked && !self.was_read(id) {
            return None;
        }
        Some(self.batch.entry(id.to_string()).or_default())
    }

    /// Whether the last read of the job's hash already told its current attempt running: it
    /// found it `started`, and no execution began since (the retry count that read made is
    /// the attempts seen less one).
    fn start_was_read(&self, id: &str) -> bool {
        self.known.get(id).is_some_and(|m| {
            m.status == Some(JobStatus::Started) && m.retries + 1 == m.executions.len() as u32
        })
    }

    /// The worker key written in the transaction that started `job`'s new execution names its
    /// worker: RQ's `prepare_execution` writes, in one `MULTI`, the execution hash, its
    /// registries and the worker's state (RQ 3 also `<p>worker:<name>:executions`), and a
    /// transaction's notifications are never interleaved with another client's. Notifications
    /// of the job's own execution keys and expiries keep the guess open; any other ends it.
    fn guess_worker(&mut self, job: String, key: &str, class: &Option<RqKey<'_>>, op: &str) {
        let worker = match (class, op) {
            (Some(RqKey::Worker(name)), "hset" | "hmset") => Some(name.to_string()),
            // `<p>worker:<name>:executions` (RQ 3), not a key the layout names.
            (None, "sadd") => key
                .strip_prefix(&self.layout.worker(""))
                .and_then(|k| k.strip_suffix(":executions"))
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            (Some(RqKey::Execution(j, _)) | Some(RqKey::Executions(j)), _) if *j == job => {
                self.starting = Some(job);
                return;
            }
            (_, "expire" | "pexpire" | "expireat" | "pexpireat") => {
                self.starting = Some(job);
                return;
            }
            _ => None,
        };
        if let (Some(worker), Some(news)) = (worker, self.batch.get_mut(&job)) {
            news.worker = Some(worker);
        }
    }

    /// A job seen running from its notifications alone: the new execution, the worker named in
    /// its transaction. What the hash would say but this does not (`started_at` to the
    /// microsecond) comes with the results entry.
    fn running_from_notifications(
        &mut self,
        id: &str,
        worker: String,
        now: DateTime<Utc>,
    ) -> Option<TaskObservation> {
        let obs = self.ran_from_notifications(id, worker, now)?;
        let memo = self.known.get_mut(id)?;
        memo.retries = obs.attempt.unwrap_or(memo.retries);
        memo.status = Some(JobStatus::Started);
        memo.fingerprint = None;
        memo.results_outcome = None;
        Some(obs)
    }

    /// The running observation of an attempt told by notifications only, for a job whose hash
    /// was read waiting (see [`JobMemo::ran_unread`]); nothing is changed (the memo moves on in
    /// [`Self::running_from_notifications`]).
    fn ran_from_notifications(
        &self,
        id: &str,
        worker: String,
        now: DateTime<Utc>,
    ) -> Option<TaskObservation> {
        let memo = self.known.get(id)?;
        if !memo.status.is_some_and(|s| s.is_waiting()) {
            return None;
        }
        let attempt = memo
            .retries
            .max((memo.executions.len() as u32).saturating_sub(1));
        let mut obs =
            TaskObservation::new(Broker::Rq, id, now, TaskEvent::Running, "execution started");
        obs.attempt = Some(attempt);
        obs.fields.worker = Some(worker);
        obs.fields.started_at = Some(now);
        Some(obs)
    }

    fn memo(&mut self, id: &str) -> &mut JobMemo {
        let (memo, evicted) = self
            .known
            .get_or_insert_evicting(id.to_string(), JobMemo::default);
        if let Some((old, _)) = evicted {
            self.etas.remove(&old);
        }
        memo
    }

    /// Whether the job's hash was read already (a memo may come from notifications alone).
    fn was_read(&self, id: &str) -> bool {
        self.known.get(id).is_some_and(|m| m.status.is_some())
    }

    /// The HMGET of a job hash (with `data` until its call was decoded once).
    fn job_read(&self, id: &str) -> Read {
        let mut fields: Vec<String> = JOB_FIELDS.iter().map(|f| f.to_string()).collect();
        if !self.known.get(id).is_some_and(|m| m.call_read) {
            fields.push(DATA_FIELD.to_string());
        }
        Why::Job.read(ReadRequest::HMGet {
            key: self.layout.job(id),
            fields,
        })
    }

    fn results_read(&self, id: &str) -> Read {
        Why::Results.read(ReadRequest::XRevRange {
            key: self.layout.results(id),
            end: "+".to_string(),
            start: "-".to_string(),
            count: 1,
        })
    }

    /// The first page of a registry (lowest scores: the jobs due or expiring first).
    fn page(key: String) -> Read {
        Why::Registry.read(ReadRequest::ZRangeWithScores {
            key,
            start: 0,
            stop: PAGE - 1,
        })
    }

    /// The last page of a registry scored by expiry (highest scores: the newest jobs).
    fn newest(key: String) -> Read {
        Why::Registry.read(ReadRequest::ZRangeWithScores {
            key,
            start: -PAGE,
            stop: -1,
        })
    }

    fn worker_reads(&self, name: &str) -> [Read; 2] {
        let key = self.layout.worker(name);
        [
            Why::WorkerTtl.read(ReadRequest::PTtl(key.clone())),
            Why::Worker.read(ReadRequest::HMGet {
                key,
                fields: worker::WORKER_FIELDS
                    .iter()
                    .map(|f| f.to_string())
                    .collect(),
            }),
        ]
    }

    /// Reads of a queue's waiting list and registries that find jobs not known yet (what
    /// notifications missed, and all there is when taskscope polls).
    fn queue_reads(&self, queue: &str) -> Vec<Read> {
        let mut reads = vec![Why::QueueIds.read(ReadRequest::LRange {
            key: self.layout.queue(queue),
            start: 0,
            stop: PAGE - 1,
        })];
        for registry in [Registry::Started, Registry::Scheduled, Registry::Deferred] {
            reads.push(Self::page(self.layout.registry(registry, queue)));
        }
        for registry in [Registry::Finished, Registry::Failed, Registry::Canceled] {
            reads.push(Self::newest(self.layout.registry(registry, queue)));
        }
        reads
    }

    fn add_queue(&mut self, queue: &str) -> bool {
        !queue.is_empty() && self.queues.insert(queue)
    }

    fn decode_error(key: &str, kind: &'static str, message: String) -> DecodeError {
        DecodeError {
            broker: Broker::Rq,
            kind,
            key: key.to_string(),
            message,
        }
    }

    /// Job ids (of a list, or registry members `<job_id>:<execution_id>`) not known yet: read.
    fn on_ids(&mut self, ids: Vec<Reply>, out: &mut Output) {
        for member in ids {
            let Some(bytes) = member.as_bytes() else {
                continue;
            };
            let member = String::from_utf8_lossy(bytes);
            let id = member.split(':').next().unwrap_or(&member);
            if !id.is_empty() && !self.was_read(id) {
                out.follow_up.push(self.job_read(id));
            }
        }
    }

    /// A page of a registry. The `scheduled` scores are due times: they become `eta`s.
    fn on_registry(
        &mut self,
        registry: Registry,
        reply: Reply,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let pairs = reply.into_pairs();
        if registry == Registry::Started {
            for (member, _) in &pairs {
                let member = member.as_bytes().map(String::from_utf8_lossy);
                if let Some((job, execution)) = member.as_deref().and_then(|m| m.split_once(':')) {
                    if let Some(memo) = self.known.get_mut(job) {
                        memo.saw_execution(execution);
                    }
                }
            }
            self.on_started_registry(&pairs, now, out);
        }
        if registry != Registry::Scheduled {
            let ids = pairs.into_iter().map(|(member, _)| member).collect();
            self.on_ids(ids, out);
            return;
        }
        for (member, score) in pairs {
            let Some(id) = member
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
            else {
                continue;
            };
            let Some(eta) = score.as_f64().and_then(crate::codec::unix_seconds) else {
                continue;
            };
            if self.etas.insert(id.clone(), eta) != Some(eta) {
                // New or moved: the job's next observation carries it.
                if let Some(memo) = self.known.get_mut(&id) {
                    memo.fingerprint = None;
                }
                out.follow_up.push(self.job_read(&id));
            }
        }
    }

    /// `rq:wip:<q>` members whose score (the heartbeat expiry RQ set: next heartbeat due + 60
    /// s) has passed: the worker missed its deadline, RQ itself will treat the job as
    /// abandoned. This catches what the worker sweep cannot: a worker taskscope never heard
    /// from (it died before taskscope started, its key long expired).
    fn on_started_registry(
        &mut self,
        pairs: &[(Reply, Reply)],
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        for (member, score) in pairs {
            let (Some(member), Some(score)) = (member.as_bytes(), score.as_f64()) else {
                continue;
            };
            // Worker clocks write the score: a margin for their skew.
            if score >= (now - WIP_SKEW_MARGIN).timestamp() as f64 {
                continue;
            }
            let member = String::from_utf8_lossy(member).into_owned();
            let id = member.split(':').next().unwrap_or_default().to_string();
            let Some(memo) = self.known.get_mut(&id) else {
                continue; // read first (the follow-up); judged at the next reconciliation
            };
            if memo.status != Some(JobStatus::Started)
                || memo.expired_execution.as_deref() == Some(member.as_str())
            {
                continue;
            }
            memo.expired_execution = Some(member);
            let mut obs =
                TaskObservation::new(Broker::Rq, &id, now, TaskEvent::Abandoned, "rq:wip");
            obs.detail = Some(format!(
                "abandoned: its worker missed its heartbeat deadline ({})",
                crate::codec::unix_seconds(score)
                    .map(|t| crate::model::rfc3339(&t))
                    .unwrap_or_default()
            ));
            out.observations.push(Observation::Task(obs));
        }
    }

    /// An HMGET of a job hash.
    fn on_job(
        &mut self,
        key: &str,
        id: &str,
        fields: &[String],
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output {
        let mut out = Output::default();
        let reconciled = self.reconciling.remove(id);
        let mut ran_unread = None;
        if let Some(memo) = self.known.get_mut(id) {
            memo.first_read_asked = false;
            ran_unread = memo.ran_unread.take();
        }
        let values = reply.into_items();
        let record = match job::decode(fields, &values) {
            Ok(Some(record)) => record,
            Ok(None) => {
                // Deleted as its attempt ended (`result_ttl=0`): the attempt as notifications
                // told it; reconciliation then finds the hash gone.
                if let Some(ran) = ran_unread {
                    out.observations.push(Observation::Task(ran));
                }
                // Gone since its results entry: the entry alone.
                if let Some(entry) = self.known.get_mut(id).and_then(|m| m.held_entry.take()) {
                    out.observations.push(Observation::Task(entry));
                }
                if reconciled {
                    // Open, and its hash is gone: RQ deletes a job's hash `result_ttl` (500 s)
                    // after success, at once with `result_ttl=0`, or on `job.delete()`.
                    self.known.remove(id);
                    let mut obs = TaskObservation::new(
                        Broker::Rq,
                        id,
                        now,
                        TaskEvent::Succeeded,
                        "job hash gone",
                    );
                    obs.detail = Some("job hash expired or deleted (succeeded)".to_string());
                    out.observations.push(Observation::Task(obs));
                }
                return out;
            }
            Err(e) => {
                out.decode_errors
                    .push(Self::decode_error(key, e.kind(), e.to_string()));
                if let Some(entry) = self.known.get_mut(id).and_then(|m| m.held_entry.take()) {
                    out.observations.push(Observation::Task(entry));
                }
                return out;
            }
        };
        match &record.call {
            // Counted by the ingest layer, which did not read it; shown as the task's error.
            Some(Err(JobError::TooLarge(_))) => {}
            // The job is still shown (name from its description, no arguments).
            Some(Err(e)) => {
                out.decode_errors
                    .push(Self::decode_error(key, e.kind(), e.to_string()))
            }
            _ => {}
        }
        if let Some(origin) = &record.origin {
            if self.add_queue(origin) {
                out.follow_up.extend(self.queue_reads(origin));
            }
        }
        let eta = self.etas.get(id).copied();
        if record.status == JobStatus::Scheduled && eta.is_none() {
            if let Some(origin) = &record.origin {
                out.follow_up.push(Self::page(
                    self.layout.registry(Registry::Scheduled, origin),
                ));
            }
        }
        let retries = self.count_retries(id, &record);
        let fingerprint = format!(
            "{:?}|{:?}|{:?}|{:?}|{retries}|{eta:?}",
            record.status, record.started_at_raw, record.ended_at, record.last_heartbeat
        );
        let memo = self.memo(id);
        memo.status = Some(record.status);
        memo.enqueued_at = record.enqueued_at;
        if record.call.is_some() {
            memo.call_read = true;
        }
        if memo.fingerprint.as_deref() == Some(fingerprint.as_str()) && record.call.is_none() {
            return out;
        }
        memo.fingerprint = Some(fingerprint);
        let obs = observe(id, &record, retries, eta, now);
        let results_pending = self.known.get(id).is_some_and(|m| m.results_pending);
        if matches!(
            record.status,
            JobStatus::Finished | JobStatus::Failed | JobStatus::Stopped
        ) {
            let mut outcome = Vec::with_capacity(2);
            if let Some(started) = record.started_at {
                // The attempt's start, for a job first seen finished (polling, a restart): it
                // only fills what is unknown when the start was seen already.
                let mut ran = TaskObservation::new(
                    Broker::Rq,
                    id,
                    started.min(obs.at),
                    TaskEvent::Running,
                    "job started",
                );
                ran.attempt = obs.attempt;
                ran.fields.queue = obs.fields.queue.clone();
                ran.fields.name = obs.fields.name.clone();
                ran.fields.worker = record.worker_name.clone();
                ran.fields.started_at = Some(started);
                ran.fields.enqueued_at = obs.fields.enqueued_at;
                outcome.push(ran);
            }
            outcome.push(obs);
            let memo = self.memo(id);
            if let Some(attempt) = memo.results_outcome {
                // The results entry was read first: it named the last execution.
                outcome.extend(memo.held_entry.take());
                for o in &mut outcome {
                    o.attempt = o.attempt.map(|a| a.max(attempt));
                }
                out.observations
                    .extend(outcome.into_iter().map(Observation::Task));
                return out;
            }
            memo.held_outcome = outcome;
            if !results_pending {
                out.follow_up.push(self.results_read(id));
            }
            return out;
        }
        if let Some(memo) = self.known.get_mut(id) {
            // Waiting or running (again): a later outcome is another attempt's.
            memo.results_outcome = None;
        }
        out.observations.push(Observation::Task(obs));
        out
    }

    /// The job-hash outcome held for the results read ([`JobMemo::held_outcome`]), at the
    /// attempt known now.
    fn release_outcome(&mut self, id: &str, out: &mut Output) {
        let Some(memo) = self.known.get_mut(id) else {
            return;
        };
        let attempt = memo.retries;
        for mut o in std::mem::take(&mut memo.held_outcome) {
            o.attempt = Some(o.attempt.unwrap_or(0).max(attempt));
            out.observations.push(Observation::Task(o));
        }
    }

    /// Retries so far, from every sign RQ leaves (see the module doc).
    fn count_retries(&mut self, id: &str, record: &JobRecord) -> u32 {
        let memo = self.memo(id);
        let mut retries = memo.retries;
        if let Some(n) = record.number_of_retries {
            retries = retries.max(n);
        }
        if let Some(left) = record.retries_left {
            let first = memo.first_retries_left.map_or(left, |f| f.max(left));
            memo.first_retries_left = Some(first);
            retries = retries.max(first - left);
        }
        if record.status.is_waiting() && record.started_at.is_some() {
            // Waiting again after an attempt ran: at least one retry, even when the reads
            // that would tell how many were missed.
            retries = retries.max(1);
        }
        // Every attempt has its own execution id: the ones seen, less the current (or next)
        // attempt, were retried. Exact when every attempt's notification arrived, whatever
        // the reads of the hash missed (`retries_left` alone cannot tell a retry that happened
        // between two reads).
        let executions = memo.executions.len() as u32;
        retries = retries.max(executions.saturating_sub(1));
        memo.retries = retries;
        retries
    }

    /// The newest results-stream entry of a job.
    fn on_results(&mut self, key: &str, id: &str, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        if let Some(memo) = self.known.get_mut(id) {
            memo.results_pending = false;
        }
        // Without an outcome held from the hash, the hash was not read for this end (the
        // batch had the entry): an entry that tells nothing sends to the hash.
        let held = self
            .known
            .get(id)
            .is_some_and(|m| !m.held_outcome.is_empty());
        let entry = match result::decode_latest(reply) {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                self.release_outcome(id, &mut out);
                if !held {
                    out.follow_up.push(self.job_read(id));
                }
                return out;
            }
            Err(e) => {
                out.decode_errors
                    .push(Self::decode_error(key, e.kind(), e.to_string()));
                self.release_outcome(id, &mut out);
                if !held {
                    out.follow_up.push(self.job_read(id));
                }
                return out;
            }
        };
        if entry.return_value_undecodable {
            out.decode_errors.push(Self::decode_error(
                key,
                "result-return-value",
                "return value did not decode (custom class or unknown serializer)".into(),
            ));
        }
        let at = entry.ended_at.or(entry.written_at).unwrap_or(now);
        let (event, error) = match entry.kind {
            ResultType::Successful => (TaskEvent::Succeeded, None),
            ResultType::Failed => (TaskEvent::Failed, entry.error_line()),
            ResultType::Stopped => (TaskEvent::Failed, Some("stopped".to_string())),
            ResultType::MaxRetriesExceeded => (
                TaskEvent::Failed,
                Some("maximum retries exceeded".to_string()),
            ),
            // The job hash, waiting again, says which attempt it is.
            ResultType::Retried => {
                self.release_outcome(id, &mut out);
                if !held {
                    out.follow_up.push(self.job_read(id));
                }
                return out;
            }
        };
        let mut obs = TaskObservation::new(Broker::Rq, id, at, event, "results stream");
        if let Some(memo) = self.known.get_mut(id) {
            if let Some(execution) = &entry.execution_id {
                memo.saw_execution(execution);
            }
            let executions = memo.executions.len() as u32;
            memo.retries = memo.retries.max(executions.saturating_sub(1));
            memo.results_outcome = Some(memo.retries);
            obs.attempt = Some(memo.retries);
            if memo.held_outcome.is_empty() {
                // Ended, as the hash (not read for it) says: no longer judged by `rq:wip`.
                memo.status = Some(match entry.kind {
                    ResultType::Successful => JobStatus::Finished,
                    ResultType::Stopped => JobStatus::Stopped,
                    _ => JobStatus::Failed,
                });
                memo.fingerprint = None;
            }
        }
        obs.fields.worker = entry.worker_name.clone();
        obs.fields.result = entry.return_value.clone();
        obs.fields.error = error;
        obs.fields.traceback = entry.traceback.clone();
        if let (Some(s), Some(e)) = (entry.started_at, entry.ended_at) {
            obs.fields.started_at = Some(s);
            obs.fields.runtime_ms = ((e - s).num_microseconds())
                .map(|us| us as f64 / 1000.0)
                .filter(|ms| *ms >= 0.0);
        }
        if entry.kind == ResultType::Failed && !held && !entry.has_traceback() {
            // Not an exception's traceback: RQ 3.0 writes a stopped job's entry as a failure
            // with a sentence (`Job stopped by user, ...`), and its cleanup of an abandoned
            // job another one. The hash's status says which: read it, the entry after it.
            if let Some(memo) = self.known.get_mut(id) {
                memo.held_entry = Some(obs);
                out.follow_up.push(self.job_read(id));
                return out;
            }
        }
        if !held {
            // The hash was not read for this end (the batch had the entry): the attempt's start
            // comes from the entry. An outcome carries no start time the store would take: a
            // job that started and ended within one batch would have none.
            if let Some(ran) = running_from_entry(&obs) {
                out.observations.push(Observation::Task(ran));
            }
        }
        // The job hash's outcome first, as when it is read after the entry: the entry then
        // fills what the hash does not say (a stopped job's error stays `stopped`).
        self.release_outcome(id, &mut out);
        out.observations.push(Observation::Task(obs));
        out
    }

    /// `PTTL` then HMGET of a worker hash.
    ///
    /// The pid tells the store that a worker name now belongs to a new process (the tasks of
    /// the old one are then abandoned as "restarted"), from the moment it is first seen. That
    /// is right when the new process is seen as it starts (its `birth` notification); seen
    /// later (polling, a restart of taskscope), the jobs it started meanwhile would look older
    /// than it, so its pid is not reported and the old process's jobs are left to silence and
    /// to RQ's own cleanup.
    fn on_worker(&mut self, name: &str, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let expires_at = self.worker_expiry.remove(name);
        let Some(record) = worker::decode(&reply.into_items()) else {
            // Expired (its heartbeats stopped) or deleted: silence, judged by the sweep.
            return out;
        };
        let first_sight = match self.workers_born.get(name) {
            None => true,
            Some((birth, _)) => *birth != record.birth,
        };
        if first_sight {
            let known_name = self.workers_born.contains_key(name);
            let prompt = record
                .birth
                .is_some_and(|b| now - b <= WORKER_READ_EVERY * 2);
            self.workers_born
                .insert(name.to_string(), (record.birth, !known_name || prompt));
        }
        let with_pid = self.workers_born.get(name).is_some_and(|(_, p)| *p);
        let observation = |at: DateTime<Utc>, event: WorkerEvent| {
            Observation::Worker(WorkerObservation {
                broker: Broker::Rq,
                id: name.to_string(),
                hostname: record.hostname.clone(),
                pid: if with_pid { record.pid } else { None },
                at,
                event,
                active: None,
                heartbeat_every_s: None,
            })
        };
        if let Some(death) = record.death {
            out.observations
                .push(observation(death.min(now), WorkerEvent::Offline));
            return out;
        }
        if let (true, Some(birth)) = (first_sight, record.birth) {
            // A new row starts at the birth: tasks it started are not older than it.
            out.observations
                .push(observation(birth.min(now), WorkerEvent::Heartbeat));
        }
        if let Some(at) = record.alive_at(now, expires_at) {
            out.observations
                .push(observation(at, WorkerEvent::Heartbeat));
        }
        out
    }

    /// `SMEMBERS <p>workers`, the last read of a sampling round: read every worker, and close
    /// the round.
    fn on_workers(&mut self, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let prefix = self.layout.worker("");
        let names: BTreeSet<String> = reply
            .into_items()
            .iter()
            .filter_map(|r| r.as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .filter_map(|key| key.strip_prefix(&prefix).map(str::to_string))
            .filter(|name| !name.is_empty())
            .collect();
        for name in &names {
            out.follow_up.extend(self.worker_reads(name));
            self.worker_read_at.insert(name.clone(), now);
        }
        // Names leave `<p>workers` when a worker dies cleanly or RQ cleans a dead one up.
        self.worker_read_at.retain(|n, _| names.contains(n));
        self.workers_born.retain(|n, _| names.contains(n));
        if let Some(sampling) = self.sampling.take() {
            let mut heads = std::mem::take(&mut self.sampled_heads);
            for (queue, [length, delayed, dead, running]) in sampling {
                // A head not read yet (its hash read follows the `LRANGE`) is unknown for
                // this round.
                let oldest_enqueued_at = heads
                    .remove(&queue)
                    .and_then(|id| self.known.get(&id).and_then(|m| m.enqueued_at));
                out.queue_samples.push(QueueSample {
                    broker: Broker::Rq,
                    name: queue,
                    length,
                    delayed,
                    dead,
                    running,
                    sampled_at: now,
                    oldest_enqueued_at,
                });
            }
        }
        out
    }

    /// `SMEMBERS <p>queues`: queue keys.
    fn on_queues(&mut self, reply: Reply) -> Output {
        let mut out = Output::default();
        let prefix = self.layout.queue("");
        for member in reply.into_items() {
            let Some(bytes) = member.as_bytes() else {
                continue;
            };
            let key = String::from_utf8_lossy(bytes);
            if let Some(name) = key.strip_prefix(&prefix) {
                if self.add_queue(name) {
                    out.follow_up.extend(self.queue_reads(name));
                }
            }
        }
        out
    }

    fn on_length(&mut self, key: &str, n: u64) {
        let Some(sampling) = self.sampling.as_mut() else {
            return;
        };
        let (queue, slot) = match self.layout.classify(key) {
            Some(RqKey::Queue(q)) => (q, 0),
            Some(RqKey::Registry(Registry::Scheduled, q)) => (q, 1),
            Some(RqKey::Registry(Registry::Failed, q)) => (q, 2),
            Some(RqKey::Registry(Registry::Started, q)) => (q, 3),
            _ => return,
        };
        if let Some(entry) = sampling.get_mut(queue) {
            entry[slot] += n;
        }
    }
}

/// The attempt's start a results entry tells (`execution_started_at`, its worker), as the
/// running observation that goes before its outcome.
fn running_from_entry(outcome: &TaskObservation) -> Option<TaskObservation> {
    let started = outcome.fields.started_at?;
    let mut ran = TaskObservation::new(
        Broker::Rq,
        &outcome.task_id,
        started.min(outcome.at),
        TaskEvent::Running,
        "execution started",
    );
    ran.attempt = outcome.attempt;
    ran.fields.worker = outcome.fields.worker.clone();
    ran.fields.started_at = Some(started);
    Some(ran)
}

/// The observation one job hash makes.
fn observe(
    id: &str,
    record: &JobRecord,
    retries: u32,
    eta: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> TaskObservation {
    let waiting_again = record.status.is_waiting() && record.started_at.is_some() && retries > 0;
    let (event, attempt, at, source) = match record.status {
        _ if waiting_again => (
            TaskEvent::Retried,
            retries - 1,
            record.ended_at.unwrap_or(now),
            "job requeued",
        ),
        JobStatus::Scheduled => (
            TaskEvent::Queued,
            retries,
            record.enqueued_at.or(record.created_at).unwrap_or(now),
            "scheduled registry",
        ),
        JobStatus::Deferred => (
            TaskEvent::Queued,
            retries,
            record.created_at.unwrap_or(now),
            "deferred registry",
        ),
        s if s.is_waiting() => (
            TaskEvent::Queued,
            retries,
            record.enqueued_at.or(record.created_at).unwrap_or(now),
            "queue",
        ),
        JobStatus::Started => (
            TaskEvent::Running,
            retries,
            // The heartbeat too: a job seen running after it was abandoned moves on only when
            // its worker heartbeats it again.
            record
                .last_heartbeat
                .max(record.started_at)
                .unwrap_or(now)
                .min(now),
            "job started",
        ),
        JobStatus::Finished => (
            TaskEvent::Succeeded,
            retries,
            record.ended_at.unwrap_or(now),
            "job finished",
        ),
        _ => (
            TaskEvent::Failed,
            retries,
            record.ended_at.unwrap_or(now),
            match record.status {
                JobStatus::Stopped => "job stopped",
                JobStatus::Canceled => "job canceled",
                _ => "job failed",
            },
        ),
    };
    let mut obs = TaskObservation::new(Broker::Rq, id, at, event, source);
    obs.attempt = Some(attempt);
    let f = &mut obs.fields;
    f.queue = record.origin.clone();
    f.name = record.name();
    match &record.call {
        Some(Ok(call)) => {
            f.args = call.args.clone();
            f.kwargs = call.kwargs.clone();
        }
        // Listed all the same (name from the description), saying why it has no arguments.
        Some(Err(JobError::TooLarge(n))) => f.error = Some(crate::adapter::too_large_error(*n)),
        Some(Err(e)) => f.error = Some(e.to_string()),
        None => {}
    }
    f.enqueued_at = record.enqueued_at.or(record.created_at);
    if record.status == JobStatus::Scheduled {
        f.eta = eta;
    }
    match record.status {
        JobStatus::Started => {
            f.worker = record.worker_name.clone();
            f.started_at = record.started_at;
        }
        JobStatus::Finished | JobStatus::Failed | JobStatus::Stopped => {
            f.worker = record.worker_name.clone();
            if let (Some(s), Some(e)) = (record.started_at, record.ended_at) {
                f.runtime_ms = (e - s)
                    .num_microseconds()
                    .map(|us| us as f64 / 1000.0)
                    .filter(|ms| *ms >= 0.0);
            }
        }
        _ => {}
    }
    if record.status == JobStatus::Finished {
        f.result = record.legacy_result.clone();
    }
    match record.status {
        JobStatus::Failed => {
            if let Some(tb) = &record.exc_info {
                f.error = crate::codec::error_line_from_traceback(tb);
                f.traceback = Some(tb.clone());
            }
        }
        JobStatus::Stopped => f.error = Some("stopped".to_string()),
        JobStatus::Canceled => f.error = Some("canceled".to_string()),
        _ => {}
    }
    obs
}

impl Adapter for RqAdapter {
    fn broker(&self) -> Broker {
        Broker::Rq
    }

    fn interest(&self) -> Interest {
        let p = glob_escape(self.layout.prefix());
        Interest {
            channel_patterns: Vec::new(),
            key_patterns: vec![
                format!("{p}job:*"),
                format!("{p}results:*"),
                format!("{p}scheduled:*"),
                // A new worker's birth writes its hash: `<p>workers` itself is read by sampling
                // only, whose round its reply closes.
                format!("{p}worker:*"),
                format!("{p}queues"),
                // Pushes of job ids (no read): where a batch's jobs are, read together
                // (`SORT_RO`) from there.
                format!("{p}queue:*"),
                format!("{p}finished:*"),
                format!("{p}failed:*"),
                // Each attempt's execution hash: its name tells attempts apart (no read).
                format!("{p}execution:*"),
                // A job's running attempts: `zrem` as one ends (no read).
                format!("{p}executions:*"),
            ],
            scan_patterns: vec![format!("{p}job:*")],
            side_scan_patterns: Vec::new(),
            notify_classes: "hsztl".to_string(),
            prefetch: Vec::new(),
            first_sight: Vec::new(),
        }
    }

    fn on_scan(&mut self, _pattern: &str, keys: Vec<String>, _now: DateTime<Utc>) -> Vec<Read> {
        keys.iter()
            .filter_map(|key| match self.layout.classify(key) {
                Some(RqKey::Job(id)) if !self.was_read(id) => Some(self.job_read(id)),
                _ => None,
            })
            .collect()
    }

    fn on_key_event(&mut self, key: &str, op: &str, now: DateTime<Utc>) -> Vec<Read> {
        let class = self.layout.classify(key);
        if let Some(job) = self.starting.take() {
            self.guess_worker(job, key, &class, op);
        }
        self.place(key, &class, op);
        match (class, op) {
            (Some(RqKey::Job(id)), "hset" | "hmset") => {
                match self.news(id) {
                    // Read once the batch is over, unless the batch tells it all.
                    Some(news) => news.hset = true,
                    // Read at the end of the batch, with the other jobs pushed where it is.
                    None => {
                        self.memo(id).first_read_asked = true;
                        self.wanted.push(id.to_string());
                    }
                }
                Vec::new()
            }
            (Some(RqKey::Execution(job, execution)), "hset" | "hmset") => {
                // The retry count a later read makes includes it (the fingerprint too).
                if self.memo(job).saw_execution(execution) {
                    if let Some(news) = self.news(job) {
                        news.started = true;
                        news.worker = None;
                        self.starting = Some(job.to_string());
                    }
                }
                Vec::new()
            }
            (Some(RqKey::Executions(job)), "zrem") => {
                if let Some(news) = self.news(job) {
                    news.ended = true;
                }
                Vec::new()
            }
            (Some(RqKey::Results(id)), "xadd") => {
                if let Some(news) = self.news(id) {
                    news.result = true;
                }
                let memo = self.memo(id);
                if !std::mem::replace(&mut memo.results_pending, true) {
                    self.results_due.push(id.to_string());
                }
                Vec::new()
            }
            (Some(RqKey::Registry(Registry::Scheduled, _)), "zadd") => {
                vec![Self::page(key.to_string())]
            }
            (Some(RqKey::Queues), "sadd") => {
                vec![Why::Queues.read(ReadRequest::SMembers(self.layout.queues()))]
            }
            (Some(RqKey::Worker(name)), "hset" | "hmset") => {
                let recent = self
                    .worker_read_at
                    .get(name)
                    .is_some_and(|at| now - *at < WORKER_READ_EVERY);
                if recent {
                    return Vec::new();
                }
                self.worker_read_at.insert(name.to_string(), now);
                self.worker_reads(name).to_vec()
            }
            _ => Vec::new(),
        }
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
            return unknown_tag(Broker::Rq, request, tag);
        };
        let layout = self.layout.clone();
        let mut out = Output::default();
        // The tag says why; the key says which job, worker or queue.
        match (why, request.inner(), layout.classify(request.key())) {
            (Why::Job, ReadRequest::HMGet { key, fields }, Some(RqKey::Job(id))) => {
                return self.on_job(key, id, fields, reply, now);
            }
            (Why::Worker, _, Some(RqKey::Worker(name))) => {
                return self.on_worker(name, reply, now);
            }
            (Why::WorkerTtl, _, Some(RqKey::Worker(name))) => match reply.as_i64() {
                Some(ms) if ms > 0 => {
                    // Checked: a reply is data, and data must not panic.
                    if let Some(at) =
                        Duration::try_milliseconds(ms).and_then(|ttl| now.checked_add_signed(ttl))
                    {
                        self.worker_expiry.insert(name.to_string(), at);
                    }
                }
                _ => {
                    self.worker_expiry.remove(name);
                }
            },
            (Why::Results, ReadRequest::XReadFirst { keys, count }, _) => {
                return self.on_results_batch(keys, *count, reply, now);
            }
            (Why::Results, request, Some(RqKey::Results(id))) => {
                return self.on_results(request.key(), id, reply, now);
            }
            (Why::Workers, _, _) => {
                return self.on_workers(reply, now);
            }
            (Why::Queues, _, _) => return self.on_queues(reply),
            (Why::QueueHead, _, Some(RqKey::Queue(q))) if self.sampling.is_some() => {
                let items = reply.into_items();
                if let Some(head) = items.first().and_then(Reply::as_bytes) {
                    self.sampled_heads
                        .insert(q.to_string(), String::from_utf8_lossy(head).into_owned());
                }
                self.on_ids(items, &mut out);
            }
            (Why::QueueIds | Why::QueueHead, _, Some(RqKey::Queue(_))) => {
                self.on_ids(reply.into_items(), &mut out);
            }
            (Why::Registry, _, Some(RqKey::Registry(registry, _))) => {
                self.on_registry(registry, reply, now, &mut out);
            }
            (Why::Length, request, _) => {
                self.on_length(request.key(), reply.as_i64().unwrap_or(0).max(0) as u64);
            }
            (Why::Jobs, ReadRequest::SortGet { key, .. }, _) => {
                return self.on_sorted(key, Some(reply), now);
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
        let mut out = Output::default();
        if let (Ok(Why::Jobs), ReadRequest::SortGet { key, .. }) =
            (Why::try_from(tag), request.inner())
        {
            // Its jobs are read on their own, and so is every job from now on unless the key
            // alone was wrong (another application's key of another type).
            if !self.sort_refused && !error.starts_with("WRONGTYPE") {
                tracing::info!(
                    error,
                    "Redis refused SORT_RO: RQ job hashes are read one by one."
                );
                self.sort_refused = true;
            }
            out = self.on_sorted(key, None, now);
        }
        out.decode_errors
            .push(crate::adapter::read_error(Broker::Rq, request, error));
        out
    }

    fn reconcile(&mut self, open: &[OpenTask], _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = vec![Why::Queues.read(ReadRequest::SMembers(self.layout.queues()))];
        for queue in &self.queues {
            reads.extend(self.queue_reads(queue));
        }
        for task in open {
            self.reconciling.insert(task.id.clone());
            reads.push(self.job_read(&task.id));
        }
        if self.reconciling.len() > 4 * open.len().max(1_000) {
            // Replies lost to a connection gap: start afresh.
            self.reconciling = open.iter().map(|t| t.id.clone()).collect();
        }
        reads
    }

    fn sample_queues(&mut self, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = vec![Why::Queues.read(ReadRequest::SMembers(self.layout.queues()))];
        for q in &self.queues {
            reads.push(Why::Length.read(ReadRequest::LLen(self.layout.queue(q))));
            // The head's id: its job hash's `enqueued_at` is the queue's oldest.
            reads.push(Why::QueueHead.read(ReadRequest::LRange {
                key: self.layout.queue(q),
                start: 0,
                stop: 0,
            }));
            for registry in [Registry::Scheduled, Registry::Failed, Registry::Started] {
                reads.push(Why::Length.read(ReadRequest::ZCard(self.layout.registry(registry, q))));
            }
        }
        self.sampling = Some(self.queues.iter().map(|q| (q.clone(), [0; 4])).collect());
        self.sampled_heads.clear();
        // Last: its reply closes the round.
        reads.push(Why::Workers.read(ReadRequest::SMembers(self.layout.workers())));
        reads
    }

    fn wants_read_barrier(&self) -> bool {
        // Attempts are counted from the execution ids notifications name: a read finding a
        // job finished must not be judged before the notifications of its attempts.
        true
    }

    /// The hashes of jobs read before, written during the batch, are read now, once each;
    /// not when the batch tells their news without them: an entry in the results stream (read
    /// at once: the outcome, its worker, its times, value or traceback), or a new attempt whose
    /// worker the attempt's transaction named (running, on that worker). RQ writes the hash 3-5
    /// times per attempt: this is what brings a lifecycle down to one read of its hash (at its
    /// enqueue) and one of its results stream.
    fn end_of_batch(&mut self, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let due = std::mem::take(&mut self.results_due);
        let mut wanted = std::mem::take(&mut self.wanted);
        let mut carried = HashMap::new();
        for (id, news) in std::mem::take(&mut self.batch) {
            if news.result {
                // Its results read is under way; a job never read (its first read lost or
                // finding nothing) is read for its name and arguments.
                if news.hset && !self.was_read(&id) {
                    wanted.push(id);
                }
                continue;
            }
            if let (true, true, Some(worker)) = (news.started, news.ended, &news.worker) {
                // Started and ended within the batch, no results entry: held for its hash read.
                if news.hset {
                    let ran = self.ran_from_notifications(&id, worker.clone(), now);
                    if let Some(memo) = self.known.get_mut(&id) {
                        memo.ran_unread = ran;
                    }
                    wanted.push(id);
                    continue;
                }
            }
            if news.started && !news.ended {
                match news.worker {
                    Some(worker) => {
                        if let Some(obs) = self.running_from_notifications(&id, worker, now) {
                            out.observations.push(Observation::Task(obs));
                            continue;
                        }
                        if self.start_was_read(&id) {
                            continue; // its first read, under way then, found it started
                        }
                    }
                    // The batch ended inside the start's transaction: the next one names
                    // the worker (the guess stays open across batches: notifications come
                    // in order on one connection).
                    None if !news.hset && self.starting.as_deref() == Some(id.as_str()) => {
                        carried.insert(id, news);
                        continue;
                    }
                    None => {}
                }
            }
            if news.hset {
                wanted.push(id);
            }
        }
        self.batch = carried;
        // The hashes first, as when their reads were asked for at the notification.
        out.follow_up.extend(self.job_reads(wanted));
        out.follow_up.extend(self.results_reads(&due));
        self.placed.clear();
        self.pushed.clear();
        self.moved.clear();
        out
    }

    fn on_gap(&mut self) {
        self.batch.clear();
        self.results_due.clear();
        self.wanted.clear();
        self.placed.clear();
        self.pushed.clear();
        self.moved.clear();
        self.last_job = None;
        self.sorting.clear();
        self.starting = None;
        self.sampling = None;
        self.sampled_heads.clear();
        self.reconciling.clear();
        self.worker_expiry.clear();
        for memo in self.known.values_mut() {
            memo.fingerprint = None;
            memo.results_pending = false;
            memo.first_read_asked = false;
            memo.held_outcome.clear();
            memo.held_entry = None;
            memo.ran_unread = None;
        }
    }
}
