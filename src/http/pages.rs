//! The server-rendered pages (`/`, `/tasks`, `/tasks/{id}`); markup lives in `templates`.

use super::query::TaskFilterParams;
use super::{AppState, VERSION};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

const RECENT_ON_OVERVIEW: usize = 20;

fn failed(message: impl std::fmt::Display) -> Response {
    tracing::error!(error = %message, "Page query failed.");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        templates::error_page(
            VERSION,
            &format!("The history could not be read: {message}"),
        ),
    )
        .into_response()
}

/// The active brokers, with `(detected)` for those `--brokers auto` found in Redis.
fn broker_chips(metrics: &crate::metrics::Metrics) -> Vec<String> {
    let detection = metrics.detection();
    metrics
        .brokers()
        .iter()
        .map(|b| match detection.found.iter().find(|f| f.broker == *b) {
            Some(found) => format!("{b} (detected: {})", found.key),
            None => b.as_str().to_string(),
        })
        .collect()
}

pub async fn overview(State(state): State<AppState>) -> Response {
    let now = Utc::now();
    let abandon_after =
        chrono::Duration::from_std(state.abandon_after).unwrap_or(chrono::Duration::MAX);
    let (stats, queues, workers, recent) = tokio::join!(
        state.reader.stats(None),
        state.reader.queues(),
        state.reader.workers(now, abandon_after),
        state.reader.recent_tasks(RECENT_ON_OVERVIEW),
    );
    let (stats, queues, workers, recent) = match (stats, queues, workers, recent) {
        (Ok(s), Ok(q), Ok(w), Ok(r)) => (s, q, w, r),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return failed(e),
    };
    let view = templates::OverviewView {
        version: VERSION.to_string(),
        redis_connected: state.metrics.redis_connected(),
        brokers: broker_chips(&state.metrics),
        by_state: stats.by_state.into_iter().collect(),
        queues,
        workers,
        recent,
        decode_errors: state.metrics.decode_errors_total(),
        warnings: state.metrics.warnings(),
        housekeeping: state
            .metrics
            .housekeeping()
            .into_iter()
            .map(|r| templates::HousekeepingLine {
                job: r.job,
                last_run: r.started_at,
                duration_ms: r.duration_ms,
                detail: r.detail,
                error: r.error,
                next_run: r.next_at,
            })
            .collect(),
    };
    templates::overview(&view).into_response()
}

pub async fn task_list(
    State(state): State<AppState>,
    Query(params): Query<TaskFilterParams>,
) -> Response {
    let query = match params.to_query(Utc::now()) {
        Ok(q) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                templates::error_page(VERSION, &e.message),
            )
                .into_response()
        }
    };
    match state.reader.list_tasks(&query).await {
        Ok(page) => templates::task_list(&templates::TaskListView {
            version: VERSION.to_string(),
            filters: params.to_view(),
            tasks: page.tasks,
            next_cursor: page.next_cursor,
        })
        .into_response(),
        Err(crate::store::StoreError::BadCursor(c)) => (
            StatusCode::BAD_REQUEST,
            templates::error_page(
                VERSION,
                &format!(
                    "The page link is stale or broken (cursor {c:?}); start from the first page."
                ),
            ),
        )
            .into_response(),
        Err(e) => failed(e),
    }
}

pub async fn task_detail(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.reader.get_task(&id).await {
        Ok(Some((task, transitions))) => templates::task_detail(&templates::TaskDetailView {
            version: VERSION.to_string(),
            task,
            transitions,
        })
        .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            templates::not_found(VERSION, &format!("No task with id {id:?} has been seen.")),
        )
            .into_response(),
        Err(e) => failed(e),
    }
}
