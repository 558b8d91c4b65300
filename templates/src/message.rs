//! The pages that stand in for one that cannot be shown: not found, and errors.

use crate::layout::{page, Nav};
use crate::paths::url;
use maud::{html, Markup};

/// The page for something that does not exist; `what` says what was looked for
/// (`no task with id "abc"`).
pub fn not_found(version: &str, what: &str) -> Markup {
    page(
        "Not found",
        Nav::None,
        version,
        html! {
            div.message-page {
                h1 { "Not found" }
                p { (what) }
                p { a href=(url("/tasks")) { "Search all tasks" } " or go to the " a href=(url("/")) { "overview" } "." }
            }
        },
    )
}

/// The page for a request taskscope could not answer; `message` says what went wrong and,
/// ideally, what to do.
pub fn error_page(version: &str, message: &str) -> Markup {
    page(
        "Error",
        Nav::None,
        version,
        html! {
            div.message-page {
                h1 { "Something went wrong" }
                p.error-text { (message) }
                p { a href=(url("/")) { "Back to the overview" } }
            }
        },
    )
}
