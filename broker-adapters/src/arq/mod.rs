//! arq (asyncio jobs on Redis), read as arq 0.28 writes it.
//!
//! Where each state comes from (fixtures and notes: `tests/fixtures/arq/`):
//! - `queued`: the job definition `arq:job:<id>` (read on its `set` notification: function,
//!   arguments, enqueue time), and the queue's sorted set, whose score is the time the job may
//!   run: a score past the enqueue time is a deferred job's `eta` (`_defer_by`, `_defer_until`).
//!   The sorted set also names the queue (a job definition does not);
//! - `running`: `arq:in-progress:<id>` exists (a worker `PSETEX`es it as the try starts); the try
//!   number is `arq:retry:<id>`, `INCR`ed a moment later;
//! - `success` / `failure`: `arq:result:<id>` (`s`, the return value or the exception, start and
//!   finish times, the try, the queue), kept `keep_result` seconds (an hour by default): the
//!   reliable final signal, however fast the job was. An aborted job (`Job.abort`) fails with
//!   `CancelledError`, a timed-out one with `TimeoutError`, one past `max_tries` with
//!   `JobExecutionFailed`;
//! - `retried`: `arq:in-progress:<id>` deleted while the job definition stays (a job raised
//!   `Retry`: arq `ZINCRBY`s its score and deletes the in-progress key in one transaction) and
//!   its try counter says which try failed;
//! - `abandoned`: `arq:in-progress:<id>` *expired* (keyspace class `x`): its worker died (or
//!   overran the longest timeout by 10 s) and no result was written. arq itself re-runs the job
//!   once another worker polls it, which moves the task on;
//! - workers: arq keeps no worker registry. Each queue's health-check key
//!   (`<queue>:health-check`, `PSETEX` of `health_check_interval` + 1 s by every worker of the
//!   queue) stands for that queue's workers: alive while it exists.
//!
//! Every task read runs on the notification of its key (no prefetch is needed: the job
//! definition lives until the result is written, and the result an hour), and for open tasks
//! at every reconciliation: one `MGET` of the result, the definition, the try counter and the
//! in-progress key ([`ArqAdapter::status_read`]), judged together. The statuses a batch of
//! notifications asks for are read at its end, in one `MGET` for many jobs, and not for a job
//! whose result the batch wrote (its `GET` tells the outcome).

pub mod detect;
pub mod layout;
pub mod record;

use crate::adapter::{
    glob_escape, too_large_error, unknown_tag, Adapter, DecodeError, Interest, OpenTask, Output,
    Read, ReadRequest, Reply, Tag,
};

use crate::bounded::FifoMap;
use crate::detect::Setting;
use crate::model::{
    Broker, Observation, QueueSample, TaskEvent, TaskObservation, WorkerEvent, WorkerObservation,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use layout::ArqKey;
use record::{JobDef, ResultRecord};
use std::collections::{BTreeSet, HashMap};

crate::read_reasons! {
    /// Why the arq adapter reads (the tag of each of its reads).
    pub enum Why {
        /// `MGET` of a job's result, definition, try counter and in-progress key.
        Status,
        /// The same read at a reconciliation: only there does a definition gone with no
        /// result and no run seen settle as a success.
        SettleStatus,
        /// A job definition (`GET arq:job:<id>`).
        Job,
        /// A result record (`GET arq:result:<id>`).
        Result,
        /// A queue's health-check string.
        Health,
        /// Its time to live.
        HealthTtl,
        /// A queue's size for its sample (`ZCARD`).
        Size,
        /// The head of a queue for its sample (`ZRANGE 0 0`).
        Head,
        /// The newest page of a queue (highest scores).
        NewestPage,
        /// The oldest page of a queue (lowest scores).
        OldestPage,
    }
}

/// Queue entries read per page.
const PAGE: i64 = 500;
/// Jobs remembered between reads.
const KNOWN_CAPACITY: usize = 200_000;
/// Queues followed at most (any sorted set may be one; names come from results too).
const MAX_QUEUES: usize = 1_000;

/// Configuration of the arq adapter.
#[derive(Debug, Clone)]
pub struct ArqConfig {
    /// Queue names (`queue_name` of the app's workers), `arq:queue` by default.
    pub queues: Vec<String>,
}

impl Default for ArqConfig {
    fn default() -> Self {
        ArqConfig {
            queues: vec![layout::DEFAULT_QUEUE.to_string()],
        }
    }
}

/// What the adapter remembers about a job between reads.
#[derive(Debug, Clone, Default)]
struct JobMemo {
    /// The queue whose sorted set holds it.
    queue: Option<String>,
    enqueued_at: Option<DateTime<Utc>>,
    /// Its score when last read (ms).
    score: Option<f64>,
    /// The definition was decoded (or found undecodable): later reads skip it.
    job_read: bool,
    /// A read of the definition is in flight (queue pages ask for it only once).
    job_asked: bool,
    /// A worker was seen running it.
    started: bool,
    /// Seen running right now (for the queue samples' `running`).
    running: bool,
    /// Its in-progress key expired and the status read that judges it is pending.
    expired: bool,
    /// Judged abandoned, and not seen running since: waiting for arq to run it again is not
    /// a retry it asked for.
    abandoned: bool,
    /// A result was read: nothing else about it matters.
    finished: bool,
    /// A result's `set` was notified: the deletions that follow it in arq's transaction need
    /// no read of their own.
    result_written: bool,
}

/// A queue's sampling round: its replies, in the order asked.
#[derive(Debug, Clone, Default)]
struct QueueRound {
    card: Option<u64>,
    head: Option<(String, f64)>,
}

pub struct ArqAdapter {
    queues: BTreeSet<String>,
    known: FifoMap<String, JobMemo>,
    /// Queues with a page read in flight, and whether a notification came since it was asked.
    page_pending: HashMap<String, bool>,
    /// Health-check keys seen alive, by queue.
    health_alive: HashMap<String, bool>,
    /// Milliseconds left on each health-check key, read just before it.
    health_ttl: HashMap<String, i64>,
    sampling: HashMap<String, QueueRound>,
    /// Jobs whose status is read at the end of the batch (see [`Adapter::end_of_batch`]),
    /// in order, once each.
    status_due: Vec<String>,
    status_due_set: std::collections::HashSet<String>,
}

/// Jobs whose status one `MGET` reads (4 keys each).
const STATUS_PER_READ: usize = 64;

impl ArqAdapter {
    pub fn new(config: ArqConfig) -> ArqAdapter {
        let mut queues: BTreeSet<String> = config
            .queues
            .into_iter()
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty())
            .collect();
        if queues.is_empty() {
            queues.insert(layout::DEFAULT_QUEUE.to_string());
        }
        ArqAdapter {
            queues,
            known: FifoMap::new(KNOWN_CAPACITY),
            page_pending: HashMap::new(),
            health_alive: HashMap::new(),
            health_ttl: HashMap::new(),
            sampling: HashMap::new(),
            status_due: Vec::new(),
            status_due_set: std::collections::HashSet::new(),
        }
    }

    /// The status of many jobs in one `MGET` (each job's 4 keys in [`Self::status_read`]'s
    /// order).
    fn statuses_read(ids: &[String]) -> Read {
        let keys = ids
            .iter()
            .flat_map(|id| {
                [
                    layout::result(id),
                    layout::job(id),
                    layout::retry(id),
                    layout::in_progress(id),
                ]
            })
            .collect();
        Why::Status.read(ReadRequest::MGet(keys))
    }

    /// A status `MGET` of one job or many: each job's 4 replies to [`Self::on_status`].
    fn on_statuses(
        &mut self,
        keys: &[String],
        reply: Reply,
        now: DateTime<Utc>,
        settling: bool,
    ) -> Output {
        let mut out = Output::default();
        let items = reply.into_items();
        if items.len() != keys.len() {
            return out;
        }
        let queues = self.queues.clone();
        let mut items = items.into_iter();
        for job_keys in keys.chunks(4) {
            let chunk: Vec<Reply> = items.by_ref().take(job_keys.len()).collect();
            if let Some(ArqKey::Result(id)) = layout::classify(&job_keys[0], &queues) {
                out.merge(self.on_status(id, Reply::Array(chunk), now, settling));
            }
        }
        out
    }

    /// The queues followed.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.queues.iter().map(String::as_str)
    }

    fn memo(&mut self, id: &str) -> &mut JobMemo {
        self.known
            .get_or_insert_with(id.to_string(), JobMemo::default)
    }

    fn decode_error(key: &str, kind: &'static str, message: String) -> DecodeError {
        DecodeError {
            broker: Broker::Arq,
            kind,
            key: key.to_string(),
            message,
        }
    }

    /// Starts following a queue; false when it was followed already (or too many are).
    fn add_queue(&mut self, queue: &str) -> bool {
        if queue.is_empty() || self.queues.len() >= MAX_QUEUES {
            return false;
        }
        self.queues.insert(queue.to_string())
    }

    /// One read that tells a job's state: `MGET` of its result, definition, try counter and
    /// in-progress key (judged in [`ArqAdapter::on_status`]).
    fn status_read(id: &str) -> Read {
        Why::Status.read(ReadRequest::MGet(vec![
            layout::result(id),
            layout::job(id),
            layout::retry(id),
            layout::in_progress(id),
        ]))
    }

    /// The highest scores of a queue: the newest jobs and the deferred ones.
    fn newest_page(queue: &str) -> Read {
        Why::NewestPage.read(ReadRequest::ZRangeWithScores {
            key: queue.to_string(),
            start: -PAGE,
            stop: -1,
        })
    }

    /// The lowest scores: the jobs due first (and running: arq keeps them in the set).
    fn oldest_page(queue: &str) -> Read {
        Why::OldestPage.read(ReadRequest::ZRangeWithScores {
            key: queue.to_string(),
            start: 0,
            stop: PAGE - 1,
        })
    }

    fn health_reads(queue: &str) -> [Read; 2] {
        let key = layout::health_check(queue);
        [
            Why::HealthTtl.read(ReadRequest::PTtl(key.clone())),
            Why::Health.read(ReadRequest::Get(key)),
        ]
    }

    /// A page read of `queue` unless one is in flight (then it is asked again when that one
    /// answers: coalesced, so an enqueue burst costs round trips, not pages per job).
    fn page_on_change(&mut self, queue: &str) -> Vec<Read> {
        match self.page_pending.get_mut(queue) {
            Some(dirty) => {
                *dirty = true;
                Vec::new()
            }
            None => {
                self.page_pending.insert(queue.to_string(), false);
                vec![Self::newest_page(queue)]
            }
        }
    }

    /// A page of a queue's sorted set: where each job waits and until when.
    fn on_page(
        &mut self,
        queue: &str,
        newest: bool,
        reply: Reply,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        if newest {
            if let Some(true) = self.page_pending.remove(queue) {
                self.page_pending.insert(queue.to_string(), false);
                out.follow_up.push(Self::newest_page(queue));
            }
        }
        let now_ms = now.timestamp_millis() as f64;
        let mut delayed = 0u64;
        for (member, score) in reply.into_pairs() {
            let (Some(id), Some(score)) = (member.as_bytes(), score.as_f64()) else {
                continue;
            };
            let id = String::from_utf8_lossy(id).into_owned();
            if id.is_empty() {
                continue;
            }
            if score > now_ms {
                delayed += 1;
            }
            let memo = self.memo(&id);
            let moved = memo.score != Some(score) || memo.queue.as_deref() != Some(queue);
            memo.score = Some(score);
            memo.queue = Some(queue.to_string());
            let (started, finished, enqueued_at) = (memo.started, memo.finished, memo.enqueued_at);
            if !memo.job_read && !memo.job_asked && !finished {
                memo.job_asked = true;
                out.follow_up
                    .push(Why::Job.read(ReadRequest::Get(layout::job(&id))));
            }
            if !moved || started || finished {
                // A retried job's new score is judged by its status read.
                continue;
            }
            let runs_at = Utc.timestamp_millis_opt(score as i64).single();
            let deferred = match (runs_at, enqueued_at) {
                // Checked: both times come from the payload.
                (Some(at), Some(enqueued)) => enqueued
                    .checked_add_signed(Duration::milliseconds(1))
                    .is_some_and(|soon| at > soon),
                (Some(at), None) => at > now,
                _ => false,
            };
            let mut obs = TaskObservation::new(
                Broker::Arq,
                &id,
                enqueued_at.unwrap_or(now).min(now),
                TaskEvent::Queued,
                "queue",
            );
            obs.fields.queue = Some(queue.to_string());
            obs.fields.enqueued_at = enqueued_at;
            if deferred {
                obs.fields.eta = runs_at;
            }
            out.observations.push(Observation::Task(obs));
        }
        if newest {
            self.close_round(queue, delayed, now, out);
        }
    }

    /// The last reply of a queue's sampling round (its newest page): its sample.
    fn close_round(&mut self, queue: &str, delayed: u64, now: DateTime<Utc>, out: &mut Output) {
        let Some(round) = self.sampling.get(queue) else {
            return;
        };
        let Some(card) = round.card else {
            return;
        };
        let head = round.head.clone();
        self.sampling.remove(queue);
        let running = self
            .known
            .iter()
            .filter(|(_, m)| m.running && !m.finished && m.queue.as_deref() == Some(queue))
            .count() as u64;
        let now_ms = now.timestamp_millis() as f64;
        let oldest_enqueued_at = head.and_then(|(id, score)| {
            if score > now_ms {
                return None; // only deferred jobs wait
            }
            let memo = self.known.get(&id);
            if memo.is_some_and(|m| m.running) {
                return None;
            }
            memo.and_then(|m| m.enqueued_at)
                .or_else(|| Utc.timestamp_millis_opt(score as i64).single())
        });
        out.queue_samples.push(QueueSample {
            broker: Broker::Arq,
            name: queue.to_string(),
            length: card.saturating_sub(delayed).saturating_sub(running),
            delayed,
            dead: 0,
            running,
            sampled_at: now,
            oldest_enqueued_at,
        });
    }

    /// The fields of a job definition, on an observation.
    fn fill(obs: &mut TaskObservation, job: &JobDef) {
        let f = &mut obs.fields;
        f.name = Some(job.function.clone());
        f.args = job.args.clone();
        f.kwargs = job.kwargs.clone();
        f.enqueued_at = job.enqueued_at;
    }

    /// A job definition read: `queued`, with its call (or, behind the task's state, only its
    /// fields).
    fn on_job(&mut self, id: &str, key: &str, reply: &Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let memo_queue = self.known.get(id).and_then(|m| m.queue.clone());
        let mut obs = TaskObservation::new(Broker::Arq, id, now, TaskEvent::Queued, "job");
        obs.fields.queue = memo_queue;
        if let Some(n) = reply.too_large() {
            self.memo(id).job_read = true;
            obs.fields.error = Some(too_large_error(n));
            out.observations.push(Observation::Task(obs));
            return out;
        }
        let Some(bytes) = reply.as_bytes() else {
            return out; // gone: finished or expired, the result or nothing tells
        };
        self.memo(id).job_read = true;
        match record::decode_job(bytes) {
            Ok(job) => {
                self.memo(id).enqueued_at = job.enqueued_at;
                obs.at = job.enqueued_at.unwrap_or(now).min(now);
                Self::fill(&mut obs, &job);
                out.observations.push(Observation::Task(obs));
            }
            Err(e) => {
                out.decode_errors
                    .push(Self::decode_error(key, e.kind("job"), e.to_string()));
                obs.fields.error = Some(format!("job definition: {e}"));
                out.observations.push(Observation::Task(obs));
            }
        }
        out
    }

    /// A result read: the outcome of the try it names.
    fn on_result(&mut self, id: &str, key: &str, reply: &Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        if let Some(n) = reply.too_large() {
            // Counted by the ingest layer (once per key and length); listed here, its outcome
            // unknown.
            let mut obs = TaskObservation::new(Broker::Arq, id, now, TaskEvent::Queued, "result");
            obs.fields.error = Some(too_large_error(n));
            out.observations.push(Observation::Task(obs));
            return out;
        }
        let Some(bytes) = reply.as_bytes() else {
            return out;
        };
        let result = match record::decode_result(bytes) {
            Ok(r) => r,
            Err(e) => {
                out.decode_errors
                    .push(Self::decode_error(key, e.kind("result"), e.to_string()));
                return out;
            }
        };
        {
            let memo = self.memo(id);
            memo.finished = true;
            memo.running = false;
            memo.expired = false;
        }
        if let Some(q) = &result.queue {
            if self.add_queue(q) {
                out.follow_up.extend(Self::health_reads(q));
            }
        }
        // The try's start, dated by the worker: a job done between two reads still shows
        // its `running` phase (behind a task that moved on, it only fills fields).
        if let Some(started_at) = result.started_at {
            let mut running = TaskObservation::new(
                Broker::Arq,
                id,
                started_at.min(now),
                TaskEvent::Running,
                "result",
            );
            running.attempt = result.job.job_try.map(|t| t.saturating_sub(1));
            running.fields.queue = result.queue.clone();
            running.fields.started_at = Some(started_at);
            out.observations.push(Observation::Task(running));
        }
        out.observations
            .push(Observation::Task(outcome(id, &result, now)));
        out
    }

    /// A status read (`MGET` result, definition, try counter, in-progress key); `settling` at a
    /// reconciliation.
    fn on_status(&mut self, id: &str, reply: Reply, now: DateTime<Utc>, settling: bool) -> Output {
        let items = reply.into_items();
        let [result, job, tries, in_progress] = match <[Reply; 4]>::try_from(items) {
            Ok(items) => items,
            Err(_) => return Output::default(),
        };
        if result.as_bytes().is_some() || result.too_large().is_some() {
            return self.on_result(id, &layout::result(id), &result, now);
        }
        let mut out = Output::default();
        let read_job = !self.known.get(id).is_some_and(|m| m.job_read);
        if read_job && (job.as_bytes().is_some() || job.too_large().is_some()) {
            out.merge(self.on_job(id, &layout::job(id), &job, now));
        }
        // The try counter is the try running (or last run), 1-based.
        let tries = tries.as_i64().and_then(|n| u32::try_from(n).ok());
        let job_kept = job.as_bytes().is_some() || job.too_large().is_some();
        let memo = self.memo(id);
        let expired = std::mem::take(&mut memo.expired);
        let known = memo.job_read || memo.started;
        let event = if memo.finished {
            None
        } else if !job_kept
            && known
            && !memo.started
            && in_progress.as_bytes().is_none()
            && !settling
        {
            // Gone before any run was seen, with no result: a fast job of `keep_result=0`, or
            // one deleted by hand (taskscope's own delete records it as such at once). Left to
            // the next reconciliation, so that a removal told meanwhile is not overtaken by an
            // inferred success.
            None
        } else if !job_kept && known {
            // arq deletes the definition only as the job ends (a retry keeps it, a dead worker
            // leaves it); with no result, `keep_result` was 0 (the default of `cron()` jobs,
            // whose in-progress key then lives on for a minute, showing that it ran).
            if in_progress.as_bytes().is_some() && !memo.started {
                let mut ran =
                    TaskObservation::new(Broker::Arq, id, now, TaskEvent::Running, "in-progress");
                ran.fields.queue = memo.queue.clone();
                out.observations.push(Observation::Task(ran));
            }
            memo.started = true;
            memo.finished = true;
            memo.running = false;
            Some((
                TaskEvent::Succeeded,
                None,
                "job deleted",
                Some(
                    "finished; arq kept no result (keep_result=0, the default of cron jobs): \
                     the outcome is not recorded"
                        .to_string(),
                ),
            ))
        } else if in_progress.as_bytes().is_some() {
            memo.started = true;
            memo.running = true;
            memo.abandoned = false;
            Some((
                TaskEvent::Running,
                Some(tries.unwrap_or(1).saturating_sub(1)),
                "in-progress",
                None,
            ))
        } else if expired && job_kept {
            memo.running = false;
            memo.abandoned = true;
            Some((
                TaskEvent::Abandoned,
                tries.map(|n| n.saturating_sub(1)),
                "in-progress expired",
                Some(
                    "abandoned: its arq:in-progress key expired (the worker died or overran its \
                     timeout)"
                        .to_string(),
                ),
            ))
        } else if job_kept && tries.is_some_and(|n| n >= 1) && !memo.abandoned {
            memo.started = true;
            memo.running = false;
            let n = tries.unwrap_or(1);
            Some((
                TaskEvent::Retried,
                Some(n - 1),
                "job requeued",
                Some(format!("retry {n}: the job asked to run again (Retry)")),
            ))
        } else {
            memo.running = false;
            None
        };
        if let Some((event, attempt, source, detail)) = event {
            let mut obs = TaskObservation::new(Broker::Arq, id, now, event, source);
            obs.attempt = attempt;
            obs.detail = detail;
            obs.fields.queue = self.known.get(id).and_then(|m| m.queue.clone());
            if event == TaskEvent::Running {
                obs.fields.started_at = Some(now);
            }
            out.observations.push(Observation::Task(obs));
        }
        out
    }

    /// A health-check key read: its queue's workers are alive while it exists.
    fn on_health(&mut self, queue: &str, reply: &Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let id = layout::health_check(queue);
        let ttl = self.health_ttl.remove(queue);
        let alive = reply.as_bytes().is_some();
        let was_alive = self.health_alive.insert(queue.to_string(), alive);
        if !alive && was_alive != Some(true) {
            return out;
        }
        out.observations
            .push(Observation::Worker(WorkerObservation {
                broker: Broker::Arq,
                id,
                hostname: None,
                pid: None,
                at: now,
                event: if alive {
                    WorkerEvent::Heartbeat
                } else {
                    WorkerEvent::Offline
                },
                active: reply.as_bytes().and_then(record::health_check_ongoing),
                // arq sets the key for `health_check_interval` + 1 s.
                heartbeat_every_s: ttl
                    .filter(|ms| *ms > 1_000)
                    .map(|ms| ((ms - 1_000) as f64 / 1000.0).round()),
            }));
        out
    }
}

/// The observation a result makes.
fn outcome(id: &str, result: &ResultRecord, now: DateTime<Utc>) -> TaskObservation {
    let event = if result.success {
        TaskEvent::Succeeded
    } else {
        TaskEvent::Failed
    };
    let at = result.finished_at.unwrap_or(now);
    let mut obs = TaskObservation::new(Broker::Arq, id, at, event, "result");
    obs.attempt = result.job.job_try.map(|t| t.saturating_sub(1));
    ArqAdapter::fill(&mut obs, &result.job);
    let f = &mut obs.fields;
    f.queue = result.queue.clone();
    f.started_at = result.started_at;
    if let (Some(s), Some(e)) = (result.started_at, result.finished_at) {
        f.runtime_ms = (e - s)
            .num_microseconds()
            .map(|us| us as f64 / 1000.0)
            .filter(|ms| *ms >= 0.0);
    }
    f.result = result.value.clone();
    f.error = result.error.clone();
    obs.detail = match result.exception.as_deref() {
        Some("CancelledError") => Some("aborted".to_string()),
        Some("TimeoutError") => Some("timed out".to_string()),
        _ => None,
    };
    obs
}

impl Adapter for ArqAdapter {
    fn broker(&self) -> Broker {
        Broker::Arq
    }

    fn interest(&self) -> Interest {
        let mut key_patterns = vec![
            format!("{}*", glob_escape(layout::JOB_PREFIX)),
            format!("{}*", glob_escape(layout::IN_PROGRESS_PREFIX)),
            format!("{}*", glob_escape(layout::RETRY_PREFIX)),
            format!("{}*", glob_escape(layout::RESULT_PREFIX)),
            format!("*{}", glob_escape(layout::HEALTH_CHECK_SUFFIX)),
        ];
        key_patterns.extend(self.queues.iter().map(|q| glob_escape(q)));
        Interest {
            channel_patterns: Vec::new(),
            key_patterns,
            scan_patterns: vec![
                format!("{}*", glob_escape(layout::IN_PROGRESS_PREFIX)),
                format!("{}*", glob_escape(layout::JOB_PREFIX)),
                format!("{}*", glob_escape(layout::RESULT_PREFIX)),
                format!("*{}", glob_escape(layout::HEALTH_CHECK_SUFFIX)),
            ],
            side_scan_patterns: Vec::new(),
            // Strings (`set`), sorted sets (the queues), generic (`del`), and expired: an
            // in-progress key that expires is a dead worker.
            notify_classes: "$zgx".to_string(),
            prefetch: Vec::new(),
            first_sight: Vec::new(),
        }
    }

    fn on_scan(&mut self, _pattern: &str, keys: Vec<String>, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = Vec::new();
        for key in &keys {
            match layout::classify(key, &self.queues) {
                Some(ArqKey::Job(id)) if !self.known.get(id).is_some_and(|m| m.job_read) => {
                    reads.push(Why::Job.read(ReadRequest::Get(key.clone())))
                }
                Some(ArqKey::InProgress(id)) => reads.push(Self::status_read(id)),
                Some(ArqKey::Result(id)) if !self.known.get(id).is_some_and(|m| m.finished) => {
                    reads.push(Why::Result.read(ReadRequest::Get(key.clone())))
                }
                Some(ArqKey::HealthCheck(q)) => {
                    let q = q.to_string();
                    if self.add_queue(&q) {
                        reads.push(Self::oldest_page(&q));
                    }
                    reads.extend(Self::health_reads(&q));
                }
                _ => {}
            }
        }
        reads
    }

    fn on_key_event(&mut self, key: &str, op: &str, _now: DateTime<Utc>) -> Vec<Read> {
        let Some(kind) = layout::classify(key, &self.queues) else {
            return Vec::new();
        };
        match (kind, op) {
            (ArqKey::Job(id), "set") => {
                self.memo(id).job_asked = true;
                vec![Why::Job.read(ReadRequest::Get(key.to_string()))]
            }
            (ArqKey::Result(id), "set") => {
                self.memo(id).result_written = true;
                vec![Why::Result.read(ReadRequest::Get(key.to_string()))]
            }
            // A try starts (`set`), the try counter moves (`incrby`), a try ends without a
            // result (`del`: a retry), its worker is gone (`expired`), or the job ended
            // (its definition deleted).
            (ArqKey::InProgress(id), "set" | "del" | "expired")
            | (ArqKey::Retry(id), "incrby")
            | (ArqKey::Job(id), "del") => {
                let memo = self.memo(id);
                if memo.finished || (op == "del" && memo.result_written) {
                    return Vec::new();
                }
                if op == "expired" {
                    memo.expired = true;
                }
                // Read once the batch is over, once, with the batch's other jobs (unless the
                // batch also wrote its result, which tells the outcome).
                if self.status_due_set.insert(id.to_string()) {
                    self.status_due.push(id.to_string());
                }
                Vec::new()
            }
            (ArqKey::Queue(q), "zadd" | "zincr") => {
                let q = q.to_string();
                self.page_on_change(&q)
            }
            (ArqKey::HealthCheck(q), "set" | "del" | "expired") => {
                let q = q.to_string();
                let mut reads = Vec::new();
                if self.add_queue(&q) {
                    reads.push(Self::oldest_page(&q));
                }
                reads.extend(Self::health_reads(&q));
                reads
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
            return unknown_tag(Broker::Arq, request, tag);
        };
        let key = request.key().to_string();
        let queues = self.queues.clone();
        let mut out = Output::default();
        // The tag says why; the key says which job or queue.
        match (why, layout::classify(&key, &queues)) {
            (Why::Status | Why::SettleStatus, Some(ArqKey::Result(_))) => {
                let ReadRequest::MGet(keys) = request.inner() else {
                    return out;
                };
                return self.on_statuses(keys, reply, now, why == Why::SettleStatus);
            }
            (Why::Job, Some(ArqKey::Job(id))) => {
                if self.known.get(id).is_some_and(|m| m.job_read) {
                    return out;
                }
                return self.on_job(id, &key, &reply, now);
            }
            (Why::Result, Some(ArqKey::Result(id))) => {
                return self.on_result(id, &key, &reply, now);
            }
            (Why::Health, Some(ArqKey::HealthCheck(q))) => {
                return self.on_health(q, &reply, now);
            }
            (Why::HealthTtl, Some(ArqKey::HealthCheck(q))) => {
                if let Some(ms) = reply.as_i64() {
                    self.health_ttl.insert(q.to_string(), ms);
                }
            }
            (Why::Size, Some(ArqKey::Queue(q))) => {
                if let Some(round) = self.sampling.get_mut(q) {
                    round.card = Some(reply.as_i64().unwrap_or(0).max(0) as u64);
                }
            }
            (Why::Head, Some(ArqKey::Queue(q))) => {
                let head = reply
                    .clone()
                    .into_pairs()
                    .into_iter()
                    .next()
                    .and_then(|(m, s)| {
                        Some((
                            String::from_utf8_lossy(m.as_bytes()?).into_owned(),
                            s.as_f64()?,
                        ))
                    });
                if let Some(round) = self.sampling.get_mut(q) {
                    round.head = head;
                }
                self.on_page(q, false, reply, now, &mut out);
            }
            (Why::NewestPage | Why::OldestPage, Some(ArqKey::Queue(q))) => {
                self.on_page(q, why == Why::NewestPage, reply, now, &mut out);
            }
            _ => {}
        }
        out
    }

    fn reconcile(&mut self, open: &[OpenTask], _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = Vec::new();
        for q in &self.queues {
            reads.push(Self::oldest_page(q));
            reads.push(Self::newest_page(q));
        }
        for task in open {
            let Read { request, .. } = Self::status_read(&task.id);
            reads.push(Why::SettleStatus.read(request));
        }
        reads
    }

    fn sample_queues(&mut self, _now: DateTime<Utc>) -> Vec<Read> {
        let mut reads = Vec::new();
        self.sampling.clear();
        for q in &self.queues {
            self.sampling.insert(q.clone(), QueueRound::default());
            reads.push(Why::Size.read(ReadRequest::ZCard(q.clone())));
            reads.push(Why::Head.read(ReadRequest::ZRangeWithScores {
                key: q.clone(),
                start: 0,
                stop: 0,
            }));
            reads.extend(Self::health_reads(q));
            // Last: its reply closes the queue's round.
            reads.push(Self::newest_page(q));
        }
        reads
    }

    fn on_detected(&mut self, setting: &Setting) -> Vec<Read> {
        match setting {
            Setting::ArqQueue(q) if self.add_queue(q) => {
                let mut reads = vec![Self::oldest_page(q)];
                reads.extend(Self::health_reads(q));
                reads
            }
            _ => Vec::new(),
        }
    }

    /// The statuses asked for by the batch's notifications, in one `MGET` per
    /// [`STATUS_PER_READ`] jobs; not of a job whose result the batch wrote (its `GET` tells
    /// the outcome) or that ended already. A try's `set`, its counter's `incrby` and its end
    /// are then one read, not three.
    fn end_of_batch(&mut self, _now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        if self.status_due.is_empty() {
            return out;
        }
        self.status_due_set.clear();
        let due: Vec<String> = std::mem::take(&mut self.status_due)
            .into_iter()
            .filter(|id| {
                !self
                    .known
                    .get(id)
                    .is_some_and(|m| m.finished || (m.result_written && !m.expired))
            })
            .collect();
        out.follow_up
            .extend(due.chunks(STATUS_PER_READ).map(Self::statuses_read));
        out
    }

    fn on_gap(&mut self) {
        self.status_due.clear();
        self.status_due_set.clear();
        for memo in self.known.values_mut() {
            memo.job_asked = false;
        }
        self.page_pending.clear();
        self.sampling.clear();
        self.health_ttl.clear();
    }
}
