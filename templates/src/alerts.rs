//! The alerts section of the overview (`/`): firing alerts first and prominent, each linking to
//! the page about it (its queue's tasks, or the failure groups), then pending and recently
//! resolved ones, and the last webhook delivery error.

use crate::format::time;
use crate::paths::url;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// What the overview shows about alerts. Empty (no section) without rules.
#[derive(Debug, Clone, Default)]
pub struct AlertsView {
    /// How many `[[alert]]` rules are configured.
    pub rules: usize,
    /// Firing, then pending, then resolved instances.
    pub lines: Vec<AlertLine>,
    /// The last webhook failure, the webhook named by its host only.
    pub delivery_error: Option<String>,
    /// Deliveries given up or dropped since start.
    pub delivery_failures: u64,
}

/// One alert instance.
#[derive(Debug, Clone)]
pub struct AlertLine {
    pub rule: String,
    /// `firing`, `pending` or `resolved`.
    pub state: String,
    pub since: DateTime<Utc>,
    /// The value, rounded for people.
    pub value: String,
    /// The rule's condition (`oldest_age`) and threshold.
    pub when: String,
    pub above: f64,
    /// `key=value` of the instance's labels.
    pub labels: Vec<String>,
    /// The taskscope page about it, from `/` (the `--base-path` is added when rendered).
    pub href: String,
}

/// The section; nothing when no rule is configured.
pub fn alerts_section(view: &AlertsView, now: &DateTime<Utc>) -> Markup {
    if view.rules == 0 {
        return html! {};
    }
    let firing = view.lines.iter().filter(|l| l.state == "firing").count();
    html! {
        section #alerts {
            div.section-head {
                h2 {
                    "Alerts "
                    @if firing > 0 {
                        span.chip.chip-bad { (firing) " firing" }
                    } @else {
                        span.chip.chip-ok { "none firing" }
                    }
                }
            }
            @if let Some(error) = &view.delivery_error {
                div.banner role="alert" {
                    (error) " (" (view.delivery_failures) " notification"
                    @if view.delivery_failures != 1 { "s" } " not delivered since start)"
                }
            }
            @if view.lines.is_empty() {
                p.muted { "All " (view.rules) " rule" @if view.rules != 1 { "s" } " quiet." }
            } @else {
                div.table-wrap {
                    table.data {
                        thead { tr { th { "State" } th { "Rule" } th { "Where" } th.num { "Value" } th { "Since" } } }
                        tbody {
                            @for line in &view.lines {
                                tr.alert-firing[line.state == "firing"] {
                                    td {
                                        @if line.state == "firing" {
                                            span.chip.chip-bad { "firing" }
                                        } @else if line.state == "resolved" {
                                            span.chip.chip-ok { "resolved" }
                                        } @else {
                                            span.chip { (line.state) }
                                        }
                                    }
                                    td { a href=(url(&line.href)) { (line.rule) } }
                                    td { (line.labels.join(", ")) }
                                    td.num.nowrap title={ (line.when) " above " (line.above) } { (line.value) }
                                    td.nowrap { (time(&line.since, now)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
