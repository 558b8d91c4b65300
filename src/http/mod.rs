//! The HTTP surface: the JSON API and the server-rendered pages, both read-only views of the
//! store. Handlers read only through [`StoreReader`] queries and render with the `templates`
//! crate; nothing here touches Redis or DuckDB directly.

mod action_pages;
mod actions;
mod alerts;
pub(crate) mod api;
pub mod auth;
pub mod base_path;
mod failures;
pub mod limits;
mod metric_labels;
mod pages;
pub mod prometheus;
pub(crate) mod query;
mod reports;
pub mod server;
#[cfg(test)]
mod tests;
pub mod write_guard;

use crate::metrics::Metrics;
use crate::store::StoreReader;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub reader: StoreReader,
    /// For the writer's counters in `/healthz` and the transition feed of `/api/events`.
    pub writer: crate::store::StoreWriter,
    pub metrics: Arc<Metrics>,
    /// For `alive` in the workers list.
    pub abandon_after: Duration,
    /// `--auth-token`, as the hash its session cookie holds.
    pub auth: Option<Arc<auth::AuthToken>>,
    /// Without a token: which `Host` headers are answered.
    pub hosts: Arc<auth::HostPolicy>,
    /// Transition counters and runtime histograms for `/metrics`.
    pub task_metrics: prometheus::TaskMetrics,
    pub limits: limits::HttpLimits,
    /// Free slots for `/api/events` streams (`limits.max_sse_clients` in all).
    pub sse_slots: Arc<tokio::sync::Semaphore>,
    /// Turns true when the process stops: SSE streams end on it, so shutdown need not wait
    /// for browsers to close their tabs.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// `--base-path`, for what is written for the browser outside the templates (redirects).
    pub base_path: base_path::BasePath,
    /// Alert rules, their instances and webhook counters (empty without `[[alert]]` rules).
    pub alerts: crate::alerts::AlertBoard,
    /// The write actions (disabled unless `--allow-actions`).
    pub actions: Arc<crate::actions::Actions>,
    /// The write routes' CSRF key and rate limit.
    pub write_guard: Arc<write_guard::WriteGuard>,
}

impl AppState {
    /// The state of a router over `reader` and `writer`, with the given access policy and
    /// limits. `reader` is wrapped in a gate of `max_queries` concurrent queries, each waiting
    /// at most `query_wait` for its turn (then 503).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reader: StoreReader,
        writer: crate::store::StoreWriter,
        metrics: Arc<Metrics>,
        abandon_after: Duration,
        task_metrics: prometheus::TaskMetrics,
        access: Access,
        limits: limits::HttpLimits,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> AppState {
        AppState {
            reader: reader.gated(access.max_queries, access.query_wait),
            writer,
            metrics,
            abandon_after,
            auth: access
                .auth_token
                .as_deref()
                .map(|t| Arc::new(auth::AuthToken::new(t))),
            hosts: Arc::new(access.hosts),
            base_path: access.base_path,
            task_metrics,
            sse_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_sse_clients)),
            limits,
            shutdown,
            alerts: crate::alerts::AlertBoard::default(),
            actions: Arc::new(crate::actions::Actions::disabled()),
            write_guard: Arc::new(write_guard::WriteGuard::default()),
        }
    }

    /// The same state with write actions (`--allow-actions`).
    pub fn with_actions(mut self, actions: crate::actions::Actions) -> AppState {
        self.actions = Arc::new(actions);
        self
    }

    /// The same state showing `alerts` (`/api/alerts`, `/`, `/metrics`).
    pub fn with_alerts(mut self, alerts: crate::alerts::AlertBoard) -> AppState {
        self.alerts = alerts;
        self
    }
}

/// Who may use the HTTP layer and how much of the store it may use at once.
#[derive(Debug, Clone)]
pub struct Access {
    pub auth_token: Option<String>,
    pub hosts: auth::HostPolicy,
    /// Store queries of HTTP requests running at once.
    pub max_queries: usize,
    /// How long a request waits for a query slot before 503.
    pub query_wait: Duration,
    /// `--base-path`: the URL prefix everything is served under.
    pub base_path: base_path::BasePath,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            auth_token: None,
            hosts: auth::HostPolicy::default(),
            max_queries: 8,
            query_wait: Duration::from_secs(10),
            base_path: base_path::BasePath::default(),
        }
    }
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/", get(pages::overview))
        .route("/tasks", get(pages::task_list))
        .route("/tasks/{id}", get(pages::task_detail))
        .route("/api/tasks", get(api::list_tasks).post(actions::run))
        .route("/api/tasks/{id}", get(api::get_task))
        .route("/api/tasks/{id}/retry", post(actions::retry))
        .route("/api/tasks/{id}/revoke", post(actions::revoke))
        .route(
            "/api/queues/{broker}/{queue}/messages/{id}",
            delete(actions::delete_message),
        )
        .route("/api/queues/{broker}/{queue}/purge", post(actions::purge))
        .route("/api/queues/{broker}/{queue}/pause", post(actions::pause))
        .route("/api/queues/{broker}/{queue}/resume", post(actions::resume))
        .route("/api/audit", get(actions::audit))
        .route("/api/bulk/{action}", post(actions::bulk))
        .route("/api/csrf", get(actions::csrf))
        .route("/audit", get(action_pages::audit))
        .route("/audit/run", post(action_pages::run))
        .route("/tasks/{id}/retry", post(action_pages::retry))
        .route(
            "/tasks/bulk/{action}",
            get(action_pages::confirm_bulk).post(action_pages::bulk),
        )
        .route(
            "/tasks/{id}/{action}",
            get(action_pages::confirm_task).post(action_pages::post_task),
        )
        .route(
            "/queues/{broker}/{queue}/purge",
            get(action_pages::confirm_purge).post(action_pages::purge),
        )
        .route(
            "/queues/{broker}/{queue}/{verb}",
            post(action_pages::pause_or_resume),
        )
        .route("/api/queues", get(api::queues))
        .route("/api/workers", get(api::workers))
        .route("/api/stats", get(api::stats))
        .route("/api/events", get(api::events))
        .route("/api/reports/backlog", get(reports::backlog))
        .route("/api/reports/runtime", get(reports::runtime))
        .route("/api/reports/wait", get(reports::wait))
        .route("/api/reports/failures", get(reports::failures))
        .route("/api/reports/throughput", get(reports::throughput))
        .route("/api/reports/names", get(reports::names))
        .route("/api/failures/groups", get(failures::groups))
        .route("/api/alerts", get(alerts::list))
        .route("/failures", get(failures::page))
        .route("/export.csv", get(api::export_csv))
        .route("/reports", get(pages::reports))
        .route("/queues", get(pages::queues))
        .route("/workers", get(pages::workers))
        .route("/metrics", get(prometheus::metrics))
        .fallback(not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let routes = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/static/app.css", get(app_css))
        .route("/static/app.js", get(app_js))
        .merge(protected);
    let base = state.base_path.clone();
    if !templates::set_base_path(base.as_str()) {
        tracing::warn!(base_path = %base, "another --base-path was set before in this process; page links keep it");
    }
    base_path::mount(base, with_guards(routes, state))
}

/// The layers around every route: the request timeout, compression, a panic caught as a 500
/// JSON error, request tracing.
fn with_guards(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::request_timeout,
        ))
        .with_state(state)
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            limits::panic_response,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

async fn app_css() -> impl IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        templates::APP_CSS,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        templates::APP_JS,
    )
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError::new(StatusCode::NOT_FOUND, format!("no route {}", uri.path())).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            templates::not_found(VERSION, &format!("Nothing at {}.", uri.path())),
        )
            .into_response()
    }
}

/// An API error: `{"error": "..."}` with a 4xx/5xx status.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::BadCursor(_) => ApiError::bad_request(e.to_string()),
            crate::store::StoreError::Busy(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "Store query failed.");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}
