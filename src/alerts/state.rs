//! The alert state machine: each rule's readings at an evaluation in, the notices to send out.
//! Pure (sans-I/O): `now` is an argument, so every transition is tested without a clock.
//!
//! One instance per (rule, labels). Its life:
//! `inactive` -> `pending` (value above `above`, `for` not yet elapsed) -> `firing` (notified
//! once) -> `resolved` (value at or below `below` at an evaluation; notified once) -> `pending`
//! or `firing` again when the value rises. A pending instance whose value falls back before
//! `for` elapsed goes back to inactive without a word. An instance missing from a rule's
//! readings (its queue gone) counts as below the thresholds. A rule whose data could not be
//! read is not evaluated at all (no state changes: a store hiccup resolves nothing).

use super::rules::AlertRule;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// What an instance is about: the rule's filters plus the queue (or group) that fired.
pub type Labels = BTreeMap<String, String>;

/// Resolved instances are shown this long, then forgotten.
pub const KEEP_RESOLVED: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// One value of a rule at an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub labels: Labels,
    pub value: f64,
}

/// Where an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Pending,
    Firing,
    Resolved,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Firing => "firing",
            Phase::Resolved => "resolved",
        }
    }
}

/// One alert instance as `/api/alerts` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub rule: String,
    pub labels: Labels,
    pub phase: Phase,
    /// When it entered its phase.
    pub since: DateTime<Utc>,
    /// The value at the last evaluation (the last value seen for a resolved one).
    pub value: f64,
}

/// A state change worth a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub rule: String,
    /// [`Phase::Firing`] or [`Phase::Resolved`].
    pub phase: Phase,
    pub labels: Labels,
    pub value: f64,
    pub since: DateTime<Utc>,
}

/// Every instance of every rule.
#[derive(Debug, Default)]
pub struct Tracker {
    instances: BTreeMap<(String, Labels), Instance>,
}

impl Tracker {
    /// Applies one evaluation of `rule` at `now`; returns the notices it causes (at most one
    /// per instance).
    pub fn observe(
        &mut self,
        rule: &AlertRule,
        readings: Vec<Reading>,
        now: DateTime<Utc>,
    ) -> Vec<Notice> {
        let mut notices = Vec::new();
        let mut seen: BTreeMap<Labels, f64> = BTreeMap::new();
        for r in readings {
            seen.insert(r.labels, r.value);
        }
        // Instances this rule had but no reading now: below the thresholds.
        let known: Vec<Labels> = self
            .instances
            .keys()
            .filter(|(name, _)| *name == rule.name)
            .map(|(_, labels)| labels.clone())
            .collect();
        for labels in known {
            let last = self.instances[&(rule.name.clone(), labels.clone())].value;
            // Never above `below`: treated as resolved, with its last value shown.
            seen.entry(labels).or_insert(last.min(rule.below));
        }
        for (labels, value) in seen {
            let key = (rule.name.clone(), labels);
            let above = value > rule.above;
            let hold = chrono::TimeDelta::from_std(rule.hold).unwrap_or(chrono::TimeDelta::MAX);
            match self.instances.get_mut(&key) {
                None
                | Some(Instance {
                    phase: Phase::Resolved,
                    ..
                }) if above => {
                    let phase = if hold.is_zero() {
                        Phase::Firing
                    } else {
                        Phase::Pending
                    };
                    let inst = Instance {
                        rule: rule.name.clone(),
                        labels: key.1.clone(),
                        phase,
                        since: now,
                        value,
                    };
                    if phase == Phase::Firing {
                        notices.push(notice(&inst));
                    }
                    self.instances.insert(key, inst);
                }
                None => {}
                Some(inst) => match inst.phase {
                    Phase::Pending if above => {
                        inst.value = value;
                        if now - inst.since >= hold {
                            inst.phase = Phase::Firing;
                            inst.since = now;
                            notices.push(notice(inst));
                        }
                    }
                    Phase::Pending => {
                        self.instances.remove(&key);
                    }
                    Phase::Firing if value > rule.below => inst.value = value,
                    Phase::Firing => {
                        inst.phase = Phase::Resolved;
                        inst.since = now;
                        inst.value = value;
                        notices.push(notice(inst));
                    }
                    Phase::Resolved => {
                        inst.value = value;
                        if now - inst.since > KEEP_RESOLVED {
                            self.instances.remove(&key);
                        }
                    }
                },
            }
        }
        notices
    }

    /// Every instance, by rule and labels.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }
}

fn notice(inst: &Instance) -> Notice {
    Notice {
        rule: inst.rule.clone(),
        phase: inst.phase,
        labels: inst.labels.clone(),
        value: inst.value,
        since: inst.since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::parse_rules;

    fn rule(extra: &str) -> AlertRule {
        parse_rules(&format!(
            "[[alert]]\nname = \"parked\"\nwhen = \"backlog\"\nabove = 10\n{extra}"
        ))
        .unwrap()
        .remove(0)
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn q(value: f64) -> Vec<Reading> {
        vec![Reading {
            labels: [("queue".to_string(), "default".to_string())].into(),
            value,
        }]
    }

    fn phases(t: &Tracker) -> Vec<Phase> {
        t.instances().map(|i| i.phase).collect()
    }

    #[test]
    fn fires_once_then_resolves_once() {
        let r = rule("");
        let mut t = Tracker::default();
        assert!(t.observe(&r, q(5.0), at(0)).is_empty());
        assert!(phases(&t).is_empty(), "below the threshold: inactive");
        let n = t.observe(&r, q(11.0), at(15));
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].phase, n[0].value, n[0].since),
            (Phase::Firing, 11.0, at(15))
        );
        for i in 2..6 {
            assert!(
                t.observe(&r, q(20.0), at(15 * i)).is_empty(),
                "no duplicate"
            );
        }
        assert_eq!(phases(&t), [Phase::Firing]);
        let n = t.observe(&r, q(0.0), at(100));
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].phase, n[0].since), (Phase::Resolved, at(100)));
        assert!(
            t.observe(&r, q(0.0), at(115)).is_empty(),
            "resolved is told once"
        );
        assert_eq!(phases(&t), [Phase::Resolved]);
        let n = t.observe(&r, q(30.0), at(130));
        assert_eq!(n[0].phase, Phase::Firing, "a resolved alert can fire again");
    }

    #[test]
    fn for_holds_it_pending_and_a_dip_cancels_silently() {
        let r = rule("for = \"30s\"");
        let mut t = Tracker::default();
        assert!(t.observe(&r, q(11.0), at(0)).is_empty());
        assert_eq!(phases(&t), [Phase::Pending]);
        assert!(t.observe(&r, q(11.0), at(15)).is_empty());
        assert!(t.observe(&r, q(3.0), at(20)).is_empty(), "dip: no notice");
        assert!(phases(&t).is_empty(), "back to inactive");
        assert!(t.observe(&r, q(12.0), at(30)).is_empty());
        assert!(t.observe(&r, q(12.0), at(59)).is_empty(), "29 s < for");
        let n = t.observe(&r, q(12.0), at(60));
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].phase, n[0].since), (Phase::Firing, at(60)));
    }

    #[test]
    fn below_is_the_hysteresis_of_resolving() {
        let r = rule("below = 4");
        let mut t = Tracker::default();
        assert_eq!(t.observe(&r, q(11.0), at(0)).len(), 1);
        assert!(
            t.observe(&r, q(9.0), at(15)).is_empty(),
            "under above, over below"
        );
        assert!(
            t.observe(&r, q(11.0), at(30)).is_empty(),
            "no refire while firing"
        );
        assert!(t.observe(&r, q(5.0), at(45)).is_empty());
        let n = t.observe(&r, q(4.0), at(60));
        assert_eq!(n[0].phase, Phase::Resolved, "at or below `below` resolves");
        assert!(
            t.observe(&r, q(8.0), at(75)).is_empty(),
            "not above `above`: stays resolved"
        );
    }

    #[test]
    fn a_vanished_instance_resolves_and_pending_ones_vanish() {
        let r = rule("");
        let mut t = Tracker::default();
        assert_eq!(t.observe(&r, q(50.0), at(0)).len(), 1);
        let n = t.observe(&r, Vec::new(), at(15));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].phase, Phase::Resolved);
        assert!(t.observe(&r, Vec::new(), at(30)).is_empty());
        assert!(t
            .observe(
                &r,
                Vec::new(),
                at(30) + KEEP_RESOLVED + chrono::TimeDelta::seconds(1)
            )
            .is_empty());
        assert!(
            phases(&t).is_empty(),
            "resolved instances are forgotten after an hour"
        );
    }

    #[test]
    fn instances_are_per_labels_and_per_rule() {
        let r = rule("");
        let other = AlertRule {
            name: "other".into(),
            ..r.clone()
        };
        let mut t = Tracker::default();
        let two = vec![
            Reading {
                labels: [("queue".to_string(), "a".to_string())].into(),
                value: 11.0,
            },
            Reading {
                labels: [("queue".to_string(), "b".to_string())].into(),
                value: 1.0,
            },
        ];
        let n = t.observe(&r, two.clone(), at(0));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].labels["queue"], "a");
        assert_eq!(t.observe(&other, two, at(0)).len(), 1, "each rule its own");
        assert_eq!(t.instances().count(), 2);
    }
}
