//! Conversions between the shared model and DuckDB rows: timestamps, JSON text, enums, cursors.
//!
//! Timestamps are stored as DuckDB `TIMESTAMP` (microseconds since the epoch, UTC by convention)
//! and bound as raw microseconds, so nothing goes through a string or a time-zone conversion.
//! JSON values are stored as text; a stored value that does not parse reads back as a JSON string
//! (a corrupt cell must never make a page fail).

use super::StoreError;
use broker_adapters::{Broker, Task, TaskState, Transition};
use chrono::{DateTime, Utc};
use duckdb::types::{TimeUnit, ToSqlOutput, Value as DbValue, ValueRef};
use duckdb::Row;
use serde_json::Value;

/// A time bound as a DuckDB `TIMESTAMP` (microsecond precision; finer digits are dropped).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ts(pub DateTime<Utc>);

impl duckdb::ToSql for Ts {
    fn to_sql(&self) -> duckdb::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Owned(DbValue::Timestamp(
            TimeUnit::Microsecond,
            self.0.timestamp_micros(),
        )))
    }
}

/// An optional time, `NULL` when unknown.
pub(crate) fn opt_ts(at: Option<DateTime<Utc>>) -> DbValue {
    match at {
        Some(at) => DbValue::Timestamp(TimeUnit::Microsecond, at.timestamp_micros()),
        None => DbValue::Null,
    }
}

/// An optional JSON value as text, `NULL` when unknown.
pub(crate) fn opt_json(v: &Option<Value>) -> DbValue {
    match v {
        Some(v) => DbValue::Text(v.to_string()),
        None => DbValue::Null,
    }
}

pub(crate) fn opt_text(v: &Option<String>) -> DbValue {
    match v {
        Some(v) => DbValue::Text(v.clone()),
        None => DbValue::Null,
    }
}

pub(crate) fn micros_to_time(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
}

/// Reads a `TIMESTAMP` column (or a BIGINT of microseconds) without going through chrono's
/// `FromSql`, which panics on times before 1970.
pub(crate) fn get_ts(row: &Row<'_>, idx: usize) -> duckdb::Result<Option<DateTime<Utc>>> {
    let micros = match row.get_ref(idx)? {
        ValueRef::Null => return Ok(None),
        ValueRef::Timestamp(unit, v) => unit_to_micros(unit, v),
        ValueRef::BigInt(v) => v,
        other => {
            return Err(duckdb::Error::FromSqlConversionFailure(
                idx,
                other.data_type(),
                "expected a TIMESTAMP".into(),
            ))
        }
    };
    Ok(micros_to_time(micros))
}

fn unit_to_micros(unit: TimeUnit, v: i64) -> i64 {
    match unit {
        TimeUnit::Second => v.saturating_mul(1_000_000),
        TimeUnit::Millisecond => v.saturating_mul(1_000),
        TimeUnit::Microsecond => v,
        TimeUnit::Nanosecond => v / 1_000,
    }
}

/// Reads a non-null `TIMESTAMP`; a `NULL` (which the schema forbids) reads as the epoch.
pub(crate) fn get_ts_required(row: &Row<'_>, idx: usize) -> duckdb::Result<DateTime<Utc>> {
    Ok(get_ts(row, idx)?.unwrap_or(DateTime::UNIX_EPOCH))
}

/// Parses stored JSON text; text that is not JSON comes back as a JSON string.
pub(crate) fn parse_json(text: Option<String>) -> Option<Value> {
    text.map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s)))
}

pub(crate) fn parse_broker(s: &str) -> Result<Broker, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("unknown broker {s:?} in the database")))
}

pub(crate) fn parse_state(s: &str) -> Result<TaskState, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("unknown task state {s:?} in the database")))
}

/// The columns of `tasks`, in the order [`task_params`] binds them and [`read_task`] reads them.
pub(crate) const TASK_COLUMNS: &str =
    "broker, id, queue, name, state, args, kwargs, result, error, \
     traceback, retries, worker, eta, enqueued_at, started_at, finished_at, runtime_ms, updated_at, \
     fingerprint";

/// A task as the 19 values of [`TASK_COLUMNS`].
pub(crate) fn task_params(t: &Task) -> [DbValue; 19] {
    [
        DbValue::Text(t.broker.as_str().to_string()),
        DbValue::Text(t.id.clone()),
        opt_text(&t.queue),
        opt_text(&t.name),
        DbValue::Text(t.state.as_str().to_string()),
        opt_json(&t.args),
        opt_json(&t.kwargs),
        opt_json(&t.result),
        opt_text(&t.error),
        opt_text(&t.traceback),
        DbValue::Int(i32::try_from(t.retries).unwrap_or(i32::MAX)),
        opt_text(&t.worker),
        opt_ts(t.eta),
        opt_ts(t.enqueued_at),
        opt_ts(t.started_at),
        opt_ts(t.finished_at),
        match t.runtime_ms {
            Some(ms) => DbValue::Double(ms),
            None => DbValue::Null,
        },
        DbValue::Timestamp(TimeUnit::Microsecond, t.updated_at.timestamp_micros()),
        opt_text(&t.fingerprint),
    ]
}

/// Reads a task from a row whose first 19 columns are [`TASK_COLUMNS`].
pub(crate) fn read_task(row: &Row<'_>) -> Result<Task, StoreError> {
    let broker: String = row.get(0)?;
    let state: String = row.get(4)?;
    let retries: i64 = row.get(10)?;
    Ok(Task {
        broker: parse_broker(&broker)?,
        id: row.get(1)?,
        queue: row.get(2)?,
        name: row.get(3)?,
        state: parse_state(&state)?,
        args: parse_json(row.get(5)?),
        kwargs: parse_json(row.get(6)?),
        result: parse_json(row.get(7)?),
        error: row.get(8)?,
        traceback: row.get(9)?,
        retries: u32::try_from(retries.max(0)).unwrap_or(u32::MAX),
        worker: row.get(11)?,
        eta: get_ts(row, 12)?,
        enqueued_at: get_ts(row, 13)?,
        started_at: get_ts(row, 14)?,
        finished_at: get_ts(row, 15)?,
        runtime_ms: row.get(16)?,
        updated_at: get_ts_required(row, 17)?,
        fingerprint: row.get(18)?,
    })
}

/// The columns of `transitions` a timeline needs, in the order [`read_transition`] reads them.
pub(crate) const TRANSITION_COLUMNS: &str = "broker, task_id, state, occurred_at, worker, detail";

pub(crate) fn read_transition(row: &Row<'_>) -> Result<Transition, StoreError> {
    let broker: String = row.get(0)?;
    let state: String = row.get(2)?;
    Ok(Transition {
        broker: parse_broker(&broker)?,
        task_id: row.get(1)?,
        state: parse_state(&state)?,
        at: get_ts_required(row, 3)?,
        worker: row.get(4)?,
        detail: row.get(5)?,
        fingerprint: None,
    })
}

/// The position of a task in the task list (`updated_at` desc, then broker, id): an opaque,
/// URL-safe cursor (lower-case hex of `micros:broker:id`).
pub(crate) fn encode_cursor(t: &Task) -> String {
    let raw = format!("{}:{}:{}", t.updated_at.timestamp_micros(), t.broker, t.id);
    let mut out = String::with_capacity(raw.len() * 2);
    for b in raw.bytes() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Where the previous page ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cursor {
    pub updated_at: DateTime<Utc>,
    pub broker: Broker,
    pub id: String,
}

pub(crate) fn decode_cursor(cursor: &str) -> Result<Cursor, StoreError> {
    let bad = || StoreError::BadCursor(cursor.chars().take(80).collect());
    if cursor.len() % 2 == 1 {
        return Err(bad());
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = cursor
        .as_bytes()
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let raw = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = raw.splitn(3, ':');
    let (Some(micros), Some(broker), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    Ok(Cursor {
        updated_at: micros
            .parse::<i64>()
            .ok()
            .and_then(micros_to_time)
            .ok_or_else(bad)?,
        broker: broker.parse().map_err(|_| bad())?,
        id: id.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_ids_with_colons() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let t = Task::new(Broker::Rq, "a:b:c", at);
        let c = decode_cursor(&encode_cursor(&t)).unwrap();
        assert_eq!(
            c,
            Cursor {
                updated_at: at,
                broker: Broker::Rq,
                id: "a:b:c".into()
            }
        );
    }

    #[test]
    fn garbage_cursors_are_bad_cursors() {
        for c in ["", "zz", "abc", "3a3a", "313a6e6f3a78"] {
            assert!(
                matches!(decode_cursor(c), Err(StoreError::BadCursor(_))),
                "{c}"
            );
        }
    }

    #[test]
    fn unparseable_json_reads_back_as_a_string() {
        assert_eq!(
            parse_json(Some("{not json".into())),
            Some(Value::String("{not json".into()))
        );
        assert_eq!(
            parse_json(Some("[1,2]".into())),
            Some(serde_json::json!([1, 2]))
        );
    }
}
