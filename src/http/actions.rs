//! The write routes of issue #21 (`POST /api/tasks`, `POST /api/tasks/{id}/retry|revoke`,
//! `DELETE /api/queues/{broker}/{queue}/messages/{id}`, `POST /api/queues/{broker}/{queue}/purge`, `.../pause`, `.../resume`)
//! and the journal's `GET /api/audit`.
//!
//! Each write goes: rate limit ([`write_guard`], 429 not journaled) -> identity and CSRF/Origin
//! -> the action ([`crate::actions::Actions`]) -> one journal entry through the store writer,
//! whatever the outcome (refused and failed ones too). The answer is the entry (or, for a run,
//! the new task with its entry); an error is `{"error", "entry"}` with its status.

use super::write_guard::{self, Refusal};
use super::{ApiError, AppState};
use crate::actions::{ActionError, RunRequest};
use crate::store::{AuditEntry, AuditOutcome, AuditQuery, NewAuditEntry, TaskQuery};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker_adapters::{Broker, Task};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// A request body: JSON, or a form (the pages' forms); the CSRF field of a form.
struct Body {
    fields: Map<String, Value>,
    csrf: Option<String>,
}

fn parse_body(headers: &HeaderMap, bytes: &Bytes) -> Result<Body, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let mut fields = Map::new();
        let mut csrf = None;
        for (k, v) in form_urlencoded::parse(bytes) {
            if k == write_guard::CSRF_FIELD {
                csrf = Some(v.into_owned());
            } else {
                fields.insert(k.into_owned(), Value::String(v.into_owned()));
            }
        }
        return Ok(Body { fields, csrf });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body {
            fields: Map::new(),
            csrf: None,
        });
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(fields)) => {
            let csrf = fields
                .get(write_guard::CSRF_FIELD)
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok(Body { fields, csrf })
        }
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

/// The journal entry being built for one request.
struct Pending {
    entry: NewAuditEntry,
}

impl Pending {
    fn new(action: &str, who: &str) -> Pending {
        Pending {
            entry: NewAuditEntry {
                at: Utc::now(),
                who: who.to_string(),
                action: action.to_string(),
                broker: None,
                queue: None,
                target: None,
                arguments: None,
                new_task_id: None,
                outcome: AuditOutcome::Ok,
                error: None,
                count: None,
            },
        }
    }
}

fn status_of(e: &ActionError) -> StatusCode {
    match e {
        ActionError::Disabled | ActionError::Forbidden(_) => StatusCode::FORBIDDEN,
        ActionError::Unsupported { .. } | ActionError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ActionError::NotFound(_) => StatusCode::NOT_FOUND,
        ActionError::Conflict(_) => StatusCode::CONFLICT,
        ActionError::Redis(_) => StatusCode::BAD_GATEWAY,
    }
}

/// Journals `pending` with `result`'s outcome; the entry, or an API error if the journal
/// itself failed.
async fn journal(
    state: &AppState,
    mut pending: Pending,
    failure: Option<(StatusCode, String)>,
) -> Result<AuditEntry, ApiError> {
    if let Some((status, message)) = &failure {
        pending.entry.outcome = if *status == StatusCode::BAD_GATEWAY {
            AuditOutcome::Failed
        } else {
            AuditOutcome::Refused
        };
        pending.entry.error = Some(message.clone());
    }
    Ok(state.writer.audit(pending.entry).await?)
}

/// What a write answers: the JSON body with its status (the pages turn it into a redirect or
/// an error page).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// `Retry-After` seconds (429).
    pub retry_after: Option<u64>,
}

impl Reply {
    fn error(e: ApiError) -> Reply {
        Reply {
            status: e.status,
            body: json!({ "error": e.message }),
            retry_after: None,
        }
    }

    /// The error message of a failed write.
    pub fn error_message(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }

    /// The journal entry of a write (success: the body itself, or its `audit`; failure: its
    /// `entry`).
    pub fn entry(&self) -> Option<&Value> {
        if self.status.is_success() {
            Some(self.body.get("audit").unwrap_or(&self.body))
        } else {
            self.body.get("entry")
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// The reply to a write: `ok` on success, else `{"error","entry"}` with its status.
async fn answer(
    state: &AppState,
    pending: Pending,
    result: Result<Value, (StatusCode, String)>,
) -> Reply {
    match result {
        Ok(mut body) => match journal(state, pending, None).await {
            Ok(entry) => {
                if body.is_null() {
                    body = json!(entry);
                } else if let Value::Object(map) = &mut body {
                    map.insert("audit".into(), json!(entry));
                }
                Reply {
                    status: StatusCode::OK,
                    body,
                    retry_after: None,
                }
            }
            Err(e) => Reply::error(e),
        },
        Err((status, message)) => {
            match journal(state, pending, Some((status, message.clone()))).await {
                Ok(entry) => Reply {
                    status,
                    body: json!({"error": message, "entry": entry}),
                    retry_after: None,
                },
                Err(e) => Reply::error(e),
            }
        }
    }
}

fn refusal(r: Refusal) -> (StatusCode, String) {
    (r.status, r.message)
}

fn action_failure(e: ActionError) -> (StatusCode, String) {
    (status_of(&e), e.to_string())
}

/// The checks before any write. `Err` is an immediate response: 429 (not journaled), or a
/// refusal (journaled as `who` "-" or the known user).
async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    body: &Result<Body, String>,
    pending: &mut Pending,
) -> Result<(), Reply> {
    if let Err(wait) = state.write_guard.take() {
        let secs = wait.as_secs().max(1);
        return Err(Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: json!({ "error": format!("too many write actions: try again in {secs} s") }),
            retry_after: Some(secs),
        });
    }
    let who = match write_guard::identity(state, headers) {
        Ok(who) => who,
        Err(r) => {
            pending.entry.who = "-".into();
            return Err(answer(
                state,
                std::mem::replace(pending, Pending::new("", "")),
                Err(refusal(r)),
            )
            .await);
        }
    };
    pending.entry.who = who;
    let csrf = body.as_ref().ok().and_then(|b| b.csrf.as_deref());
    if let Err(r) = write_guard::check_origin_and_csrf(state, headers, csrf) {
        return Err(answer(
            state,
            std::mem::replace(pending, Pending::new("", "")),
            Err(refusal(r)),
        )
        .await);
    }
    if !state.actions.enabled() {
        return Err(answer(
            state,
            std::mem::replace(pending, Pending::new("", "")),
            Err(action_failure(ActionError::Disabled)),
        )
        .await);
    }
    if let Err(e) = body {
        return Err(answer(
            state,
            std::mem::replace(pending, Pending::new("", "")),
            Err((StatusCode::BAD_REQUEST, e.clone())),
        )
        .await);
    }
    Ok(())
}

fn text_field(fields: &Map<String, Value>, name: &str) -> Option<String> {
    match fields.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// A JSON list/object field, given as JSON or (from a form) as JSON text.
fn json_field(fields: &Map<String, Value>, name: &str) -> Result<Option<Value>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| format!("{name} is not valid JSON: {e}")),
        Some(v) => Ok(Some(v.clone())),
    }
}

fn run_request(fields: &Map<String, Value>) -> Result<RunRequest, String> {
    let broker: Broker = text_field(fields, "broker")
        .ok_or("broker is required (celery, dramatiq, taskiq, rq, arq, bullmq, sidekiq)")?
        .parse()
        .map_err(|e| format!("{e}"))?;
    let name = text_field(fields, "name").ok_or("name is required: the task's name")?;
    let args = match json_field(fields, "args")? {
        None => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("args must be a JSON list".into()),
    };
    let kwargs = match json_field(fields, "kwargs")? {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("kwargs must be a JSON object".into()),
    };
    let delay_ms = match fields.get("delay_ms") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or("delay_ms must be a whole number of milliseconds >= 0")?,
        ),
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<u64>()
                .map_err(|_| "delay_ms must be a whole number of milliseconds >= 0")?,
        ),
        Some(_) => return Err("delay_ms must be a whole number of milliseconds >= 0".into()),
    };
    Ok(RunRequest {
        broker,
        queue: text_field(fields, "queue"),
        name,
        args,
        kwargs,
        delay_ms,
    })
}

/// `POST /api/tasks`: run a task -> the new task (with its journal entry as `audit`).
pub async fn run(State(state): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Reply {
    run_core(&state, &headers, &bytes).await
}

pub async fn run_core(state: &AppState, headers: &HeaderMap, bytes: &Bytes) -> Reply {
    let (state, headers, bytes) = (state.clone(), headers.clone(), bytes.clone());
    let body = parse_body(&headers, &bytes);
    let mut pending = Pending::new("run", "-");
    if let Ok(b) = &body {
        pending.entry.broker = text_field(&b.fields, "broker");
        pending.entry.queue = text_field(&b.fields, "queue");
        pending.entry.target = text_field(&b.fields, "name");
        let mut args = b.fields.clone();
        args.remove(write_guard::CSRF_FIELD);
        pending.entry.arguments = Some(Value::Object(args));
    }
    if let Err(r) = admit(&state, &headers, &body, &mut pending).await {
        return r;
    }
    let body = match body {
        Ok(b) => b,
        // `admit` answered a bad body already; kept for the compiler.
        Err(e) => return Reply::error(ApiError::bad_request(e)),
    };
    let req = match run_request(&body.fields) {
        Ok(r) => r,
        Err(e) => return answer(&state, pending, Err((StatusCode::BAD_REQUEST, e))).await,
    };
    pending.entry.arguments = Some(json!({
        "name": req.name, "args": req.args, "kwargs": req.kwargs, "delay_ms": req.delay_ms,
    }));
    // After the allow-list (a name it refuses is a 403 whether known or not).
    if state.actions.settings.name_allowed(&req.name) && !force_field(&body.fields) {
        if let Err(refusal) = known_name(&state, &req).await {
            return answer(&state, pending, Err(refusal)).await;
        }
    }
    let result = state.actions.run(&req, Utc::now()).await;
    match result {
        Ok(task) => {
            pending.entry.queue = task.queue.clone();
            pending.entry.new_task_id = Some(task.id.clone());
            tell_store(&state, &task, "enqueued from taskscope".into()).await;
            answer(&state, pending, Ok(task_json(&task))).await
        }
        Err(e) => answer(&state, pending, Err(action_failure(e))).await,
    }
}

/// `force`: `true` (JSON) or `on`/`true`/`1` (a form's checkbox).
fn force_field(fields: &Map<String, Value>) -> bool {
    match fields.get("force") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.trim(), "on" | "true" | "1"),
        _ => false,
    }
}

/// A run of a name this broker has never shown a task of is refused unless forced: a typo
/// would otherwise enqueue a message that no worker knows (Celery, Dramatiq and RQ workers
/// drop or fail it, some silently). An exact name (no glob) in `--action-allow-names` counts as
/// known.
async fn known_name(state: &AppState, req: &RunRequest) -> Result<(), (StatusCode, String)> {
    if state
        .actions
        .settings
        .allow_names
        .iter()
        .any(|p| p == &req.name)
    {
        return Ok(());
    }
    let query = TaskQuery {
        brokers: vec![req.broker],
        name: Some(req.name.clone()),
        limit: 1,
        ..TaskQuery::default()
    };
    match state.reader.list_tasks(&query).await {
        Ok(page) if !page.tasks.is_empty() => Ok(()),
        Ok(_) => Err((
            StatusCode::BAD_REQUEST,
            format!(
                "unknown task name {:?} for {}: taskscope has never seen a task of that name on \
                 this broker; check the spelling, or send \"force\": true to enqueue it anyway",
                req.name,
                req.broker.as_str()
            ),
        )),
        Err(e) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not check the task name against the history: {e}"),
        )),
    }
}

/// Tells the store about a task an action created (its name and arguments stay known even
/// when a worker takes the message before ingest reads it).
async fn tell_store(state: &AppState, task: &Task, detail: String) {
    if let Err(e) = state
        .writer
        .observe(vec![state.actions.created(task, detail)])
        .await
    {
        tracing::warn!(error = %e, task = %task.id, "Could not record a created task.");
    }
}

/// Tells the store the tasks whose messages were removed (they end `failure`).
async fn tell_removed(state: &AppState, removed: Vec<broker_adapters::Observation>) {
    if let Err(e) = state.writer.observe(removed).await {
        tracing::warn!(error = %e, "Could not record removed tasks.");
    }
}

/// Tells the store that a delete removed `n` messages of `task_id` from `queue` (it ends
/// `failure`); nothing when it removed none (a worker took the message first: the task goes on).
async fn tell_deleted(
    state: &AppState,
    broker: Broker,
    task_id: &str,
    queue: &str,
    who: &str,
    n: u64,
) {
    if n > 0 {
        let reason = format!("deleted from queue {queue} by taskscope ({who})");
        let removed = crate::actions::Actions::removed(broker, task_id, reason, Utc::now());
        tell_removed(state, vec![removed]).await;
    }
}

fn task_json(task: &Task) -> Value {
    serde_json::to_value(task).unwrap_or(Value::Null)
}

async fn stored_task(state: &AppState, id: &str) -> Result<Task, (StatusCode, String)> {
    match state.reader.get_task(id).await {
        Ok(Some((task, _))) => Ok(task),
        Ok(None) => Err((StatusCode::NOT_FOUND, format!("no task with id {id:?}"))),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// `POST /api/tasks/{id}/retry` -> the journal entry (`new_task_id`: the retry).
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    retry_core(&state, id, &headers, &bytes).await
}

pub async fn retry_core(state: &AppState, id: String, headers: &HeaderMap, bytes: &Bytes) -> Reply {
    let (state, headers, bytes) = (state.clone(), headers.clone(), bytes.clone());
    let body = parse_body(&headers, &bytes);
    let mut pending = Pending::new("retry", "-");
    pending.entry.target = Some(id.clone());
    if let Err(r) = admit(&state, &headers, &body, &mut pending).await {
        return r;
    }
    let original = match stored_task(&state, &id).await {
        Ok(t) => t,
        Err(e) => return answer(&state, pending, Err(e)).await,
    };
    pending.entry.broker = Some(original.broker.as_str().to_string());
    pending.entry.queue = original.queue.clone();
    pending.entry.arguments = Some(json!({
        "name": original.name, "args": original.args, "kwargs": original.kwargs,
    }));
    match state.actions.retry(&original, Utc::now()).await {
        Ok(task) => {
            pending.entry.new_task_id = Some(task.id.clone());
            tell_store(&state, &task, format!("a retry of {id} from taskscope")).await;
            answer(&state, pending, Ok(Value::Null)).await
        }
        Err(e) => answer(&state, pending, Err(action_failure(e))).await,
    }
}

/// `POST /api/tasks/{id}/revoke` -> the journal entry.
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    revoke_core(&state, id, &headers, &bytes).await
}

pub async fn revoke_core(
    state: &AppState,
    id: String,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Reply {
    let (state, headers, bytes) = (state.clone(), headers.clone(), bytes.clone());
    let body = parse_body(&headers, &bytes);
    let mut pending = Pending::new("revoke", "-");
    pending.entry.target = Some(id.clone());
    if let Err(r) = admit(&state, &headers, &body, &mut pending).await {
        return r;
    }
    let task = match stored_task(&state, &id).await {
        Ok(t) => t,
        Err(e) => return answer(&state, pending, Err(e)).await,
    };
    pending.entry.broker = Some(task.broker.as_str().to_string());
    pending.entry.queue = task.queue.clone();
    match state.actions.revoke(&task).await {
        Ok(()) => answer(&state, pending, Ok(Value::Null)).await,
        Err(e) => answer(&state, pending, Err(action_failure(e))).await,
    }
}

/// The start of every action on a queue (delete, purge, pause, resume): its journal entry
/// (broker, queue, target), the write guard's checks, then the broker's name. `Err` is the
/// answer already given (and journaled where the guard admitted the request).
async fn admit_on_queue(
    state: &AppState,
    headers: &HeaderMap,
    bytes: &Bytes,
    action: &str,
    broker: &str,
    queue: &str,
    target: &str,
) -> Result<(Broker, Pending), Reply> {
    let body = parse_body(headers, bytes);
    let mut pending = Pending::new(action, "-");
    pending.entry.broker = Some(broker.to_string());
    pending.entry.queue = Some(queue.to_string());
    pending.entry.target = Some(target.to_string());
    admit(state, headers, &body, &mut pending).await?;
    match parse_broker(broker) {
        Ok(b) => Ok((b, pending)),
        Err(e) => Err(answer(state, pending, Err(e)).await),
    }
}

fn parse_broker(text: &str) -> Result<Broker, (StatusCode, String)> {
    text.parse()
        .map_err(|e| (StatusCode::NOT_FOUND, format!("{e}")))
}

/// `DELETE /api/queues/{broker}/{queue}/messages/{id}` -> the journal entry.
pub async fn delete_message(
    State(state): State<AppState>,
    Path((broker, queue, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    delete_core(&state, broker, queue, id, &headers, &bytes).await
}

pub async fn delete_core(
    state: &AppState,
    broker: String,
    queue: String,
    id: String,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Reply {
    let (broker, mut pending) =
        match admit_on_queue(state, headers, bytes, "delete", &broker, &queue, &id).await {
            Ok(admitted) => admitted,
            Err(r) => return r,
        };
    match state.actions.delete(broker, &queue, &id).await {
        Ok(n) => {
            pending.entry.count = Some(n);
            let task_id = crate::actions::Actions::task_id_of(broker, &queue, &id);
            tell_deleted(state, broker, &task_id, &queue, &pending.entry.who, n).await;
            answer(state, pending, Ok(Value::Null)).await
        }
        Err(e) => answer(state, pending, Err(action_failure(e))).await,
    }
}

/// `POST /api/queues/{broker}/{queue}/purge` -> the journal entry (`count`: messages removed).
pub async fn purge(
    State(state): State<AppState>,
    Path((broker, queue)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    purge_core(&state, broker, queue, &headers, &bytes).await
}

pub async fn purge_core(
    state: &AppState,
    broker: String,
    queue: String,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Reply {
    let (broker, mut pending) =
        match admit_on_queue(state, headers, bytes, "purge", &broker, &queue, &queue).await {
            Ok(admitted) => admitted,
            Err(r) => return r,
        };
    match state.actions.purge(broker, &queue).await {
        Ok((n, ids)) => {
            pending.entry.count = Some(n);
            let reason = format!(
                "purged from queue {queue} by taskscope ({})",
                pending.entry.who
            );
            let now = Utc::now();
            let removed = ids
                .iter()
                .map(|id| crate::actions::Actions::removed(broker, id, reason.clone(), now))
                .collect();
            tell_removed(state, removed).await;
            answer(state, pending, Ok(Value::Null)).await
        }
        Err(e) => answer(state, pending, Err(action_failure(e))).await,
    }
}

/// `GET /api/csrf`: this session's CSRF token, for scripts behind an identity proxy.
pub async fn csrf(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    Json(json!({ "csrf_token": write_guard::csrf_for(&state, &headers) }))
}

#[derive(Debug, Deserialize)]
pub struct AuditParams {
    action: Option<String>,
    who: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

impl AuditParams {
    /// The filters as typed, for the `/audit` page.
    pub fn filters(&self) -> templates::AuditFilters {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        templates::AuditFilters {
            action: set(&self.action),
            who: set(&self.who),
            since: set(&self.since),
            until: set(&self.until),
        }
    }
}

/// Turns `/api/audit`'s parameters into a store query.
pub fn audit_query(p: &AuditParams) -> Result<AuditQuery, ApiError> {
    let now = Utc::now();
    let time = |v: &Option<String>, name: &str| -> Result<_, ApiError> {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| super::query::parse_time_filter(name, s, now))
            .transpose()
    };
    let before_id = p
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<i64>().map_err(|_| {
                ApiError::bad_request("invalid cursor: pass the next_cursor of a previous page")
            })
        })
        .transpose()?;
    Ok(AuditQuery {
        action: p.action.clone().filter(|s| !s.is_empty()),
        who: p.who.clone().filter(|s| !s.is_empty()),
        since: time(&p.since, "since")?,
        until: time(&p.until, "until")?,
        before_id,
        limit: p.limit.unwrap_or(50).clamp(1, 1000),
    })
}

/// `GET /api/audit`: `{"entries":[...],"next_cursor"}`, newest first.
pub async fn audit(
    State(state): State<AppState>,
    Query(params): Query<AuditParams>,
) -> Result<Json<Value>, ApiError> {
    let query = audit_query(&params)?;
    let page = state.reader.audit(&query).await?;
    Ok(Json(json!(page)))
}

/// The most tasks one bulk action touches (the rest stay for the next one).
pub const BULK_MAX: usize = 1000;

/// A bulk action: `retry` (failed or abandoned tasks) or `delete` (waiting ones).
fn bulk_states(action: &str) -> Option<&'static [broker_adapters::TaskState]> {
    use broker_adapters::TaskState::*;
    match action {
        "retry" => Some(&[Failure, Abandoned]),
        "delete" => Some(&[Queued]),
        _ => None,
    }
}

/// The tasks a bulk `action` over `filters` acts on: the filters' matches in the states the
/// action applies to, newest first, at most [`BULK_MAX`].
pub async fn bulk_targets(
    state: &AppState,
    action: &str,
    filters: &super::query::TaskFilterParams,
) -> Result<Vec<Task>, (StatusCode, String)> {
    let Some(states) = bulk_states(action) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no bulk action {action:?}: retry or delete"),
        ));
    };
    let mut query = filters
        .to_query(Utc::now())
        .map_err(|e| (e.status, e.message))?;
    query.states = if query.states.is_empty() {
        states.to_vec()
    } else {
        query
            .states
            .into_iter()
            .filter(|s| states.contains(s))
            .collect()
    };
    if query.states.is_empty() {
        return Ok(Vec::new());
    }
    query.limit = BULK_MAX;
    query.cursor = None;
    state
        .reader
        .list_tasks(&query)
        .await
        .map(|page| page.tasks)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `POST /api/bulk/{action}?<task-list filters>[&preview=1]`: the preview (`count` and the
/// first ids) or the action on every matching task (one journal entry each, and one for the
/// bulk action itself).
pub async fn bulk(
    State(state): State<AppState>,
    Path(action): Path<String>,
    Query(filters): Query<super::query::TaskFilterParams>,
    Query(flags): Query<BulkFlags>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    bulk_core(&state, action, &filters, flags.preview(), &headers, &bytes).await
}

#[derive(Debug, Default, Deserialize)]
pub struct BulkFlags {
    preview: Option<String>,
}

impl BulkFlags {
    fn preview(&self) -> bool {
        matches!(self.preview.as_deref(), Some("1" | "true" | "yes"))
    }
}

pub async fn bulk_core(
    state: &AppState,
    action: String,
    filters: &super::query::TaskFilterParams,
    preview: bool,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Reply {
    if preview {
        return match bulk_targets(state, &action, filters).await {
            Ok(tasks) => Reply {
                status: StatusCode::OK,
                body: json!({
                    "action": action,
                    "count": tasks.len(),
                    "capped": tasks.len() >= BULK_MAX,
                    "task_ids": tasks.iter().take(20).map(|t| t.id.clone()).collect::<Vec<_>>(),
                }),
                retry_after: None,
            },
            Err((status, message)) => Reply {
                status,
                body: json!({ "error": message }),
                retry_after: None,
            },
        };
    }
    let body = parse_body(headers, bytes);
    let mut pending = Pending::new(&format!("bulk-{action}"), "-");
    let filter_json = serde_json::to_value(filters_json(filters)).unwrap_or(Value::Null);
    pending.entry.arguments = Some(filter_json.clone());
    if let Err(r) = admit(state, headers, &body, &mut pending).await {
        return r;
    }
    let tasks = match bulk_targets(state, &action, filters).await {
        Ok(t) => t,
        Err(e) => return answer(state, pending, Err(e)).await,
    };
    let who = pending.entry.who.clone();
    let (mut ok, mut failed) = (0u64, 0u64);
    for task in &tasks {
        let mut one = Pending::new(&action, &who);
        one.entry.target = Some(task.id.clone());
        one.entry.broker = Some(task.broker.as_str().to_string());
        one.entry.queue = task.queue.clone();
        one.entry.arguments = Some(json!({ "bulk": filter_json }));
        let result = if action == "retry" {
            match state.actions.retry(task, Utc::now()).await {
                Ok(new) => {
                    one.entry.new_task_id = Some(new.id.clone());
                    tell_store(
                        state,
                        &new,
                        format!("a retry of {} from taskscope", task.id),
                    )
                    .await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            let queue = task.queue.clone().unwrap_or_default();
            match state.actions.delete(task.broker, &queue, &task.id).await {
                Ok(n) => {
                    one.entry.count = Some(n);
                    tell_deleted(state, task.broker, &task.id, &queue, &who, n).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        let failure = result.err().map(action_failure);
        if failure.is_some() {
            failed += 1;
        } else {
            ok += 1;
        }
        if let Err(e) = journal(state, one, failure).await {
            return Reply::error(e);
        }
    }
    pending.entry.count = Some(ok);
    let summary = json!({"action": action, "count": tasks.len(), "ok": ok, "failed": failed});
    let mut reply = answer(state, pending, Ok(summary)).await;
    if failed > 0 && reply.status.is_success() {
        reply.body["error"] = json!(format!("{failed} of {} failed: see /audit", tasks.len()));
    }
    reply
}

fn filters_json(f: &super::query::TaskFilterParams) -> Map<String, Value> {
    let mut m = Map::new();
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
            m.insert(k.into(), json!(v));
        }
    }
    m
}

/// `POST /api/queues/{broker}/{queue}/pause` and `/resume` -> the journal entry (BullMQ only;
/// other brokers answer 400).
pub async fn pause(
    State(state): State<AppState>,
    Path((broker, queue)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    pause_core(&state, broker, queue, true, &headers, &bytes).await
}

pub async fn resume(
    State(state): State<AppState>,
    Path((broker, queue)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    pause_core(&state, broker, queue, false, &headers, &bytes).await
}

pub async fn pause_core(
    state: &AppState,
    broker: String,
    queue: String,
    paused: bool,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Reply {
    let action = if paused { "pause" } else { "resume" };
    let (broker, pending) =
        match admit_on_queue(state, headers, bytes, action, &broker, &queue, &queue).await {
            Ok(admitted) => admitted,
            Err(r) => return r,
        };
    match state.actions.pause(broker, &queue, paused).await {
        Ok(()) => answer(state, pending, Ok(Value::Null)).await,
        Err(e) => answer(state, pending, Err(action_failure(e))).await,
    }
}
