//! The action pages (issue #21): `/audit`, the confirmation pages of destructive actions, and
//! the form posts of the pages' buttons. Each post runs the same code as its API route
//! (`super::actions`), then answers the browser with a redirect (303) to where the result
//! shows, or an error page with the same status.

use super::actions::{self as api, Reply};
use super::{write_guard, AppState, VERSION};
use crate::store::AuditEntry;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use broker_adapters::{Broker, TaskState};

/// The page's action forms (the session's CSRF token), when actions are enabled.
pub fn forms(state: &AppState, headers: &HeaderMap) -> Option<templates::ActionForms> {
    state.actions.enabled().then(|| templates::ActionForms {
        csrf: write_guard::csrf_for(state, headers),
    })
}

/// A journal entry as the pages show it.
pub fn action_line(e: &AuditEntry) -> templates::ActionLine {
    templates::ActionLine {
        id: e.id,
        at: e.at,
        who: e.who.clone(),
        action: e.action.clone(),
        broker: e.broker.clone(),
        queue: e.queue.clone(),
        target: e.target.clone(),
        arguments: e.arguments.as_ref().map(|a| a.to_string()),
        new_task_id: e.new_task_id.clone(),
        outcome: e.outcome.as_str().to_string(),
        error: e.error.clone(),
        count: e.count,
    }
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (status, templates::error_page(VERSION, message)).into_response()
}

fn see_other(path: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&templates::url(path)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// A write's reply for a browser: on success a redirect to `to(reply)`, else an error page.
fn browser(reply: Reply, to: impl FnOnce(&Reply) -> String) -> Response {
    if reply.status.is_success() {
        return see_other(&to(&reply));
    }
    let message = reply
        .error_message()
        .unwrap_or("the action failed")
        .to_string();
    let mut response = error_page(
        reply.status,
        &format!("The action was not done: {message}."),
    );
    if let Some(secs) = reply.retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

fn new_task_path(reply: &Reply) -> Option<String> {
    reply
        .entry()
        .and_then(|e| e.get("new_task_id"))
        .and_then(|v| v.as_str())
        .map(|id| format!("/tasks/{}", templates::format::encode_component(id)))
}

/// `GET /audit`: the journal, newest first, with filters and the run form.
pub async fn audit(
    State(state): State<AppState>,
    Query(params): Query<api::AuditParams>,
    headers: HeaderMap,
) -> Response {
    let query = match api::audit_query(&params) {
        Ok(q) => q,
        Err(e) => return error_page(e.status, &e.message),
    };
    let page = match state.reader.audit(&query).await {
        Ok(p) => p,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let filters = params.filters();
    let next_href = page.next_cursor.as_ref().map(|c| {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (k, v) in [
            ("action", &filters.action),
            ("who", &filters.who),
            ("since", &filters.since),
            ("until", &filters.until),
        ] {
            if let Some(v) = v {
                pairs.push((k, v.as_str()));
            }
        }
        pairs.push(("cursor", c.as_str()));
        templates::url(&format!("/audit?{}", templates::format::query(pairs)))
    });
    templates::audit_page(&templates::AuditView {
        version: VERSION.to_string(),
        filters,
        entries: page.entries.iter().map(action_line).collect(),
        next_href,
        forms: forms(&state, &headers),
    })
    .into_response()
}

/// `POST /audit/run`: the run form -> the new task's page.
pub async fn run(State(state): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Response {
    let reply = api::run_core(&state, &headers, &bytes).await;
    browser(reply, |r| {
        new_task_path(r).unwrap_or_else(|| "/audit".into())
    })
}

/// `POST /tasks/{id}/retry` -> the retry's page.
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let reply = api::retry_core(&state, id, &headers, &bytes).await;
    browser(reply, |r| {
        new_task_path(r).unwrap_or_else(|| "/audit".into())
    })
}

fn confirm(
    state: &AppState,
    headers: &HeaderMap,
    title: &str,
    question: String,
    action_path: String,
    button: &str,
    cancel_path: String,
) -> Response {
    let Some(forms) = forms(state, headers) else {
        return error_page(
            StatusCode::FORBIDDEN,
            "Actions are disabled: start taskscope with --allow-actions (and --auth-token or --trusted-user-header).",
        );
    };
    templates::confirm_page(&templates::ConfirmView {
        version: VERSION.to_string(),
        title: title.to_string(),
        question,
        action_path,
        button: button.to_string(),
        cancel_path,
        forms,
    })
    .into_response()
}

/// `GET /tasks/{id}/revoke|delete`: the confirmation page.
pub async fn confirm_task(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let task = match state.reader.get_task(&id).await {
        Ok(Some((task, _))) => task,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("No task with id {id:?}.")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let name = task.name.as_deref().unwrap_or("(unnamed task)");
    let queue = task.queue.as_deref().unwrap_or("?");
    let path = format!("/tasks/{}", templates::format::encode_component(&task.id));
    match action.as_str() {
        "delete" => confirm(
            &state,
            &headers,
            "Delete a waiting task",
            format!(
                "Delete {} task {name} ({}) from queue {queue}? Its message is removed from Redis: no worker will run it.",
                task.broker.as_str(),
                task.id
            ),
            format!("{path}/delete"),
            "Delete",
            path,
        ),
        "revoke" => confirm(
            &state,
            &headers,
            if task.state == TaskState::Running { "Stop a running task" } else { "Revoke a task" },
            format!(
                "{} {} task {name} ({})? {}",
                if task.state == TaskState::Running { "Stop" } else { "Revoke" },
                task.broker.as_str(),
                task.id,
                if task.broker == Broker::Celery {
                    "Every worker is told to revoke it (a running one is terminated with SIGTERM)."
                } else {
                    "Its worker kills the process running it; the job ends stopped."
                }
            ),
            format!("{path}/revoke"),
            if task.state == TaskState::Running { "Stop" } else { "Revoke" },
            path,
        ),
        other => error_page(StatusCode::NOT_FOUND, &format!("No action {other:?} on tasks.")),
    }
}

/// `POST /tasks/{id}/revoke|delete` -> back to the task.
pub async fn post_task(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let back = format!("/tasks/{}", templates::format::encode_component(&id));
    match action.as_str() {
        "revoke" => {
            let reply = api::revoke_core(&state, id, &headers, &bytes).await;
            browser(reply, |_| back)
        }
        "delete" => {
            let task = match state.reader.get_task(&id).await {
                Ok(Some((task, _))) => task,
                Ok(None) => {
                    return error_page(StatusCode::NOT_FOUND, &format!("No task with id {id:?}."))
                }
                Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
            let queue = task.queue.clone().unwrap_or_default();
            let reply = api::delete_core(
                &state,
                task.broker.as_str().to_string(),
                queue,
                id,
                &headers,
                &bytes,
            )
            .await;
            browser(reply, |_| back)
        }
        other => error_page(
            StatusCode::NOT_FOUND,
            &format!("No action {other:?} on tasks."),
        ),
    }
}

/// `GET /queues/{broker}/{queue}/purge`: the confirmation page, with the queue's count.
pub async fn confirm_purge(
    State(state): State<AppState>,
    Path((broker, queue)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let sample = match state.reader.queues().await {
        Ok(all) => all
            .into_iter()
            .find(|q| q.broker.as_str() == broker && q.name == queue),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let count = match &sample {
        Some(s) => format!(
            "{} waiting message{} (as sampled {})",
            s.length,
            if s.length == 1 { "" } else { "s" },
            templates::format::short_time(&s.sampled_at, &chrono::Utc::now())
        ),
        None => "every waiting message (no sample of this queue yet)".to_string(),
    };
    confirm(
        &state,
        &headers,
        "Purge a queue",
        format!("Purge {count} from {broker} queue {queue}? They are removed from Redis: no worker will run them."),
        format!(
            "/queues/{}/{}/purge",
            templates::format::encode_component(&broker),
            templates::format::encode_component(&queue)
        ),
        "Purge",
        "/queues".into(),
    )
}

/// `POST /queues/{broker}/{queue}/purge` -> the journal.
pub async fn purge(
    State(state): State<AppState>,
    Path((broker, queue)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let reply = api::purge_core(&state, broker, queue, &headers, &bytes).await;
    browser(reply, |_| "/audit".into())
}

/// `GET /tasks/bulk/{action}?<filters>`: the confirmation page with the count of tasks the
/// bulk action would touch.
pub async fn confirm_bulk(
    State(state): State<AppState>,
    Path(action): Path<String>,
    Query(filters): Query<super::query::TaskFilterParams>,
    headers: HeaderMap,
) -> Response {
    let tasks = match api::bulk_targets(&state, &action, &filters).await {
        Ok(t) => t,
        Err((status, message)) => return error_page(status, &message),
    };
    let what = if action == "retry" {
        "failed or abandoned"
    } else {
        "waiting"
    };
    let q = match templates::format::query(filters_pairs(&filters)) {
        q if q.is_empty() => q,
        q => format!("?{q}"),
    };
    confirm(
        &state,
        &headers,
        if action == "retry" {
            "Retry tasks"
        } else {
            "Delete tasks"
        },
        format!(
            "{} the {} {what} task{} matching these filters{}?",
            if action == "retry" { "Retry" } else { "Delete" },
            tasks.len(),
            if tasks.len() == 1 { "" } else { "s" },
            if tasks.len() >= api::BULK_MAX {
                " (the first 1000)"
            } else {
                ""
            },
        ),
        format!("/tasks/bulk/{action}{q}"),
        if action == "retry" {
            "Retry all"
        } else {
            "Delete all"
        },
        format!("/tasks{q}"),
    )
}

fn filters_pairs(f: &super::query::TaskFilterParams) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    for (k, v) in [
        ("broker", &f.broker),
        ("queue", &f.queue),
        ("name", &f.name),
        ("state", &f.state),
        ("q", &f.q),
        ("since", &f.since),
        ("until", &f.until),
        ("fingerprint", &f.fingerprint),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            out.push((k, v));
        }
    }
    out
}

/// `POST /tasks/bulk/{action}?<filters>` -> the journal.
pub async fn bulk(
    State(state): State<AppState>,
    Path(action): Path<String>,
    Query(filters): Query<super::query::TaskFilterParams>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let reply = api::bulk_core(&state, action, &filters, false, &headers, &bytes).await;
    browser(reply, |_| "/audit".into())
}

/// `POST /queues/{broker}/{queue}/pause|resume` -> back to the queues.
pub async fn pause_or_resume(
    State(state): State<AppState>,
    Path((broker, queue, verb)): Path<(String, String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let paused = match verb.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!("No action {other:?} on queues."),
            )
        }
    };
    let reply = api::pause_core(&state, broker, queue, paused, &headers, &bytes).await;
    browser(reply, |_| "/queues".into())
}
