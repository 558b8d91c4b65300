//! The frame every page shares: document head, top navigation and footer.
//!
//! Pages hand over their body and which section they belong to; nothing else about a page
//! lives here. One small script (`/static/app.js`: chart tooltips, live updates) is loaded
//! deferred; every page must work without it.

use crate::paths::url;
use maud::{html, Markup, DOCTYPE};

/// The top-level section a page belongs to, highlighted in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Tasks,
    Queues,
    Workers,
    Failures,
    Reports,
    /// `/audit` and the action pages.
    Audit,
    /// A page outside the sections (not found, error): nothing is highlighted.
    None,
}

/// The sections the navigation links to. A new page (`/queues`, `/workers`, `/reports`) becomes
/// reachable by adding a variant to [`Nav`] and a line here.
const SECTIONS: &[(Nav, &str, &str)] = &[
    (Nav::Overview, "/", "Overview"),
    (Nav::Tasks, "/tasks", "Tasks"),
    (Nav::Queues, "/queues", "Queues"),
    (Nav::Workers, "/workers", "Workers"),
    (Nav::Failures, "/failures", "Failures"),
    (Nav::Reports, "/reports", "Reports"),
    (Nav::Audit, "/audit", "Audit"),
];

/// A tiny inline icon, so browsers do not ask for `/favicon.ico`.
const FAVICON: &str = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E%3Crect width='16' height='16' rx='4' fill='%230969da'/%3E%3Cpath d='M4 5h8M4 8h6M4 11h4' stroke='white' stroke-width='1.6' stroke-linecap='round'/%3E%3C/svg%3E";

/// A whole HTML document: `title` (plain text, escaped) in the head, `body` inside the frame,
/// `version` in the footer.
pub fn page(title: &str, nav_active: Nav, version: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" data-base=(crate::paths::base_path()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · taskscope" }
                link rel="icon" href=(FAVICON);
                link rel="stylesheet" href=(url("/static/app.css"));
                script src=(url("/static/app.js")) defer {}
            }
            body {
                header.topbar {
                    div.topbar-inner {
                        a.brand href=(url("/")) { "taskscope" }
                        nav.sections aria-label="Sections" {
                            @for (nav, href, label) in SECTIONS {
                                a href=(url(href)) aria-current=[(*nav == nav_active).then_some("page")] {
                                    (label)
                                }
                            }
                        }
                        a.api-link href=(url("/api/tasks")) { "JSON API" }
                    }
                }
                main.container { (body) }
                footer.footer {
                    div.container {
                        "taskscope " (version)
                        span.sep { "·" }
                        "times in UTC"
                        span.sep { "·" }
                        a href=(url("/api/tasks")) { "API" }
                        span.sep { "·" }
                        a href=(url("/metrics")) { "metrics" }
                        span.sep { "·" }
                        a href=(url("/healthz")) { "health" }
                    }
                }
            }
        }
    }
}
