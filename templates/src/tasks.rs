//! The task list (`/tasks`): the filter form, one page of matching tasks, and the link to the
//! next page.
//!
//! The form is a plain GET form, so a filtered list is a URL that can be shared and works
//! without JavaScript. The filters are carried as the user typed them; the handler validates.

use crate::components::{empty, task_table, tasks_href};
use crate::layout::{page, Nav};
use crate::paths::url;
use broker_adapters::{Broker, Task, TaskState};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// The filters of `/tasks` and `/api/tasks`, as the query string gave them. An empty value
/// (what an untouched form field sends) means the same as an absent one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilters {
    pub broker: Option<String>,
    pub queue: Option<String>,
    pub name: Option<String>,
    /// One state or a comma list (`failure,retried`).
    pub state: Option<String>,
    /// Substring of id, name or args.
    pub q: Option<String>,
    /// A duration back from now (`1h`) or an RFC 3339 time.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Page size, kept so the next page has the same size.
    pub limit: Option<String>,
    /// A failure group's fingerprint (from `/failures`).
    pub fingerprint: Option<String>,
}

impl TaskFilters {
    /// The filters that are set, in a fixed order, as query pairs.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("broker", &self.broker),
            ("queue", &self.queue),
            ("name", &self.name),
            ("state", &self.state),
            ("q", &self.q),
            ("since", &self.since),
            ("until", &self.until),
            ("limit", &self.limit),
            ("fingerprint", &self.fingerprint),
        ]
        .into_iter()
        .filter_map(|(key, value)| match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Some((key, v)),
            _ => None,
        })
        .collect()
    }

    /// Whether any filter is set.
    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }
}

/// Everything the task list shows.
#[derive(Debug, Clone, Default)]
pub struct TaskListView {
    pub version: String,
    pub filters: TaskFilters,
    /// One page of matching tasks, newest activity first.
    pub tasks: Vec<Task>,
    /// The `next_cursor` of `/api/tasks`: `None` on the last page.
    pub next_cursor: Option<String>,
    /// With actions enabled: links to retry or delete every matching task (behind a
    /// confirmation page with the count).
    pub bulk_actions: bool,
}

/// The task list page.
pub fn task_list(view: &TaskListView) -> Markup {
    render(view, &Utc::now())
}

/// The link to the page after this one: the same filters plus `cursor`.
pub fn next_page_href(filters: &TaskFilters, cursor: &str) -> String {
    let mut pairs = filters.pairs();
    pairs.push(("cursor", cursor));
    tasks_href(pairs)
}

pub(crate) fn render(view: &TaskListView, now: &DateTime<Utc>) -> Markup {
    let filters = &view.filters;
    let api_href = match crate::format::query(filters.pairs()) {
        q if q.is_empty() => url("/api/tasks"),
        q => url(&format!("/api/tasks?{q}")),
    };
    let export_href =
        match crate::format::query(filters.pairs().into_iter().filter(|(k, _)| *k != "limit")) {
            q if q.is_empty() => url("/export.csv"),
            q => url(&format!("/export.csv?{q}")),
        };
    let body = html! {
        div.page-head {
            h1 { "Tasks" }
            a.muted-link href=(api_href) { "as JSON" }
            a.muted-link href=(export_href) { "export CSV" }
            (crate::components::live_toggle())
        }
        (filter_form(filters))
        @if view.bulk_actions && !view.tasks.is_empty() {
            @let q = match crate::format::query(filters.pairs()) {
                q if q.is_empty() => q,
                q => format!("?{q}"),
            };
            div.action-buttons.bulk-actions {
                a.button.small href=(url(&format!("/tasks/bulk/retry{q}"))) { "Retry every matching failed task…" }
                a.button.small.danger href=(url(&format!("/tasks/bulk/delete{q}"))) { "Delete every matching waiting task…" }
            }
        }
        div #live-tasks data-live-region="tasks" {
        @if view.tasks.is_empty() {
            @if filters.is_empty() {
                (empty("No task seen yet. Tasks appear here as soon as a producer enqueues one."))
            } @else {
                (empty("No task matches these filters."))
            }
        } @else {
            (task_table(&view.tasks, now))
        }
        @if let Some(cursor) = &view.next_cursor {
            nav.pager aria-label="Pages" {
                a.button href=(next_page_href(filters, cursor)) rel="next" { "Next page →" }
            }
        }
        }
    };
    page("Tasks", Nav::Tasks, &view.version, body)
}

fn filter_form(f: &TaskFilters) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let state = value(&f.state);
    let broker = value(&f.broker);
    // A comma list (or a typo) is not one of the options: keep it as its own option so that
    // submitting the form again does not silently drop it.
    let custom_state = !state.is_empty() && !TaskState::ALL.iter().any(|s| s.as_str() == state);
    let custom_broker = !broker.is_empty() && !Broker::ALL.iter().any(|b| b.as_str() == broker);
    html! {
        form.filters method="get" action=(url("/tasks")) {
            label {
                span { "Search" }
                input type="search" name="q" value=(value(&f.q)) placeholder="id, name or args";
            }
            label {
                span { "State" }
                select name="state" {
                    option value="" { "any" }
                    @for s in TaskState::ALL {
                        option value=(s.as_str()) selected[state == s.as_str()] { (s.as_str()) }
                    }
                    @if custom_state {
                        option value=(state) selected { (state) }
                    }
                }
            }
            label {
                span { "Broker" }
                select name="broker" {
                    option value="" { "any" }
                    @for b in Broker::ALL {
                        option value=(b.as_str()) selected[broker == b.as_str()] { (b.as_str()) }
                    }
                    @if custom_broker {
                        option value=(broker) selected { (broker) }
                    }
                }
            }
            label {
                span { "Queue" }
                input type="text" name="queue" value=(value(&f.queue));
            }
            label {
                span { "Name" }
                input type="text" name="name" value=(value(&f.name)) placeholder="billing.add";
            }
            label {
                span { "Since" }
                input type="text" name="since" value=(value(&f.since)) placeholder="e.g. 1h" title="A duration back from now (30m, 1h, 7d) or an RFC 3339 time";
            }
            label {
                span { "Until" }
                input type="text" name="until" value=(value(&f.until)) placeholder="e.g. 10m" title="A duration back from now or an RFC 3339 time";
            }
            @if let Some(limit) = f.limit.as_deref().filter(|l| !l.is_empty()) {
                input type="hidden" name="limit" value=(limit);
            }
            @if let Some(fingerprint) = f.fingerprint.as_deref().filter(|v| !v.is_empty()) {
                label {
                    span { "Failure group" }
                    input type="text" name="fingerprint" value=(fingerprint);
                }
            }
            div.form-actions {
                button type="submit" { "Filter" }
                @if !f.is_empty() {
                    a href=(url("/tasks")) { "Reset" }
                }
            }
        }
    }
}
