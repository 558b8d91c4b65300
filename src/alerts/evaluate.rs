//! One evaluation of one rule: read what it needs from the store (the same reads as
//! `/api/queues`, `/api/workers`, `/api/failures/groups`), then turn it into [`Reading`]s, one per
//! queue (or per failure group) matching the rule's filters. The second half is pure
//! ([`readings`]), so each condition's meaning is tested on plain values.

use super::rules::{AlertRule, Condition};
use super::state::{Labels, Reading};
use chrono::{DateTime, Utc};
use taskscope::store::{
    FailureGroup, GroupState, QueueWindow, ReportFilter, ReportRange, StoreError, StoreReader,
    MAX_GROUPS,
};

/// The most instances one rule has at once (the highest values win): a Redis with thousands of
/// queues must not make thousands of alerts.
pub const MAX_INSTANCES_PER_RULE: usize = 200;

/// What one evaluation reads, shared by its rules (each read at most once per evaluation).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Queue samples older than this are left out: the history keeps each queue's last sample
    /// across restarts, and a sample from before this process started says nothing about now
    /// (it would fire, or keep firing, on a backlog long gone).
    pub fresh_since: Option<DateTime<Utc>>,
    pub queues: Option<Vec<broker_adapters::QueueSample>>,
    pub workers: Option<Vec<broker_adapters::Worker>>,
}

/// The data a rule is judged on.
#[derive(Debug)]
pub enum RuleData<'a> {
    Queues {
        queues: &'a [broker_adapters::QueueSample],
        /// Only for `no_worker`.
        workers: &'a [broker_adapters::Worker],
        /// [`Snapshot::fresh_since`].
        fresh_since: Option<DateTime<Utc>>,
    },
    Window(Vec<QueueWindow>),
    Groups(Vec<FailureGroup>),
}

/// Reads what `rule` needs at `now` (queues and workers once per evaluation, in `snapshot`).
pub async fn read<'a>(
    rule: &AlertRule,
    reader: &StoreReader,
    snapshot: &'a mut Snapshot,
    now: DateTime<Utc>,
    abandon_after: std::time::Duration,
) -> Result<RuleData<'a>, StoreError> {
    let filter = ReportFilter {
        brokers: rule.broker.into_iter().collect(),
        queue: rule.queue.clone(),
        name: rule.task.clone(),
    };
    let since = now - chrono::TimeDelta::from_std(rule.over).unwrap_or(chrono::TimeDelta::MAX);
    match rule.when {
        Condition::Backlog | Condition::OldestAge | Condition::NoWorker => {
            if snapshot.queues.is_none() {
                snapshot.queues = Some(reader.queues().await?);
            }
            if rule.when == Condition::NoWorker && snapshot.workers.is_none() {
                let abandon_after =
                    chrono::TimeDelta::from_std(abandon_after).unwrap_or(chrono::TimeDelta::MAX);
                snapshot.workers = Some(reader.workers(now, abandon_after).await?);
            }
            Ok(RuleData::Queues {
                queues: snapshot.queues.as_deref().unwrap_or_default(),
                workers: snapshot.workers.as_deref().unwrap_or_default(),
                fresh_since: snapshot.fresh_since,
            })
        }
        Condition::FailureRate
        | Condition::Failures
        | Condition::WaitP95
        | Condition::Abandoned => Ok(RuleData::Window(
            reader.alert_window(since, now, filter).await?,
        )),
        Condition::NewFailureGroup => {
            let range = ReportRange {
                since,
                until: now,
                step_us: i64::try_from(rule.over.as_micros())
                    .unwrap_or(i64::MAX)
                    .max(1),
            };
            Ok(RuleData::Groups(
                reader
                    .failure_groups(range, filter, GroupState::Open, MAX_GROUPS)
                    .await?,
            ))
        }
    }
}

/// The readings of `rule` from `data` at `now`: one per matching queue (per failure group for
/// `new_failure_group`), at most [`MAX_INSTANCES_PER_RULE`], the highest values kept.
pub fn readings(rule: &AlertRule, data: &RuleData<'_>, now: DateTime<Utc>) -> Vec<Reading> {
    let mut out: Vec<Reading> = match data {
        RuleData::Queues {
            queues,
            workers,
            fresh_since,
        } => queues
            .iter()
            .filter(|q| fresh_since.is_none_or(|since| q.sampled_at >= since))
            .filter(|q| rule.broker.is_none_or(|b| b == q.broker))
            .filter(|q| rule.queue.as_deref().is_none_or(|name| name == q.name))
            .filter_map(|q| {
                let value = match rule.when {
                    Condition::Backlog => q.length as f64,
                    Condition::OldestAge => q.oldest_age_ms(now).unwrap_or(0.0) / 1000.0,
                    Condition::NoWorker => {
                        let alive = workers.iter().any(|w| w.broker == q.broker && w.alive);
                        if alive {
                            0.0
                        } else {
                            q.length as f64
                        }
                    }
                    _ => return None,
                };
                Some(Reading {
                    labels: labels(rule, q.broker, Some(&q.name)),
                    value,
                })
            })
            .collect(),
        RuleData::Window(windows) => windows
            .iter()
            .filter_map(|w| {
                let value = match rule.when {
                    Condition::FailureRate if w.finished == 0 => 0.0,
                    Condition::FailureRate => w.failures as f64 / w.finished as f64,
                    Condition::Failures => w.failures as f64,
                    Condition::Abandoned => w.abandoned as f64,
                    Condition::WaitP95 => w.wait_p95_ms.unwrap_or(0.0) / 1000.0,
                    _ => return None,
                };
                Some(Reading {
                    labels: labels(rule, w.broker, w.queue.as_deref()),
                    value,
                })
            })
            .collect(),
        RuleData::Groups(groups) => {
            let since =
                now - chrono::TimeDelta::from_std(rule.over).unwrap_or(chrono::TimeDelta::MAX);
            groups
                .iter()
                .filter(|g| g.first_seen.is_some_and(|first| first >= since))
                .map(|g| {
                    let mut labels = filter_labels(rule);
                    labels.insert("fingerprint".into(), g.fingerprint.clone());
                    if let Some(exception) = &g.exception {
                        labels.insert("exception".into(), exception.clone());
                    }
                    Reading {
                        labels,
                        value: g.count as f64,
                    }
                })
                .collect()
        }
    };
    if out.len() > MAX_INSTANCES_PER_RULE {
        out.sort_by(|a, b| b.value.total_cmp(&a.value));
        out.truncate(MAX_INSTANCES_PER_RULE);
    }
    out
}

/// The rule's own filters (`task` included), as labels.
fn filter_labels(rule: &AlertRule) -> Labels {
    let mut labels = Labels::new();
    if let Some(b) = rule.broker {
        labels.insert("broker".into(), b.as_str().into());
    }
    if let Some(q) = &rule.queue {
        labels.insert("queue".into(), q.clone());
    }
    if let Some(t) = &rule.task {
        labels.insert("task".into(), t.clone());
    }
    labels
}

/// The filters plus the broker and queue that fired.
fn labels(rule: &AlertRule, broker: broker_adapters::Broker, queue: Option<&str>) -> Labels {
    let mut labels = filter_labels(rule);
    labels.insert("broker".into(), broker.as_str().into());
    labels.insert("queue".into(), queue.unwrap_or("").into());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::parse_rules;
    use broker_adapters::{Broker, QueueSample, Worker};

    fn rule(body: &str) -> AlertRule {
        parse_rules(&format!("[[alert]]\nname = \"r\"\n{body}"))
            .unwrap()
            .remove(0)
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn queue(broker: Broker, name: &str, length: u64, oldest_secs: Option<i64>) -> QueueSample {
        QueueSample {
            broker,
            name: name.into(),
            sampled_at: now(),
            length,
            delayed: 0,
            dead: 0,
            running: 0,
            oldest_enqueued_at: oldest_secs.map(|s| now() - chrono::TimeDelta::seconds(s)),
        }
    }

    fn worker(broker: Broker, alive: bool) -> Worker {
        Worker {
            broker,
            id: "w".into(),
            hostname: None,
            pid: None,
            alive,
            last_seen: now(),
            online_since: now(),
            running: 0,
        }
    }

    fn values(readings: &[Reading]) -> Vec<(String, f64)> {
        readings
            .iter()
            .map(|r| (r.labels["queue"].clone(), r.value))
            .collect()
    }

    #[test]
    fn oldest_age_is_seconds_per_queue_and_filters_apply() {
        let queues = [
            queue(Broker::Rq, "parked", 3, Some(42)),
            queue(Broker::Rq, "empty", 0, None),
            queue(Broker::Celery, "parked", 3, Some(99)),
        ];
        let data = RuleData::Queues {
            queues: &queues,
            workers: &[],
            fresh_since: None,
        };
        let all = readings(&rule("when = \"oldest_age\"\nabove = 30"), &data, now());
        assert_eq!(
            values(&all),
            [
                ("parked".into(), 42.0),
                ("empty".into(), 0.0),
                ("parked".into(), 99.0)
            ]
        );
        let rq = readings(
            &rule("when = \"oldest_age\"\nabove = 30\nbroker = \"rq\"\nqueue = \"parked\""),
            &data,
            now(),
        );
        assert_eq!(values(&rq), [("parked".into(), 42.0)]);
        assert_eq!(rq[0].labels["broker"], "rq");
    }

    #[test]
    fn samples_from_before_the_start_are_left_out() {
        let mut stale = queue(Broker::Rq, "old", 9, Some(3600));
        stale.sampled_at = now() - chrono::TimeDelta::minutes(10);
        let queues = [stale, queue(Broker::Rq, "new", 1, Some(5))];
        let data = RuleData::Queues {
            queues: &queues,
            workers: &[],
            fresh_since: Some(now() - chrono::TimeDelta::minutes(1)),
        };
        let r = readings(&rule("when = \"backlog\"\nabove = 0"), &data, now());
        assert_eq!(values(&r), [("new".into(), 1.0)]);
    }

    #[test]
    fn no_worker_is_the_backlog_of_a_broker_without_a_live_worker() {
        let queues = [
            queue(Broker::Rq, "a", 5, None),
            queue(Broker::Celery, "b", 7, None),
        ];
        let workers = [worker(Broker::Rq, false), worker(Broker::Celery, true)];
        let data = RuleData::Queues {
            queues: &queues,
            workers: &workers,
            fresh_since: None,
        };
        let r = readings(&rule("when = \"no_worker\""), &data, now());
        assert_eq!(values(&r), [("a".into(), 5.0), ("b".into(), 0.0)]);
    }

    #[test]
    fn window_conditions_read_their_counts() {
        let w = |queue: &str, finished, failures, abandoned, wait| QueueWindow {
            broker: Broker::Celery,
            queue: Some(queue.into()),
            finished,
            failures,
            abandoned,
            wait_p95_ms: wait,
        };
        let data = RuleData::Window(vec![w("a", 10, 2, 1, Some(2500.0)), w("b", 0, 0, 0, None)]);
        let get = |body: &str| values(&readings(&rule(body), &data, now()));
        assert_eq!(
            get("when = \"failure_rate\"\nabove = 0.1"),
            [("a".into(), 0.2), ("b".into(), 0.0)]
        );
        assert_eq!(get("when = \"failures\"\nabove = 1")[0].1, 2.0);
        assert_eq!(get("when = \"abandoned\"\nabove = 0")[0].1, 1.0);
        assert_eq!(get("when = \"wait_p95\"\nabove = 1")[0].1, 2.5, "seconds");
    }

    #[test]
    fn new_failure_group_is_one_instance_per_group_first_seen_in_the_window() {
        let g = |fp: &str, first_ago: i64| FailureGroup {
            fingerprint: fp.into(),
            exception: Some("ValueError".into()),
            message: "m".into(),
            frames: Vec::new(),
            count: 3,
            first_seen: Some(now() - chrono::TimeDelta::seconds(first_ago)),
            last_seen: Some(now()),
            names: Vec::new(),
            brokers: Vec::new(),
            sample_task_id: None,
            points: Vec::new(),
        };
        let data = RuleData::Groups(vec![g("new", 60), g("old", 3600)]);
        let r = readings(
            &rule("when = \"new_failure_group\"\nover = \"10m\""),
            &data,
            now(),
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].labels["fingerprint"], "new");
        assert_eq!(r[0].labels["exception"], "ValueError");
        assert_eq!(r[0].value, 3.0);
    }

    #[test]
    fn a_rule_has_a_bounded_number_of_instances_the_highest_kept() {
        let queues: Vec<_> = (0..MAX_INSTANCES_PER_RULE as u64 + 50)
            .map(|i| queue(Broker::Rq, &format!("q{i}"), i, None))
            .collect();
        let data = RuleData::Queues {
            queues: &queues,
            workers: &[],
            fresh_since: None,
        };
        let r = readings(&rule("when = \"backlog\"\nabove = 1"), &data, now());
        assert_eq!(r.len(), MAX_INSTANCES_PER_RULE);
        assert!(r.iter().all(|x| x.value >= 50.0));
    }
}
