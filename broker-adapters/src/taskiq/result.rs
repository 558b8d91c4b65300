//! Records of taskiq-redis's `RedisAsyncResultBackend`: key = the task id (or
//! `<prefix_str>:<task_id>`), value = `TaskiqResult.model_dump(mode="json")` serialised with the
//! backend's serializer: a Python pickle by default, JSON or msgpack when configured (told apart
//! by the bytes). Fields: `is_err`, `return_value`, `execution_time` (seconds, rounded to 0.01),
//! `labels` (the message's labels, parsed: `_retries` is an int here), `log`, and `error`:
//! `{exc_type, exc_message: [args...], exc_module, exc_cause, exc_context, exc_suppress_context}`.
//! taskiq stores no traceback: the exception chain is the detail there is.

use crate::codec;
use serde_json::Value;

/// What taskscope needs from one result record.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskiqResult {
    pub is_err: bool,
    pub return_value: Value,
    /// The worker's own measure of the attempt, in milliseconds.
    pub runtime_ms: Option<f64>,
    /// One line: `CardDeclined: card declined 3`.
    pub error: Option<String>,
    /// The exception chain, qualified (`taskiq_app.CardDeclined: card declined 3`), causes first.
    pub traceback: Option<String>,
    /// `labels._retries` of the attempt that wrote it.
    pub retries: Option<u32>,
    /// `labels.queue_name`, when set.
    pub queue_label: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("result is neither pickle, JSON nor msgpack: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("result is not a TaskiqResult record (no {0})")]
    Shape(&'static str),
}

impl ResultError {
    pub fn kind(&self) -> &'static str {
        match self {
            ResultError::Codec(_) => "result-encoding",
            ResultError::Shape(_) => "result-shape",
        }
    }
}

/// Suffix of taskiq's progress keys (`<task_id>__progress`), which are not results.
pub const PROGRESS_SUFFIX: &str = "__progress";

pub fn decode(bytes: &[u8]) -> Result<TaskiqResult, ResultError> {
    let value = codec::sniff_decode(bytes)?;
    let obj = value.as_object().ok_or(ResultError::Shape("map"))?;
    let is_err = obj
        .get("is_err")
        .and_then(Value::as_bool)
        .ok_or(ResultError::Shape("is_err"))?;
    if !obj.contains_key("execution_time") {
        return Err(ResultError::Shape("execution_time"));
    }
    let runtime_ms = obj
        .get("execution_time")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| s * 1000.0);
    let labels = obj.get("labels").and_then(Value::as_object);
    let error_value = obj.get("error").filter(|e| !e.is_null());
    let (error, traceback) = match error_value {
        Some(e) => (Some(error_line(e)), Some(chain(e))),
        // An error flag without an error record: say so rather than nothing.
        None if is_err => (Some("error (no details stored)".to_string()), None),
        None => (None, None),
    };
    Ok(TaskiqResult {
        is_err,
        return_value: obj.get("return_value").cloned().unwrap_or(Value::Null),
        runtime_ms,
        error,
        traceback,
        retries: super::message::label_u32(labels, "_retries"),
        queue_label: labels
            .and_then(|l| l.get("queue_name"))
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Whether `bytes` look like a taskiq result record (for auto-detection and for telling
/// taskiq's bare-id result keys from other 32-hex keys).
pub fn looks_like_result(bytes: &[u8]) -> bool {
    decode(bytes).is_ok()
}

/// The exception's message: one string argument as is, several as a tuple repr.
fn message_text(error: &Value) -> String {
    match error.get("exc_message") {
        Some(Value::Array(args)) if args.len() == 1 => match &args[0] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        Some(Value::Array(args)) if args.is_empty() => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn type_name(error: &Value) -> String {
    error
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or("Exception")
        .to_string()
}

/// `Type: message` on one line.
fn error_line(error: &Value) -> String {
    if !error.is_object() {
        // Not the ExceptionRepr shape (a custom serializer): show what there is.
        return codec::one_line(&match error {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    let msg = message_text(error);
    let line = if msg.is_empty() {
        type_name(error)
    } else {
        format!("{}: {}", type_name(error), msg)
    };
    codec::one_line(&line)
}

/// The chain of `exc_cause` / `exc_context`, oldest first, with qualified type names, joined the
/// way Python prints chained exceptions.
fn chain(error: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    let mut depth = 0;
    while let Some(e) = current.filter(|e| e.is_object()) {
        let module = e.get("exc_module").and_then(Value::as_str);
        let qualified = match module {
            Some(m) if m != "builtins" => format!("{m}.{}", type_name(e)),
            _ => type_name(e),
        };
        let msg = message_text(e);
        parts.push(if msg.is_empty() {
            qualified
        } else {
            format!("{qualified}: {msg}")
        });
        depth += 1;
        if depth >= 16 {
            break;
        }
        let cause = e.get("exc_cause").filter(|c| c.is_object());
        let suppress = e
            .get("exc_suppress_context")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        current = cause.or_else(|| {
            (!suppress)
                .then(|| e.get("exc_context").filter(|c| c.is_object()))
                .flatten()
        });
    }
    parts.reverse();
    parts.join("\n\nThe above exception led to the following exception:\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_failure_has_one_line_error_and_chain() {
        let r = decode(br#"{"is_err": true, "log": null, "return_value": null, "execution_time": 0.25, "labels": {"_retries": 2}, "error": {"exc_type": "CardDeclined", "exc_message": ["card declined 1"], "exc_module": "app", "exc_cause": {"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"}, "exc_context": null, "exc_suppress_context": true}}"#).unwrap();
        assert!(r.is_err);
        assert_eq!(r.error.as_deref(), Some("CardDeclined: card declined 1"));
        assert_eq!(r.retries, Some(2));
        assert_eq!(r.runtime_ms, Some(250.0));
        let tb = r.traceback.unwrap();
        assert!(tb.starts_with("KeyError: k"), "{tb}");
        assert!(tb.ends_with("app.CardDeclined: card declined 1"), "{tb}");
    }

    #[test]
    fn not_a_result() {
        assert!(decode(br#"{"status": "SUCCESS"}"#).is_err());
        assert!(!looks_like_result(b"hello"));
    }
}
