//! One entry of a BullMQ queue's events stream (`<prefix>:<queue>:events`), decoded: BullMQ's
//! Lua scripts `XADD` one entry per state change of every job (`event`, `jobId`, and per
//! event `name`, `prev`, `delay`, `returnvalue`, `failedReason`, `attemptsMade`), in the
//! order they happen, so the stream is the exact record of every life. Events without a job
//! (`drained`, `paused`, `resumed`) decode too: they only prove the stream is BullMQ's.

use crate::taskiq::stream::{Entry, StreamId};
use chrono::{DateTime, Utc};

/// The events BullMQ 6 writes (`src/commands/*.lua`). Others decode as [`EventKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Waiting,
    WaitingChildren,
    Delayed,
    Active,
    Progress,
    Completed,
    Failed,
    RetriesExhausted,
    Stalled,
    Removed,
    Duplicated,
    Deduplicated,
    Drained,
    Paused,
    Resumed,
    Cleaned,
    Other,
}

impl EventKind {
    /// The kind an `event` field names; `None` when it is not one of BullMQ's event names.
    pub fn known(name: &[u8]) -> Option<EventKind> {
        Some(match name {
            b"added" => EventKind::Added,
            b"waiting" => EventKind::Waiting,
            b"waiting-children" => EventKind::WaitingChildren,
            b"delayed" => EventKind::Delayed,
            b"active" => EventKind::Active,
            b"progress" => EventKind::Progress,
            b"completed" => EventKind::Completed,
            b"failed" => EventKind::Failed,
            b"retries-exhausted" => EventKind::RetriesExhausted,
            b"stalled" => EventKind::Stalled,
            b"removed" => EventKind::Removed,
            b"duplicated" => EventKind::Duplicated,
            b"deduplicated" => EventKind::Deduplicated,
            b"drained" => EventKind::Drained,
            b"paused" => EventKind::Paused,
            b"resumed" => EventKind::Resumed,
            b"cleaned" => EventKind::Cleaned,
            _ => return None,
        })
    }
}

/// A decoded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: StreamId,
    pub kind: EventKind,
    pub job_id: Option<String>,
    /// `added`: the job's name.
    pub name: Option<String>,
    /// The state the job left (`waiting`, `active`, `delayed`, `waiting-children`).
    pub prev: Option<String>,
    /// `delayed`: when the job may run (ms since the epoch).
    pub delay_until: Option<DateTime<Utc>>,
    /// `completed`: the return value, as BullMQ stored it (JSON text).
    pub returnvalue: Option<Vec<u8>>,
    /// `failed`: the error message.
    pub failed_reason: Option<String>,
}

impl Event {
    /// When Redis wrote the entry (its id's time).
    pub fn at(&self) -> Option<DateTime<Utc>> {
        self.id.time()
    }
}

/// Why an entry is not a BullMQ event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("entry {0} has no event field")]
    NoEvent(StreamId),
    #[error("entry {0}: event {1:?} without a jobId")]
    NoJobId(StreamId, String),
}

impl EventError {
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::NoEvent(_) => "event-shape",
            EventError::NoJobId(..) => "event-job-id",
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Events that are about one job (and must name it).
fn names_a_job(kind: EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Drained
            | EventKind::Paused
            | EventKind::Resumed
            | EventKind::Cleaned
            | EventKind::Other
    )
}

/// Decodes one stream entry.
pub fn decode(entry: &Entry) -> Result<Event, EventError> {
    let name = entry.field(b"event").ok_or(EventError::NoEvent(entry.id))?;
    let kind = EventKind::known(name).unwrap_or(EventKind::Other);
    let job_id = entry.field(b"jobId").filter(|id| !id.is_empty()).map(text);
    if job_id.is_none() && names_a_job(kind) {
        return Err(EventError::NoJobId(entry.id, text(name)));
    }
    let delay_until = entry
        .field(b"delay")
        .and_then(|d| std::str::from_utf8(d).ok()?.trim().parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis);
    Ok(Event {
        id: entry.id,
        kind,
        job_id,
        name: entry.field(b"name").map(text),
        prev: entry.field(b"prev").map(text),
        delay_until,
        returnvalue: entry.field(b"returnvalue").map(<[u8]>::to_vec),
        failed_reason: entry.field(b"failedReason").map(text),
    })
}

/// Whether a stream entry is BullMQ's: an `event` field naming one of its events.
pub fn is_bullmq_entry(entry: &Entry) -> bool {
    entry.field(b"event").and_then(EventKind::known).is_some()
}
