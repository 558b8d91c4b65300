//! The page of one task (`/tasks/{id}`): every field, the arguments and result as JSON, the
//! error with its traceback, and the timeline of its transitions.

use crate::components::{state_badge, state_class, tasks_href};
use crate::format::{self, long_time, relative_time, unknown};
use crate::layout::{page, Nav};
use crate::paths::url;
use broker_adapters::{rfc3339, Task, Transition};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde_json::Value;

/// Everything the task page shows.
#[derive(Debug, Clone)]
pub struct TaskDetailView {
    pub version: String,
    pub task: Task,
    /// Every state change of the task, oldest first.
    pub transitions: Vec<Transition>,
    /// The actions taken on it or that created it (the audit journal), oldest first.
    pub actions: Vec<crate::actions::ActionLine>,
    /// The action buttons, when actions are enabled.
    pub forms: Option<crate::actions::ActionForms>,
}

/// The task page.
pub fn task_detail(view: &TaskDetailView) -> Markup {
    render(view, &Utc::now())
}

pub(crate) fn render(view: &TaskDetailView, now: &DateTime<Utc>) -> Markup {
    let task = &view.task;
    let name = task.name.as_deref().unwrap_or("(unnamed task)");
    let body = html! {
        nav.crumbs { a href=(url("/tasks")) { "← Tasks" } }
        div.task-head {
            h1 { (name) }
            (state_badge(task.state))
        }
        p.task-id.mono { (task.id) }
        @if let Some(error) = &task.error {
            div.error-box { (error) }
        }
        @if let Some(forms) = &view.forms {
            (crate::actions::task_buttons(task, forms))
        }
        section.card {
            h2 { "Details" }
            (fields(task, now))
        }
        section {
            h2 { "Arguments and result" }
            div.json-grid {
                (json_block("args", task.args.as_ref()))
                (json_block("kwargs", task.kwargs.as_ref()))
                (json_block("result", task.result.as_ref()))
            }
        }
        @if let Some(traceback) = &task.traceback {
            section {
                h2 { "Traceback" }
                pre.code.traceback { (traceback) }
            }
        }
        section {
            h2 { "Timeline" }
            (timeline(&view.transitions, now))
            @if !view.actions.is_empty() {
                h3 { "Actions" }
                (crate::actions::action_timeline(&task.id, &view.actions, now))
            }
        }
    };
    page(name, Nav::Tasks, &view.version, body)
}

fn fields(task: &Task, now: &DateTime<Utc>) -> Markup {
    let at = |t: Option<&DateTime<Utc>>| match t {
        Some(t) => html! {
            time datetime=(rfc3339(t)) title=(rfc3339(t)) { (long_time(t)) }
            " " span.muted.nowrap { "(" (relative_time(t, now)) ")" }
        },
        None => unknown(),
    };
    html! {
        dl.fields {
            div { dt { "ID" } dd.mono { (task.id) } }
            div {
                dt { "Name" }
                dd {
                    @match &task.name {
                        Some(n) => a href=(tasks_href([("name", n.as_str())])) { (n) },
                        None => (unknown()),
                    }
                }
            }
            div {
                dt { "Broker" }
                dd { a href=(tasks_href([("broker", task.broker.as_str())])) { (task.broker.as_str()) } }
            }
            div {
                dt { "Queue" }
                dd {
                    @match &task.queue {
                        Some(q) => a href=(tasks_href([("broker", task.broker.as_str()), ("queue", q.as_str())])) { (q) },
                        None => (unknown()),
                    }
                }
            }
            div {
                dt { "Worker" }
                dd {
                    @match &task.worker {
                        Some(w) => span.mono { (w) },
                        None => (unknown()),
                    }
                }
            }
            div { dt { "Retries" } dd { (task.retries) } }
            div { dt { "ETA" } dd { (at(task.eta.as_ref())) } }
            div { dt { "Enqueued" } dd { (at(task.enqueued_at.as_ref())) } }
            div { dt { "Started" } dd { (at(task.started_at.as_ref())) } }
            div { dt { "Finished" } dd { (at(task.finished_at.as_ref())) } }
            div {
                dt { "Runtime" }
                dd {
                    @match task.runtime_ms {
                        Some(ms) => span title={ (ms) " ms" } { (format::runtime(ms)) },
                        None => (unknown()),
                    }
                }
            }
            div { dt { "Updated" } dd { (at(Some(&task.updated_at))) } }
        }
    }
}

/// One JSON value, pretty-printed; unknown values say so rather than print `null`.
fn json_block(label: &str, value: Option<&Value>) -> Markup {
    html! {
        div.json {
            h3 { (label) }
            @match value {
                Some(v) => pre.code { (serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())) },
                None => p.code-empty { "unknown" },
            }
        }
    }
}

fn timeline(transitions: &[Transition], now: &DateTime<Utc>) -> Markup {
    if transitions.is_empty() {
        return crate::components::empty("No transition recorded.");
    }
    html! {
        ol.timeline {
            @for (i, t) in transitions.iter().enumerate() {
                li class=(state_class(t.state)) {
                    div.timeline-head {
                        (state_badge(t.state))
                        time datetime=(rfc3339(&t.at)) title=(rfc3339(&t.at)) { (long_time(&t.at)) }
                        @if let Some(prev) = i.checked_sub(1).map(|p| &transitions[p]) {
                            span.muted { "+" (format::runtime((t.at - prev.at).num_milliseconds() as f64)) }
                        } @else {
                            span.muted { (relative_time(&t.at, now)) }
                        }
                    }
                    @if t.worker.is_some() || t.detail.is_some() {
                        div.timeline-body {
                            @if let Some(w) = &t.worker {
                                span.mono { (w) }
                            }
                            @if let Some(d) = &t.detail {
                                span { (d) }
                            }
                        }
                    }
                }
            }
        }
    }
}
