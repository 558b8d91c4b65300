//! Pieces more than one page shows: the state badge, the link to a task, the task table, the
//! empty-state note and the warning banner.
//!
//! The state badge is the one place that maps a state to its CSS class, so a state has the same
//! colour on every page.

use crate::format::{self, cell_text, encode_component, unknown};
use crate::paths::url;
use broker_adapters::{QueueSample, Task, TaskState, Worker};
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
    url(&format!("/tasks/{}", encode_component(id)))
}

/// The task list filtered by the given pairs (`/tasks?broker=celery&queue=default`).
pub fn tasks_href<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let query = format::query(pairs);
    if query.is_empty() {
        url("/tasks")
    } else {
        url(&format!("/tasks?{query}"))
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

/// One warning per broker whose queues hold waiting messages while none of its workers is
/// alive; nothing when all is well (dead workers of a drained queue are history, not a problem).
pub fn no_worker_warnings(queues: &[QueueSample], workers: &[Worker]) -> Vec<String> {
    let mut idle_brokers: Vec<_> = queues
        .iter()
        .filter(|q| q.length > 0)
        .map(|q| q.broker)
        .filter(|b| !workers.iter().any(|w| w.broker == *b && w.alive))
        .collect();
    idle_brokers.sort();
    idle_brokers.dedup();
    idle_brokers
        .into_iter()
        .map(|broker| {
            let waiting: u64 = queues
                .iter()
                .filter(|q| q.broker == broker)
                .map(|q| q.length)
                .sum();
            format!(
                "{waiting} {broker} message{s} wait in queues but no {broker} worker is alive: start a worker or check why it stopped.",
                s = if waiting == 1 { "" } else { "s" },
            )
        })
        .collect()
}

/// The live-update switch: hidden without JavaScript (the page is then a plain snapshot);
/// `app.js` reveals it and follows `/api/events` until it is paused.
pub fn live_toggle() -> Markup {
    html! {
        button.live-toggle type="button" hidden aria-pressed="false" title="Pause or resume live updates" {
            span.live-dot {} span.live-text { "Live" }
        }
    }
}
