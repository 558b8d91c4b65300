//! The HTTP surface: the JSON API and the server-rendered pages, both read-only views of the
//! store. Handlers read only through [`StoreReader`] queries and render with the `templates`
//! crate; nothing here touches Redis or DuckDB directly.

mod api;
mod auth;
mod pages;
pub mod prometheus;
pub(crate) mod query;
mod reports;
#[cfg(test)]
mod tests;

use crate::metrics::Metrics;
use crate::store::StoreReader;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
    pub auth_token: Option<Arc<str>>,
    /// Transition counters and runtime histograms for `/metrics`.
    pub task_metrics: prometheus::TaskMetrics,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/", get(pages::overview))
        .route("/tasks", get(pages::task_list))
        .route("/tasks/{id}", get(pages::task_detail))
        .route("/api/tasks", get(api::list_tasks))
        .route("/api/tasks/{id}", get(api::get_task))
        .route("/api/queues", get(api::queues))
        .route("/api/workers", get(api::workers))
        .route("/api/stats", get(api::stats))
        .route("/api/events", get(api::events))
        .route("/api/reports/backlog", get(reports::backlog))
        .route("/api/reports/runtime", get(reports::runtime))
        .route("/api/reports/failures", get(reports::failures))
        .route("/api/reports/throughput", get(reports::throughput))
        .route("/api/reports/names", get(reports::names))
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
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/static/app.css", get(app_css))
        .route("/static/app.js", get(app_js))
        .merge(protected)
        .with_state(state)
        .layer(tower_http::compression::CompressionLayer::new())
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
            other => {
                tracing::error!(error = %other, "Store query failed.");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}
