//! The failure groups page (`/failures`): failures grouped by fingerprint (exception type,
//! normalised message, innermost frames) over a window, most frequent first. A group first seen
//! in the window is marked new; each has a sparkline of its counts and a link to its tasks.

use crate::components::{count, empty, tasks_href};
use crate::format::{self, time_ago};
use crate::layout::{page, Nav};
use crate::reports::{range_selector, ReportWindow};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// One failure group, as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub fingerprint: String,
    pub exception: Option<String>,
    /// The normalised message (`card declined <n>`).
    pub message: String,
    /// The innermost frames, outermost first.
    pub frames: Vec<String>,
    /// Failures and retries in the window.
    pub count: u64,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub names: Vec<String>,
    pub brokers: Vec<String>,
    pub sample_task_id: Option<String>,
    /// Counts per bucket of the window, oldest first.
    pub counts: Vec<u64>,
}

/// Everything the failure groups page shows.
#[derive(Debug, Clone)]
pub struct FailuresView {
    pub version: String,
    pub window: ReportWindow,
    /// `state=all`: quiet groups are listed too.
    pub all: bool,
    pub groups: Vec<GroupRow>,
}

/// The failure groups page.
pub fn failures(view: &FailuresView) -> Markup {
    render(view, &Utc::now())
}

impl GroupRow {
    /// First seen inside the window: a new error.
    pub fn is_new(&self, window: &ReportWindow) -> bool {
        self.first_seen.is_some_and(|f| f >= window.since)
    }
}

pub(crate) fn render(view: &FailuresView, now: &DateTime<Utc>) -> Markup {
    let w = &view.window;
    let fresh = view.groups.iter().filter(|g| g.is_new(w)).count();
    let state = if view.all { "all" } else { "open" };
    let body = html! {
        div.page-head {
            h1 { "Failures" }
            span.chip { (view.groups.len()) " groups" }
            @if fresh > 0 {
                span.chip.new-chip { (fresh) " new" }
            }
            a.muted-link href=(w.href("/api/failures/groups", &[("state", state)])) { "as JSON" }
            (range_selector(w, "/failures"))
        }
        p.muted.lead {
            "Failures and retried attempts grouped by exception type, message (numbers, ids, "
            "hex and quoted values set aside) and innermost frames. "
            @if view.all {
                a href=(w.href("/failures", &[])) { "Only groups with failures in this range" }
            } @else {
                a href=(w.href("/failures", &[("state", "all")])) { "Also groups quiet in this range" }
            }
        }
        div #failure-groups data-live-region="failures" {
            @if view.groups.is_empty() {
                (empty("No failure in this range."))
            } @else {
                div.groups {
                    @for g in &view.groups {
                        (group_card(g, w, now))
                    }
                }
            }
        }
    };
    page("Failures", Nav::Failures, &view.version, body)
}

fn group_card(g: &GroupRow, w: &ReportWindow, now: &DateTime<Utc>) -> Markup {
    let tasks = {
        let mut pairs = w.filter_pairs();
        pairs.push(("fingerprint", g.fingerprint.as_str()));
        tasks_href(pairs)
    };
    html! {
        section.card.group id=(format!("group-{}", g.fingerprint)) {
            div.group-head {
                span.exception.mono { (g.exception.as_deref().unwrap_or("(no exception type)")) }
                @if g.is_new(w) {
                    span.badge.new-badge title="first seen in this range" { "new" }
                }
                span.group-count title="failures and retries in this range" { (count(g.count)) }
            }
            p.group-message.mono { (format::cell_text(&g.message, 200)) }
            (sparkline(&g.counts, &format!("{} in this range", g.count)))
            dl.group-facts {
                dt { "Tasks" }
                dd {
                    @for (i, name) in g.names.iter().take(4).enumerate() {
                        @if i > 0 { ", " }
                        span.mono { (format::cell_text(name, 60)) }
                    }
                    @if g.names.len() > 4 { " and " (g.names.len() - 4) " more" }
                    @if g.names.is_empty() { span.muted { "unknown" } }
                }
                dt { "Brokers" }
                dd { (g.brokers.join(", ")) }
                @if !g.frames.is_empty() {
                    dt { "Where" }
                    dd.mono { (format::cell_text(g.frames.last().map(String::as_str).unwrap_or(""), 80)) }
                }
                dt { "First seen" }
                dd { (format::opt_time(g.first_seen.as_ref(), now)) }
                dt { "Last seen" }
                dd {
                    @if let Some(at) = &g.last_seen { (time_ago(at, now)) } @else { (format::unknown()) }
                }
            }
            div.group-links {
                a href=(tasks) { "Its tasks →" }
                @if let Some(id) = &g.sample_task_id {
                    a.muted-link href=(crate::components::task_href(id)) { "latest example" }
                }
                span.muted.mono title="fingerprint" { (g.fingerprint) }
            }
        }
    }
}

/// A small bar sparkline of counts per bucket (SVG stretched to its box, no axis).
pub fn sparkline(counts: &[u64], label: &str) -> Markup {
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let n = counts.len().max(1);
    html! {
        svg.sparkline viewBox=(format!("0 0 {n} 20")) preserveAspectRatio="none" role="img" aria-label=(label) {
            title { (label) }
            @for (i, c) in counts.iter().enumerate() {
                @if *c > 0 {
                    @let h = ((*c as f64 / max as f64) * 19.0).max(1.5);
                    rect x=(i) y=(format!("{:.2}", 20.0 - h)) width="0.85" height=(format!("{h:.2}")) {}
                }
            }
            line x1="0" y1="19.9" x2=(n) y2="19.9" {}
        }
    }
}
