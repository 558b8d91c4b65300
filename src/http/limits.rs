//! Per-request limits: a handler that panics answers 500 JSON instead of dropping the
//! connection, a request that takes longer than `--request-timeout` to produce its response
//! answers 503, and `/api/events` holds one of `--max-sse-clients` slots for as long as it
//! streams. (Connection-level limits, header-read and write-stall timeouts, live in
//! `server.rs`.)

use super::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::any::Any;
use std::time::Duration;

/// The HTTP layer's limits, from `serve`'s flags; [`Default`] for tests.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time to produce a response's head (a streamed body may take longer).
    pub request_timeout: Duration,
    /// `/api/events` streams open at once; more get 503.
    pub max_sse_clients: usize,
    /// A streamed chunk (CSV export) the client does not take within this ends the stream.
    pub stream_send_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            request_timeout: Duration::from_secs(30),
            max_sse_clients: 100,
            stream_send_timeout: Duration::from_secs(30),
        }
    }
}

/// For `tower_http::catch_panic::CatchPanicLayer::custom`: a panic becomes a 500 JSON error
/// (and is logged), never an aborted connection.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    tracing::error!(panic = what, "A request handler panicked.");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error: the request failed (see taskscope's log)",
    )
    .into_response()
}

/// Ends a request whose response has not started within the request timeout. Streamed bodies
/// (`/api/events`, `/export.csv`) start at once, so only their head is timed.
pub async fn request_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {} (--request-timeout); try a narrower query",
                humantime::format_duration(limit)
            ),
        )
        .into_response(),
    }
}
