//! What every write route checks before an action runs (issue #21): the rate limit, who is
//! asking, and that a browser request comes from taskscope's own pages.
//!
//! - **Rate limit**: one token bucket for all write routes ([`RATE_BURST`] at once, then
//!   [`RATE_PER_SECOND`]); an empty bucket answers 429 with `Retry-After`.
//! - **Identity**: with `--trusted-user-header` its value (a write without it is refused: the
//!   proxy in front must set it, and strip it from clients); otherwise `"token"` with
//!   `--auth-token`, `"local"` without.
//! - **CSRF**: a request with the bearer token is an API client and needs nothing more. Any
//!   other (a browser's cookie session, or a proxy's identity) needs an `Origin` (else
//!   `Referer`) naming the host it was sent to, and the CSRF token: an HMAC, keyed with a
//!   secret of this process, of the session cookie (or the proxy's user). Pages put it in a
//!   hidden `csrf_token` field; scripts send `X-CSRF-Token` (from `GET /api/csrf`).

use super::AppState;
use axum::http::{header, HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Writes allowed at once.
pub const RATE_BURST: f64 = 20.0;
/// Writes allowed per second, sustained.
pub const RATE_PER_SECOND: f64 = 1.0;

/// The form field and header that carry the CSRF token.
pub const CSRF_FIELD: &str = "csrf_token";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The write routes' shared state: the CSRF key and the rate limiter.
#[derive(Debug)]
pub struct WriteGuard {
    csrf_key: [u8; 32],
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for WriteGuard {
    fn default() -> Self {
        let mut csrf_key = [0u8; 32];
        csrf_key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        csrf_key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        WriteGuard {
            csrf_key,
            bucket: Mutex::new(Bucket {
                tokens: RATE_BURST,
                at: Instant::now(),
            }),
        }
    }
}

/// A refused write: status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// `Retry-After` seconds (429).
    pub retry_after: Option<u64>,
}

impl Refusal {
    fn forbidden(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl WriteGuard {
    /// Takes one token; `Err(seconds until one is back)` when the bucket is empty.
    pub fn take(&self) -> Result<(), Duration> {
        let mut b = match self.bucket.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        let refill = now.duration_since(b.at).as_secs_f64() * RATE_PER_SECOND;
        b.tokens = (b.tokens + refill).min(RATE_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / RATE_PER_SECOND))
        }
    }

    /// The CSRF token of a browser session (`session`: the cookie, or the proxy's user).
    pub fn csrf_token(&self, session: &str) -> String {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.csrf_key) else {
            return String::new();
        };
        mac.update(b"taskscope csrf v1\0");
        mac.update(session.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// What identifies a browser session for its CSRF token.
pub fn session_key(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(cookie) = super::auth::session_of_request(headers) {
        return format!("cookie:{cookie}");
    }
    match user_header(state, headers) {
        Some(user) => format!("user:{user}"),
        None => "anonymous".into(),
    }
}

/// The CSRF token pages put in their forms for this request's session.
pub fn csrf_for(state: &AppState, headers: &HeaderMap) -> String {
    state.write_guard.csrf_token(&session_key(state, headers))
}

fn user_header(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let name = state
        .actions
        .settings
        .trusted_user_header
        .as_deref()?
        .to_ascii_lowercase();
    headers
        .get(name.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 256 && !v.chars().any(char::is_control))
        .map(str::to_string)
}

/// Who the journal names for this request, or why a write is refused.
pub fn identity(state: &AppState, headers: &HeaderMap) -> Result<String, Refusal> {
    if let Some(name) = state.actions.settings.trusted_user_header.as_deref() {
        return user_header(state, headers).ok_or_else(|| {
            Refusal::forbidden(format!(
                "writes need the {name} header (--trusted-user-header), set by the \
                 authenticating proxy in front of taskscope"
            ))
        });
    }
    Ok(if state.auth.is_some() {
        "token".into()
    } else {
        "local".into()
    })
}

/// The host:port a browser request's `Origin` (else `Referer`) names, lower case.
fn origin_authority(headers: &HeaderMap) -> Option<String> {
    let raw = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v != "null")
        .or_else(|| headers.get(header::REFERER).and_then(|v| v.to_str().ok()))?;
    let rest = raw.split_once("://").map(|(_, r)| r)?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(authority.to_ascii_lowercase())
}

/// Checks that a write comes from an API client with the token, or from taskscope's own page
/// with its CSRF token (`form_token`: the form field, if the body was a form).
pub fn check_origin_and_csrf(
    state: &AppState,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<(), Refusal> {
    if super::auth::has_valid_bearer(state, headers) {
        return Ok(());
    }
    let Some(origin) = origin_authority(headers) else {
        return Err(Refusal::forbidden(
            "a write from a browser needs an Origin or Referer header naming this taskscope \
             (API clients: send Authorization: Bearer <token>)",
        ));
    };
    let hosts: Vec<String> = [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    if !hosts.contains(&origin) {
        return Err(Refusal::forbidden(format!(
            "the request comes from {origin}, not from this taskscope's pages: refused (CSRF)"
        )));
    }
    let sent = form_token.map(str::to_string).or_else(|| {
        headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let expected = csrf_for(state, headers);
    match sent {
        Some(t) if constant_time_eq(t.trim().as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Refusal::forbidden(
            "the CSRF token does not match this session: reload the page and try again",
        )),
        None => Err(Refusal::forbidden(
            "a write from a browser needs the page's CSRF token (form field csrf_token or \
             header X-CSRF-Token; GET /api/csrf gives it)",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_refuses() {
        let g = WriteGuard::default();
        for _ in 0..RATE_BURST as usize {
            assert!(g.take().is_ok());
        }
        let wait = g.take().unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_per_process() {
        let g = WriteGuard::default();
        assert_eq!(g.csrf_token("a"), g.csrf_token("a"));
        assert_ne!(g.csrf_token("a"), g.csrf_token("b"));
        assert_ne!(g.csrf_token("a"), WriteGuard::default().csrf_token("a"));
        assert_eq!(g.csrf_token("a").len(), 64);
    }

    #[test]
    fn origin_or_referer_gives_the_authority() {
        let mut h = HeaderMap::new();
        h.insert(
            header::REFERER,
            "http://127.0.0.1:7979/tasks/x?y".parse().unwrap(),
        );
        assert_eq!(origin_authority(&h).as_deref(), Some("127.0.0.1:7979"));
        h.insert(header::ORIGIN, "https://Taskscope.example".parse().unwrap());
        assert_eq!(origin_authority(&h).as_deref(), Some("taskscope.example"));
    }
}
