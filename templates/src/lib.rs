//! taskscope's server-rendered pages (maud) and their stylesheet.
//!
//! # Layout
//! - [`layout`]: the frame of every page (head, navigation, footer).
//! - [`mod@overview`], [`tasks`], [`mod@task`]: one module per page, each with the view struct its
//!   handler fills and the function that renders it.
//! - [`mod@reports`], [`mod@queues`], [`mod@workers`], [`mod@failures`]: the report pages.
//! - [`mod@actions`]: action buttons, confirmation and run forms, the audit journal page.
//! - [`mod@alerts`]: the alerts section of the overview.
//! - [`charts`]: server-side SVG time-series charts.
//! - [`message`]: not found and error pages.
//! - [`components`]: pieces pages share (state badge, task table, banner).
//! - [`mod@format`]: times, runtimes, truncation and URL encoding.
//! - [`paths`]: the `--base-path` prefix every address written for the browser carries.
//! - `static/app.css`: the one stylesheet, served as [`APP_CSS`] at `/static/app.css`.
//! - `static/app.js`: the one script (tooltips, live updates), served as [`APP_JS`].
//!
//! # Invariant
//! Templates do no I/O and query no store: handlers fill a view struct and pass it in. The only
//! clock read is `Utc::now()` in each public page function (tests pin it). Nothing that came from
//! a broker is ever marked as trusted HTML: it all goes through maud's escaping. Pages work
//! without JavaScript; `app.js` only adds tooltips and live refresh.
//!
//! # Live refresh
//! A page marks regions with `data-live-region`. `app.js` opens an `EventSource` on
//! `/api/events` and, after a `transition` (or `lagged`) event, re-fetches the page's own URL at
//! most every 2 s and swaps those regions' HTML: the server stays the only renderer and the
//! filters in the URL stay the source of truth. The *Live* button pauses and resumes.

pub mod actions;
pub mod alerts;
pub mod charts;
pub mod components;
pub mod failures;
pub mod format;
pub mod layout;
pub mod message;
pub mod overview;
pub mod paths;
pub mod queues;
pub mod reports;
pub mod task;
pub mod tasks;
pub mod workers;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_alerts;
#[cfg(test)]
mod tests_failures;

pub use actions::{
    audit_page, confirm_page, ActionForms, ActionLine, AuditFilters, AuditView, ConfirmView,
};
pub use alerts::{AlertLine, AlertsView};
pub use failures::{failures, FailuresView, GroupRow};
pub use layout::{page, Nav};
pub use message::{error_page, not_found};
pub use overview::{overview, HousekeepingLine, OverviewView};
pub use paths::{set_base_path, url};
pub use queues::{queues, QueueCard, QueuesView};
pub use reports::{reports, ChartSet, NameRow, ReportWindow, ReportsView, RuntimeRow, WaitRow};
pub use task::{task_detail, TaskDetailView};
pub use tasks::{next_page_href, task_list, TaskFilters, TaskListView};
pub use workers::{workers, WorkersView};

/// The stylesheet every page links as `/static/app.css`.
pub const APP_CSS: &str = include_str!("../static/app.css");

/// The one script every page loads deferred as `/static/app.js`: chart tooltips and live
/// updates. Pages work without it.
pub const APP_JS: &str = include_str!("../static/app.js");
