//! Write actions (issue #21): run, retry, delete, purge and revoke, in each broker's own format,
//! so the broker's real workers run what taskscope writes unchanged. Off unless
//! `--allow-actions`; the HTTP routes (`src/http/actions.rs`) and `taskscope purge` journal
//! every call (`store::audit`).
//!
//! # Layout
//! - [`settings`]: the flags, their refusal rules and the name allow-list (globs).
//! - [`pickle`]: a minimal pickle writer for RQ's default serializer (pure).
//! - [`rq`], [`celery`], [`dramatiq`], [`taskiq`], [`sidekiq`], [`bullmq`], [`arq`]: one file per broker, pure: the exact commands and payloads the real
//!   library writes, as [`Write`]s (one `MULTI`/`EXEC` or one Lua script each), built from
//!   plain values and `now`, unit-tested without Redis.
//! - [`redis`]: the only I/O: a fred client that runs a [`Write`] atomically and makes the
//!   few reads an action needs (a job hash to retry, a queue's length).
//! - [`execute`]: what each action does per broker, joining the two.
//!
//! Taskscope otherwise never writes to a broker's keys: this module is the second opt-in write
//! path (the first is `--celery-enable-events`).

pub mod arq;
pub mod bullmq;
pub mod celery;
pub mod dramatiq;
pub mod execute;
pub mod pickle;
pub mod redis;
pub mod rq;
pub mod settings;
pub mod sidekiq;
pub mod taskiq;

pub use execute::{Actions, RunRequest};
pub use settings::ActionSettings;

/// One Redis command, its arguments as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisCommand {
    pub name: &'static str,
    pub args: Vec<Vec<u8>>,
}

impl RedisCommand {
    pub fn new<I, A>(name: &'static str, args: I) -> RedisCommand
    where
        I: IntoIterator<Item = A>,
        A: Into<Vec<u8>>,
    {
        RedisCommand {
            name,
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// The argument `i` as text (tests).
    #[cfg(test)]
    pub fn arg_text(&self, i: usize) -> String {
        self.args
            .get(i)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default()
    }
}

/// What one action writes, applied atomically: nothing half-written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Commands in one `MULTI`/`EXEC`.
    Multi(Vec<RedisCommand>),
    /// One Lua script (`EVAL`); its reply is the count of what it removed, or (purges)
    /// `{count, id, id...}`: the count, then the ids of the tasks removed (at most 10000).
    Script {
        lua: &'static str,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    },
    /// One `PUBLISH` (a control message; nothing stored).
    Publish { channel: String, message: Vec<u8> },
}

/// Why an action did not happen. Each maps to one HTTP status (`src/http/actions.rs`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("actions are disabled: start taskscope with --allow-actions (and --auth-token or --trusted-user-header)")]
    Disabled,
    #[error("{0}")]
    Forbidden(String),
    #[error("{action} is not supported for {broker}: {why}")]
    Unsupported {
        broker: String,
        action: &'static str,
        why: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("Redis refused the write: {0}")]
    Redis(String),
}

impl ActionError {
    pub fn unsupported(
        broker: broker_adapters::Broker,
        action: &'static str,
        why: impl Into<String>,
    ) -> ActionError {
        ActionError::Unsupported {
            broker: broker.as_str().to_string(),
            action,
            why: why.into(),
        }
    }
}

/// Python's `repr` of a JSON value (`None`, `True`, `'text'`, `[1, 2]`, `{'k': 1}`): the
/// `argsrepr`, `kwargsrepr` and descriptions the libraries write. JSON parsed by serde is at
/// most 128 levels deep, which bounds the recursion.
pub fn py_repr(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_str(s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", py_str(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn py_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Whether stored arguments are the task's whole arguments: nothing redacted or truncated by
/// `src/ingest/sanitize.rs` (then a retry may rebuild the message from them).
pub fn stored_whole(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s)
                if s == "[redacted]" || s.starts_with("[truncated") || s.contains("…[") =>
            {
                return false;
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_reprs() {
        assert_eq!(
            py_repr(&json!([1, "a'b", null, true, {"k": [2.5]}])),
            "[1, 'a\\'b', None, True, {'k': [2.5]}]"
        );
    }

    #[test]
    fn redacted_or_truncated_arguments_are_not_whole() {
        assert!(stored_whole(&json!([1, "a", {"b": [2.5, null]}])));
        assert!(!stored_whole(&json!([{"password": "[redacted]"}])));
        assert!(!stored_whole(&json!(["[truncated: list of 250 items]"])));
        assert!(!stored_whole(&json!(["aaaa…[truncated 10 bytes]"])));
    }
}
