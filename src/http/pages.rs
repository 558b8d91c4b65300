//! The server-rendered pages (`/`, `/tasks`, `/tasks/{id}`, `/reports`, `/queues`, `/workers`);
//! markup lives in `templates`. Handlers read the store and turn its answers into view structs
//! (dense chart series, window links); templates only draw.

use super::query::TaskFilterParams;
use super::reports::{ReportParams, TOP_ROWS};
use super::{AppState, VERSION};
use crate::store::{NameOrder, ReportRange};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use broker_adapters::TaskState;
use chrono::Utc;

const RECENT_ON_OVERVIEW: usize = 20;

fn failed(error: crate::store::StoreError) -> Response {
    // Too many queries at once is a moment's congestion, not a fault: 503, no error log.
    let status = if matches!(error, crate::store::StoreError::Busy(_)) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        tracing::error!(error = %error, "Page query failed.");
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (
        status,
        templates::error_page(VERSION, &format!("The history could not be read: {error}")),
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

/// `/`: counts, the charts of the window in the query (default: the last hour), queues,
/// workers and recent tasks.
pub async fn overview(
    State(state): State<AppState>,
    Query(chart_params): Query<ReportParams>,
) -> Response {
    let now = Utc::now();
    let abandon_after =
        chrono::Duration::from_std(state.abandon_after).unwrap_or(chrono::Duration::MAX);
    let (stats, queues, workers, recent, charts) = tokio::join!(
        state.reader.stats(None),
        state.reader.queues(),
        state.reader.workers(now, abandon_after),
        state.reader.recent_tasks(RECENT_ON_OVERVIEW),
        chart_set(&state, &chart_params, now),
    );
    let charts = match charts {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
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
        charts: Some(charts),
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
        alerts: super::alerts::overview_lines(&state.alerts),
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
            bulk_actions: state.actions.enabled(),
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

pub async fn task_detail(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    match state.reader.get_task(&id).await {
        Ok(Some((task, transitions))) => {
            let actions = match state.reader.audit_for_task(&task.id).await {
                Ok(entries) => entries
                    .iter()
                    .map(super::action_pages::action_line)
                    .collect(),
                Err(e) => return failed(e),
            };
            templates::task_detail(&templates::TaskDetailView {
                version: VERSION.to_string(),
                task,
                transitions,
                actions,
                forms: super::action_pages::forms(&state, &headers),
            })
            .into_response()
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            templates::not_found(VERSION, &format!("No task with id {id:?} has been seen.")),
        )
            .into_response(),
        Err(e) => failed(e),
    }
}

/// Reads the backlog, throughput and failure charts of the window `params` describe.
async fn chart_set(
    state: &AppState,
    params: &ReportParams,
    now: chrono::DateTime<Utc>,
) -> Result<templates::ChartSet, PageError> {
    let (range, filter) = params.window(now).map_err(PageError::BadRequest)?;
    let (backlog, throughput, failures) = tokio::join!(
        state.reader.backlog(range, filter.clone()),
        state.reader.throughput(range, filter.clone()),
        state.reader.failures(range, filter, 0),
    );
    let (backlog, throughput, failures) = (backlog?, throughput?, failures?);
    let window = report_window(params, &range);
    let axis = &window.axis;
    let brokers: std::collections::BTreeSet<_> = backlog.iter().map(|s| s.broker).collect();
    let backlog = backlog
        .iter()
        .enumerate()
        .map(|(i, s)| templates::charts::LineSeries {
            label: if brokers.len() > 1 {
                format!("{}/{}", s.broker, s.queue)
            } else {
                s.queue.clone()
            },
            class: format!("series-{}", i % 8),
            points: s.points.iter().map(|p| (p.at, p.length)).collect(),
        })
        .collect();
    let dense = |points: Vec<u64>| -> Vec<u64> {
        let mut v = points;
        v.resize(axis.count, 0);
        v
    };
    // Stacked from the bottom: outcomes first, then what is still moving.
    let order = [
        TaskState::Success,
        TaskState::Failure,
        TaskState::Retried,
        TaskState::Abandoned,
        TaskState::Running,
        TaskState::Queued,
    ];
    let throughput = order
        .iter()
        .filter_map(|st| throughput.iter().find(|s| s.state == *st))
        .map(|s| templates::charts::BarSeries {
            label: s.state.as_str().to_string(),
            class: format!("state-{}", s.state.as_str()),
            values: dense(s.points.iter().map(|(_, n)| *n).collect()),
        })
        .collect();
    let total = &failures.total.points;
    let failures = vec![
        templates::charts::BarSeries {
            label: "failure".into(),
            class: "state-failure".into(),
            values: dense(total.iter().map(|(_, f, _)| *f).collect()),
        },
        templates::charts::BarSeries {
            label: "retried".into(),
            class: "state-retried".into(),
            values: dense(total.iter().map(|(_, _, r)| *r).collect()),
        },
    ];
    Ok(templates::ChartSet {
        window,
        backlog,
        throughput,
        failures,
    })
}

pub(super) fn report_window(params: &ReportParams, range: &ReportRange) -> templates::ReportWindow {
    let own = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let since_text = own(&params.since);
    let until_text = own(&params.until);
    let range_key = match (&since_text, &until_text, own(&params.range)) {
        (None, None, None) => Some("1h".to_string()),
        (None, None, Some(r)) if templates::reports::RANGES.iter().any(|(k, _)| *k == r) => Some(r),
        (None, None, Some(r)) => {
            // An unusual range keeps working, shown as custom.
            return templates::ReportWindow {
                range: None,
                since_text: Some(r),
                ..report_window(&ReportParams::default(), range)
            };
        }
        _ => None,
    };
    let first = range.first_bucket_us();
    templates::ReportWindow {
        since: range.since,
        until: range.until,
        axis: templates::charts::TimeAxis {
            start: chrono::DateTime::from_timestamp_micros(first).unwrap_or(range.since),
            step_ms: range.step_us / 1_000,
            count: usize::try_from(range.buckets()).unwrap_or(0),
        },
        range: range_key,
        since_text,
        until_text,
        broker: own(&params.broker),
        queue: own(&params.queue),
        name: own(&params.name),
    }
}

/// Why a page could not be drawn.
pub(super) enum PageError {
    BadRequest(super::ApiError),
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        PageError::Store(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::BadRequest(e) => (
                StatusCode::BAD_REQUEST,
                templates::error_page(VERSION, &e.message),
            )
                .into_response(),
            PageError::Store(e) => failed(e),
        }
    }
}

fn name_rows(rows: Vec<crate::store::NameStats>) -> Vec<templates::NameRow> {
    rows.into_iter()
        .map(|n| templates::NameRow {
            name: n.name,
            runs: n.runs,
            failures: n.failures,
            retries: n.retries,
            failure_rate: n.failure_rate,
        })
        .collect()
}

/// `/reports`: the charts of the window, runtime percentiles and the top lists.
pub async fn reports(
    State(state): State<AppState>,
    Query(params): Query<ReportParams>,
) -> Response {
    match reports_view(&state, &params).await {
        Ok(view) => templates::reports(&view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn reports_view(
    state: &AppState,
    params: &ReportParams,
) -> Result<templates::ReportsView, PageError> {
    let now = Utc::now();
    let (range, filter) = params.window(now).map_err(PageError::BadRequest)?;
    let (since, until) = (range.since, range.until);
    let r = &state.reader;
    let (charts, by_name, runtime, wait, failing, frequent, retried) = tokio::join!(
        chart_set(state, params, now),
        r.failures(range, filter.clone(), super::reports::TOP_NAMES),
        r.runtime(since, until, filter.clone(), TOP_ROWS),
        r.wait(since, until, filter.clone(), TOP_ROWS),
        r.name_stats(since, until, filter.clone(), NameOrder::Failures, TOP_ROWS),
        r.name_stats(since, until, filter.clone(), NameOrder::Runs, TOP_ROWS),
        r.name_stats(since, until, filter, NameOrder::Retries, TOP_ROWS),
    );
    let charts = charts?;
    let count = charts.window.axis.count;
    let failures_by_name = by_name?
        .series
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut values: Vec<u64> = s.points.iter().map(|(_, f, r)| f + r).collect();
            values.resize(count, 0);
            templates::charts::BarSeries {
                label: s.name.unwrap_or_else(|| "(unnamed)".into()),
                class: format!("series-{}", i % 8),
                values,
            }
        })
        .collect();
    Ok(templates::ReportsView {
        version: VERSION.to_string(),
        charts,
        failures_by_name,
        runtime: runtime?
            .into_iter()
            .map(|r| templates::RuntimeRow {
                broker: r.broker.as_str().to_string(),
                name: r.name,
                count: r.count,
                p50_ms: r.p50_ms,
                p95_ms: r.p95_ms,
                p99_ms: r.p99_ms,
                max_ms: r.max_ms,
                mean_ms: r.mean_ms,
            })
            .collect(),
        wait: wait?
            .into_iter()
            .map(|r| templates::WaitRow {
                broker: r.broker.as_str().to_string(),
                queue: r.queue,
                name: r.name,
                count: r.count,
                p50_ms: r.p50_ms,
                p95_ms: r.p95_ms,
                p99_ms: r.p99_ms,
                max_ms: r.max_ms,
            })
            .collect(),
        top_failing: name_rows(failing?),
        most_frequent: name_rows(frequent?),
        most_retried: name_rows(retried?),
    })
}

/// `/queues`: a card per queue with its latest counts and its backlog over the window.
pub async fn queues(
    State(state): State<AppState>,
    Query(params): Query<ReportParams>,
    headers: axum::http::HeaderMap,
) -> Response {
    let now = Utc::now();
    let result: Result<templates::QueuesView, PageError> = async {
        let (range, filter) = params.window(now).map_err(PageError::BadRequest)?;
        let abandon_after =
            chrono::Duration::from_std(state.abandon_after).unwrap_or(chrono::Duration::MAX);
        let (latest, workers, backlog) = tokio::join!(
            state.reader.queues(),
            state.reader.workers(now, abandon_after),
            state.reader.backlog(range, filter),
        );
        let (latest, workers, backlog) = (latest?, workers?, backlog?);
        let cards = latest
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                let points = backlog
                    .iter()
                    .find(|s| s.broker == q.broker && s.queue == q.name)
                    .map(|s| s.points.iter().map(|p| (p.at, p.length)).collect())
                    .unwrap_or_default();
                templates::QueueCard {
                    backlog: templates::charts::LineSeries {
                        label: "waiting".into(),
                        class: format!("series-{}", i % 8),
                        points,
                    },
                    latest: q,
                }
            })
            .collect();
        Ok(templates::QueuesView {
            version: VERSION.to_string(),
            window: report_window(&params, &range),
            queues: cards,
            workers,
            forms: super::action_pages::forms(&state, &headers),
        })
    }
    .await;
    match result {
        Ok(view) => templates::queues(&view).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `/workers`: every worker seen, and a warning only when messages wait with none alive.
pub async fn workers(State(state): State<AppState>) -> Response {
    let abandon_after =
        chrono::Duration::from_std(state.abandon_after).unwrap_or(chrono::Duration::MAX);
    let (workers, queues) = tokio::join!(
        state.reader.workers(Utc::now(), abandon_after),
        state.reader.queues(),
    );
    match (workers, queues) {
        (Ok(workers), Ok(queues)) => templates::workers(&templates::WorkersView {
            version: VERSION.to_string(),
            workers,
            queues,
        })
        .into_response(),
        (Err(e), _) | (_, Err(e)) => failed(e),
    }
}
