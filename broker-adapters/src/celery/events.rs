//! Celery events (`PUBLISH /<db>.celeryev/<routing key>`): worker heartbeats, which every worker
//! sends even without `-E`, and task events when events are enabled. Each message is a kombu
//! envelope whose body is one event, or a list of events (routing key `task.multi`: workers
//! buffer task events and flush them together).

use super::message::{as_string, as_u32};
use crate::codec;
use crate::model::{
    Broker, Observation, TaskEvent, TaskObservation, WorkerEvent, WorkerObservation,
};
use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event envelope is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event body: {0}")]
    Body(#[from] codec::CodecError),
    #[error("event envelope has no body")]
    NoBody,
}

impl EventError {
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::Json(_) => "event-json",
            EventError::Body(_) => "event-body",
            EventError::NoBody => "event-shape",
        }
    }
}

/// The parts of a kombu envelope an event needs. Parsed without building the whole envelope as
/// a `Value` (headers included): this runs for every event, and is most of its decoding cost.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "content-type", borrow)]
    content_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    properties: Option<Properties<'a>>,
}

#[derive(serde::Deserialize)]
struct Properties<'a> {
    #[serde(borrow)]
    body_encoding: Option<std::borrow::Cow<'a, str>>,
}

/// Decodes one published event message into its event dicts.
pub fn decode(bytes: &[u8]) -> Result<Vec<Value>, EventError> {
    // The usual shape: a string body (base64 or plain). Anything else (a body that is already a
    // dict or list, a bare event dict, odd property types) takes the general path below.
    if let Ok(Envelope {
        body: Some(raw),
        content_type,
        properties,
    }) = serde_json::from_slice::<Envelope>(bytes)
    {
        let encoding = properties.and_then(|p| p.body_encoding);
        let content_type = content_type.as_deref().unwrap_or("application/json");
        let body = if encoding.as_deref() == Some("base64") {
            codec::decode_by_content_type(content_type, &codec::base64_decode(&raw)?)?
        } else {
            codec::decode_by_content_type(content_type, raw.as_bytes())?
        };
        return Ok(into_events(body));
    }
    let envelope: Value = codec::json_value(bytes)?;
    let body = match envelope.get("body") {
        Some(Value::String(raw)) => {
            let encoding = envelope
                .get("properties")
                .and_then(|p| p.get("body_encoding"))
                .and_then(Value::as_str);
            let bytes = if encoding == Some("base64") {
                codec::base64_decode(raw)?
            } else {
                raw.as_bytes().to_vec()
            };
            let content_type = envelope
                .get("content-type")
                .and_then(Value::as_str)
                .unwrap_or("application/json");
            codec::decode_by_content_type(content_type, &bytes)?
        }
        Some(other) => other.clone(),
        // A bare event dict published by hand.
        None if envelope.get("type").is_some() => envelope,
        None => return Err(EventError::NoBody),
    };
    Ok(into_events(body))
}

/// Decodes one published event message straight into its observations (events taskscope
/// does not use give none). The same as [`decode`] then [`observe`] on each event, without
/// building the members of an event that [`observe`] never reads (most of them).
pub fn observe_message(bytes: &[u8], now: DateTime<Utc>) -> Result<Vec<Observation>, EventError> {
    if let Ok(Envelope {
        body: Some(raw),
        content_type,
        properties,
    }) = serde_json::from_slice::<Envelope>(bytes)
    {
        let content_type = content_type.as_deref().unwrap_or("application/json");
        if matches!(content_type.trim(), "application/json" | "") {
            let encoding = properties.and_then(|p| p.body_encoding);
            let limits = crate::limits::Limits::current();
            let picked = if encoding.as_deref() == Some("base64") {
                BODY.with_borrow_mut(|body| {
                    body.clear();
                    let picked = codec::base64_decode_into(&raw, body)
                        .map(|()| crate::budgeted::json_picked(body, &limits, OBSERVED));
                    // A large body's buffer is given back; the usual ones are reused.
                    if body.capacity() > KEEP_BODY_BYTES {
                        *body = Vec::new();
                    }
                    picked
                })?
            } else {
                crate::budgeted::json_picked(raw.as_bytes(), &limits, OBSERVED)
            };
            if let Some(events) = picked {
                return Ok(events
                    .into_iter()
                    .filter_map(|mut e| observe_in(&mut e, now))
                    .collect());
            }
        }
    }
    // Anything else (another serialiser, another shape, an error to report) as it always was.
    Ok(decode(bytes)?
        .iter()
        .filter_map(|e| observe(e, now))
        .collect())
}

thread_local! {
    /// The decoded body of the event message being observed, reused from one message to the
    /// next.
    static BODY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`BODY`] keeps at most this much allocated between messages (events are ~1 KB).
const KEEP_BODY_BYTES: usize = 64 * 1024;

/// Every member of an event [`observe`] reads; [`observe_message`] builds only these.
const OBSERVED: &[&str] = &[
    "type",
    "timestamp",
    "hostname",
    "pid",
    "active",
    "freq",
    "uuid",
    "eta",
    "name",
    "args",
    "kwargs",
    "queue",
    "routing_key",
    "retries",
    "result",
    "runtime",
    "traceback",
    "exception",
    "expired",
    "terminated",
    "requeue",
];

/// An event's members by name: a whole `Value`, or the members [`OBSERVED`] picked. Text an
/// observation keeps is taken out of picked members (they are built for this event alone),
/// copied out of a whole `Value`.
trait Members {
    fn member(&self, key: &str) -> Option<&Value>;

    /// The member `key` as text ([`as_string`]), taken out when the event is owned.
    fn text(&mut self, key: &str) -> Option<String>;

    /// The member `key` as a value ([`repr_value`]), taken out when the event is owned.
    fn repr(&mut self, key: &str) -> Option<Value>;
}

impl Members for &Value {
    fn member(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }

    fn text(&mut self, key: &str) -> Option<String> {
        self.get(key).and_then(as_string)
    }

    fn repr(&mut self, key: &str) -> Option<Value> {
        self.get(key).and_then(repr_value)
    }
}

impl Members for crate::budgeted::Picked {
    fn member(&self, key: &str) -> Option<&Value> {
        debug_assert!(OBSERVED.contains(&key), "{key} is read but not picked");
        self.get(key)
    }

    fn text(&mut self, key: &str) -> Option<String> {
        debug_assert!(OBSERVED.contains(&key), "{key} is read but not picked");
        match self.take(key)? {
            Value::String(s) => Some(s),
            other => as_string(&other),
        }
    }

    fn repr(&mut self, key: &str) -> Option<Value> {
        debug_assert!(OBSERVED.contains(&key), "{key} is read but not picked");
        match self.take(key)? {
            Value::Null => None,
            Value::String(s) => Some(codec::python_literal(&s).unwrap_or(Value::String(s))),
            other => Some(other),
        }
    }
}

fn into_events(body: Value) -> Vec<Value> {
    match body {
        Value::Array(events) => events,
        single => vec![single],
    }
}

/// Turns one event dict into an observation; `None` for events taskscope does not use.
pub fn observe(event: &Value, now: DateTime<Utc>) -> Option<Observation> {
    observe_in(&mut { event }, now)
}

/// The event types taskscope uses ([`Kind::of`] is `None` for the others).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Worker(WorkerEvent),
    Sent,
    Received,
    Started,
    Succeeded,
    Failed,
    Retried,
    Revoked,
    Rejected,
}

impl Kind {
    fn of(event_type: &str) -> Option<Kind> {
        Some(match event_type {
            "worker-online" => Kind::Worker(WorkerEvent::Online),
            "worker-heartbeat" => Kind::Worker(WorkerEvent::Heartbeat),
            "worker-offline" => Kind::Worker(WorkerEvent::Offline),
            "task-sent" => Kind::Sent,
            "task-received" => Kind::Received,
            "task-started" => Kind::Started,
            "task-succeeded" => Kind::Succeeded,
            "task-failed" => Kind::Failed,
            "task-retried" => Kind::Retried,
            "task-revoked" => Kind::Revoked,
            "task-rejected" => Kind::Rejected,
            _ => return None,
        })
    }
}

fn observe_in(event: &mut impl Members, now: DateTime<Utc>) -> Option<Observation> {
    let kind = Kind::of(event.member("type")?.as_str()?)?;
    let at = event
        .member("timestamp")
        .and_then(codec::parse_time)
        .unwrap_or(now);
    let hostname = event.text("hostname");
    if let Kind::Worker(event_kind) = kind {
        let id = hostname?;
        return Some(Observation::Worker(WorkerObservation {
            broker: Broker::Celery,
            hostname: id.split_once('@').map(|(_, host)| host.to_string()),
            id,
            pid: event.member("pid").and_then(as_u32),
            at,
            event: event_kind,
            active: event.member("active").and_then(as_u32),
            heartbeat_every_s: event.member("freq").and_then(Value::as_f64),
        }));
    }
    let task_id = event.text("uuid")?;
    let eta = event.member("eta").and_then(codec::parse_time);
    let task_event = match kind {
        Kind::Worker(_) => return None,
        Kind::Sent => TaskEvent::Queued,
        Kind::Received if eta.is_some_and(|eta| eta > at) => TaskEvent::Queued,
        Kind::Received | Kind::Started => TaskEvent::Running,
        Kind::Succeeded => TaskEvent::Succeeded,
        Kind::Failed => TaskEvent::Failed,
        Kind::Retried => TaskEvent::Retried,
        Kind::Revoked => TaskEvent::Failed,
        Kind::Rejected if event.member("requeue").and_then(Value::as_bool) == Some(true) => {
            TaskEvent::Queued
        }
        Kind::Rejected => TaskEvent::Failed,
    };
    let mut obs = TaskObservation::new(Broker::Celery, task_id, at, task_event, "event");
    let f = &mut obs.fields;
    f.name = event.text("name");
    f.args = event.repr("args");
    f.kwargs = event.repr("kwargs");
    f.eta = eta;
    f.queue = match event.member("queue") {
        Some(_) => event.text("queue"),
        None => event.text("routing_key"),
    };
    if matches!(
        kind,
        Kind::Received | Kind::Started | Kind::Succeeded | Kind::Failed | Kind::Retried
    ) {
        f.worker = hostname;
    }
    match kind {
        Kind::Sent => {
            obs.attempt = event.member("retries").and_then(as_u32);
            f.enqueued_at = Some(at);
        }
        Kind::Received => obs.attempt = event.member("retries").and_then(as_u32),
        Kind::Started => f.started_at = Some(at),
        Kind::Succeeded => {
            f.result = event.repr("result");
            f.runtime_ms = event
                .member("runtime")
                .and_then(Value::as_f64)
                .filter(|r| r.is_finite() && *r >= 0.0)
                .map(|r| r * 1000.0);
        }
        Kind::Failed | Kind::Retried => {
            let traceback = match event.member("traceback") {
                Some(Value::String(s)) if !s.is_empty() => event.text("traceback"),
                _ => None,
            };
            f.error = event
                .member("exception")
                .and_then(Value::as_str)
                .map(codec::error_line_from_repr)
                .or_else(|| {
                    traceback
                        .as_deref()
                        .and_then(codec::error_line_from_traceback)
                });
            f.traceback = traceback;
        }
        Kind::Revoked => {
            let why = if event.member("expired").and_then(Value::as_bool) == Some(true) {
                "expired"
            } else if event.member("terminated").and_then(Value::as_bool) == Some(true) {
                "terminated"
            } else {
                "revoked"
            };
            f.error = Some(format!("TaskRevokedError: {why}"));
        }
        Kind::Rejected => f.error = Some("rejected by the worker".to_string()),
        Kind::Worker(_) => {}
    }
    Some(Observation::Task(obs))
}

/// Events carry Python reprs of args, kwargs and results; plain literals become JSON.
fn repr_value(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(codec::python_literal(s).unwrap_or_else(|| v.clone())),
        other => Some(other.clone()),
    }
}
