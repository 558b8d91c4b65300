//! The alerts section of `/` rendered with sample instances: what its users rely on.

use crate::alerts::{alerts_section, AlertLine, AlertsView};
use chrono::{DateTime, Duration, TimeZone, Utc};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn line(rule: &str, state: &str, queue: &str) -> AlertLine {
    AlertLine {
        rule: rule.into(),
        state: state.into(),
        since: now() - Duration::minutes(2),
        value: "42".into(),
        when: "oldest_age".into(),
        above: 30.0,
        labels: vec!["broker=rq".into(), format!("queue={queue}")],
        href: format!("/tasks?broker=rq&queue={queue}"),
    }
}

#[test]
fn no_rules_no_section() {
    assert_eq!(
        alerts_section(&AlertsView::default(), &now()).into_string(),
        ""
    );
}

#[test]
fn firing_alerts_stand_out_and_link_to_their_queue() {
    let view = AlertsView {
        rules: 2,
        lines: vec![
            line("parked <script>", "firing", "parked"),
            line("slow", "resolved", "default"),
        ],
        delivery_error: Some("Webhook of rule \"slow\" to hooks.slack.com failed".into()),
        delivery_failures: 1,
    };
    let html = alerts_section(&view, &now()).into_string();
    assert!(html.contains("1 firing"), "{html}");
    assert!(html.contains("<tr class=\"alert-firing\">"), "{html}");
    assert!(
        html.contains("href=\"/tasks?broker=rq&amp;queue=parked\""),
        "{html}"
    );
    assert!(html.contains("parked &lt;script&gt;"), "escaped: {html}");
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("hooks.slack.com failed (1 notification not delivered"),
        "{html}"
    );
    assert!(html.contains("resolved"), "{html}");
}

#[test]
fn quiet_rules_say_so() {
    let view = AlertsView {
        rules: 3,
        ..AlertsView::default()
    };
    let html = alerts_section(&view, &now()).into_string();
    assert!(
        html.contains("none firing") && html.contains("All 3 rules quiet."),
        "{html}"
    );
}
