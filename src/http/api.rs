//! The JSON API of the contract (`/healthz`, `/api/...`).

use super::query::{parse_time_filter, TaskFilterParams};
use super::{ApiError, AppState, VERSION};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use broker_adapters::QueueSample;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// `--brokers auto` in `/healthz`: what was found, from which key, and how much was looked at.
fn detection_json(d: &crate::metrics::Detection) -> Value {
    json!({
        "mode": if d.enabled { "auto" } else { "listed" },
        "passes": d.passes,
        "keys_examined": d.keys_examined,
        "new_keys": d.new_keys,
        "new_keys_skipped": d.new_keys_skipped,
        "last_pass": d.last_pass.map(|t| broker_adapters::rfc3339(&t)),
        "found": d.found.iter().map(|f| json!({
            "broker": f.broker.as_str(),
            "key": f.key,
            "setting": f.setting,
            "at": broker_adapters::rfc3339(&f.at),
            "via": f.via.as_str(),
            "watching_after_ms": f.watching_after_ms,
        })).collect::<Vec<_>>(),
    })
}

/// `GET /healthz`: liveness for anyone; the counters only for a caller with the token (or,
/// without a token, for an allowed `Host`).
pub async fn healthz(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Json<Value> {
    let redis = if state.metrics.redis_connected() {
        "connected"
    } else {
        "disconnected"
    };
    if !super::auth::is_trusted(&state, &headers, &uri) {
        return Json(json!({ "status": "ok", "redis": redis, "version": VERSION }));
    }
    let writer = state.writer.stats();
    let feed = match state.metrics.change_feed() {
        crate::metrics::ChangeFeed::Unknown => "unknown",
        crate::metrics::ChangeFeed::Notifications => "notifications",
        crate::metrics::ChangeFeed::Polling => "polling",
    };
    Json(json!({
        "status": "ok",
        "redis": redis,
        "version": VERSION,
        "brokers": state.metrics.brokers().iter().map(|b| b.as_str()).collect::<Vec<_>>(),
        "detection": detection_json(&state.metrics.detection()),
        "housekeeping": state.metrics.housekeeping().iter().map(|r| json!({
            "job": r.job,
            "last_run": r.started_at.map(|t| broker_adapters::rfc3339(&t)),
            "duration_ms": r.duration_ms,
            "rows": r.rows,
            "detail": r.detail,
            "error": r.error,
            "next_run": r.next_at.map(|t| broker_adapters::rfc3339(&t)),
        })).collect::<Vec<_>>(),
        "change_feed": feed,
        "decode_errors": state.metrics.decode_errors_total(),
        "ingest_events": state.metrics.ingest_events().into_iter()
            .map(|(source, n)| (source.as_str().to_string(), json!(n)))
            .collect::<serde_json::Map<String, Value>>(),
        "redis_commands": state.metrics.redis_commands.load(Ordering::Relaxed),
        "redis_round_trips": state.metrics.redis_round_trips.load(Ordering::Relaxed),
        "lagged_events": state.metrics.lagged_events.load(Ordering::Relaxed),
        "subscriber_backlog_max": state.metrics.subscriber_backlog_max.load(Ordering::Relaxed),
        "store": {
            "observations_applied": writer.observations_applied.load(Ordering::Relaxed),
            "transitions_written": writer.transitions_written.load(Ordering::Relaxed),
            "task_rows_replaced": writer.task_rows_replaced.load(Ordering::Relaxed),
            "running_in_memory": writer.running_in_memory.load(Ordering::Relaxed),
            "running_parked": writer.running_parked.load(Ordering::Relaxed),
            "batches": writer.batches.load(Ordering::Relaxed),
            "batch_errors": writer.batch_errors.load(Ordering::Relaxed),
            "dropped": writer.dropped.load(Ordering::Relaxed),
            "unflushed": writer.unflushed.load(Ordering::Relaxed),
            "throttled_ms": writer.throttled_ms.load(Ordering::Relaxed),
            "backlog": state.writer.backlog(),
            "backlog_observations": state.writer.backlog_observations(),
        },
    }))
}

pub async fn list_tasks(
    State(state): State<AppState>,
    Query(params): Query<TaskFilterParams>,
) -> Result<Json<Value>, ApiError> {
    let query = params.to_query(Utc::now())?;
    let page = state.reader.list_tasks(&query).await?;
    Ok(Json(
        json!({ "tasks": page.tasks, "next_cursor": page.next_cursor }),
    ))
}

pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some((task, transitions)) = state.reader.get_task(&id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task with id {id:?}"),
        ));
    };
    let mut value = serde_json::to_value(&task)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // The actions taken on it or that created it (issue #21): retries link both tasks.
    let actions = state.reader.audit_for_task(&task.id).await?;
    if let Value::Object(map) = &mut value {
        map.insert("transitions".into(), json!(transitions));
        map.insert("actions".into(), json!(actions));
    }
    Ok(Json(value))
}

/// `/api/queues`: each queue's latest sample, with `oldest_age_ms` (the age now of its oldest
/// waiting message, `null` when unknown).
pub async fn queues(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let queues = state.reader.queues().await?;
    Ok(Json(queues_json(&queues, Utc::now())))
}

/// The answer of `/api/queues` (also `taskscope inspect queues --json`): each latest sample
/// with `oldest_age_ms` as of `now`.
pub fn queues_json(queues: &[QueueSample], now: chrono::DateTime<Utc>) -> Value {
    let queues: Vec<Value> = queues
        .iter()
        .map(|q| {
            let mut value = json!(q);
            if let Value::Object(map) = &mut value {
                map.insert("oldest_age_ms".into(), json!(q.oldest_age_ms(now)));
            }
            value
        })
        .collect();
    json!({ "queues": queues })
}

pub async fn workers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let abandon_after =
        chrono::Duration::from_std(state.abandon_after).unwrap_or(chrono::Duration::MAX);
    Ok(Json(
        json!({ "workers": state.reader.workers(Utc::now(), abandon_after).await? }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct StatsParams {
    since: Option<String>,
}

pub async fn stats(
    State(state): State<AppState>,
    Query(params): Query<StatsParams>,
) -> Result<Json<Value>, ApiError> {
    let since = params
        .since
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_time_filter("since", s, Utc::now()))
        .transpose()?;
    let stats = state.reader.stats(since).await?;
    let by_state: serde_json::Map<String, Value> = stats
        .by_state
        .iter()
        .map(|(s, n)| (s.as_str().to_string(), json!(n)))
        .collect();
    let by_broker: serde_json::Map<String, Value> = stats
        .by_broker
        .iter()
        .map(|(b, n)| (b.as_str().to_string(), json!(n)))
        .collect();
    Ok(Json(
        json!({ "by_state": by_state, "by_broker": by_broker }),
    ))
}

/// `GET /api/events`: Server-Sent Events, one `transition` event per state change, data = the
/// task after it. A client too slow to keep up gets a `lagged` event with the number it missed
/// (then it should re-read `/api/tasks`). At most `--max-sse-clients` streams at once (503
/// past that); every stream ends when taskscope shuts down.
pub async fn events(
    State(state): State<AppState>,
) -> Result<
    axum::response::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
    let slot = state.sse_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many live streams ({} open, --max-sse-clients); close a tab or try again later",
                state.limits.max_sse_clients
            ),
        )
    })?;
    let mut shutdown = state.shutdown.clone();
    let stopping = async move {
        // A dropped sender (tests) means "never".
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let stream = BroadcastStream::new(state.writer.subscribe()).map(move |item| {
        // The slot is held for as long as the stream lives.
        let _slot = &slot;
        Ok(match item {
            Ok(ev) => Event::default()
                .event("transition")
                .json_data(ev.task.as_ref())
                .unwrap_or_else(|_| Event::default().event("error")),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                Event::default().event("lagged").data(n.to_string())
            }
        })
    });
    Ok(Sse::new(stream.take_until(stopping)).keep_alive(KeepAlive::default()))
}

/// `GET /export.csv`: every task matching the `/api/tasks` filters as CSV with a header row,
/// streamed from the store chunk by chunk (the cursor and limit are ignored).
pub async fn export_csv(
    State(state): State<AppState>,
    Query(params): Query<TaskFilterParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    use futures::StreamExt;
    let mut query = params.to_query(Utc::now())?;
    query.cursor = None;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    state
        .reader
        .export_csv(query, tx, state.limits.stream_send_timeout);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string())));
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"taskscope-tasks.csv\"",
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
