//! The overview page (`/`): counts by state, backlog / throughput / failure charts of a window
//! (the last hour unless the URL says otherwise), queues and workers at a glance, recent tasks,
//! and a banner for anything that needs attention. Its main region updates live with `app.js`.
//!
//! It shows what the handler read from the store; it decides nothing but what is worth a
//! warning.

use crate::components::{self, banner, empty, state_class, task_table, tasks_href};
use crate::format::{self, time, time_ago};
use crate::layout::{page, Nav};
use crate::paths::url;
use crate::reports::{chart_grid, range_selector, ChartSet};
use crate::workers::worker_table;
use broker_adapters::{QueueSample, Task, TaskState, Worker};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// Everything the overview shows.
#[derive(Debug, Clone, Default)]
pub struct OverviewView {
    pub version: String,
    /// Whether taskscope's Redis connection is up right now.
    pub redis_connected: bool,
    /// The adapters that are active (`celery`, `rq`, ...), as `--brokers` resolved them.
    pub brokers: Vec<String>,
    /// Task counts per state; states left out count as zero.
    pub by_state: Vec<(TaskState, u64)>,
    /// The latest sample of every queue.
    pub queues: Vec<QueueSample>,
    pub workers: Vec<Worker>,
    /// The most recently active tasks, newest first.
    pub recent: Vec<Task>,
    /// Messages that could not be decoded since start.
    pub decode_errors: u64,
    /// Anything else the user should know (`CONFIG SET refused: polling every 5s`).
    pub warnings: Vec<String>,
    /// Backlog, throughput and failure charts of the last hour (none in unit tests that do not
    /// need them).
    pub charts: Option<ChartSet>,
    /// One line per housekeeping job: its last run and next time.
    pub housekeeping: Vec<HousekeepingLine>,
    /// Alert rules' firing, pending and resolved instances (no section without rules).
    pub alerts: crate::alerts::AlertsView,
}

/// A housekeeping job as the overview shows it.
#[derive(Debug, Clone, Default)]
pub struct HousekeepingLine {
    pub job: String,
    pub last_run: Option<DateTime<Utc>>,
    pub duration_ms: f64,
    pub detail: String,
    pub error: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
}

/// The overview page.
pub fn overview(view: &OverviewView) -> Markup {
    render(view, &Utc::now())
}

pub(crate) fn render(view: &OverviewView, now: &DateTime<Utc>) -> Markup {
    let body = html! {
        div.page-head {
            h1 { "Overview" }
            div.chips {
                @if view.redis_connected {
                    span.chip.chip-ok { "Redis connected" }
                } @else {
                    span.chip.chip-bad { "Redis disconnected" }
                }
                @if view.brokers.is_empty() {
                    span.chip { "no broker detected yet" }
                }
                @for broker in &view.brokers {
                    span.chip { (broker) }
                }
            }
            (components::live_toggle())
        }
        @for warning in warnings(view) {
            (banner(&warning))
        }
        div #live-overview data-live-region="overview" {
        (crate::alerts::alerts_section(&view.alerts, now))
        (state_strip(&view.by_state))
        @if let Some(charts) = &view.charts {
            div.section-head.charts-head {
                h2 { "Activity" }
                (range_selector(&charts.window, "/"))
            }
            (chart_grid(charts, false))
        }
        section #queues {
            div.section-head {
                h2 { "Queues" }
                a href=(url("/queues")) { "All queues →" }
            }
            (queue_table(&view.queues, now))
        }
        section #workers {
            div.section-head {
                h2 { "Workers" }
                a href=(url("/workers")) { "All workers →" }
            }
            (worker_table(&view.workers, now))
        }
        section #recent {
            div.section-head {
                h2 { "Recent tasks" }
                a href=(url("/tasks")) { "All tasks →" }
            }
            @if view.recent.is_empty() {
                (empty("No task seen yet. Tasks appear here as soon as a producer enqueues one."))
            } @else {
                (task_table(&view.recent, now))
            }
        }
        }
        @if !view.housekeeping.is_empty() {
            section #housekeeping {
                h2 { "Housekeeping" }
                div.table-wrap {
                    table.data {
                        thead { tr { th { "Job" } th { "Last run" } th.num { "Took" } th { "What it did" } th { "Next" } } }
                        tbody {
                            @for line in &view.housekeeping {
                                tr {
                                    td { (line.job) }
                                    td.nowrap { @match line.last_run { Some(t) => (time_ago(&t, now)), None => span.muted { "never" } } }
                                    td.num { @if line.last_run.is_some() { (format!("{:.0} ms", line.duration_ms)) } }
                                    td {
                                        @if let Some(e) = &line.error { span.chip.chip-bad { "failed" } " " (e) }
                                        @else { (line.detail) }
                                    }
                                    td.nowrap { @if let Some(t) = line.next_run { (time(&t, now)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Overview", Nav::Overview, &view.version, body)
}

/// What deserves a banner, most urgent first. Nothing when all is well.
fn warnings(view: &OverviewView) -> Vec<String> {
    let mut out = Vec::new();
    if !view.redis_connected {
        out.push(
            "Redis is disconnected: what you see is history, nothing new is recorded. \
             Check that Redis is up and that --redis points at it."
                .to_string(),
        );
    }
    out.extend(components::no_worker_warnings(&view.queues, &view.workers));
    if view.decode_errors > 0 {
        out.push(format!(
            "{} message{} could not be decoded; the log says which key and why (metric taskscope_decode_errors_total).",
            view.decode_errors,
            if view.decode_errors == 1 { "" } else { "s" },
        ));
    }
    out.extend(view.warnings.iter().cloned());
    out
}

/// One card per state, always all six in the contract's order, each linking to its tasks.
fn state_strip(by_state: &[(TaskState, u64)]) -> Markup {
    let count_of = |state: TaskState| -> u64 {
        by_state
            .iter()
            .filter(|(s, _)| *s == state)
            .map(|(_, n)| n)
            .sum()
    };
    html! {
        nav.stats aria-label="Tasks by state" {
            @for state in TaskState::ALL {
                @let n = count_of(state);
                a class={ "stat " (state_class(state)) } href=(tasks_href([("state", state.as_str())])) {
                    span.stat-count.zero[n == 0] { (components::count(n)) }
                    span.stat-label { (state.as_str()) }
                }
            }
        }
    }
}

fn queue_table(queues: &[QueueSample], now: &DateTime<Utc>) -> Markup {
    if queues.is_empty() {
        return empty("No queue seen yet.");
    }
    html! {
        div.table-wrap {
            table.data {
                thead {
                    tr {
                        th { "Broker" }
                        th { "Queue" }
                        th.num { "Waiting" }
                        th.num { "Delayed" }
                        th.num { "Dead" }
                        th.num { "Running" }
                        th.num title="Age of the oldest message waiting" { "Oldest" }
                        th { "Sampled" }
                    }
                }
                tbody {
                    @for q in queues {
                        tr {
                            td { (q.broker.as_str()) }
                            td {
                                a href=(tasks_href([("broker", q.broker.as_str()), ("queue", q.name.as_str())])) {
                                    (format::cell_text(&q.name, 40))
                                }
                            }
                            @let link = |state: &'static str| tasks_href([("broker", q.broker.as_str()), ("queue", q.name.as_str()), ("state", state)]);
                            td.num { a href=(link("queued")) { (components::count(q.length)) } }
                            td.num { a href=(link("queued")) { (components::count(q.delayed)) } }
                            td.num.warn[q.dead > 0] { a href=(link("failure")) { (components::count(q.dead)) } }
                            td.num { a href=(link("running")) { (components::count(q.running)) } }
                            td.num.nowrap { (format::oldest_age(q.length, q.oldest_age_ms(*now))) }
                            td.nowrap { (time(&q.sampled_at, now)) }
                        }
                    }
                }
            }
        }
    }
}
