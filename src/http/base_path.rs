//! `--base-path`: serving every page, asset, API route and SSE stream under a URL prefix, for a
//! reverse proxy that mounts taskscope at, say, `/taskscope`.
//!
//! Requests are answered with or without the prefix, so the same setting works behind a proxy
//! that strips it (it forwards `/tasks`) and one that does not (it forwards `/taskscope/tasks`):
//! the prefix is taken off before routing, so routes stay written from `/`. What the server
//! writes for the browser (every link of the pages through [`templates::url`], the script's
//! `/api/events`, the login redirect) carries the prefix, since the browser's address does in
//! both setups.

use axum::body::Body;
use axum::http::{Request, Uri};
use axum::Router;
use tower::ServiceExt;

/// A validated URL prefix: empty for `/` (no prefix), else `/a/b` (no trailing slash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BasePath(String);

impl BasePath {
    /// Parses `--base-path`: `/` or empty is no prefix; `taskscope`, `/taskscope/` and
    /// `/taskscope` are the same prefix. Segments are plain URL path text: no `.`/`..`, no
    /// empty segment, no query, fragment, percent sign or whitespace.
    pub fn parse(raw: &str) -> Result<BasePath, String> {
        let trimmed = raw.trim().trim_matches('/');
        if trimmed.is_empty() {
            return Ok(BasePath::default());
        }
        for segment in trimmed.split('/') {
            let plain = segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c));
            if segment.is_empty() || segment == "." || segment == ".." || !plain {
                return Err(format!(
                    "--base-path {raw:?}: expected a URL path like /taskscope (letters, digits \
                     and -._~ in each segment; no empty, . or .. segment, no ?, # or %)"
                ));
            }
        }
        Ok(BasePath(format!("/{trimmed}")))
    }

    /// The prefix to put before an absolute path (`""` or `/taskscope`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// `uri` without the prefix when its path starts with it (`/taskscope` and
    /// `/taskscope/...`, not `/taskscopes`); `None` when it does not.
    pub fn strip(&self, uri: &Uri) -> Option<Uri> {
        if self.is_root() {
            return None;
        }
        let path = uri.path();
        let rest = path.strip_prefix(self.0.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let rest = if rest.is_empty() { "/" } else { rest };
        let path_and_query = match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().ok()?);
        Uri::from_parts(parts).ok()
    }
}

impl std::fmt::Display for BasePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_root() { "/" } else { &self.0 })
    }
}

/// `app` answering under `base` as well as at `/`: the prefix is removed before `app` routes
/// the request (a layer of `app` itself would run after routing, too late).
pub fn mount(base: BasePath, app: Router) -> Router {
    if base.is_root() {
        return app;
    }
    let stripped = app.map_request(move |mut request: Request<Body>| {
        if let Some(uri) = base.strip(request.uri()) {
            *request.uri_mut() = uri;
        }
        request
    });
    Router::new().fallback_service(stripped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_paths_are_normalised_and_odd_ones_refused() {
        for root in ["", "/", "//", " / "] {
            assert!(BasePath::parse(root).unwrap().is_root(), "{root:?}");
        }
        for same in ["taskscope", "/taskscope", "/taskscope/", "taskscope/"] {
            assert_eq!(BasePath::parse(same).unwrap().as_str(), "/taskscope");
        }
        assert_eq!(
            BasePath::parse("/ops/task-scope_2").unwrap().as_str(),
            "/ops/task-scope_2"
        );
        for bad in [
            "/a//b", "/a/../b", "/./a", "/a?b", "/a#b", "/a%2Fb", "/a b", "/é",
        ] {
            let e = BasePath::parse(bad).unwrap_err();
            assert!(e.contains("--base-path"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_the_whole_prefix_is_stripped_and_the_query_kept() {
        let base = BasePath::parse("/taskscope").unwrap();
        let strip = |s: &str| {
            base.strip(&s.parse::<Uri>().unwrap())
                .map(|u| u.to_string())
        };
        assert_eq!(strip("/taskscope").as_deref(), Some("/"));
        assert_eq!(strip("/taskscope/").as_deref(), Some("/"));
        assert_eq!(
            strip("/taskscope/tasks?state=failure&q=a%20b").as_deref(),
            Some("/tasks?state=failure&q=a%20b")
        );
        assert_eq!(strip("/taskscopes/tasks"), None);
        assert_eq!(
            strip("/tasks"),
            None,
            "a stripping proxy's request passes as is"
        );
        assert_eq!(BasePath::default().strip(&"/tasks".parse().unwrap()), None);
    }
}
