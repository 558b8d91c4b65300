//! The URL prefix (`--base-path`) every link, form, stylesheet and script address of the pages
//! carries, set once when the server starts; empty (links from `/`) until then.
//!
//! Routes are written from `/` on both sides: handlers never see the prefix (the server takes
//! it off requests), and templates add it to what they write for the browser through [`url`].

use std::sync::OnceLock;

static BASE_PATH: OnceLock<String> = OnceLock::new();

/// Sets the prefix (`""` or `/taskscope`, no trailing slash) for the life of the process.
/// False when a different one was set before (it stays).
pub fn set_base_path(base: &str) -> bool {
    BASE_PATH.get_or_init(|| base.to_string()) == base
}

/// The prefix links carry: `""` or `/taskscope`.
pub fn base_path() -> &'static str {
    BASE_PATH.get().map_or("", String::as_str)
}

/// `path` (absolute, from `/`) as the browser must ask for it.
pub fn url(path: &str) -> String {
    format!("{}{path}", base_path())
}
