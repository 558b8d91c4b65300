//! The workers page (`/workers`): every worker taskscope has seen, alive or not, and the
//! warning that matters when messages wait with no worker alive (only then: dead workers of a
//! drained queue are history, not a problem).

use crate::components::{self, banner, empty};
use crate::format::{self, time_ago};
use crate::layout::{page, Nav};
use crate::paths::url;
use broker_adapters::{QueueSample, Worker};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// Everything the workers page shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkersView {
    pub version: String,
    pub workers: Vec<Worker>,
    /// The latest queue samples, to tell whether missing workers matter.
    pub queues: Vec<QueueSample>,
}

/// The workers page.
pub fn workers(view: &WorkersView) -> Markup {
    render(view, &Utc::now())
}

pub(crate) fn render(view: &WorkersView, now: &DateTime<Utc>) -> Markup {
    let alive = view.workers.iter().filter(|w| w.alive).count();
    let body = html! {
        div.page-head {
            h1 { "Workers" }
            span.chip { (alive) " alive" }
            span.chip { (view.workers.len() - alive) " dead" }
            a.muted-link href=(url("/api/workers")) { "as JSON" }
        }
        @for warning in components::no_worker_warnings(&view.queues, &view.workers) {
            (banner(&warning))
        }
        div data-live-region="workers" id="workers-table" {
            (worker_table(&view.workers, now))
        }
    };
    page("Workers", Nav::Workers, &view.version, body)
}

/// The table of workers the overview and the workers page share. A worker not alive is
/// "dead", the contract's word (its running tasks are abandoned when it died).
pub fn worker_table(workers: &[Worker], now: &DateTime<Utc>) -> Markup {
    if workers.is_empty() {
        return empty("No worker seen yet.");
    }
    html! {
        div.table-wrap {
            table.data {
                thead {
                    tr {
                        th { "Status" }
                        th { "Broker" }
                        th { "Worker" }
                        th { "Host" }
                        th { "Online since" }
                        th { "Last seen" }
                        th.num { "Running" }
                    }
                }
                tbody {
                    @for w in workers {
                        tr {
                            td {
                                @if w.alive {
                                    span.badge.alive { "alive" }
                                } @else {
                                    span.badge.dead { "dead" }
                                }
                            }
                            td { (w.broker.as_str()) }
                            td.mono { (format::cell_text(&w.id, 40)) }
                            td { (components::opt_cell(w.hostname.as_deref(), 32)) }
                            td.nowrap {
                                // The epoch: up since before taskscope first heard of it.
                                @if w.online_since == DateTime::<Utc>::UNIX_EPOCH {
                                    span.muted title="up since before taskscope first heard of it" { "before taskscope" }
                                } @else {
                                    (format::time(&w.online_since, now))
                                }
                            }
                            td.nowrap { (time_ago(&w.last_seen, now)) }
                            td.num {
                                a href=(components::tasks_href([("broker", w.broker.as_str()), ("state", "running")])) { (w.running) }
                            }
                        }
                    }
                }
            }
        }
    }
}
