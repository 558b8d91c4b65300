//! `--auth-token`: when set, every route but `/healthz` and the stylesheet needs the token, as
//! `Authorization: Bearer <token>`, a `token` query parameter (which also sets a cookie, so a
//! browser can follow links after opening one tokenised URL), or that cookie.

use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const COOKIE: &str = "taskscope_token";

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.auth_token.as_deref() else {
        return next.run(request).await;
    };
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let from_query = request.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_string())
    });
    let from_cookie = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string());
    let ok =
        |t: Option<&str>| t.is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()));
    if ok(from_header) || ok(from_cookie.as_deref()) {
        return next.run(request).await;
    }
    if ok(from_query.as_deref()) {
        let mut response = next.run(request).await;
        if let Ok(cookie) = HeaderValue::from_str(&format!(
            "{COOKIE}={expected}; Path=/; HttpOnly; SameSite=Strict"
        )) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        return response;
    }
    let is_api = request.uri().path().starts_with("/api/") || request.uri().path() == "/metrics";
    if is_api {
        super::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this taskscope needs its auth token: send `Authorization: Bearer <token>`",
        )
        .into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            templates::error_page(
                super::VERSION,
                "This taskscope needs its auth token: open the page once with ?token=<token> added to the address.",
            ),
        )
            .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
