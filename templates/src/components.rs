//! Pieces more than one page shows: the state badge, the link to a task, the task table, the
//! empty-state note and the warning banner.
//!
//! The state badge is the one place that maps a state to its CSS class, so a state has the same
//! colour on every page.

use crate::format::{self, cell_text, encode_component, unknown};
use broker_adapters::{Task, TaskState};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// The CSS class that colours everything about `state` (`state-failure`).
pub fn state_class(state: TaskState) -> String {
    format!("state-{}", state.as_str())
}

/// A coloured pill with the state's name.
pub fn state_badge(state: TaskState) -> Markup {
    html! { span class={ "badge " (state_class(state)) } { (state.as_str()) } }
}

/// The page of one task. Ids come from the broker and may hold any character, so they are
/// percent-encoded into the path.
pub fn task_href(id: &str) -> String {
    format!("/tasks/{}", encode_component(id))
}

/// The task list filtered by the given pairs (`/tasks?broker=celery&queue=default`).
pub fn tasks_href<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let query = format::query(pairs);
    if query.is_empty() {
        "/tasks".to_string()
    } else {
        format!("/tasks?{query}")
    }
}

/// An optional text as a (truncated) cell, or the unknown dash.
pub fn opt_cell(value: Option<&str>, max_chars: usize) -> Markup {
    match value {
        Some(v) if !v.is_empty() => cell_text(v, max_chars),
        _ => unknown(),
    }
}

/// A count with thousands separators: `12,840`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or_default())
        .collect();
    groups.join(",")
}

/// The muted note a section shows instead of an empty table.
pub fn empty(message: &str) -> Markup {
    html! { p.empty { (message) } }
}

/// A yellow banner for something the user should act on.
pub fn banner(message: &str) -> Markup {
    html! { div.banner role="alert" { (message) } }
}

/// The table of tasks the task list and the overview's recent activity share, newest first as
/// given.
pub fn task_table(tasks: &[Task], now: &DateTime<Utc>) -> Markup {
    html! {
        div.table-wrap {
            table.data {
                thead {
                    tr {
                        th { "State" }
                        th { "Name" }
                        th { "ID" }
                        th { "Queue" }
                        th { "Broker" }
                        th { "Worker" }
                        th.num { "Retries" }
                        th.num { "Runtime" }
                        th { "Updated" }
                    }
                }
                tbody {
                    @for task in tasks {
                        @let href = task_href(&task.id);
                        tr {
                            td { (state_badge(task.state)) }
                            td.name {
                                a href=(href) {
                                    @match &task.name {
                                        Some(name) => (cell_text(name, 48)),
                                        None => span.muted { "(unnamed)" },
                                    }
                                }
                            }
                            td.mono {
                                a.id-link href=(href) title=(task.id) {
                                    (format::truncate(&task.id, 13))
                                }
                            }
                            td { (opt_cell(task.queue.as_deref(), 24)) }
                            td { (task.broker.as_str()) }
                            td { (opt_cell(task.worker.as_deref(), 28)) }
                            td.num { (task.retries) }
                            td.num {
                                @match task.runtime_ms {
                                    Some(ms) => (format::runtime(ms)),
                                    None => (unknown()),
                                }
                            }
                            td.nowrap { (format::time(&task.updated_at, now)) }
                        }
                    }
                }
            }
        }
    }
}
