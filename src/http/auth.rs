//! Who may use this taskscope: `--auth-token` and, without a token, the `Host` check.
//!
//! With a token, every route but `/healthz` and the static files needs it, as
//! `Authorization: Bearer <token>` or the session cookie. Opening any page once with
//! `?token=<token>` (percent-encoded) sets that cookie and redirects (303) to the same address
//! without the token, so it leaves neither the address bar, the history nor a `Referer`. The
//! cookie holds an HMAC-SHA256 of a fixed label keyed with the token, never the token itself.
//! Every comparison runs in constant time.
//!
//! Without a token, a request whose `Host` is neither a loopback name (`localhost`,
//! `127.0.0.1`, `[::1]`), the listen address nor one of `--allowed-hosts` is refused with 403:
//! a web page that rebinds its own DNS name to 127.0.0.1 cannot read task arguments through a
//! browser on this machine.

use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;

/// The session cookie's name.
pub const COOKIE: &str = "taskscope_session";
/// What the cookie's HMAC signs: changing it logs every browser out.
const SESSION_LABEL: &[u8] = b"taskscope session v1";

/// The configured token, and the cookie value it implies.
#[derive(Clone)]
pub struct AuthToken {
    /// Hex HMAC-SHA256 of [`SESSION_LABEL`] keyed with the token.
    session: String,
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(..)")
    }
}

impl AuthToken {
    pub fn new(token: &str) -> AuthToken {
        AuthToken {
            session: session_of(token),
        }
    }

    /// Whether `candidate` is the token. Both sides go through the HMAC first, so the time
    /// taken says nothing about the token's length or prefix.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(session_of(candidate).as_bytes(), self.session.as_bytes())
    }

    fn session_matches(&self, cookie: &str) -> bool {
        constant_time_eq(cookie.as_bytes(), self.session.as_bytes())
    }
}

fn session_of(token: &str) -> String {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(token.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(SESSION_LABEL);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which `Host` headers a token-less taskscope answers.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// The listen address (its IP is a host a client may legitimately name).
    pub listen: Option<SocketAddr>,
    /// `--allowed-hosts`: host names (any port), lower case; `*` allows every host.
    pub allowed: Vec<String>,
}

impl HostPolicy {
    /// Whether a request naming `host` (the `Host` header or the URI's authority) may be
    /// answered without a token.
    pub fn allows(&self, host: Option<&str>) -> bool {
        if self.allowed.iter().any(|h| h == "*") {
            return true;
        }
        // No `Host` at all (HTTP/1.0, or a test's bare request) is not a browser: rebinding
        // attacks come through browsers, which always send one.
        let Some(name) = host.map(host_name) else {
            return true;
        };
        let name = name.to_ascii_lowercase();
        if matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
            || name.ends_with(".localhost")
        {
            return true;
        }
        if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            if ip.is_loopback() || self.listen.is_some_and(|l| l.ip() == ip) {
                return true;
            }
        }
        self.allowed.contains(&name)
    }
}

/// `example.com:80` -> `example.com`, `[::1]:7979` -> `::1`.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Whether a request carries the token (bearer or cookie) or, with no token configured, names
/// an allowed host. `/healthz` uses it to decide how much to say.
pub fn is_trusted(state: &AppState, headers: &HeaderMap, uri: &Uri) -> bool {
    match &state.auth {
        None => state.hosts.allows(request_host(headers, uri)),
        Some(token) => {
            bearer(headers).is_some_and(|t| token.matches(t))
                || session_cookie(headers).is_some_and(|c| token.session_matches(c))
        }
    }
}

/// Whether the request carries `--auth-token` as a bearer token (an API client: no browser
/// session, so no CSRF token is asked of it).
pub fn has_valid_bearer(state: &AppState, headers: &HeaderMap) -> bool {
    state
        .auth
        .as_ref()
        .is_some_and(|token| bearer(headers).is_some_and(|t| token.matches(t)))
}

/// The session cookie's value, if the request has one.
pub fn session_of_request(headers: &HeaderMap) -> Option<&str> {
    session_cookie(headers)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
}

/// The `token` query values, decoded two ways: as a form (`+` is a space) and as a plain
/// percent-encoded string (`+` is a plus), since people paste tokens with `+` unencoded.
fn query_tokens(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    for pair in query.split('&') {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "token" {
            continue;
        }
        if let Some((_, v)) = form_urlencoded::parse(pair.as_bytes()).next() {
            out.push(v.into_owned());
        }
        let plain = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
        out.push(plain.into_owned());
    }
    out
}

/// The query without its `token` pairs (the rest kept byte for byte).
fn query_without_token(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != "token"
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_https(headers: &HeaderMap, uri: &Uri) -> bool {
    uri.scheme_str() == Some("https")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .next()
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
            })
}

const NO_REFERRER: (header::HeaderName, HeaderValue) = (
    header::REFERRER_POLICY,
    HeaderValue::from_static("no-referrer"),
);

/// The middleware in front of every protected route.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = state.auth.clone() else {
        if state
            .hosts
            .allows(request_host(request.headers(), request.uri()))
        {
            return next.run(request).await;
        }
        return refuse(
            &request,
            StatusCode::FORBIDDEN,
            "this taskscope has no --auth-token and answers only requests for localhost, \
             its listen address or --allowed-hosts; open it by one of those names, or list \
             this host in --allowed-hosts",
        );
    };
    let uri = request.uri().clone();
    if let Some(query) = uri.query() {
        let tokens = query_tokens(query);
        if !tokens.is_empty() {
            // Evaluate every candidate: no early exit that tells which decoding matched.
            let ok = tokens.iter().fold(false, |ok, t| ok | token.matches(t));
            if !ok {
                return refuse(
                    &request,
                    StatusCode::UNAUTHORIZED,
                    "the token in the address is not this taskscope's --auth-token",
                );
            }
            return login_redirect(&token, request.headers(), &uri, &state.base_path);
        }
    }
    if is_trusted(&state, request.headers(), request.uri()) {
        return next.run(request).await;
    }
    refuse(
        &request,
        StatusCode::UNAUTHORIZED,
        "this taskscope needs its auth token: send `Authorization: Bearer <token>`, or open a \
         page once with ?token=<token> added to the address",
    )
}

/// 303 to the same address without `token`, setting the session cookie. The address carries
/// `--base-path` (the request's path has lost it before routing, whether the proxy stripped it
/// or not; the browser's address has it either way).
fn login_redirect(
    token: &AuthToken,
    headers: &HeaderMap,
    uri: &Uri,
    base: &super::base_path::BasePath,
) -> Response {
    let rest = uri.query().map(query_without_token).unwrap_or_default();
    let path = format!("{}{}", base.as_str(), uri.path());
    let location = if rest.is_empty() {
        path
    } else {
        format!("{path}?{rest}")
    };
    let secure = if is_https(headers, uri) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
        token.session
    );
    let mut response = StatusCode::SEE_OTHER.into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(NO_REFERRER.0, NO_REFERRER.1);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON error for the API and `/metrics`, an HTML page otherwise; never a `Referer`.
fn refuse(request: &Request, status: StatusCode, message: &str) -> Response {
    let path = request.uri().path();
    let mut response = if path.starts_with("/api/") || path == "/metrics" || path == "/export.csv" {
        super::ApiError::new(status, message).into_response()
    } else {
        let mut text = message.to_string();
        if let Some(first) = text.get(..1) {
            text = first.to_uppercase() + &text[1..];
        }
        (
            status,
            templates::error_page(super::VERSION, &format!("{text}.")),
        )
            .into_response()
    };
    response.headers_mut().insert(NO_REFERRER.0, NO_REFERRER.1);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_allowed_without_a_token() {
        let p = HostPolicy {
            listen: Some("192.168.1.5:7979".parse().unwrap()),
            allowed: vec!["taskscope.internal".into()],
        };
        for ok in [
            "localhost",
            "LOCALHOST:7979",
            "127.0.0.1:80",
            "[::1]:7979",
            "192.168.1.5:7979",
            "taskscope.internal:8080",
            "app.localhost",
        ] {
            assert!(p.allows(Some(ok)), "{ok}");
        }
        for bad in ["evil.example:7979", "127.0.0.1.evil.example", "", "[::2]:1"] {
            assert!(!p.allows(Some(bad)), "{bad}");
        }
        assert!(p.allows(None), "no Host: not a browser");
    }

    #[test]
    fn token_query_values_are_percent_decoded_and_removed() {
        assert_eq!(
            query_tokens("a=1&token=a%2Bb%26c%3Dd%25&b=2"),
            vec!["a+b&c=d%".to_string(), "a+b&c=d%".to_string()]
        );
        assert_eq!(
            query_tokens("token=a+b"),
            vec!["a b".to_string(), "a+b".to_string()]
        );
        assert_eq!(query_without_token("a=1&token=x&b=2"), "a=1&b=2");
        assert_eq!(query_without_token("token=x"), "");
    }

    #[test]
    fn the_cookie_is_a_keyed_hash_not_the_token() {
        let t = AuthToken::new("s3cret");
        assert_eq!(t.session.len(), 64);
        assert!(!t.session.contains("s3cret"));
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cre"));
        assert_ne!(AuthToken::new("other").session, t.session);
    }
}
