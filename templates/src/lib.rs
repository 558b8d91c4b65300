//! taskscope's server-rendered pages (maud) and their stylesheet.
//!
//! # Layout
//! - [`layout`]: the frame of every page (head, navigation, footer).
//! - [`mod@overview`], [`tasks`], [`mod@task`]: one module per page, each with the view struct its
//!   handler fills and the function that renders it.
//! - [`message`]: not found and error pages.
//! - [`components`]: pieces pages share (state badge, task table, banner).
//! - [`mod@format`]: times, runtimes, truncation and URL encoding.
//! - `static/app.css`: the one stylesheet, served as [`APP_CSS`] at `/static/app.css`.
//!
//! # Invariant
//! Templates do no I/O and query no store: handlers fill a view struct and pass it in. The only
//! clock read is `Utc::now()` in each public page function (tests pin it). Nothing that came from
//! a broker is ever marked as trusted HTML: it all goes through maud's escaping. Pages work
//! without JavaScript.

pub mod components;
pub mod format;
pub mod layout;
pub mod message;
pub mod overview;
pub mod task;
pub mod tasks;

#[cfg(test)]
mod tests;

pub use layout::{page, Nav};
pub use message::{error_page, not_found};
pub use overview::{overview, HousekeepingLine, OverviewView};
pub use task::{task_detail, TaskDetailView};
pub use tasks::{next_page_href, task_list, TaskFilters, TaskListView};

/// The stylesheet every page links as `/static/app.css`.
pub const APP_CSS: &str = include_str!("../static/app.css");
