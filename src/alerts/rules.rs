//! Alert rules: the `[[alert]]` tables of the `--config` TOML file, validated into
//! [`AlertRule`]s at start. Pure: no I/O but reading the text it is given.
//!
//! A mistake is a [`UsageError`] naming the rule and the field (`alert "slow" (#2): above: ...`),
//! so `taskscope serve` exits 2 before it watches anything.

use crate::config::{parse_duration, UsageError};
use broker_adapters::Broker;
use serde::Deserialize;
use std::time::Duration;

/// The window of rules that count over time when the rule gives none.
pub const DEFAULT_OVER: Duration = Duration::from_secs(300);

/// What a rule measures (`when`). The README's *Alerts* section states each one's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// Failures / finished tasks (success, failure, abandoned) in `over`, 0..1, per queue.
    FailureRate,
    /// Failure transitions in `over`, per queue.
    Failures,
    /// A failure group (fingerprint) first seen in `over`: one instance per group.
    NewFailureGroup,
    /// Messages waiting in the queue at its last sample.
    Backlog,
    /// Age in seconds of the queue's oldest waiting message at evaluation time.
    OldestAge,
    /// 95th percentile, in seconds, of the waits of tasks started in `over`, per queue.
    WaitP95,
    /// A queue with a backlog above `above` while its broker has no live worker.
    NoWorker,
    /// Tasks abandoned in `over`, per queue.
    Abandoned,
}

impl Condition {
    pub const ALL: [Condition; 8] = [
        Condition::FailureRate,
        Condition::Failures,
        Condition::NewFailureGroup,
        Condition::Backlog,
        Condition::OldestAge,
        Condition::WaitP95,
        Condition::NoWorker,
        Condition::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::FailureRate => "failure_rate",
            Condition::Failures => "failures",
            Condition::NewFailureGroup => "new_failure_group",
            Condition::Backlog => "backlog",
            Condition::OldestAge => "oldest_age",
            Condition::WaitP95 => "wait_p95",
            Condition::NoWorker => "no_worker",
            Condition::Abandoned => "abandoned",
        }
    }

    /// Whether it counts over a window (`over`); the others read the queues as they are now.
    pub fn has_window(self) -> bool {
        matches!(
            self,
            Condition::FailureRate
                | Condition::Failures
                | Condition::NewFailureGroup
                | Condition::WaitP95
                | Condition::Abandoned
        )
    }

    /// The threshold when the rule gives none; `None`: `above` is required.
    fn default_above(self) -> Option<f64> {
        match self {
            Condition::NewFailureGroup | Condition::NoWorker => Some(0.0),
            _ => None,
        }
    }
}

/// Which body a webhook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookFormat {
    /// `{"text": "..."}`: what Slack (and Mattermost, Rocket.Chat, Discord's `/slack`) read.
    #[default]
    Slack,
    /// `{"rule", "state", "value", "labels", ...}` for scripts.
    Json,
}

/// Where a rule's notifications go.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: url::Url,
    pub format: WebhookFormat,
}

impl Webhook {
    /// The host alone: what logs and pages show (a Slack webhook URL is a secret).
    pub fn host(&self) -> String {
        self.url.host_str().unwrap_or("?").to_string()
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &self.host())
            .field("format", &self.format)
            .finish()
    }
}

/// One validated `[[alert]]` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// Unique among the rules: the `rule` of `/api/alerts` and of `taskscope_alert_firing`.
    pub name: String,
    pub when: Condition,
    /// The window of counting conditions ([`Condition::has_window`]).
    pub over: Duration,
    /// The condition holds while the value is strictly greater than this.
    pub above: f64,
    /// A firing alert resolves only once the value is at or below this (hysteresis); at most
    /// `above`, which it is by default.
    pub below: f64,
    /// How long the condition must hold before the alert fires (0: at once).
    pub hold: Duration,
    pub broker: Option<Broker>,
    pub queue: Option<String>,
    /// The task-name filter (TOML `task`: `name` names the rule).
    pub task: Option<String>,
    pub webhook: Option<Webhook>,
}

/// An `[[alert]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    when: Option<String>,
    over: Option<String>,
    above: Option<f64>,
    below: Option<f64>,
    #[serde(rename = "for")]
    hold: Option<String>,
    broker: Option<String>,
    queue: Option<String>,
    task: Option<String>,
    webhook: Option<String>,
    format: Option<String>,
}

/// The `[[alert]]` rules of a TOML document (none when it has no `alert` key).
pub fn parse_rules(toml_text: &str) -> Result<Vec<AlertRule>, UsageError> {
    let table: toml::Table = toml_text
        .parse()
        .map_err(|e| UsageError(format!("the config file is not valid TOML: {e}")))?;
    let Some(value) = table.get("alert") else {
        return Ok(Vec::new());
    };
    let toml::Value::Array(items) = value else {
        return Err(UsageError(
            "alert: write each rule as an [[alert]] table".into(),
        ));
    };
    let mut rules: Vec<AlertRule> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("alert #{}", i + 1);
        let raw: RawRule = item
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| UsageError(format!("{at}: {}", e.message())))?;
        let rule = validate(raw, &at)?;
        if rules.iter().any(|r| r.name == rule.name) {
            return Err(UsageError(format!(
                "alert {:?} ({at}): name: another rule has this name; give each rule its own",
                rule.name
            )));
        }
        rules.push(rule);
    }
    Ok(rules)
}

fn validate(raw: RawRule, at: &str) -> Result<AlertRule, UsageError> {
    let name = raw
        .name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| UsageError(format!("{at}: name: missing (every rule needs a name)")))?;
    if name.len() > 100 || name.chars().any(char::is_control) {
        return Err(UsageError(format!(
            "{at}: name: at most 100 printable characters"
        )));
    }
    let err =
        |field: &str, msg: String| UsageError(format!("alert {name:?} ({at}): {field}: {msg}"));
    let names = || {
        Condition::ALL
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let when_text = raw
        .when
        .ok_or_else(|| err("when", format!("missing (one of {})", names())))?;
    let when = Condition::ALL
        .into_iter()
        .find(|c| c.as_str() == when_text.trim())
        .ok_or_else(|| {
            err(
                "when",
                format!("unknown {when_text:?} (one of {})", names()),
            )
        })?;
    let over = match (raw.over, when.has_window()) {
        (None, _) => DEFAULT_OVER,
        (Some(text), true) => parse_duration(&text).map_err(|e| err("over", e))?,
        (Some(_), false) => {
            return Err(err(
                "over",
                format!(
                    "{} reads the queues as they are now; remove over",
                    when.as_str()
                ),
            ))
        }
    };
    let above = match (raw.above, when.default_above()) {
        (Some(v), _) => v,
        (None, Some(default)) => default,
        (None, None) => {
            return Err(err(
                "above",
                format!("missing: {} needs a threshold", when.as_str()),
            ))
        }
    };
    if !above.is_finite() || above < 0.0 {
        return Err(err("above", "must be a number >= 0".into()));
    }
    if when == Condition::FailureRate && above >= 1.0 {
        return Err(err(
            "above",
            "failure_rate is a fraction (0.05 = 5%), below 1".into(),
        ));
    }
    let below = raw.below.unwrap_or(above);
    if !below.is_finite() || below < 0.0 || below > above {
        return Err(err(
            "below",
            format!("must be a number between 0 and above ({above})"),
        ));
    }
    let hold = match raw.hold {
        None => Duration::ZERO,
        Some(text) if text.trim() == "0s" || text.trim() == "0" => Duration::ZERO,
        Some(text) => parse_duration(&text).map_err(|e| err("for", e))?,
    };
    let broker = raw
        .broker
        .map(|b| {
            b.parse::<Broker>()
                .map_err(|e| err("broker", e.to_string()))
        })
        .transpose()?;
    let format = match raw.format.as_deref().map(str::trim) {
        None | Some("slack") => WebhookFormat::Slack,
        Some("json") => WebhookFormat::Json,
        Some(other) => return Err(err("format", format!("unknown {other:?} (slack or json)"))),
    };
    let webhook = match raw.webhook {
        None if raw.format.is_some() => {
            return Err(err("format", "given without a webhook".into()))
        }
        None => None,
        Some(text) => {
            // The URL itself is never repeated: a Slack webhook URL is a secret.
            let url = url::Url::parse(text.trim())
                .map_err(|e| err("webhook", format!("not a URL ({e})")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(err(
                    "webhook",
                    "must be an http:// or https:// URL with a host".into(),
                ));
            }
            Some(Webhook { url, format })
        }
    };
    let filter = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    Ok(AlertRule {
        name,
        when,
        over,
        above,
        below,
        hold,
        broker,
        queue: filter(raw.queue),
        task: filter(raw.task),
        webhook,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<AlertRule, String> {
        parse_rules(&format!("[[alert]]\n{body}"))
            .map(|mut v| v.remove(0))
            .map_err(|e| e.0)
    }

    #[test]
    fn a_full_rule_parses_with_its_defaults() {
        let rule = one(
            "name = \"parked\"\nwhen = \"oldest_age\"\nabove = 30\nfor = \"1m\"\nbroker = \"rq\"\n\
             queue = \"default\"\nwebhook = \"https://hooks.slack.com/services/T/B/secret\"",
        )
        .unwrap();
        assert_eq!(rule.when, Condition::OldestAge);
        assert_eq!(rule.above, 30.0);
        assert_eq!(rule.below, 30.0, "below defaults to above");
        assert_eq!(rule.hold, Duration::from_secs(60));
        assert_eq!(rule.broker, Some(Broker::Rq));
        assert_eq!(rule.queue.as_deref(), Some("default"));
        let hook = rule.webhook.unwrap();
        assert_eq!(hook.format, WebhookFormat::Slack);
        assert!(!format!("{hook:?}").contains("secret"), "{hook:?}");
        let rate = one("name = \"r\"\nwhen = \"failure_rate\"\nabove = 0.1").unwrap();
        assert_eq!(rate.over, DEFAULT_OVER);
        let group = one("name = \"g\"\nwhen = \"new_failure_group\"").unwrap();
        assert_eq!(group.above, 0.0, "new_failure_group needs no threshold");
    }

    #[test]
    fn no_alert_key_means_no_rules() {
        assert!(parse_rules("redis = \"redis://x/0\"").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_rule_and_the_field() {
        let cases = [
            (
                "name = \"a\"\nwhen = \"fast\"\nabove = 1",
                "alert \"a\" (alert #1): when: unknown \"fast\"",
            ),
            (
                "name = \"b\"\nwhen = \"backlog\"",
                "alert \"b\" (alert #1): above: missing",
            ),
            (
                "name = \"c\"\nwhen = \"failures\"\nabove = 1\nover = \"soon\"",
                "alert \"c\" (alert #1): over:",
            ),
            (
                "name = \"d\"\nwhen = \"backlog\"\nabove = 1\nfor = \"-\"",
                "alert \"d\" (alert #1): for:",
            ),
            (
                "name = \"e\"\nwhen = \"backlog\"\nabove = 1\nwebhook = \"ftp://x/y\"",
                "alert \"e\" (alert #1): webhook:",
            ),
            (
                "name = \"f\"\nwhen = \"backlog\"\nabove = 1\nwebhook = \"not a url\"",
                "alert \"f\" (alert #1): webhook: not a URL",
            ),
            (
                "name = \"g\"\nwhen = \"backlog\"\nabove = 1\nbroker = \"kafka\"",
                "alert \"g\" (alert #1): broker:",
            ),
            (
                "name = \"h\"\nwhen = \"backlog\"\nabove = 5\nbelow = 6",
                "alert \"h\" (alert #1): below:",
            ),
            (
                "name = \"i\"\nwhen = \"backlog\"\nabove = 5\nover = \"5m\"",
                "alert \"i\" (alert #1): over: backlog reads",
            ),
            (
                "name = \"j\"\nwhen = \"failure_rate\"\nabove = 5",
                "alert \"j\" (alert #1): above: failure_rate is a fraction",
            ),
            ("when = \"backlog\"\nabove = 5", "alert #1: name: missing"),
            (
                "name = \"k\"\nwhen = \"backlog\"\nabove = 5\nthreshold = 3",
                "alert #1: unknown field `threshold`",
            ),
        ];
        for (body, expected) in cases {
            let msg = one(body).unwrap_err();
            assert!(msg.starts_with(expected), "{body:?}: got {msg:?}");
        }
        let err = one("name = \"s\"\nwhen = \"backlog\"\nabove = 1\nwebhook = \"https://x/secret?x\"\nformat = \"xml\"")
            .unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn rule_names_are_unique() {
        let err = parse_rules(
            "[[alert]]\nname = \"x\"\nwhen = \"backlog\"\nabove = 1\n\
             [[alert]]\nname = \"x\"\nwhen = \"backlog\"\nabove = 2",
        )
        .unwrap_err()
        .0;
        assert!(err.contains("alert \"x\" (alert #2): name:"), "{err}");
    }
}
