//! Failure groups: `GET /api/failures/groups` and the `/failures` page, both over the same
//! window and filters as the reports (`since`, `until`, `range`, `step`, `broker`, `queue`,
//! `name`) plus `state`: `open` (default: groups with a failure or retry in the window) or `all`
//! (also the groups seen before it, quiet in it).

use super::pages::{report_window, PageError};
use super::reports::{merge, window_json, ReportParams};
use super::{ApiError, AppState, VERSION};
use crate::store::{FailureGroup, GroupState, MAX_GROUPS};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker_adapters::rfc3339;
use chrono::Utc;
use serde_json::{json, Value};

/// Groups a page shows.
const PAGE_GROUPS: usize = 50;

fn group_state(params: &ReportParams) -> Result<GroupState, ApiError> {
    match params.state.as_deref().map(str::trim) {
        None | Some("") | Some("open") => Ok(GroupState::Open),
        Some("all") => Ok(GroupState::All),
        Some(other) => Err(ApiError::bad_request(format!(
            "state={other:?}: expected open or all"
        ))),
    }
}

fn group_json(g: &FailureGroup) -> Value {
    json!({
        "fingerprint": g.fingerprint,
        "exception": g.exception,
        "message": g.message,
        "frames": g.frames,
        "count": g.count,
        "first_seen": g.first_seen.as_ref().map(rfc3339),
        "last_seen": g.last_seen.as_ref().map(rfc3339),
        "names": g.names,
        "brokers": g.brokers,
        "sample_task_id": g.sample_task_id,
        "points": g.points.iter().map(|(at, n)| json!([rfc3339(at), n])).collect::<Vec<_>>(),
    })
}

/// `GET /api/failures/groups`.
pub async fn groups(
    State(state): State<AppState>,
    Query(params): Query<ReportParams>,
) -> Result<Json<Value>, ApiError> {
    let (range, filter) = params.window(Utc::now())?;
    let which = group_state(&params)?;
    let groups = state
        .reader
        .failure_groups(range, filter, which, MAX_GROUPS)
        .await?;
    Ok(Json(merge(
        json!({ "groups": groups.iter().map(group_json).collect::<Vec<_>>() }),
        window_json(&range),
    )))
}

/// `GET /failures`: the last 24 hours unless a window is given.
pub async fn page(
    State(state): State<AppState>,
    Query(mut params): Query<ReportParams>,
) -> Response {
    let unset = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
    if unset(&params.since) && unset(&params.until) && unset(&params.range) {
        params.range = Some("24h".into());
    }
    match view(&state, &params).await {
        Ok(view) => templates::failures(&view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn view(
    state: &AppState,
    params: &ReportParams,
) -> Result<templates::FailuresView, PageError> {
    let (range, filter) = params.window(Utc::now()).map_err(PageError::BadRequest)?;
    let which = group_state(params).map_err(PageError::BadRequest)?;
    let groups = state
        .reader
        .failure_groups(range, filter, which, PAGE_GROUPS)
        .await?;
    Ok(templates::FailuresView {
        version: VERSION.to_string(),
        window: report_window(params, &range),
        all: which == GroupState::All,
        groups: groups
            .into_iter()
            .map(|g| templates::GroupRow {
                fingerprint: g.fingerprint,
                exception: g.exception,
                message: g.message,
                frames: g.frames,
                count: g.count,
                first_seen: g.first_seen,
                last_seen: g.last_seen,
                names: g.names,
                brokers: g.brokers.iter().map(|b| b.as_str().to_string()).collect(),
                sample_task_id: g.sample_task_id,
                counts: g.points.iter().map(|(_, n)| *n).collect(),
            })
            .collect(),
    })
}
