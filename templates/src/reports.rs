//! The reports page (`/reports`): backlog, throughput and failures over a time window, runtime
//! percentiles, and the names that fail, run and retry the most.
//!
//! The window and filters live in the URL (`?range=24h&queue=emails`), so a view can be
//! bookmarked and shared; the range selector is a row of links plus a plain GET form for a
//! custom window. Every number and bar links to the task list filtered to what it counts.

use crate::charts::{bar_chart, line_chart, meter, BarSeries, LineSeries, TimeAxis};
use crate::components::{empty, tasks_href};
use crate::format::{self, cell_text};
use crate::layout::{page, Nav};
use crate::paths::url;
use broker_adapters::rfc3339;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// The ranges the selector offers.
pub const RANGES: &[(&str, &str)] = &[
    ("15m", "15 min"),
    ("1h", "1 h"),
    ("24h", "24 h"),
    ("7d", "7 d"),
    ("30d", "30 d"),
];

/// The window a report page shows, and the filters as the URL gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportWindow {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub axis: TimeAxis,
    /// The selector's range (`24h`) when the window is one of [`RANGES`], else `None`.
    pub range: Option<String>,
    /// Custom `since` / `until` exactly as typed.
    pub since_text: Option<String>,
    pub until_text: Option<String>,
    pub broker: Option<String>,
    pub queue: Option<String>,
    pub name: Option<String>,
}

impl ReportWindow {
    /// The filters that narrow the data (not the window), as query pairs.
    pub fn filter_pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("broker", &self.broker),
            ("queue", &self.queue),
            ("name", &self.name),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    /// The window as query pairs: the range key, or the custom times.
    pub fn window_pairs(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        match &self.range {
            Some(r) => out.push(("range", r.as_str())),
            None => {
                if let Some(s) = &self.since_text {
                    out.push(("since", s.as_str()));
                }
                if let Some(u) = &self.until_text {
                    out.push(("until", u.as_str()));
                }
            }
        }
        out
    }

    /// The task list for `[from, to)` with this window's filters plus `extra`.
    pub fn tasks_href(
        &self,
        extra: &[(&str, &str)],
        from: &DateTime<Utc>,
        to: &DateTime<Utc>,
    ) -> String {
        let from = rfc3339(from);
        let to = rfc3339(to);
        let mut pairs: Vec<(&str, &str)> = self.filter_pairs();
        pairs.extend_from_slice(extra);
        pairs.push(("since", &from));
        pairs.push(("until", &to));
        tasks_href(pairs)
    }

    /// A link to `path` with this window and filters plus `extra`.
    pub fn href(&self, path: &str, extra: &[(&str, &str)]) -> String {
        let mut pairs = self.window_pairs();
        pairs.extend(self.filter_pairs());
        pairs.extend_from_slice(extra);
        let q = format::query(pairs);
        if q.is_empty() {
            url(path)
        } else {
            url(&format!("{path}?{q}"))
        }
    }
}

/// One task name's activity in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct NameRow {
    pub name: Option<String>,
    pub runs: u64,
    pub failures: u64,
    pub retries: u64,
    pub failure_rate: f64,
}

/// Runtime percentiles of one task name.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeRow {
    pub broker: String,
    pub name: Option<String>,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Wait before running (enqueued or eta -> started) of one task name on one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitRow {
    pub broker: String,
    pub queue: Option<String>,
    pub name: Option<String>,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The charts the overview and the reports page share.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartSet {
    pub window: ReportWindow,
    /// One line per queue.
    pub backlog: Vec<LineSeries>,
    /// One stacked layer per state.
    pub throughput: Vec<BarSeries>,
    /// Failures and retries (total over names).
    pub failures: Vec<BarSeries>,
}

/// Everything the reports page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportsView {
    pub version: String,
    pub charts: ChartSet,
    /// Failures plus retries per bucket of the task names with the most of them, one stacked
    /// layer per name.
    pub failures_by_name: Vec<BarSeries>,
    /// Slowest first (p95).
    pub runtime: Vec<RuntimeRow>,
    /// Longest waits first (p95).
    pub wait: Vec<WaitRow>,
    pub top_failing: Vec<NameRow>,
    pub most_frequent: Vec<NameRow>,
    pub most_retried: Vec<NameRow>,
}

/// The reports page.
pub fn reports(view: &ReportsView) -> Markup {
    let w = &view.charts.window;
    let body = html! {
        div.page-head {
            h1 { "Reports" }
            (range_selector(w, "/reports"))
        }
        (filter_form(w))
        (chart_grid(&view.charts, true))
        section.card.chart-card.by-name {
            div.section-head {
                h2 { "Failures and retries by task" }
                a.muted-link href=(w.href("/api/reports/failures", &[])) { "JSON" }
            }
            @let failed = |from: DateTime<Utc>, to: DateTime<Utc>| {
                w.tasks_href(&[("state", "failure,retried")], &from, &to)
            };
            (bar_chart(&w.axis, &view.failures_by_name, &failed, "failures and retries", "No failure or retry in this range."))
        }
        div.report-tables {
            section.card.wide {
                div.section-head {
                    h2 { "Runtime by task (slowest first)" }
                    a.muted-link href=(w.href("/api/reports/runtime", &[])) { "JSON" }
                }
                (runtime_table(w, &view.runtime))
            }
            section.card.wide {
                div.section-head {
                    h2 { "Wait before running by queue and task (longest first)" }
                    a.muted-link href=(w.href("/api/reports/wait", &[])) { "JSON" }
                }
                (wait_table(w, &view.wait))
            }
            section.card {
                h2 { "Top failing" }
                (name_table(w, &view.top_failing, Column::Failures))
            }
            section.card {
                h2 { "Most frequent" }
                (name_table(w, &view.most_frequent, Column::Runs))
            }
            section.card {
                h2 { "Most retried" }
                (name_table(w, &view.most_retried, Column::Retries))
            }
        }
    };
    page("Reports", Nav::Reports, &view.version, body)
}

/// The range links (`1 h`, `24 h`, ...) that keep the filters; the active one is marked.
pub fn range_selector(w: &ReportWindow, path: &str) -> Markup {
    let links: Vec<(String, &str, bool)> = RANGES
        .iter()
        .map(|(key, label)| {
            let mut pairs = vec![("range", *key)];
            pairs.extend(w.filter_pairs());
            let href = url(&format!("{path}?{}", format::query(pairs)));
            (href, *label, w.range.as_deref() == Some(*key))
        })
        .collect();
    html! {
        nav.ranges aria-label="Time range" {
            @for (href, label, current) in &links {
                a href=(href) aria-current=[current.then_some("true")] { (label) }
            }
            @if w.range.is_none() {
                span.custom aria-current="true" { "custom" }
            }
        }
    }
}

fn filter_form(w: &ReportWindow) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let since = w
        .since_text
        .clone()
        .or_else(|| w.range.clone())
        .unwrap_or_default();
    html! {
        form.filters.report-filters method="get" action=(url("/reports")) {
            label {
                span { "Since" }
                input type="text" name="since" value=(since) placeholder="e.g. 6h or 2026-11-23T08:00:00Z";
            }
            label {
                span { "Until" }
                input type="text" name="until" value=(v(&w.until_text)) placeholder="now";
            }
            label {
                span { "Broker" }
                input type="text" name="broker" value=(v(&w.broker)) placeholder="any";
            }
            label {
                span { "Queue" }
                input type="text" name="queue" value=(v(&w.queue)) placeholder="any";
            }
            label {
                span { "Task name" }
                input type="text" name="name" value=(v(&w.name)) placeholder="any";
            }
            div.form-actions {
                button type="submit" { "Apply" }
                a href=(url("/reports")) { "Reset" }
            }
        }
    }
}

/// Backlog, throughput and failure charts. `full`: the reports page (captions say the window);
/// else the overview (charts link to the reports page).
pub fn chart_grid(c: &ChartSet, full: bool) -> Markup {
    let w = &c.window;
    let window_text = format!(
        "{} – {} UTC, {} per bar",
        w.since.format("%Y-%m-%d %H:%M"),
        w.until.format("%Y-%m-%d %H:%M"),
        step_text(w.axis.step_ms)
    );
    let all = |from: DateTime<Utc>, to: DateTime<Utc>| w.tasks_href(&[], &from, &to);
    let failed = |from: DateTime<Utc>, to: DateTime<Utc>| {
        w.tasks_href(&[("state", "failure,retried")], &from, &to)
    };
    html! {
        div.charts {
            section.card.chart-card.wide {
                div.section-head {
                    h2 { "Backlog" span.muted { " · messages waiting per queue" } }
                    @if full {
                        a.muted-link href=(w.href("/api/reports/backlog", &[])) { "JSON" }
                    } @else {
                        a.muted-link href=(w.href("/reports", &[])) { "Reports →" }
                    }
                }
                (line_chart(&w.axis, &c.backlog, &all, "No queue samples in this range."))
            }
            section.card.chart-card {
                div.section-head {
                    h2 { "Throughput" span.muted { " · state changes" } }
                    @if full {
                        a.muted-link href=(w.href("/api/reports/throughput", &[])) { "JSON" }
                    }
                }
                (bar_chart(&w.axis, &c.throughput, &all, "state changes", "No activity in this range."))
            }
            section.card.chart-card {
                div.section-head {
                    h2 { "Failures and retries" }
                    @if full {
                        a.muted-link href=(w.href("/api/reports/failures", &[])) { "JSON" }
                    }
                }
                (bar_chart(&w.axis, &c.failures, &failed, "failures", "No failure or retry in this range."))
            }
        }
        @if full {
            p.muted.window-note { (window_text) }
        }
    }
}

/// A step as people say it: `1 min`, `2 h`, `500 ms`.
pub fn step_text(ms: i64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{} d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{} s", ms / 1_000),
        ms => format!("{ms} ms"),
    }
}

fn name_cell(name: &Option<String>) -> Markup {
    match name {
        Some(n) => cell_text(n, 40),
        None => html! { span.muted { "(unnamed)" } },
    }
}

fn runtime_table(w: &ReportWindow, rows: &[RuntimeRow]) -> Markup {
    if rows.is_empty() {
        return empty("No task with a known runtime finished in this range.");
    }
    let max = rows.iter().map(|r| r.p95_ms).fold(0.0, f64::max);
    html! {
        div.table-wrap {
            table.data {
                thead {
                    tr {
                        th { "Task" }
                        th { "Broker" }
                        th.num { "Runs" }
                        th.num { "p50" }
                        th.num { "p95" }
                        th.num { "p99" }
                        th.num { "Max" }
                        th.num { "Mean" }
                        th { span.visually-hidden { "p95 bar" } }
                    }
                }
                tbody {
                    @for r in rows {
                        @let name_pairs: Vec<(&str, &str)> = r.name.as_deref().map(|n| vec![("name", n), ("broker", r.broker.as_str())]).unwrap_or_default();
                        tr {
                            td.name { a href=(w.tasks_href(&name_pairs, &w.since, &w.until)) { (name_cell(&r.name)) } }
                            td { (r.broker) }
                            td.num { (crate::components::count(r.count)) }
                            td.num { (format::runtime(r.p50_ms)) }
                            td.num { strong { (format::runtime(r.p95_ms)) } }
                            td.num { (format::runtime(r.p99_ms)) }
                            td.num { (format::runtime(r.max_ms)) }
                            td.num { (format::runtime(r.mean_ms)) }
                            td.meter-cell { (meter(r.p95_ms, max, "state-running")) }
                        }
                    }
                }
            }
        }
    }
}

fn wait_table(w: &ReportWindow, rows: &[WaitRow]) -> Markup {
    if rows.is_empty() {
        return empty("No task with a known wait finished in this range.");
    }
    let max = rows.iter().map(|r| r.p95_ms).fold(0.0, f64::max);
    html! {
        div.table-wrap {
            table.data {
                thead {
                    tr {
                        th { "Task" }
                        th { "Queue" }
                        th { "Broker" }
                        th.num { "Runs" }
                        th.num { "p50" }
                        th.num { "p95" }
                        th.num { "p99" }
                        th.num { "Max" }
                        th { span.visually-hidden { "p95 bar" } }
                    }
                }
                tbody {
                    @for r in rows {
                        @let pairs: Vec<(&str, &str)> = [("broker", Some(r.broker.as_str())), ("queue", r.queue.as_deref()), ("name", r.name.as_deref())]
                            .into_iter()
                            .filter_map(|(k, v)| Some((k, v?)))
                            .collect();
                        tr {
                            td.name { a href=(w.tasks_href(&pairs, &w.since, &w.until)) { (name_cell(&r.name)) } }
                            td { (name_cell(&r.queue)) }
                            td { (r.broker) }
                            td.num { (crate::components::count(r.count)) }
                            td.num { (format::runtime(r.p50_ms)) }
                            td.num { strong { (format::runtime(r.p95_ms)) } }
                            td.num { (format::runtime(r.p99_ms)) }
                            td.num { (format::runtime(r.max_ms)) }
                            td.meter-cell { (meter(r.p95_ms, max, "state-queued")) }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Column {
    Failures,
    Runs,
    Retries,
}

fn name_table(w: &ReportWindow, rows: &[NameRow], column: Column) -> Markup {
    let rows: Vec<&NameRow> = rows
        .iter()
        .filter(|r| match column {
            Column::Failures => r.failures > 0,
            Column::Retries => r.retries > 0,
            Column::Runs => r.runs > 0,
        })
        .collect();
    if rows.is_empty() {
        return empty(match column {
            Column::Failures => "No failure in this range.",
            Column::Retries => "No retry in this range.",
            Column::Runs => "No task ran in this range.",
        });
    }
    let value = |r: &NameRow| match column {
        Column::Failures => r.failures,
        Column::Runs => r.runs,
        Column::Retries => r.retries,
    };
    let (class, state) = match column {
        Column::Failures => ("state-failure", Some("failure")),
        Column::Runs => ("state-success", None),
        Column::Retries => ("state-retried", Some("retried")),
    };
    let max = rows.iter().map(|r| value(r)).max().unwrap_or(0) as f64;
    html! {
        div.table-wrap {
            table.data.compact {
                thead {
                    tr {
                        th { "Task" }
                        th.num {
                            @match column {
                                Column::Failures => "Failures",
                                Column::Runs => "Runs",
                                Column::Retries => "Retries",
                            }
                        }
                        @if column == Column::Failures { th.num { "Rate" } }
                        th { span.visually-hidden { "share" } }
                    }
                }
                tbody {
                    @for r in &rows {
                        @let pairs: Vec<(&str, &str)> = r.name.as_deref().map(|n| ("name", n))
                            .into_iter()
                            .chain(state.map(|s| ("state", s)))
                            .collect();
                        @let href = w.tasks_href(&pairs, &w.since, &w.until);
                        tr {
                            td.name { a href=(href) { (name_cell(&r.name)) } }
                            td.num { a href=(href) { (crate::components::count(value(r))) } }
                            @if column == Column::Failures {
                                td.num { (format!("{:.0}%", r.failure_rate * 100.0)) }
                            }
                            td.meter-cell { (meter(value(r) as f64, max, class)) }
                        }
                    }
                }
            }
        }
    }
}
