//! The pages and pieces of write actions (issue #21), shown only with `--allow-actions`:
//! the task page's buttons, the confirmation page of destructive actions, the run form, the
//! audit journal (`/audit`) and the actions in a task's timeline.
//!
//! Every form is a plain HTML form (POST, with the session's hidden `csrf_token`): pages work
//! without JavaScript. Destructive actions (delete, purge, revoke) go through a confirmation
//! page first; the journal keeps every attempt, refused and failed ones too.

use crate::components::{empty, task_href};
use crate::format::{self, long_time, relative_time};
use crate::layout::{page, Nav};
use crate::paths::url;
use broker_adapters::{rfc3339, Broker, Task, TaskState};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// One journal entry, as the pages show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionLine {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub who: String,
    pub action: String,
    pub broker: Option<String>,
    pub queue: Option<String>,
    pub target: Option<String>,
    /// The arguments as JSON text.
    pub arguments: Option<String>,
    pub new_task_id: Option<String>,
    /// `ok`, `refused`, `failed`.
    pub outcome: String,
    pub error: Option<String>,
    pub count: Option<u64>,
}

/// What a page needs to show action forms: the session's CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionForms {
    pub csrf: String,
}

/// The brokers whose messages taskscope can write, and what each supports.
pub fn can_run(broker: Broker) -> bool {
    matches!(
        broker,
        Broker::Rq
            | Broker::Celery
            | Broker::Dramatiq
            | Broker::Taskiq
            | Broker::Arq
            | Broker::Bullmq
            | Broker::Sidekiq
    )
}

/// The brokers with a way to stop a running task from Redis.
pub fn can_stop(broker: Broker) -> bool {
    matches!(broker, Broker::Rq | Broker::Celery | Broker::Arq)
}

fn csrf_field(forms: &ActionForms) -> Markup {
    html! { input type="hidden" name="csrf_token" value=(forms.csrf); }
}

/// The task page's action buttons: retry (failed or abandoned), stop (running), delete
/// (waiting); the destructive ones lead to a confirmation page.
pub fn task_buttons(task: &Task, forms: &ActionForms) -> Markup {
    let supported = can_run(task.broker);
    let retryable = matches!(
        task.state,
        TaskState::Failure | TaskState::Abandoned | TaskState::Retried
    );
    let stoppable = (task.state == TaskState::Running && can_stop(task.broker))
        || (task.broker == Broker::Celery && task.state == TaskState::Queued);
    let deletable = task.state == TaskState::Queued;
    let id = format::encode_component(&task.id);
    html! {
        section.card.actions-card {
            h2 { "Actions" }
            @if !supported {
                p.muted { "Actions are not supported for " (task.broker.as_str()) " yet." }
            } @else {
                div.action-buttons {
                    @if retryable {
                        form method="post" action=(url(&format!("/tasks/{id}/retry"))) {
                            (csrf_field(forms))
                            button type="submit" { "Retry" }
                        }
                    }
                    @if stoppable {
                        a.button.danger href=(url(&format!("/tasks/{id}/revoke"))) {
                            @if task.state == TaskState::Running { "Stop…" } @else { "Revoke…" }
                        }
                    }
                    @if deletable {
                        a.button.danger href=(url(&format!("/tasks/{id}/delete"))) { "Delete…" }
                    }
                    @if !retryable && !stoppable && !deletable {
                        p.muted { "No action applies to a task that is " (task.state.as_str()) "." }
                    }
                }
            }
        }
    }
}

/// A destructive action to confirm.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfirmView {
    pub version: String,
    pub title: String,
    /// What will happen, one sentence.
    pub question: String,
    /// Where the form posts.
    pub action_path: String,
    /// The button's label.
    pub button: String,
    /// Where "Cancel" goes.
    pub cancel_path: String,
    pub forms: ActionForms,
}

/// The confirmation page (a form: works without JavaScript).
pub fn confirm_page(view: &ConfirmView) -> Markup {
    let body = html! {
        div.page-head { h1 { (view.title) } }
        section.card.confirm {
            p.confirm-question { (view.question) }
            form method="post" action=(url(&view.action_path)) {
                (csrf_field(&view.forms))
                div.form-actions {
                    button.danger type="submit" { (view.button) }
                    a.muted-link href=(url(&view.cancel_path)) { "Cancel" }
                }
            }
            p.muted { "The action is recorded in the " a href=(url("/audit")) { "audit journal" } "." }
        }
    };
    // The section the action was asked from (where Cancel goes back to).
    let nav = if view.cancel_path.starts_with("/queues") {
        Nav::Queues
    } else if view.cancel_path.starts_with("/tasks") {
        Nav::Tasks
    } else {
        Nav::Audit
    };
    page(&view.title, nav, &view.version, body)
}

/// The journal page's filters (as typed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilters {
    pub action: Option<String>,
    pub who: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// Everything `/audit` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditView {
    pub version: String,
    pub filters: AuditFilters,
    pub entries: Vec<ActionLine>,
    /// The next (older) page's address.
    pub next_href: Option<String>,
    /// The run form, with actions enabled.
    pub forms: Option<ActionForms>,
}

/// The audit journal page.
pub fn audit_page(view: &AuditView) -> Markup {
    render_audit(view, &Utc::now())
}

pub(crate) fn render_audit(view: &AuditView, now: &DateTime<Utc>) -> Markup {
    let f = &view.filters;
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        div.page-head {
            h1 { "Audit journal" }
            a.muted-link href=(url("/api/audit")) { "as JSON" }
        }
        @match &view.forms {
            Some(forms) => (run_form(forms)),
            None => p.muted { "Actions are off: start taskscope with --allow-actions (and --auth-token or --trusted-user-header) to run, retry, delete, purge and revoke tasks from here." },
        }
        form.filters method="get" action=(url("/audit")) {
            label {
                span { "Action" }
                select name="action" {
                    option value="" { "any" }
                    @for a in ["run", "retry", "delete", "purge", "revoke"] {
                        option value=(a) selected[f.action.as_deref() == Some(a)] { (a) }
                    }
                }
            }
            label { span { "Who" } input type="text" name="who" value=(value(&f.who)); }
            label { span { "Since" } input type="text" name="since" value=(value(&f.since)) placeholder="e.g. 7d"; }
            label { span { "Until" } input type="text" name="until" value=(value(&f.until)) placeholder="e.g. 1h"; }
            div.form-actions { button type="submit" { "Filter" } }
        }
        @if view.entries.is_empty() {
            (empty("No action recorded."))
        } @else {
            div.table-wrap {
                table.data.audit {
                    thead { tr {
                        th { "When" } th { "Who" } th { "Action" } th { "Broker" } th { "Queue" }
                        th { "Target" } th { "New task" } th { "Outcome" } th { "Detail" }
                    } }
                    tbody {
                        @for e in &view.entries {
                            (audit_row(e, now))
                        }
                    }
                }
            }
        }
        @if let Some(next) = &view.next_href {
            div.pager { a.button href=(next) { "Older →" } }
        }
    };
    page("Audit journal", Nav::Audit, &view.version, body)
}

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "ok" => "chip chip-ok",
        _ => "chip chip-bad",
    }
}

fn audit_row(e: &ActionLine, now: &DateTime<Utc>) -> Markup {
    html! {
        tr {
            td { time datetime=(rfc3339(&e.at)) title=(rfc3339(&e.at)) { (format::short_time(&e.at, now)) } }
            td.mono { (format::cell_text(&e.who, 32)) }
            td { strong { (e.action) } }
            td { (e.broker.as_deref().unwrap_or("")) }
            td { (format::cell_text(e.queue.as_deref().unwrap_or(""), 32)) }
            td.mono {
                @match (&e.target, e.action.as_str()) {
                    (Some(t), "retry" | "revoke" | "delete") => a href=(task_href(t)) { (format::cell_text(t, 40)) },
                    (Some(t), _) => (format::cell_text(t, 40)),
                    (None, _) => "",
                }
            }
            td.mono {
                @if let Some(n) = &e.new_task_id {
                    a href=(task_href(n)) { (format::cell_text(n, 40)) }
                }
            }
            td { span class=(outcome_class(&e.outcome)) { (e.outcome) } }
            td {
                @if let Some(err) = &e.error { span.warn-text { (format::cell_text(err, 120)) } }
                @if let Some(c) = e.count { span.muted { (c) " removed" } }
                @if let Some(a) = &e.arguments { " " span.mono.muted title=(a) { (format::cell_text(a, 60)) } }
            }
        }
    }
}

/// The run form: broker, queue, name, JSON args and kwargs, a delay.
fn run_form(forms: &ActionForms) -> Markup {
    html! {
        details.card.run-form open {
            summary { strong { "Run a task" } }
            form.filters method="post" action=(url("/audit/run")) {
                (csrf_field(forms))
                label {
                    span { "Broker" }
                    select name="broker" {
                        @for b in Broker::ALL.iter().filter(|b| can_run(**b)) {
                            option value=(b.as_str()) { (b.as_str()) }
                        }
                    }
                }
                label { span { "Queue" } input type="text" name="queue" placeholder="default / celery"; }
                label { span { "Task name" } input type="text" name="name" required placeholder="billing.add"; }
                label { span { "Args (JSON list)" } input type="text" name="args" value="[]"; }
                label { span { "Kwargs (JSON object)" } input type="text" name="kwargs" value="{}"; }
                label { span { "Delay (ms)" } input type="number" name="delay_ms" min="0" placeholder="0"; }
                label.checkbox title="A name taskscope has never seen on this broker is refused (a typo would enqueue a message no worker knows) unless this is ticked" {
                    input type="checkbox" name="force" value="on";
                    span { "Run even if this name was never seen" }
                }
                div.form-actions { button type="submit" { "Run" } }
            }
        }
    }
}

/// The actions on a task (and the one that created it), oldest first, for its timeline.
pub fn action_timeline(task_id: &str, lines: &[ActionLine], now: &DateTime<Utc>) -> Markup {
    html! {
        ol.timeline.action-timeline {
            @for e in lines {
                li class=(if e.outcome == "ok" { "state-queued" } else { "state-failure" }) {
                    div.timeline-head {
                        span class=(outcome_class(&e.outcome)) { (e.action) " " (e.outcome) }
                        time datetime=(rfc3339(&e.at)) title=(rfc3339(&e.at)) { (long_time(&e.at)) }
                        span.muted { (relative_time(&e.at, now)) }
                    }
                    div.timeline-body {
                        span { "by " span.mono { (e.who) } }
                        @match (e.action.as_str(), &e.new_task_id, &e.target) {
                            ("retry", Some(n), Some(t)) if t == task_id => span { "retried as " a.mono href=(task_href(n)) { (n) } },
                            ("retry", Some(_), Some(t)) => span { "a retry of " a.mono href=(task_href(t)) { (t) } },
                            ("run", Some(_), _) => span { "run from taskscope" },
                            _ => "",
                        }
                        @if let Some(err) = &e.error { span.warn-text { (err) } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(who: &str, outcome: &str) -> ActionLine {
        ActionLine {
            id: 1,
            at: "2026-12-06T12:00:00Z".parse().unwrap(),
            who: who.into(),
            action: "retry".into(),
            broker: Some("rq".into()),
            queue: Some("default".into()),
            target: Some("t1".into()),
            arguments: Some("{\"args\":[1]}".into()),
            new_task_id: Some("t2".into()),
            outcome: outcome.into(),
            error: (outcome != "ok").then(|| "<b>nope</b>".to_string()),
            count: None,
        }
    }

    #[test]
    fn the_journal_escapes_what_users_and_errors_say_and_links_both_tasks() {
        let view = AuditView {
            version: "0".into(),
            filters: AuditFilters::default(),
            entries: vec![line("<script>alert(1)</script>", "refused")],
            next_href: Some("/audit?cursor=1".into()),
            forms: Some(ActionForms {
                csrf: "c0ffee".into(),
            }),
        };
        let html = render_audit(&view, &"2026-12-06T12:01:00Z".parse().unwrap()).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("&lt;b&gt;nope"));
        assert!(html.contains("href=\"/tasks/t1\"") && html.contains("href=\"/tasks/t2\""));
        assert!(html.contains("action=\"/audit/run\"") && html.contains("value=\"c0ffee\""));
        assert!(html.contains("href=\"/audit?cursor=1\""));
    }

    #[test]
    fn a_failed_task_offers_retry_and_a_waiting_one_delete_behind_a_confirmation() {
        let forms = ActionForms { csrf: "tok".into() };
        let mut task = Task::new(Broker::Rq, "t1", "2026-12-06T12:00:00Z".parse().unwrap());
        task.state = TaskState::Failure;
        let html = task_buttons(&task, &forms).into_string();
        assert!(
            html.contains("action=\"/tasks/t1/retry\"") && html.contains("value=\"tok\""),
            "{html}"
        );
        assert!(!html.contains("/delete"));
        task.state = TaskState::Queued;
        let html = task_buttons(&task, &forms).into_string();
        assert!(html.contains("href=\"/tasks/t1/delete\""), "{html}");
        assert!(
            !html.contains("method=\"post\""),
            "deleting goes through the confirmation page"
        );
        // OSS Sidekiq cannot stop a running job: no stop button for it.
        task.broker = Broker::Sidekiq;
        task.state = TaskState::Running;
        let html = task_buttons(&task, &forms).into_string();
        assert!(!html.contains("not supported"), "{html}");
        assert!(
            !html.contains("/stop") && !html.contains("/revoke"),
            "{html}"
        );
    }
}
