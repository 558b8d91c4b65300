//! Sidekiq (Ruby jobs on Redis), read as Sidekiq 6.4 writes it (Debian's `ruby-sidekiq`);
//! Sidekiq 7 and 8's differences that matter here (`<identity>:work`, times in milliseconds)
//! are read too.
//!
//! Where each state comes from (fixtures and notes: `tests/fixtures/sidekiq/`):
//! - `queued`: a job's JSON in `queue:<name>` (read on the list's notifications), or in the
//!   `schedule` sorted set (`perform_in`, score = when: the task's `eta`);
//! - `running`: the job in a process's `<identity>:workers` hash (written by the process's
//!   heartbeat, every 5 s in Sidekiq 6, with `run_at` and the job's JSON), with that process as
//!   its worker; or a job seen in a queue list that left it (a fetcher's `BRPOP`), with no
//!   worker named until a heartbeat shows it;
//! - `retried`: the job in the `retry` sorted set (its `retry_count`, `error_class`,
//!   `error_message`, `error_backtrace`); when it leaves the set the retry poller pushed it back
//!   to its queue (`queued` again);
//! - `failure`: the job in the `dead` sorted set (retries exhausted, or `retry: 0`);
//! - `success`: **inferred**, Sidekiq writes nothing per successful job. A job that ran (taken
//!   from a list, out of a retry or schedule set, or gone from a work hash) and is then in no
//!   list, no work hash, no `retry` and no `dead`, once every live process has written
//!   [`TAKEN_BEATS`] heartbeats since (one after it left a work hash): a failure is written to
//!   `retry`/`dead` *before* the job leaves the worker's in-memory work state, and each
//!   heartbeat's work hash is a snapshot of that state taken after the previous heartbeat
//!   finished, so the second heartbeat after a take would show the job if it were still
//!   running. What breaks it: `retry: false` (a failure writes nothing at all), a job taken by
//!   something other than a Sidekiq fetcher, a job deleted from a list by hand, a process that
//!   died between `BRPOP` and its next heartbeat (then the sweep abandons the task: no live
//!   process vouches for it);
//! - `abandoned`: by the shared sweep, from the workers this adapter reports (a process is a
//!   worker, alive while its heartbeats come, `--abandon-after` of silence, 60 s by default as
//!   Sidekiq's own key expiry): OSS Sidekiq's `BasicFetch` keeps a fetched job only in the
//!   process's memory, so a SIGKILLed process loses it, and `abandoned` is final.
//!
//! A job an idle fetcher takes inside the producer's `LPUSH` (a blocked `BRPOP` is served
//! before any other client's command) never sits in Redis: taskscope cannot see it unless it
//! runs long enough to be in a heartbeat's work hash, or fails.

pub mod detect;
pub mod job;
pub mod layout;

use crate::adapter::{
    unknown_tag, Adapter, DecodeError, Interest, OpenTask, Output, Read, ReadRequest, Reply, Tag,
};

use crate::bounded::FifoMap;
use crate::model::{
    Broker, Observation, QueueSample, TaskEvent, TaskObservation, WorkerEvent, WorkerObservation,
};
use chrono::{DateTime, Utc};
use job::{Job, WorkEntry};
use layout::{Layout, SidekiqKey};
use std::collections::{BTreeMap, BTreeSet, HashMap};

crate::read_reasons! {
    /// Why the Sidekiq adapter reads (the tag of each of its reads).
    pub enum Why {
        /// The set of queue names.
        Queues,
        /// The set of process identities.
        Processes,
        /// The head page of a queue list.
        ListHead,
        /// The tail page of a queue list longer than a page.
        ListTail,
        /// The next job of a queue to be fetched, for its sample (`LRANGE -1 -1`).
        Oldest,
        /// The low-score page of a sorted set (schedule, retry).
        SetHead,
        /// The high-score page of a sorted set.
        SetTail,
        /// A process hash.
        Process,
        /// A process's work hash (Sidekiq 6 `<id>:workers`, 7+ `<id>:work`).
        Work,
        /// A queue list's length for its sample.
        Length,
        /// A sorted set's size for its sample (the dead set's closes the round).
        SetSize,
    }
}

/// List entries and sorted-set members read per page (a page from each end).
const PAGE: i64 = 500;
/// Jobs remembered between reads.
const KNOWN_CAPACITY: usize = 200_000;
/// Queues followed at most (the `queues` set names them).
const MAX_QUEUES: usize = 1_000;
/// Processes followed at most.
const MAX_PROCESSES: usize = 10_000;
/// Heartbeats of every live process after a job was taken from a list (or left the retry or
/// schedule set) before its absence from every work hash means it finished.
pub const TAKEN_BEATS: u64 = 2;
/// The same after it left a work hash (that heartbeat's snapshot already lacks it).
pub const LEFT_WORK_BEATS: u64 = 1;
/// Sidekiq 6's heartbeat period (`Launcher::BEAT_PAUSE`); Sidekiq 7+ beats every 10 s.
pub const BEAT_SECONDS_6: f64 = 5.0;

/// Configuration of the Sidekiq adapter.
#[derive(Debug, Clone, Default)]
pub struct SidekiqConfig {
    /// The `redis-namespace` namespace of the application, if it uses one.
    pub namespace: Option<String>,
}

/// A job awaiting its verdict: taken, and not seen anywhere since.
#[derive(Debug, Clone)]
struct Pending {
    since: DateTime<Utc>,
    /// Heartbeats each process had written when the wait started.
    baseline: HashMap<String, u64>,
    beats: u64,
}

/// What the adapter remembers about a job between reads.
#[derive(Debug, Clone, Default)]
struct JobMemo {
    queue: Option<String>,
    /// The queue list it was last seen in.
    in_list: Option<String>,
    in_retry: bool,
    in_schedule: bool,
    /// The process whose work hash shows it.
    running_on: Option<String>,
    started: bool,
    pending: Option<Pending>,
    /// The `retry_count` whose `retried` was reported.
    retried: Option<u32>,
    /// When its schedule or retry entry was due (the entry's score).
    due: Option<DateTime<Utc>>,
    finished: bool,
}

/// What the adapter remembers about a process.
#[derive(Debug, Clone, Default)]
struct ProcessMemo {
    /// Heartbeats seen (distinct `beat` values read).
    beats: u64,
    beat: Option<DateTime<Utc>>,
    /// Jobs in its work hash at the last read.
    work: BTreeSet<String>,
    /// Reported offline (its hash is gone while `processes` lists it, or it left the set).
    offline: bool,
    hostname: Option<String>,
    pid: Option<u32>,
    /// Sidekiq 7+ (its `:work` hash was seen).
    seven: bool,
}

/// A list or sorted set read from both ends; judged when both pages are in.
#[derive(Debug, Clone, Default)]
struct Pages {
    head: Option<Vec<(Job, f64)>>,
}

/// A queue list as last read.
#[derive(Debug, Clone, Default)]
struct Listed {
    /// The jobs of both pages.
    jobs: BTreeSet<String>,
    /// The jobs of the tail page (the next to be fetched).
    tail: BTreeSet<String>,
    /// The head page held the whole list.
    whole: bool,
}

/// Which sorted set a page read is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Set {
    Schedule,
    Retry,
    Dead,
}

pub struct SidekiqAdapter {
    layout: Layout,
    queues: BTreeSet<String>,
    known: FifoMap<String, JobMemo>,
    processes: BTreeMap<String, ProcessMemo>,
    /// Jobs awaiting their verdict.
    pending: BTreeSet<String>,
    /// Each queue list at its last read.
    listed: HashMap<String, Listed>,
    /// The jobs at the head of each retry/schedule set at its last read (the poller takes the
    /// lowest scores first).
    set_heads: HashMap<Set, BTreeSet<String>>,
    list_pages: HashMap<String, Pages>,
    set_pages: HashMap<Set, Pages>,
    /// Reads in flight per key, and whether a notification came since (coalescing).
    in_flight: HashMap<String, bool>,
    /// Queue lengths read for the samples, by queue.
    lengths: HashMap<String, u64>,
    set_cards: HashMap<Set, u64>,
    /// The push time of the job at each queue's tail (the next fetched), read by the samples.
    oldest: HashMap<String, Option<DateTime<Utc>>>,
}

impl SidekiqAdapter {
    pub fn new(config: SidekiqConfig) -> SidekiqAdapter {
        SidekiqAdapter {
            layout: Layout::new(config.namespace.as_deref()),
            queues: BTreeSet::new(),
            known: FifoMap::new(KNOWN_CAPACITY),
            processes: BTreeMap::new(),
            pending: BTreeSet::new(),
            listed: HashMap::new(),
            set_heads: HashMap::new(),
            list_pages: HashMap::new(),
            set_pages: HashMap::new(),
            in_flight: HashMap::new(),
            lengths: HashMap::new(),
            set_cards: HashMap::new(),
            oldest: HashMap::new(),
        }
    }

    /// The queues followed.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.queues.iter().map(String::as_str)
    }

    fn memo(&mut self, jid: &str) -> &mut JobMemo {
        self.known
            .get_or_insert_with(jid.to_string(), JobMemo::default)
    }

    fn decode_error(key: &str, kind: &'static str, message: String) -> DecodeError {
        DecodeError {
            broker: Broker::Sidekiq,
            kind,
            key: key.to_string(),
            message,
        }
    }

    fn set_key(&self, set: Set) -> String {
        self.layout.key(match set {
            Set::Schedule => layout::SCHEDULE,
            Set::Retry => layout::RETRY,
            Set::Dead => layout::DEAD,
        })
    }

    fn add_queue(&mut self, queue: &str) -> bool {
        if queue.is_empty() || self.queues.len() >= MAX_QUEUES {
            return false;
        }
        self.queues.insert(queue.to_string())
    }

    /// Both ends of a queue list (new jobs are `LPUSH`ed at the head, fetchers `BRPOP` the tail).
    /// A read of a queue list: its head page, then its tail page only when the head page is
    /// full ([`Self::tail_read`]): a list shorter than a page (the usual case) costs one
    /// `LRANGE` per change.
    fn list_reads(&self, queue: &str) -> Vec<Read> {
        vec![Why::ListHead.read(ReadRequest::LRange {
            key: self.layout.queue(queue),
            start: 0,
            stop: PAGE - 1,
        })]
    }

    /// The tail page of a queue list longer than a page (its next jobs to be fetched).
    fn tail_read(&self, queue: &str) -> Read {
        Why::ListTail.read(ReadRequest::LRange {
            key: self.layout.queue(queue),
            start: -PAGE,
            stop: -1,
        })
    }

    /// Both ends of a sorted set (the dead set: its newest end only).
    fn set_reads(&self, set: Set) -> Vec<Read> {
        let key = self.set_key(set);
        let tail = Why::SetTail.read(ReadRequest::ZRangeWithScores {
            key: key.clone(),
            start: -PAGE,
            stop: -1,
        });
        if set == Set::Dead {
            return vec![tail];
        }
        vec![
            Why::SetHead.read(ReadRequest::ZRangeWithScores {
                key,
                start: 0,
                stop: PAGE - 1,
            }),
            tail,
        ]
    }

    fn processes_read(&self) -> Read {
        Why::Processes.read(ReadRequest::SMembers(self.layout.key(layout::PROCESSES)))
    }

    fn queues_read(&self) -> Read {
        Why::Queues.read(ReadRequest::SMembers(self.layout.key(layout::QUEUES)))
    }

    /// `reads` of `key` unless a read of it is in flight (then asked again when it answers).
    fn coalesced(&mut self, key: &str, reads: Vec<Read>) -> Vec<Read> {
        match self.in_flight.get_mut(key) {
            Some(dirty) => {
                *dirty = true;
                Vec::new()
            }
            None => {
                self.in_flight.insert(key.to_string(), false);
                reads
            }
        }
    }

    /// The last read of a coalesced key answered: the reads again if it changed meanwhile.
    fn answered(&mut self, key: &str, reads: impl FnOnce(&Self) -> Vec<Read>) -> Vec<Read> {
        match self.in_flight.remove(key) {
            Some(true) => {
                self.in_flight.insert(key.to_string(), false);
                reads(self)
            }
            _ => Vec::new(),
        }
    }

    /// Decodes list entries or sorted-set members (with their scores).
    fn entries(key: &str, reply: Reply, scored: bool, out: &mut Output) -> Vec<(Job, f64)> {
        let items: Vec<(Reply, f64)> = if scored {
            reply
                .into_pairs()
                .into_iter()
                .map(|(m, s)| {
                    let score = s.as_f64().unwrap_or(0.0);
                    (m, score)
                })
                .collect()
        } else {
            reply.into_items().into_iter().map(|m| (m, 0.0)).collect()
        };
        let mut jobs = Vec::with_capacity(items.len());
        for (member, score) in items {
            let Some(bytes) = member.as_bytes() else {
                continue; // too large: no jid to show it under
            };
            match job::decode_job(bytes) {
                Ok(job) => jobs.push((job, score)),
                Err(e) => {
                    out.decode_errors
                        .push(Self::decode_error(key, e.kind("job"), e.to_string()))
                }
            }
        }
        jobs
    }

    /// The fields of a job's JSON, on an observation.
    fn fill(obs: &mut TaskObservation, job: &Job) {
        let f = &mut obs.fields;
        f.name = job.class.clone();
        f.args = job.args.clone();
        f.queue = job.queue.clone();
        // `enqueued_at` is refreshed at every push (a retry, a scheduled job's due time);
        // `created_at` is the first.
        f.enqueued_at = job.created_at.or(job.enqueued_at);
    }

    fn observation(
        job: &Job,
        at: DateTime<Utc>,
        event: TaskEvent,
        source: &'static str,
    ) -> TaskObservation {
        let mut obs = TaskObservation::new(Broker::Sidekiq, &job.jid, at, event, source);
        Self::fill(&mut obs, job);
        obs
    }

    /// Starts waiting for a job's verdict.
    fn start_pending(&mut self, jid: &str, beats: u64, now: DateTime<Utc>) {
        let baseline = self
            .processes
            .iter()
            .map(|(id, p)| (id.clone(), p.beats))
            .collect();
        let memo = self.memo(jid);
        if memo.finished {
            return;
        }
        memo.pending = Some(Pending {
            since: now,
            baseline,
            beats,
        });
        self.pending.insert(jid.to_string());
    }

    fn stop_pending(&mut self, jid: &str) {
        if let Some(m) = self.known.get_mut(jid) {
            m.pending = None;
        }
        self.pending.remove(jid);
    }

    /// A queue list's two pages are in: jobs new to it are `queued`, jobs gone from it were
    /// taken by a fetcher (`running`, no worker known yet).
    fn on_list(
        &mut self,
        queue: &str,
        head: Vec<(Job, f64)>,
        tail: Vec<(Job, f64)>,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let whole = (head.len() as i64) < PAGE;
        let mut current = BTreeSet::new();
        for (job, _) in head.iter().chain(tail.iter()) {
            if !current.insert(job.jid.clone()) {
                continue;
            }
            self.stop_pending(&job.jid);
            let memo = self.memo(&job.jid);
            let new_here = memo.in_list.as_deref() != Some(queue);
            memo.in_list = Some(queue.to_string());
            memo.queue = Some(queue.to_string());
            memo.running_on = None;
            if new_here && !memo.finished {
                let mut obs = Self::observation(
                    job,
                    job.enqueued_at.unwrap_or(now).min(now),
                    TaskEvent::Queued,
                    "queue",
                );
                obs.fields.queue = Some(queue.to_string());
                out.observations.push(Observation::Task(obs));
            }
        }
        let tail_ids: BTreeSet<String> = tail.iter().map(|(j, _)| j.jid.clone()).collect();
        let before = self.listed.remove(queue).unwrap_or_default();
        for jid in before.jobs.difference(&current) {
            // Gone from a list read whole, or from its tail end: a fetcher took it (a job that
            // moved from the head page into the middle of a long list is in neither page).
            if !(before.whole || before.tail.contains(jid)) {
                continue;
            }
            let Some(memo) = self.known.get_mut(jid) else {
                continue;
            };
            if memo.in_list.as_deref() != Some(queue) {
                continue;
            }
            memo.in_list = None;
            if memo.finished || memo.running_on.is_some() {
                continue;
            }
            memo.started = true;
            let mut obs =
                TaskObservation::new(Broker::Sidekiq, jid, now, TaskEvent::Running, "queue");
            obs.fields.queue = Some(queue.to_string());
            obs.fields.started_at = Some(now);
            obs.detail = Some(format!("taken from queue:{queue} by a fetcher (BRPOP)"));
            out.observations.push(Observation::Task(obs));
            self.start_pending(jid, TAKEN_BEATS, now);
        }
        self.listed.insert(
            queue.to_string(),
            Listed {
                jobs: current,
                tail: tail_ids,
                whole,
            },
        );
        if whole {
            self.lengths.insert(queue.to_string(), head.len() as u64);
        }
    }

    /// A sorted set's pages are in.
    fn on_set(
        &mut self,
        set: Set,
        head: Vec<(Job, f64)>,
        tail: Vec<(Job, f64)>,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let mut seen = BTreeSet::new();
        for (job, score) in head.iter().chain(tail.iter()) {
            if !seen.insert(job.jid.clone()) {
                continue;
            }
            match set {
                Set::Schedule => self.on_scheduled(job, *score, now, out),
                Set::Retry => self.on_retry(job, *score, now, out),
                Set::Dead => self.on_dead(job, now, out),
            }
        }
        if set == Set::Dead {
            return;
        }
        let whole = (head.len() as i64) < PAGE;
        let head_ids: BTreeSet<String> = head.iter().map(|(j, _)| j.jid.clone()).collect();
        let before = self.set_heads.insert(set, head_ids).unwrap_or_default();
        if whole {
            self.set_cards.insert(set, seen.len() as u64);
        }
        for jid in before.difference(&seen) {
            // The poller moved it to its queue (or it was deleted by hand): queued again, and
            // maybe taken at once.
            let Some(memo) = self.known.get_mut(jid) else {
                continue;
            };
            match set {
                Set::Retry => memo.in_retry = false,
                _ => memo.in_schedule = false,
            }
            if memo.finished || memo.in_list.is_some() {
                continue;
            }
            // A new try.
            memo.started = false;
            let mut obs =
                TaskObservation::new(Broker::Sidekiq, jid, now, TaskEvent::Queued, "poller");
            obs.fields.queue = memo.queue.clone();
            // Its time came: the eta stays what it was.
            obs.fields.eta = memo.due;
            obs.detail = Some(match set {
                Set::Retry => "back in its queue for a retry".to_string(),
                _ => "due: pushed to its queue".to_string(),
            });
            out.observations.push(Observation::Task(obs));
            self.start_pending(jid, TAKEN_BEATS, now);
        }
    }

    fn on_scheduled(&mut self, job: &Job, score: f64, now: DateTime<Utc>, out: &mut Output) {
        let memo = self.memo(&job.jid);
        if memo.in_schedule || memo.finished {
            return;
        }
        memo.in_schedule = true;
        memo.queue = job.queue.clone();
        memo.due = crate::codec::unix_seconds(score);
        let mut obs = Self::observation(
            job,
            job.created_at.unwrap_or(now).min(now),
            TaskEvent::Queued,
            "schedule",
        );
        obs.fields.eta = crate::codec::unix_seconds(score);
        out.observations.push(Observation::Task(obs));
    }

    fn on_retry(&mut self, job: &Job, score: f64, now: DateTime<Utc>, out: &mut Output) {
        let count = job.retry_count.unwrap_or(0);
        self.stop_pending(&job.jid);
        let memo = self.memo(&job.jid);
        memo.in_retry = true;
        memo.due = crate::codec::unix_seconds(score);
        let due = memo.due;
        memo.running_on = None;
        memo.queue = job.queue.clone();
        if memo.finished || memo.retried == Some(count) {
            return;
        }
        memo.retried = Some(count);
        let at = job.last_failure_at().unwrap_or(now).min(now);
        Self::ran(memo, job, Some(count), at, "retry", out);
        let mut obs = Self::observation(job, at, TaskEvent::Retried, "retry");
        obs.attempt = Some(count);
        obs.fields.eta = due;
        obs.fields.error = job.error.clone();
        obs.fields.traceback = job.backtrace.clone();
        obs.detail = Some(format!(
            "retry {}: {}",
            count + 1,
            job.error.as_deref().unwrap_or("failed")
        ));
        out.observations.push(Observation::Task(obs));
    }

    /// A failed try that was never seen running (an idle fetcher took it inside the push and
    /// it failed before a heartbeat): it ran, up to its failure.
    fn ran(
        memo: &mut JobMemo,
        job: &Job,
        attempt: Option<u32>,
        at: DateTime<Utc>,
        source: &'static str,
        out: &mut Output,
    ) {
        if std::mem::replace(&mut memo.started, true) {
            return;
        }
        let mut obs = Self::observation(job, at, TaskEvent::Running, source);
        obs.attempt = attempt;
        obs.detail = Some("ran until its failure (taken before taskscope saw it)".to_string());
        out.observations.push(Observation::Task(obs));
    }

    fn on_dead(&mut self, job: &Job, now: DateTime<Utc>, out: &mut Output) {
        self.stop_pending(&job.jid);
        let memo = self.memo(&job.jid);
        if memo.finished {
            return;
        }
        memo.finished = true;
        memo.running_on = None;
        memo.in_retry = false;
        let at = job.last_failure_at().unwrap_or(now).min(now);
        Self::ran(memo, job, job.retry_count, at, "dead", out);
        let mut obs = Self::observation(job, at, TaskEvent::Failed, "dead");
        obs.attempt = job.retry_count;
        obs.fields.error = job.error.clone();
        obs.fields.traceback = job.backtrace.clone();
        out.observations.push(Observation::Task(obs));
    }

    /// A process's hash (first: its `beat`), then its work hash as Sidekiq 6 and 7+ name it
    /// (read after the beat, so the snapshot is at least as new as the beat).
    fn process_reads(&self, identity: &str) -> Vec<Read> {
        vec![
            Why::Process.read(ReadRequest::HGetAll(self.layout.process(identity))),
            Why::Work.read(ReadRequest::HGetAll(self.layout.workers(identity))),
            Why::Work.read(ReadRequest::HGetAll(self.layout.work(identity))),
        ]
    }

    /// The process set: each process's hash and work hash are read.
    fn on_processes(&mut self, reply: Reply, now: DateTime<Utc>, out: &mut Output) {
        let listed: BTreeSet<String> = reply.into_strings();
        for identity in listed.iter().take(MAX_PROCESSES) {
            out.follow_up.extend(self.process_reads(identity));
        }
        // A process that left the set stopped cleanly (`SREM` at shutdown; its unfinished jobs
        // were pushed back to their queues).
        let gone: Vec<String> = self
            .processes
            .keys()
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect();
        for identity in gone {
            if let Some(p) = self.processes.remove(&identity) {
                if !p.offline {
                    out.observations.push(Observation::Worker(Self::worker(
                        &identity,
                        &p,
                        now,
                        WorkerEvent::Offline,
                    )));
                }
            }
        }
    }

    fn worker(
        identity: &str,
        p: &ProcessMemo,
        now: DateTime<Utc>,
        event: WorkerEvent,
    ) -> WorkerObservation {
        WorkerObservation {
            broker: Broker::Sidekiq,
            id: identity.to_string(),
            hostname: p.hostname.clone(),
            pid: p.pid,
            at: now,
            event,
            active: Some(p.work.len() as u32),
            heartbeat_every_s: Some(if p.seven { 10.0 } else { BEAT_SECONDS_6 }),
        }
    }

    /// A process hash: a new `beat` is a heartbeat.
    fn on_process(
        &mut self,
        identity: &str,
        key: &str,
        reply: Reply,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let fields: Vec<(String, Vec<u8>)> = reply
            .into_pairs()
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    String::from_utf8_lossy(k.as_bytes()?).into_owned(),
                    v.as_bytes()?.to_vec(),
                ))
            })
            .collect();
        if fields.is_empty() {
            // Listed but its hash expired (60 s without a heartbeat): gone.
            if let Some(p) = self.processes.get_mut(identity) {
                if !p.offline {
                    p.offline = true;
                    let p = p.clone();
                    out.observations.push(Observation::Worker(Self::worker(
                        identity,
                        &p,
                        now,
                        WorkerEvent::Offline,
                    )));
                }
            }
            return;
        }
        let info = match job::decode_process(&fields) {
            Ok(info) => info,
            Err(e) => {
                out.decode_errors
                    .push(Self::decode_error(key, e.kind("process"), e.to_string()));
                return;
            }
        };
        for q in &info.queues {
            if self.add_queue(q) {
                out.follow_up.extend(self.list_reads(q));
            }
        }
        let p = self.processes.entry(identity.to_string()).or_default();
        p.hostname = info.hostname.clone();
        p.pid = info.pid;
        if info.beat.is_some() && info.beat != p.beat {
            p.beat = info.beat;
            p.beats += 1;
            p.offline = false;
            let p = p.clone();
            out.observations.push(Observation::Worker(Self::worker(
                identity,
                &p,
                now,
                WorkerEvent::Heartbeat,
            )));
        }
    }

    /// A work hash: the jobs its process runs now.
    fn on_work(
        &mut self,
        identity: &str,
        key: &str,
        reply: Reply,
        seven: bool,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let mut entries: Vec<WorkEntry> = Vec::new();
        for (_tid, value) in reply.into_pairs() {
            let Some(bytes) = value.as_bytes() else {
                continue;
            };
            match job::decode_work(bytes) {
                Ok(e) => entries.push(e),
                Err(e) => {
                    out.decode_errors
                        .push(Self::decode_error(key, e.kind("work"), e.to_string()))
                }
            }
        }
        if seven && entries.is_empty() {
            // Sidekiq 6 has no `:work` hash: an empty one says nothing.
            return;
        }
        let Some(p) = self.processes.get_mut(identity) else {
            return;
        };
        if seven {
            p.seven = true;
        } else if p.seven {
            return; // Sidekiq 7+: its `:work` hash is the one
        }
        let before = std::mem::take(&mut p.work);
        let mut current = BTreeSet::new();
        for entry in &entries {
            let jid = entry.job.jid.clone();
            current.insert(jid.clone());
            self.stop_pending(&jid);
            let memo = self.memo(&jid);
            memo.in_list = None;
            if memo.finished {
                continue;
            }
            let new_here = memo.running_on.as_deref() != Some(identity);
            memo.running_on = Some(identity.to_string());
            memo.started = true;
            if new_here {
                let started = entry.run_at.unwrap_or(now).min(now);
                let mut obs = Self::observation(&entry.job, started, TaskEvent::Running, "work");
                obs.fields.worker = Some(identity.to_string());
                obs.fields.started_at = Some(started);
                if obs.fields.queue.is_none() {
                    obs.fields.queue = entry.queue.clone();
                }
                obs.attempt = entry.job.retry_count.map(|n| n + 1);
                out.observations.push(Observation::Task(obs));
            }
        }
        if let Some(p) = self.processes.get_mut(identity) {
            p.work = current.clone();
        }
        for jid in before.difference(&current) {
            if let Some(m) = self.known.get_mut(jid) {
                if m.running_on.as_deref() == Some(identity) {
                    m.running_on = None;
                }
            }
            self.start_pending(jid, LEFT_WORK_BEATS, now);
        }
        self.judge(now, out);
    }

    /// Jobs whose wait is over: `success`.
    fn judge(&mut self, now: DateTime<Utc>, out: &mut Output) {
        let live: Vec<(&String, u64)> = self
            .processes
            .iter()
            .filter(|(_, p)| !p.offline)
            .map(|(id, p)| (id, p.beats))
            .collect();
        if live.is_empty() {
            return;
        }
        let mut done = Vec::new();
        for jid in &self.pending {
            let Some(memo) = self.known.get(jid) else {
                done.push((jid.clone(), None));
                continue;
            };
            let Some(p) = &memo.pending else {
                done.push((jid.clone(), None));
                continue;
            };
            if memo.finished || memo.in_list.is_some() || memo.in_retry || memo.running_on.is_some()
            {
                continue;
            }
            let over = live
                .iter()
                .all(|(id, beats)| *beats >= p.baseline.get(*id).copied().unwrap_or(0) + p.beats);
            if over {
                done.push((
                    jid.clone(),
                    Some((p.since, memo.started, memo.queue.clone())),
                ));
            }
        }
        for (jid, verdict) in done {
            self.pending.remove(&jid);
            let Some((since, started, queue)) = verdict else {
                continue;
            };
            if let Some(m) = self.known.get_mut(&jid) {
                m.pending = None;
                m.finished = true;
            }
            if !started {
                // Out of a retry or schedule set and taken at once: it ran.
                let mut ran = TaskObservation::new(
                    Broker::Sidekiq,
                    &jid,
                    since,
                    TaskEvent::Running,
                    "poller",
                );
                ran.fields.queue = queue.clone();
                ran.fields.started_at = Some(since);
                out.observations.push(Observation::Task(ran));
            }
            let mut obs = TaskObservation::new(
                Broker::Sidekiq,
                &jid,
                now,
                TaskEvent::Succeeded,
                "heartbeat",
            );
            obs.fields.queue = queue;
            obs.detail = Some(
                "finished: in no work hash at the heartbeats since, nor in retry or dead (Sidekiq \
                 records no success)"
                    .to_string(),
            );
            out.observations.push(Observation::Task(obs));
        }
    }
}

impl Adapter for SidekiqAdapter {
    fn broker(&self) -> Broker {
        Broker::Sidekiq
    }

    fn interest(&self) -> Interest {
        let ns = crate::adapter::glob_escape(self.layout.prefix());
        Interest {
            channel_patterns: Vec::new(),
            key_patterns: vec![
                format!("{ns}{}", layout::QUEUES),
                format!("{ns}{}*", layout::QUEUE_PREFIX),
                format!("{ns}{}", layout::SCHEDULE),
                format!("{ns}{}", layout::RETRY),
                format!("{ns}{}", layout::DEAD),
                format!("{ns}{}", layout::PROCESSES),
                format!("{ns}*{}", layout::WORKERS_SUFFIX),
                format!("{ns}*{}", layout::WORK_SUFFIX),
            ]
            .into_iter()
            // Each known process's hash: its `HSET` is the heartbeat (the heartbeat's `SADD
            // processes` of a member already there notifies nothing).
            .chain(
                self.processes
                    .keys()
                    .map(|id| crate::adapter::glob_escape(&self.layout.process(id))),
            )
            .collect(),
            scan_patterns: Vec::new(),
            side_scan_patterns: Vec::new(),
            // Lists (queues), sets (`queues`, `processes`), sorted sets (schedule, retry,
            // dead), hashes (work hashes), generic (`del` of an emptied list or hash) and
            // expired (a dead process's work hash).
            notify_classes: "lszhgx".to_string(),
            prefetch: Vec::new(),
            first_sight: Vec::new(),
        }
    }

    fn on_scan(&mut self, _pattern: &str, _keys: Vec<String>, _now: DateTime<Utc>) -> Vec<Read> {
        Vec::new()
    }

    fn on_key_event(&mut self, key: &str, _op: &str, _now: DateTime<Utc>) -> Vec<Read> {
        let layout = self.layout.clone();
        let Some(kind) = layout.classify(key) else {
            // A known process's hash: a heartbeat (`hset`) or its expiry.
            let identity = key.strip_prefix(layout.prefix()).unwrap_or_default();
            if !identity.is_empty() && self.processes.contains_key(identity) {
                let reads = self.process_reads(identity);
                return self.coalesced(key, reads);
            }
            return Vec::new();
        };
        match kind {
            SidekiqKey::Queues => {
                let reads = vec![self.queues_read()];
                self.coalesced(key, reads)
            }
            SidekiqKey::Queue(q) => {
                let q = q.to_string();
                if !self.queues.contains(&q) && !self.add_queue(&q) {
                    return Vec::new();
                }
                let reads = self.list_reads(&q);
                self.coalesced(key, reads)
            }
            SidekiqKey::Schedule => self.set_event(Set::Schedule),
            SidekiqKey::Retry => self.set_event(Set::Retry),
            SidekiqKey::Dead => self.set_event(Set::Dead),
            // A work hash written or expired: its process is read.
            SidekiqKey::Work(identity) if self.processes.contains_key(identity) => {
                let process = layout.process(identity);
                let reads = self.process_reads(identity);
                self.coalesced(&process, reads)
            }
            // A new process (`SADD`), a clean stop (`SREM`), an unknown process's work hash.
            SidekiqKey::Processes | SidekiqKey::Work(_) => {
                let processes = layout.key(layout::PROCESSES);
                let reads = vec![self.processes_read()];
                self.coalesced(&processes, reads)
            }
        }
    }

    fn on_message(&mut self, _channel: &str, _payload: &[u8], _now: DateTime<Utc>) -> Output {
        Output::default()
    }

    /// A refused read still ends its key's read in flight: left marked, the key would never be
    /// read on a notification again (and each such key stayed in memory).
    fn on_read_error(
        &mut self,
        _tag: Tag,
        request: &ReadRequest,
        error: &str,
        _now: DateTime<Utc>,
    ) -> Output {
        self.in_flight.remove(request.key());
        Output {
            decode_errors: vec![crate::adapter::read_error(Broker::Sidekiq, request, error)],
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
            return unknown_tag(Broker::Sidekiq, request, tag);
        };
        let key = request.key().to_string();
        let layout = self.layout.clone();
        let mut out = Output::default();
        // The tag says why; the key says which queue, set or process.
        let kind = layout.classify(&key);
        match (why, kind) {
            (Why::Queues, _) => {
                let again = self.answered(&key, |s| vec![s.queues_read()]);
                out.follow_up.extend(again);
                let names: Vec<String> = reply.into_strings();
                for q in names {
                    if self.add_queue(&q) {
                        out.follow_up.extend(self.list_reads(&q));
                    }
                }
            }
            (Why::Processes, _) => {
                let again = self.answered(&key, |s| vec![s.processes_read()]);
                out.follow_up.extend(again);
                self.on_processes(reply, now, &mut out);
            }
            (Why::Oldest, Some(SidekiqKey::Queue(q))) => {
                // A sample's read of the next job to be fetched: the oldest waiting.
                let q = q.to_string();
                let jobs = Self::entries(&key, reply, false, &mut out);
                let oldest = jobs
                    .first()
                    .and_then(|(j, _)| j.enqueued_at.or(j.created_at));
                self.oldest.insert(q, oldest);
            }
            (Why::ListHead | Why::ListTail, Some(SidekiqKey::Queue(q))) => {
                let q = q.to_string();
                let jobs = Self::entries(&key, reply, false, &mut out);
                let head = why == Why::ListHead;
                if head && (jobs.len() as i64) < PAGE {
                    // The whole list: it is its own tail.
                    self.list_pages.remove(&q);
                    let again = self.answered(&key, |s| s.list_reads(&q));
                    out.follow_up.extend(again);
                    let tail = jobs.clone();
                    self.on_list(&q, jobs, tail, now, &mut out);
                } else if head {
                    self.list_pages.entry(q.clone()).or_default().head = Some(jobs);
                    out.follow_up.push(self.tail_read(&q));
                } else {
                    let head = self.list_pages.remove(&q).and_then(|p| p.head);
                    let again = self.answered(&key, |s| s.list_reads(&q));
                    out.follow_up.extend(again);
                    if let Some(head) = head {
                        self.on_list(&q, head, jobs, now, &mut out);
                    }
                }
            }
            (
                Why::SetHead | Why::SetTail,
                Some(k @ (SidekiqKey::Schedule | SidekiqKey::Retry | SidekiqKey::Dead)),
            ) => {
                let set = match k {
                    SidekiqKey::Schedule => Set::Schedule,
                    SidekiqKey::Retry => Set::Retry,
                    _ => Set::Dead,
                };
                let jobs = Self::entries(&key, reply, true, &mut out);
                if why == Why::SetHead {
                    self.set_pages.entry(set).or_default().head = Some(jobs);
                } else {
                    let head = self.set_pages.remove(&set).and_then(|p| p.head);
                    let again = self.answered(&key, |s| s.set_reads(set));
                    out.follow_up.extend(again);
                    let head = match (set, head) {
                        (Set::Dead, _) => Vec::new(),
                        (_, Some(head)) => head,
                        (_, None) => return out,
                    };
                    self.on_set(set, head, jobs, now, &mut out);
                }
            }
            (Why::Work, Some(SidekiqKey::Work(identity))) => {
                let seven = key.ends_with(layout::WORK_SUFFIX);
                let identity = identity.to_string();
                self.on_work(&identity, &key, reply, seven, now, &mut out);
                if seven {
                    // The last read of the process's round.
                    let process = layout.process(&identity);
                    let again = self.answered(&process, |s| s.process_reads(&identity));
                    out.follow_up.extend(again);
                }
            }
            (Why::Process, _) => {
                if let Some(identity) = key.strip_prefix(layout.prefix()) {
                    let identity = identity.to_string();
                    self.on_process(&identity, &key, reply, now, &mut out);
                }
            }
            (Why::Length, Some(SidekiqKey::Queue(q))) => {
                self.lengths
                    .insert(q.to_string(), reply.as_i64().unwrap_or(0).max(0) as u64);
            }
            (Why::SetSize, Some(k)) => {
                let n = reply.as_i64().unwrap_or(0).max(0) as u64;
                match k {
                    SidekiqKey::Schedule => {
                        self.set_cards.insert(Set::Schedule, n);
                    }
                    SidekiqKey::Retry => {
                        self.set_cards.insert(Set::Retry, n);
                    }
                    SidekiqKey::Dead => {
                        self.set_cards.insert(Set::Dead, n);
                        // Last read of a sampling round.
                        self.close_round(now, &mut out);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        out
    }

    fn reconcile(&mut self, _open: &[OpenTask], _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = vec![self.queues_read(), self.processes_read()];
        for q in &self.queues {
            reads.extend(self.list_reads(q));
        }
        for set in [Set::Schedule, Set::Retry, Set::Dead] {
            reads.extend(self.set_reads(set));
        }
        reads
    }

    fn sample_queues(&mut self, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads: Vec<Read> = self
            .queues
            .iter()
            .flat_map(|q| {
                let key = self.layout.queue(q);
                [
                    Why::Length.read(ReadRequest::LLen(key.clone())),
                    Why::Oldest.read(ReadRequest::LRange {
                        key,
                        start: -1,
                        stop: -1,
                    }),
                ]
            })
            .collect();
        for set in [Set::Schedule, Set::Retry, Set::Dead] {
            reads.push(Why::SetSize.read(ReadRequest::ZCard(self.set_key(set))));
        }
        reads
    }

    fn on_gap(&mut self) {
        self.in_flight.clear();
        self.list_pages.clear();
        self.set_pages.clear();
        self.listed.clear();
        self.set_heads.clear();
    }
}

impl SidekiqAdapter {
    /// Reacts to a sorted set's notification.
    fn set_event(&mut self, set: Set) -> Vec<Read> {
        let key = self.set_key(set);
        let reads = self.set_reads(set);
        self.coalesced(&key, reads)
    }

    /// A sampling round's last reply: one sample per queue. Sidekiq's scheduled, retrying and
    /// dead jobs are in global sets, not per queue: they are counted on each job's queue when
    /// known, else on `default`.
    fn close_round(&mut self, now: DateTime<Utc>, out: &mut Output) {
        let mut running: HashMap<&str, u64> = HashMap::new();
        let mut delayed: HashMap<&str, u64> = HashMap::new();
        for (_, m) in self.known.iter() {
            let Some(q) = m.queue.as_deref() else {
                continue;
            };
            if m.running_on.is_some() || (m.pending.is_some() && m.started) {
                *running.entry(q).or_default() += 1;
            }
            if m.in_retry || m.in_schedule {
                *delayed.entry(q).or_default() += 1;
            }
        }
        for q in &self.queues {
            out.queue_samples.push(QueueSample {
                broker: Broker::Sidekiq,
                name: q.clone(),
                length: self.lengths.get(q).copied().unwrap_or(0),
                delayed: delayed.get(q.as_str()).copied().unwrap_or(0),
                dead: 0,
                running: running.get(q.as_str()).copied().unwrap_or(0),
                sampled_at: now,
                // `enqueued_at`: its last push (a retry's or a scheduled job's due push).
                oldest_enqueued_at: self.oldest.get(q).copied().flatten(),
            });
        }
    }
}
