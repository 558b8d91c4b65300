//! The vocabulary every adapter, the state machine, the store and the views share.
//!
//! `Task` and `Transition` serialise exactly to the JSON shapes of the external contract
//! (`shared/contract.md`): unknown fields are `null`, never absent; times are RFC 3339 UTC with
//! milliseconds. Adapters never build a `Task` themselves: they emit [`TaskObservation`]s and the
//! shared state machine (`crate::state`) folds them into tasks.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// The task-queue libraries taskscope understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Broker {
    Celery,
    Dramatiq,
    Taskiq,
    Rq,
    Arq,
    Bullmq,
    Sidekiq,
}

impl Broker {
    pub const ALL: [Broker; 7] = [
        Broker::Celery,
        Broker::Dramatiq,
        Broker::Taskiq,
        Broker::Rq,
        Broker::Arq,
        Broker::Bullmq,
        Broker::Sidekiq,
    ];

    /// Whether this broker's known workers vouch for its running tasks whose worker is
    /// unknown, so that the sweep may abandon such a task once every worker that was up when
    /// it started is gone. Celery without events cannot tell which worker prefetched a
    /// message, but every Celery worker is seen (heartbeats, pidbox). Not taskiq: the only
    /// workers taskscope knows there are stream consumers, which cannot have taken a list or
    /// pub/sub message, and taskiq-redis has no heartbeat: a taskiq task with no consumer named
    /// has no liveness signal, and silence is not evidence. Not arq either: its only worker
    /// signal is one health-check key per queue, written once per `health_check_interval` (an
    /// hour by default); its running jobs are judged by their own in-progress keys' expiry.
    /// Nor BullMQ: its workers write no key (taskscope knows none); a job's lock and the
    /// `stalled` event judge it.
    pub fn workers_vouch_for_unnamed_runs(self) -> bool {
        !matches!(self, Broker::Taskiq | Broker::Arq | Broker::Bullmq)
    }

    /// Every broker's name, comma separated (`celery, dramatiq, taskiq, rq`).
    pub fn names() -> String {
        Broker::ALL.map(Broker::as_str).join(", ")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Broker::Celery => "celery",
            Broker::Dramatiq => "dramatiq",
            Broker::Taskiq => "taskiq",
            Broker::Rq => "rq",
            Broker::Arq => "arq",
            Broker::Bullmq => "bullmq",
            Broker::Sidekiq => "sidekiq",
        }
    }
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A broker name that is not one of [`Broker::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown broker {0:?}: expected one of {expected}", expected = Broker::names())]
pub struct UnknownBroker(pub String);

impl FromStr for Broker {
    type Err = UnknownBroker;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Broker::ALL
            .into_iter()
            .find(|b| b.as_str() == s.trim())
            .ok_or_else(|| UnknownBroker(s.to_string()))
    }
}

/// The six states of the contract. See `shared/contract.md` for their exact meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Running,
    Success,
    Failure,
    Retried,
    Abandoned,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Success,
        TaskState::Failure,
        TaskState::Retried,
        TaskState::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Failure => "failure",
            TaskState::Retried => "retried",
            TaskState::Abandoned => "abandoned",
        }
    }

    /// Success and failure end a task; every other state may still move on.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Success | TaskState::Failure)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the six.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown state {0:?}: expected one of queued, running, success, failure, retried, abandoned"
)]
pub struct UnknownState(pub String);

impl FromStr for TaskState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s.trim())
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// [`Task::wait_ms`] in DuckDB SQL over a task row aliased `t`.
pub const WAIT_MS_SQL: &str = "(CASE WHEN date_diff('microsecond', \
     CASE WHEN t.eta IS NOT NULL AND (t.enqueued_at IS NULL OR t.eta > t.enqueued_at) \
          THEN t.eta ELSE t.enqueued_at END, t.started_at) < 0 THEN 0.0 \
     ELSE date_diff('microsecond', \
     CASE WHEN t.eta IS NOT NULL AND (t.enqueued_at IS NULL OR t.eta > t.enqueued_at) \
          THEN t.eta ELSE t.enqueued_at END, t.started_at) / 1000.0 END)";

/// Serialises a time the way the contract wants it: `2026-11-23T12:16:07.706Z`.
pub fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn ser_time<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(at))
}

/// One task as the contract shows it (`GET /api/tasks/{id}` without `transitions`).
///
/// A task keeps one row across retries; `retries` counts the failed attempts that were retried.
/// Its JSON also carries the derived `wait_ms` ([`Task::wait_ms`]) and `fingerprint`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Task {
    pub id: String,
    pub broker: Broker,
    pub queue: Option<String>,
    pub name: Option<String>,
    pub state: TaskState,
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    pub result: Option<Value>,
    /// One line, e.g. `ValueError: card declined 3`.
    pub error: Option<String>,
    pub traceback: Option<String>,
    pub retries: u32,
    pub worker: Option<String>,
    pub eta: Option<DateTime<Utc>>,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub runtime_ms: Option<f64>,
    /// The failure group of its current `error` and `traceback`
    /// ([`crate::fingerprint::fingerprint`]), kept by the state machine; `None` without an error.
    #[serde(default)]
    pub fingerprint: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl Serialize for Task {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let time = |t: &Option<DateTime<Utc>>| t.as_ref().map(rfc3339);
        let mut st = s.serialize_struct("Task", 21)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("broker", &self.broker)?;
        st.serialize_field("queue", &self.queue)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("args", &self.args)?;
        st.serialize_field("kwargs", &self.kwargs)?;
        st.serialize_field("result", &self.result)?;
        st.serialize_field("error", &self.error)?;
        st.serialize_field("traceback", &self.traceback)?;
        st.serialize_field("retries", &self.retries)?;
        st.serialize_field("worker", &self.worker)?;
        st.serialize_field("eta", &time(&self.eta))?;
        st.serialize_field("enqueued_at", &time(&self.enqueued_at))?;
        st.serialize_field("started_at", &time(&self.started_at))?;
        st.serialize_field("finished_at", &time(&self.finished_at))?;
        st.serialize_field("runtime_ms", &self.runtime_ms)?;
        st.serialize_field("wait_ms", &self.wait_ms())?;
        st.serialize_field("fingerprint", &self.fingerprint)?;
        st.serialize_field("updated_at", &rfc3339(&self.updated_at))?;
        st.end()
    }
}

impl Task {
    /// How long it waited before a worker started it, in ms: `started_at` minus `enqueued_at`,
    /// or minus `eta` when it was delayed past its enqueueing (a retry with a countdown too).
    /// `None` while it has not started or when neither time is known; never negative (the
    /// producer's and the worker's clocks may disagree by a little). The SQL of the reports is
    /// [`WAIT_MS_SQL`].
    pub fn wait_ms(&self) -> Option<f64> {
        let started = self.started_at?;
        let since = match (self.enqueued_at, self.eta) {
            (Some(enqueued), Some(eta)) => enqueued.max(eta),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => return None,
        };
        let micros = (started - since).num_microseconds()?;
        Some((micros as f64 / 1000.0).max(0.0))
    }

    /// A task about which nothing but its identity is known yet.
    pub fn new(broker: Broker, id: impl Into<String>, at: DateTime<Utc>) -> Task {
        Task {
            id: id.into(),
            broker,
            queue: None,
            name: None,
            state: TaskState::Queued,
            args: None,
            kwargs: None,
            result: None,
            error: None,
            traceback: None,
            retries: 0,
            worker: None,
            eta: None,
            enqueued_at: None,
            started_at: None,
            finished_at: None,
            runtime_ms: None,
            fingerprint: None,
            updated_at: at,
        }
    }
}

/// One state change of one task, as stored and as shown in a task's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    #[serde(skip_serializing)]
    pub task_id: String,
    #[serde(skip_serializing)]
    pub broker: Broker,
    pub state: TaskState,
    #[serde(serialize_with = "ser_time")]
    pub at: DateTime<Utc>,
    pub worker: Option<String>,
    /// What was seen, in a few words (`retry 1: ValueError: boom`, `worker celery@a went silent`).
    pub detail: Option<String>,
    /// The failure group of the attempt's error, on `failure` and `retried` transitions whose
    /// error is known (not in the timeline's JSON).
    #[serde(skip_serializing, default)]
    pub fingerprint: Option<String>,
}

/// What an adapter saw happen to a task. The state machine decides what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskEvent {
    /// The message sits in a queue (or a delay queue, then `eta` is set).
    Queued,
    /// A worker took the message (reserved, prefetched, or started).
    Running,
    /// The attempt finished without error.
    Succeeded,
    /// The attempt failed and no retry will follow (dead-lettered, revoked, rejected too).
    Failed,
    /// The attempt failed and the task will run again.
    Retried,
    /// The task's worker died or fell silent while it ran (emitted by the sweep, not adapters).
    Abandoned,
}

/// Everything an observation may know about a task besides its state. `None` means "not seen
/// here", never "cleared": the state machine only fills or overwrites with known values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFields {
    pub queue: Option<String>,
    pub name: Option<String>,
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub traceback: Option<String>,
    pub worker: Option<String>,
    pub eta: Option<DateTime<Utc>>,
    /// When the message was first enqueued, if the payload says so.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// When the attempt started, if the payload says so (better than the observation time).
    pub started_at: Option<DateTime<Utc>>,
    /// Runtime as measured by the worker itself, when it reports one.
    pub runtime_ms: Option<f64>,
}

/// One fact about one task, from one place in Redis, at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskObservation {
    pub broker: Broker,
    pub task_id: String,
    /// When it happened (the payload's own time when it has one, else when taskscope saw it).
    pub at: DateTime<Utc>,
    pub event: TaskEvent,
    /// Which attempt this is about, counting from 0 (= the number of retries before it), when
    /// the payload says so. `None`: the current attempt, whatever it is.
    pub attempt: Option<u32>,
    pub fields: TaskFields,
    /// Where it was seen, for the transition's detail (`queue`, `unacked`, `result`, `event`).
    pub source: &'static str,
    /// A transition detail that replaces the one derived from `event` and `source`.
    pub detail: Option<String>,
}

impl TaskObservation {
    pub fn new(
        broker: Broker,
        task_id: impl Into<String>,
        at: DateTime<Utc>,
        event: TaskEvent,
        source: &'static str,
    ) -> TaskObservation {
        TaskObservation {
            broker,
            task_id: task_id.into(),
            at,
            event,
            attempt: None,
            fields: TaskFields::default(),
            source,
            detail: None,
        }
    }
}

/// What a worker told about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerEvent {
    Online,
    Heartbeat,
    Offline,
}

/// One sign of life (or death) of a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerObservation {
    pub broker: Broker,
    /// The broker's name for the worker (`celery@host`, a Dramatiq worker id, an RQ worker name).
    pub id: String,
    pub hostname: Option<String>,
    /// The process id: a new pid under the same name is a restarted worker.
    pub pid: Option<u32>,
    pub at: DateTime<Utc>,
    pub event: WorkerEvent,
    /// How many tasks the worker says it is running, if it says.
    pub active: Option<u32>,
    /// The heartbeat interval the worker announces, in seconds.
    pub heartbeat_every_s: Option<f64>,
}

/// A worker as the contract shows it (`GET /api/workers`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Worker {
    pub broker: Broker,
    pub id: String,
    pub hostname: Option<String>,
    pub alive: bool,
    #[serde(serialize_with = "ser_time")]
    pub last_seen: DateTime<Utc>,
    /// Tasks taskscope believes are running on it.
    pub running: u64,
    #[serde(skip)]
    pub pid: Option<u32>,
    /// When the current process of this worker was first seen (a restart resets it).
    #[serde(skip)]
    pub online_since: DateTime<Utc>,
}

/// A queue's size at one moment (`GET /api/queues`, backlog over time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueSample {
    pub broker: Broker,
    pub name: String,
    /// Messages waiting to be delivered.
    pub length: u64,
    /// Messages waiting for their ETA.
    pub delayed: u64,
    /// Dead-lettered messages.
    pub dead: u64,
    /// Messages taken by a worker and not yet acknowledged.
    pub running: u64,
    #[serde(serialize_with = "ser_time")]
    pub sampled_at: DateTime<Utc>,
    /// When the oldest message still waiting was enqueued, from the broker's own data (a
    /// timestamp in the message or job, a stream id); `None` when nothing waits or the broker
    /// does not say (Celery's messages carry no enqueue time). Shown as an age,
    /// [`QueueSample::oldest_age_ms`], computed when asked.
    #[serde(skip)]
    pub oldest_enqueued_at: Option<DateTime<Utc>>,
}

impl QueueSample {
    /// The age at `now` of the oldest message still waiting, in ms (`oldest_age_ms` of
    /// `/api/queues`); never negative (producers' clocks may run ahead of ours).
    pub fn oldest_age_ms(&self, now: DateTime<Utc>) -> Option<f64> {
        let micros = (now - self.oldest_enqueued_at?).num_microseconds()?;
        Some((micros as f64 / 1000.0).max(0.0))
    }
}

/// Anything an adapter can report. Task observations dominate by far, so the size difference
/// between the variants costs nothing worth a box per observation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Task(TaskObservation),
    Worker(WorkerObservation),
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms)
            .single()
            .expect("valid time")
    }

    #[test]
    fn wait_is_from_enqueueing_or_from_the_eta_to_the_start_never_negative() {
        let mut task = Task::new(Broker::Celery, "a", t(0));
        assert_eq!(task.wait_ms(), None, "not started");
        task.enqueued_at = Some(t(0));
        task.started_at = Some(t(1_500) + Duration::microseconds(250));
        assert_eq!(task.wait_ms(), Some(1_500.25));
        // Delayed: the wait starts at its eta.
        task.eta = Some(t(1_000));
        assert_eq!(task.wait_ms(), Some(500.25));
        // An eta before its enqueueing (a countdown of 0) changes nothing.
        task.eta = Some(t(-5_000));
        assert_eq!(task.wait_ms(), Some(1_500.25));
        // The worker's clock behind the producer's: 0, not negative.
        task.started_at = Some(t(-10));
        task.eta = None;
        assert_eq!(task.wait_ms(), Some(0.0));
        task.enqueued_at = None;
        assert_eq!(task.wait_ms(), None, "no reference time");
    }

    #[test]
    fn task_json_has_every_contract_field_in_order() {
        let mut task = Task::new(Broker::Rq, "a", t(0));
        task.enqueued_at = Some(t(0));
        task.started_at = Some(t(40));
        let json = serde_json::to_string(&task).expect("serialises");
        let v: Value = serde_json::from_str(&json).expect("json");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = [
            "id",
            "broker",
            "queue",
            "name",
            "state",
            "args",
            "kwargs",
            "result",
            "error",
            "traceback",
            "retries",
            "worker",
            "eta",
            "enqueued_at",
            "started_at",
            "finished_at",
            "runtime_ms",
            "wait_ms",
            "fingerprint",
            "updated_at",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(v["wait_ms"], 40.0);
        assert!(v["fingerprint"].is_null());
        assert_eq!(v["started_at"], "2027-01-15T08:00:00.040Z");
        assert!(json.find("\"runtime_ms\"") < json.find("\"wait_ms\""));
        // What serialises reads back (the bench and tests round-trip tasks).
        let back: Task = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, task);
    }

    #[test]
    fn an_unknown_broker_error_names_every_broker() {
        let err = "resque".parse::<Broker>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown broker \"resque\": expected one of celery, dramatiq, taskiq, rq, arq, bullmq, sidekiq"
        );
        assert_eq!(" rq ".parse::<Broker>(), Ok(Broker::Rq));
    }
}
