//! The queues page (`/queues`): one card per queue (waiting, delayed, dead, running, each a link
//! to its tasks), the age of its oldest waiting message, its backlog over the last hour, and the warning that matters when messages
//! wait with no worker alive.

use crate::charts::{line_chart, LineSeries};
use crate::components::{self, banner, empty, tasks_href};
use crate::format::{self, time_ago};
use crate::layout::{page, Nav};
use crate::paths::url;
use crate::reports::{range_selector, ReportWindow};
use broker_adapters::{QueueSample, Worker};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// A queue's latest sample and its backlog over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueCard {
    pub latest: QueueSample,
    pub backlog: LineSeries,
}

/// Everything the queues page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuesView {
    pub version: String,
    pub window: ReportWindow,
    pub queues: Vec<QueueCard>,
    pub workers: Vec<Worker>,
    /// The purge buttons, when actions are enabled.
    pub forms: Option<crate::actions::ActionForms>,
}

/// The queues page.
pub fn queues(view: &QueuesView) -> Markup {
    render(view, &Utc::now())
}

pub(crate) fn render(view: &QueuesView, now: &DateTime<Utc>) -> Markup {
    let w = &view.window;
    let latest: Vec<QueueSample> = view.queues.iter().map(|q| q.latest.clone()).collect();
    let body = html! {
        div.page-head {
            h1 { "Queues" }
            (range_selector(w, "/queues"))
            a.muted-link href=(url("/api/queues")) { "as JSON" }
        }
        @for warning in components::no_worker_warnings(&latest, &view.workers) {
            (banner(&warning))
        }
        @if view.queues.is_empty() {
            (empty("No queue seen yet. Queues appear once a worker declares them or a message is sent."))
        }
        div.queue-cards data-live-region="queues" id="queue-cards" {
            @for q in &view.queues {
                @let s = &q.latest;
                @let base = [("broker", s.broker.as_str()), ("queue", s.name.as_str())];
                article.card.queue-card {
                    div.queue-head {
                        h2 {
                            a href=(tasks_href(base)) { (format::cell_text(&s.name, 40)) }
                        }
                        span.chip { (s.broker.as_str()) }
                        span.muted.sampled { "sampled " (time_ago(&s.sampled_at, now)) }
                    }
                    dl.queue-counts {
                        (count_link("waiting", s.length, tasks_href([base[0], base[1], ("state", "queued")]), "state-queued"))
                        (count_link("delayed", s.delayed, tasks_href([base[0], base[1], ("state", "queued")]), "state-queued"))
                        (count_link("running", s.running, tasks_href([base[0], base[1], ("state", "running")]), "state-running"))
                        (count_link("dead", s.dead, tasks_href([base[0], base[1], ("state", "failure")]), "state-failure"))
                    }
                    p.queue-oldest {
                        span.muted { "Oldest waiting " }
                        strong { (format::oldest_age(s.length, s.oldest_age_ms(*now))) }
                    }
                    @let href = |from: DateTime<Utc>, to: DateTime<Utc>| w.tasks_href(&base, &from, &to);
                    (line_chart(&w.axis, std::slice::from_ref(&q.backlog), &href, "No samples in this range."))
                    a.muted-link href=(w.href("/reports", &base)) { "Reports for this queue →" }
                    @if let Some(forms) = &view.forms {
                        div.action-buttons {
                            @if crate::actions::can_run(s.broker) {
                                a.button.danger.small href=(url(&format!("/queues/{}/{}/purge", s.broker.as_str(), format::encode_component(&s.name)))) { "Purge…" }
                            }
                            @if s.broker == broker_adapters::Broker::Bullmq {
                                @for verb in ["pause", "resume"] {
                                    form method="post" action=(url(&format!("/queues/bullmq/{}/{verb}", format::encode_component(&s.name)))) {
                                        input type="hidden" name="csrf_token" value=(forms.csrf);
                                        button.small type="submit" { (if verb == "pause" { "Pause" } else { "Resume" }) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Queues", Nav::Queues, &view.version, body)
}

fn count_link(label: &str, n: u64, href: String, class: &str) -> Markup {
    html! {
        a class={ "queue-count " (class) } href=(href) {
            dt { (label) }
            dd.zero[n == 0] { (components::count(n)) }
        }
    }
}
