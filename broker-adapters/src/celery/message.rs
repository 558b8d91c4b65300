//! Celery task messages as kombu's Redis transport stores them: a JSON envelope
//! (`body`, `content-type`, `content-encoding`, `headers`, `properties`) whose body is usually
//! base64. Protocol 2 keeps the task's identity in `headers` and `[args, kwargs, embed]` in the
//! body; protocol 1 keeps everything in the body.

use crate::codec::{self, CodecError};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// What taskscope needs from one task message.
#[derive(Debug, Clone, PartialEq)]
pub struct CeleryMessage {
    pub task_id: String,
    pub name: Option<String>,
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    /// `headers.retries`: how many times this task was retried before this message.
    pub retries: u32,
    pub eta: Option<DateTime<Utc>>,
    /// kombu's per-delivery id (`properties.delivery_tag`), the field of the `unacked` hash.
    pub delivery_tag: Option<String>,
    pub routing_key: Option<String>,
    /// Set when the body could not be decoded (an unsupported serializer, say): the task is
    /// still known, its arguments come from `argsrepr` if present.
    pub body_error: Option<String>,
}

/// Why a message could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("envelope is not JSON: {0}")]
    EnvelopeJson(#[from] serde_json::Error),
    #[error("envelope has no task id (neither headers.id nor body.id)")]
    NoTaskId,
    #[error("envelope is not a JSON object")]
    NotAnObject,
    #[error("body: {0}")]
    Body(#[from] CodecError),
}

impl MessageError {
    /// A stable short name for counting and logging once per kind.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageError::EnvelopeJson(_) => "envelope-json",
            MessageError::NoTaskId => "envelope-no-id",
            MessageError::NotAnObject => "envelope-shape",
            MessageError::Body(_) => "body-decode",
        }
    }
}

/// Decodes a raw queue entry.
pub fn decode(bytes: &[u8]) -> Result<CeleryMessage, MessageError> {
    let envelope: Value = codec::json_value(bytes)?;
    decode_envelope(&envelope)
}

/// Decodes an envelope already parsed (the first element of an `unacked` entry).
pub fn decode_envelope(envelope: &Value) -> Result<CeleryMessage, MessageError> {
    let obj = envelope.as_object().ok_or(MessageError::NotAnObject)?;
    let empty = serde_json::Map::new();
    let headers = obj
        .get("headers")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let properties = obj
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let body = decode_body(obj, headers, properties);

    let delivery_tag = properties.get("delivery_tag").and_then(as_string);
    let routing_key = properties
        .get("delivery_info")
        .and_then(|d| d.get("routing_key"))
        .and_then(as_string);

    if let Some(task_id) = headers.get("id").and_then(as_string) {
        // Protocol 2.
        let (args, kwargs, body_error) = match body {
            Ok(Value::Array(parts)) => (parts.first().cloned(), parts.get(1).cloned(), None),
            Ok(other) => (
                None,
                None,
                Some(format!("unexpected body shape: {}", kind_of(&other))),
            ),
            Err(e) => (None, None, Some(e.to_string())),
        };
        let args = args.or_else(|| repr_field(headers.get("argsrepr")));
        let kwargs = kwargs.or_else(|| repr_field(headers.get("kwargsrepr")));
        return Ok(CeleryMessage {
            task_id,
            name: headers.get("task").and_then(as_string),
            args,
            kwargs,
            retries: headers.get("retries").and_then(as_u32).unwrap_or(0),
            eta: headers.get("eta").and_then(codec::parse_time),
            delivery_tag,
            routing_key,
            body_error,
        });
    }

    // Protocol 1: everything in the body.
    let body = body?;
    let task_id = body
        .get("id")
        .and_then(as_string)
        .ok_or(MessageError::NoTaskId)?;
    Ok(CeleryMessage {
        task_id,
        name: body.get("task").and_then(as_string),
        args: body.get("args").cloned(),
        kwargs: body.get("kwargs").cloned(),
        retries: body.get("retries").and_then(as_u32).unwrap_or(0),
        eta: body.get("eta").and_then(codec::parse_time),
        delivery_tag,
        routing_key,
        body_error: None,
    })
}

fn decode_body(
    obj: &serde_json::Map<String, Value>,
    headers: &serde_json::Map<String, Value>,
    properties: &serde_json::Map<String, Value>,
) -> Result<Value, CodecError> {
    let content_type = obj
        .get("content-type")
        .and_then(Value::as_str)
        .unwrap_or("application/json");
    let raw = match obj.get("body") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Ok(other.clone()),
        None => return Ok(Value::Null),
    };
    let bytes = if properties.get("body_encoding").and_then(Value::as_str) == Some("base64") {
        codec::base64_decode(raw)?
    } else {
        raw.as_bytes().to_vec()
    };
    // `task_compression`: compressed before base64, named in `headers.compression`.
    let bytes = match headers.get("compression").and_then(Value::as_str) {
        Some(compression) => codec::decompress(compression, &bytes)?,
        None => bytes,
    };
    codec::decode_by_content_type(content_type, &bytes)
}

/// `argsrepr` / `kwargsrepr`: a Python repr, parsed to JSON when it is a plain literal.
fn repr_field(v: Option<&Value>) -> Option<Value> {
    let text = v?.as_str()?;
    Some(codec::python_literal(text).unwrap_or_else(|| Value::String(text.to_string())))
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
