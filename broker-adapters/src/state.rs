//! The one state machine every broker shares: folds [`TaskObservation`]s into [`Task`]s.
//!
//! Observations arrive out of order (a result can be read before the message that caused it, an
//! event of attempt 1 can overtake the retry of attempt 0), twice (pub/sub and a later
//! reconciliation read), or late (after taskscope restarts). The rules:
//!
//! * Every observation has a *position*: `(attempt, rank)`, rank being queued 0 < running 1 <
//!   finished 3. A retry of attempt `n` is the position `(n + 1, 0)`: the task waits for attempt
//!   `n + 1`, which is what the `retried` state means. A task moves only forward; an observation
//!   behind the task's position only fills fields the task does not know yet.
//! * `success` and `failure` are final. `abandoned` is not: a later sign of the task (a
//!   redelivery, a late result) moves it on. An outcome of the current attempt (or a later
//!   one) always does, whatever its time says: it is the strongest evidence there is, and it
//!   may be dated before the sweep's decision (the worker's own clock, a read that waited in
//!   a queue, or taskscope reading it late after a restart).
//! * An observation that does not know its attempt (`attempt: None`) is about the current one; a
//!   retry without an attempt that is older than the current attempt's start is a late copy of
//!   the retry that started it, not a new one.
//!
//! Broker quirks never live here: adapters translate them into observations.

use crate::model::{Task, TaskEvent, TaskObservation, TaskState, Transition, Worker};
use chrono::{DateTime, Duration, Utc};

/// The outcome of applying one observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The task after the observation (a new one if there was none).
    pub task: Task,
    /// The state change it caused, if any.
    pub transition: Option<Transition>,
    /// Whether anything about the task changed (state or fields): false means nothing to write.
    pub changed: bool,
}

/// Where a task or an observation stands in a task's life. Ordered: later is greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    attempt: u32,
    rank: u8,
}

const RANK_QUEUED: u8 = 0;
const RANK_RUNNING: u8 = 1;
const RANK_FINISHED: u8 = 3;

fn task_position(task: &Task) -> Position {
    let rank = match task.state {
        TaskState::Queued | TaskState::Retried => RANK_QUEUED,
        TaskState::Running | TaskState::Abandoned => RANK_RUNNING,
        TaskState::Success | TaskState::Failure => RANK_FINISHED,
    };
    Position {
        attempt: task.retries,
        rank,
    }
}

/// Applies `obs` to `current` (the task as known so far, if any).
pub fn apply(current: Option<Task>, obs: &TaskObservation) -> Applied {
    let is_new = current.is_none();
    let mut task = current.unwrap_or_else(|| Task::new(obs.broker, obs.task_id.clone(), obs.at));
    let before = task.clone();

    match decide(&task, obs, is_new) {
        Decision::Move { state, attempt } => {
            move_to(&mut task, obs, state, attempt);
            refresh_fingerprint(&mut task, &before);
            let transition =
                if is_new || before.state != task.state || before.retries != task.retries {
                    Some(Transition {
                        task_id: task.id.clone(),
                        broker: task.broker,
                        state: task.state,
                        // Observations come from several clocks (worker timestamps,
                        // taskscope's own): a task's timeline never goes backwards.
                        at: if is_new {
                            obs.at
                        } else {
                            obs.at.max(before.updated_at)
                        },
                        worker: task.worker.clone(),
                        detail: Some(detail(obs, &task)),
                        fingerprint: transition_fingerprint(&task, obs),
                    })
                } else {
                    None
                };
            let changed = is_new || task != before;
            Applied {
                task,
                transition,
                changed,
            }
        }
        Decision::FillOnly => {
            fill_missing(&mut task, obs);
            refresh_fingerprint(&mut task, &before);
            let changed = task != before;
            Applied {
                task,
                transition: None,
                changed,
            }
        }
    }
}

/// The one place a task's fingerprint is computed: whenever its error or traceback changed.
fn refresh_fingerprint(task: &mut Task, before: &Task) {
    if task.error != before.error || task.traceback != before.traceback {
        task.fingerprint =
            crate::fingerprint::fingerprint(task.error.as_deref(), task.traceback.as_deref())
                .map(|f| f.id);
    }
}

/// The failure group a `failure` or `retried` transition counts in: the task's, once the
/// observation said what the error was (a retry seen without its error is not counted under
/// an earlier attempt's); a failure always takes the task's last known error.
fn transition_fingerprint(task: &Task, obs: &TaskObservation) -> Option<String> {
    let error_seen = obs.fields.error.is_some() || obs.fields.traceback.is_some();
    match task.state {
        TaskState::Failure => task.fingerprint.clone(),
        TaskState::Retried if error_seen => task.fingerprint.clone(),
        _ => None,
    }
}

enum Decision {
    /// Take the observation's state (possibly the same state again: then fields refresh).
    Move { state: TaskState, attempt: u32 },
    /// The observation is behind the task: keep the state, fill unknown fields only.
    FillOnly,
}

fn decide(task: &Task, obs: &TaskObservation, is_new: bool) -> Decision {
    let current = task_position(task);
    let attempt = match (obs.event, obs.attempt) {
        (_, Some(a)) => a,
        // A retry without an attempt that we already counted (the task is `retried` and waits),
        // or one older than the current attempt's start, is about the previous attempt.
        (TaskEvent::Retried, None) if !is_new && task.retries > 0 => {
            let stale = task.state == TaskState::Retried
                || task.started_at.is_some_and(|started| obs.at < started);
            if stale {
                task.retries - 1
            } else {
                task.retries
            }
        }
        (_, None) => task.retries,
    };
    let (state, target) = match obs.event {
        TaskEvent::Queued if attempt > 0 => (TaskState::Retried, pos(attempt, RANK_QUEUED)),
        TaskEvent::Queued => (TaskState::Queued, pos(attempt, RANK_QUEUED)),
        TaskEvent::Running => (TaskState::Running, pos(attempt, RANK_RUNNING)),
        TaskEvent::Retried => (TaskState::Retried, pos(attempt + 1, RANK_QUEUED)),
        TaskEvent::Succeeded => (TaskState::Success, pos(attempt, RANK_FINISHED)),
        TaskEvent::Failed => (TaskState::Failure, pos(attempt, RANK_FINISHED)),
        TaskEvent::Abandoned => {
            // Only the sweep emits this, for a task it saw running; anything that happened
            // since wins.
            return if task.state == TaskState::Running && attempt == task.retries && !is_new {
                Decision::Move {
                    state: TaskState::Abandoned,
                    attempt,
                }
            } else {
                Decision::FillOnly
            };
        }
    };
    if is_new {
        return Decision::Move {
            state,
            attempt: target.attempt,
        };
    }
    if task.state.is_final() {
        if removal_corrects_inferred_success(task, obs) {
            return Decision::Move {
                state: TaskState::Failure,
                attempt: task.retries,
            };
        }
        return Decision::FillOnly;
    }
    let forward = if task.state == TaskState::Abandoned {
        let outcome = matches!(obs.event, TaskEvent::Succeeded | TaskEvent::Failed);
        if outcome {
            // A late outcome after the worker was given up on.
            target.attempt >= current.attempt
        } else {
            // A redelivery; a sign older than the sweep's decision was already judged.
            target >= pos(current.attempt, RANK_QUEUED) && obs.at >= task.updated_at
        }
    } else {
        target >= current
    };
    if forward {
        Decision::Move {
            state,
            attempt: target.attempt,
        }
    } else {
        Decision::FillOnly
    }
}

/// The source of the observations taskscope's own actions make (`src/actions`).
pub const ACTION_SOURCE: &str = "taskscope";

/// An action removed the task's message (delete, purge: a `Failed` from [`ACTION_SOURCE`]),
/// and the task shows `success` without ever having run: that success was inferred from the
/// message leaving its queue, which the removal itself caused (Dramatiq's adapter settles a
/// message gone from every queue as acknowledged), and it was folded first because the
/// adapter saw Redis change before the action told the store. Measured in CI: a deleted
/// Dramatiq message shown `success` 1 ms before the removal's `failure` arrived.
fn removal_corrects_inferred_success(task: &Task, obs: &TaskObservation) -> bool {
    obs.event == TaskEvent::Failed
        && obs.source == ACTION_SOURCE
        && task.state == TaskState::Success
        && task.started_at.is_none()
}

fn pos(attempt: u32, rank: u8) -> Position {
    Position { attempt, rank }
}

fn move_to(task: &mut Task, obs: &TaskObservation, state: TaskState, attempt: u32) {
    let new_attempt = attempt > task.retries;
    let previous_state = task.state;
    overwrite_known(task, obs);
    task.state = state;
    task.retries = task.retries.max(attempt);
    match state {
        TaskState::Queued => {
            let at = obs.fields.enqueued_at.unwrap_or(obs.at);
            task.enqueued_at = Some(task.enqueued_at.map_or(at, |e| e.min(at)));
        }
        TaskState::Retried => {
            if obs.event == TaskEvent::Retried {
                // The failed attempt ended here.
                task.finished_at = None;
            }
            if new_attempt {
                task.runtime_ms = None;
            }
        }
        TaskState::Running => {
            let started = obs.fields.started_at.unwrap_or(obs.at);
            // Keep the earliest sign of this attempt's start, unless it is a new attempt.
            task.started_at = match task.started_at {
                Some(s) if !new_attempt && s <= started && ran_this_attempt(previous_state) => {
                    Some(s)
                }
                _ => Some(started),
            };
            task.finished_at = None;
        }
        TaskState::Success | TaskState::Failure => {
            task.finished_at = Some(obs.at);
            if state == TaskState::Success {
                task.error = None;
                task.traceback = None;
            }
            if obs.fields.runtime_ms.is_none() {
                task.runtime_ms = task.started_at.and_then(|s| runtime_ms(s, obs.at));
            }
        }
        TaskState::Abandoned => {}
    }
    if task.enqueued_at.is_none() {
        task.enqueued_at = obs.fields.enqueued_at;
    }
    task.updated_at = task.updated_at.max(obs.at);
}

/// Whether a task in `state` has a `started_at` that belongs to its current attempt.
fn ran_this_attempt(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Running | TaskState::Abandoned | TaskState::Success | TaskState::Failure
    )
}

/// Copies every field the observation knows onto the task.
fn overwrite_known(task: &mut Task, obs: &TaskObservation) {
    let f = &obs.fields;
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = &f.$field {
                task.$field = Some(v.clone());
            }
        };
    }
    set!(queue);
    set!(name);
    set!(args);
    set!(kwargs);
    set!(result);
    set!(error);
    set!(traceback);
    set!(worker);
    set!(runtime_ms);
    if f.eta.is_some() || obs.event == TaskEvent::Queued {
        task.eta = f.eta;
    }
}

/// Copies only the fields the task does not know yet (an observation from behind).
fn fill_missing(task: &mut Task, obs: &TaskObservation) {
    let f = &obs.fields;
    macro_rules! fill {
        ($field:ident) => {
            if task.$field.is_none() {
                task.$field = f.$field.clone();
            }
        };
    }
    fill!(queue);
    fill!(name);
    fill!(args);
    fill!(kwargs);
    fill!(worker);
    fill!(enqueued_at);
    if task.state.is_final() {
        fill!(runtime_ms);
        if task.state == TaskState::Failure {
            fill!(error);
            fill!(traceback);
        }
        if task.state == TaskState::Success {
            fill!(result);
        }
    }
    if task.started_at.is_none() && obs.event == TaskEvent::Running {
        task.started_at = Some(f.started_at.unwrap_or(obs.at));
        // The start was learned after the outcome: the runtime can now be told.
        if let (true, None, Some(started), Some(finished)) = (
            task.state.is_final(),
            task.runtime_ms,
            task.started_at,
            task.finished_at,
        ) {
            task.runtime_ms = runtime_ms(started, finished);
        }
    }
}

/// Milliseconds from `started` to `finished`; `None` when clocks make it negative.
fn runtime_ms(started: DateTime<Utc>, finished: DateTime<Utc>) -> Option<f64> {
    let ms = (finished - started).num_microseconds()? as f64 / 1000.0;
    (ms >= 0.0).then_some(ms)
}

fn detail(obs: &TaskObservation, task: &Task) -> String {
    let mut d = match obs.event {
        TaskEvent::Queued if task.eta.is_some() => format!("seen in {} (delayed)", obs.source),
        TaskEvent::Queued => format!("seen in {}", obs.source),
        TaskEvent::Running => format!("taken by a worker ({})", obs.source),
        TaskEvent::Succeeded => format!("succeeded ({})", obs.source),
        TaskEvent::Failed => format!("failed ({})", obs.source),
        TaskEvent::Retried => format!("retry {} ({})", task.retries, obs.source),
        TaskEvent::Abandoned => "abandoned".to_string(),
    };
    if let Some(explicit) = &obs.detail {
        return explicit.clone();
    }
    if matches!(obs.event, TaskEvent::Failed | TaskEvent::Retried) {
        if let Some(err) = &obs.fields.error {
            d.push_str(": ");
            d.push_str(err);
        }
    }
    d
}

/// Whether a worker counts as alive at `now`: it has not said goodbye and was heard from within
/// `abandon_after`.
pub fn worker_alive(worker: &Worker, now: DateTime<Utc>, abandon_after: Duration) -> bool {
    worker.alive && now - worker.last_seen <= abandon_after
}

/// The running tasks whose worker died or fell silent, as `Abandoned` observations (source
/// describes why). `running` are tasks in state `running`; `workers` all known workers.
///
/// * A task whose worker is known is abandoned when that worker is silent for longer than
///   `abandon_after`, said goodbye, or restarted (a new process was first seen after the task
///   started).
/// * A task whose worker is unknown (Celery without events cannot tell which worker took a
///   message) is abandoned when no worker of its broker that was already up when it started is
///   still alive.
/// * A task whose worker name was never heard from is left alone: silence cannot be judged.
/// * A task whose worker is unknown, of a broker whose workers do not vouch for such tasks
///   ([`crate::model::Broker::workers_vouch_for_unnamed_runs`]: taskiq lists and pub/sub), is
///   never abandoned: there is no evidence either way.
pub fn find_abandoned(
    running: &[Task],
    workers: &[Worker],
    now: DateTime<Utc>,
    abandon_after: Duration,
) -> Vec<TaskObservation> {
    let cutoffs = AbandonCutoffs::new(workers, now, abandon_after);
    running
        .iter()
        .filter_map(|task| cutoffs.abandon(task, now))
        .collect()
}

/// Which running tasks count as abandoned at one instant, per worker: the rules of
/// [`find_abandoned`] as time bounds, so that they can be applied to tasks in memory one by one
/// (O(1) each) and to tasks kept only in a file (`started < before` in a query).
#[derive(Debug, Clone, Default)]
pub struct AbandonCutoffs {
    /// Of each named worker (by name: several brokers may share one), its cutoff.
    named: std::collections::HashMap<String, Vec<AbandonCutoff>>,
    /// Of each broker whose workers vouch for the runs no worker is named for.
    unnamed: std::collections::HashMap<crate::model::Broker, AbandonCutoff>,
}

/// A running task of `worker` (or, when `None`, an unnamed run of `broker`) that started
/// before `before` (any time when `None`) is abandoned, for `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct AbandonCutoff {
    pub broker: crate::model::Broker,
    pub worker: Option<String>,
    pub before: Option<DateTime<Utc>>,
    pub reason: String,
}

impl AbandonCutoffs {
    /// The cutoffs `workers` (every known worker) imply at `now`.
    pub fn new<'w>(
        workers: impl IntoIterator<Item = &'w Worker>,
        now: DateTime<Utc>,
        abandon_after: Duration,
    ) -> Self {
        use crate::model::Broker;
        let mut named: std::collections::HashMap<String, Vec<AbandonCutoff>> =
            std::collections::HashMap::new();
        // Of each broker whose workers vouch for unnamed runs: whether it has a worker at all,
        // and the earliest start of a worker alive now.
        let mut unnamed: std::collections::HashMap<Broker, Option<DateTime<Utc>>> =
            std::collections::HashMap::new();
        for w in workers {
            let (before, reason) = if !w.alive {
                (None, format!("abandoned: worker {} went offline", w.id))
            } else if now - w.last_seen > abandon_after {
                let since = crate::model::rfc3339(&w.last_seen);
                (
                    None,
                    format!("abandoned: worker {} silent since {since}", w.id),
                )
            } else {
                // A new process under the same name cannot be running what started before it.
                (
                    Some(w.online_since),
                    format!("abandoned: worker {} restarted", w.id),
                )
            };
            let of_name = named.entry(w.id.clone()).or_default();
            of_name.retain(|c| c.broker != w.broker);
            of_name.push(AbandonCutoff {
                broker: w.broker,
                worker: Some(w.id.clone()),
                before,
                reason,
            });
            if w.broker.workers_vouch_for_unnamed_runs() {
                let earliest = unnamed.entry(w.broker).or_insert(None);
                if worker_alive(w, now, abandon_after) {
                    *earliest = Some(earliest.map_or(w.online_since, |e| e.min(w.online_since)));
                }
            }
        }
        // A run no worker is named for survives while a worker that was up when it started
        // is alive, and for its first seconds (its worker may not have been heard yet).
        let grace = now - abandon_after.min(Duration::seconds(5));
        let mut unnamed_cutoffs = std::collections::HashMap::new();
        for (broker, earliest_alive) in unnamed {
            let before = earliest_alive.map_or(grace, |e| e.min(grace));
            unnamed_cutoffs.insert(
                broker,
                AbandonCutoff {
                    broker,
                    worker: None,
                    before: Some(before),
                    reason: "abandoned: every worker up when it started is gone".to_string(),
                },
            );
        }
        Self {
            named,
            unnamed: unnamed_cutoffs,
        }
    }

    /// Every cutoff (for a query of stored tasks).
    pub fn iter(&self) -> impl Iterator<Item = &AbandonCutoff> {
        self.named.values().flatten().chain(self.unnamed.values())
    }

    /// Whether no running task could be abandoned (no worker is known).
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.unnamed.is_empty()
    }

    /// `task`'s `Abandoned` observation, if it is a running task these cutoffs abandon.
    pub fn abandon(&self, task: &Task, now: DateTime<Utc>) -> Option<TaskObservation> {
        if task.state != TaskState::Running {
            return None;
        }
        let started = task.started_at.unwrap_or(task.updated_at);
        let cutoff = match &task.worker {
            Some(name) => self
                .named
                .get(name.as_str())?
                .iter()
                .find(|c| c.broker == task.broker)?,
            None => self.unnamed.get(&task.broker)?,
        };
        if cutoff.before.is_some_and(|before| started >= before) {
            return None;
        }
        let mut obs = TaskObservation::new(
            task.broker,
            task.id.clone(),
            now,
            TaskEvent::Abandoned,
            "sweep",
        );
        obs.attempt = Some(task.retries);
        obs.detail = Some(cutoff.reason.clone());
        Some(obs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Broker, TaskFields};
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
    }

    fn obs(event: TaskEvent, at: i64, attempt: Option<u32>) -> TaskObservation {
        let mut o = TaskObservation::new(Broker::Celery, "t1", t(at), event, "test");
        o.attempt = attempt;
        o
    }

    fn run(observations: &[TaskObservation]) -> (Task, Vec<Transition>) {
        let mut task = None;
        let mut transitions = Vec::new();
        for o in observations {
            let applied = apply(task, o);
            transitions.extend(applied.transition);
            task = Some(applied.task);
        }
        (task.unwrap(), transitions)
    }

    fn states(transitions: &[Transition]) -> Vec<TaskState> {
        transitions.iter().map(|t| t.state).collect()
    }

    #[test]
    fn a_removal_by_an_action_corrects_the_success_inferred_from_it_only() {
        let removed = || {
            let mut o = TaskObservation::new(
                Broker::Dramatiq,
                "t1",
                t(3),
                TaskEvent::Failed,
                ACTION_SOURCE,
            );
            o.fields.error = Some("deleted from queue default by taskscope (token)".into());
            o
        };
        // Queued, then settled as acknowledged when the action's delete emptied its queue.
        let (task, tr) = run(&[
            obs(TaskEvent::Queued, 0, Some(0)),
            obs(TaskEvent::Succeeded, 2, None),
            removed(),
        ]);
        assert_eq!(task.state, TaskState::Failure);
        assert_eq!(
            states(&tr),
            [TaskState::Queued, TaskState::Success, TaskState::Failure]
        );
        assert!(task
            .error
            .as_deref()
            .is_some_and(|e| e.contains("by taskscope")));
        // A task that ran and succeeded keeps its outcome; so does one failed by a worker.
        let (ran, _) = run(&[
            obs(TaskEvent::Queued, 0, Some(0)),
            obs(TaskEvent::Running, 1, Some(0)),
            obs(TaskEvent::Succeeded, 2, None),
            removed(),
        ]);
        assert_eq!(ran.state, TaskState::Success);
        let (failed, tr) = run(&[
            obs(TaskEvent::Queued, 0, Some(0)),
            obs(TaskEvent::Failed, 2, None),
            removed(),
        ]);
        assert_eq!(failed.state, TaskState::Failure);
        assert_eq!(tr.len(), 2, "no second failure");
        // Any other source's failure after a success changes nothing.
        let (other, _) = run(&[
            obs(TaskEvent::Queued, 0, Some(0)),
            obs(TaskEvent::Succeeded, 2, None),
            obs(TaskEvent::Failed, 3, None),
        ]);
        assert_eq!(other.state, TaskState::Success);
    }

    #[test]
    fn full_lifecycle_with_two_retries_counts_two_retries() {
        let mut failed = obs(TaskEvent::Retried, 3, None);
        failed.fields.error = Some("ValueError: boom".into());
        let (task, tr) = run(&[
            obs(TaskEvent::Queued, 0, Some(0)),
            obs(TaskEvent::Running, 1, Some(0)),
            failed.clone(),
            obs(TaskEvent::Queued, 4, Some(1)),
            obs(TaskEvent::Running, 5, Some(1)),
            TaskObservation { at: t(6), ..failed },
            obs(TaskEvent::Running, 7, Some(2)),
            obs(TaskEvent::Succeeded, 9, None),
        ]);
        assert_eq!(task.state, TaskState::Success);
        assert_eq!(task.retries, 2);
        assert_eq!(task.error, None, "a success clears the last retry's error");
        assert_eq!(task.runtime_ms, Some(2000.0), "runtime of the last attempt");
        assert_eq!(
            states(&tr),
            [
                TaskState::Queued,
                TaskState::Running,
                TaskState::Retried,
                TaskState::Running,
                TaskState::Retried,
                TaskState::Running,
                TaskState::Success
            ]
        );
        assert!(tr[2]
            .detail
            .as_deref()
            .unwrap()
            .contains("ValueError: boom"));
    }

    #[test]
    fn failed_attempts_carry_their_fingerprint_and_a_success_clears_the_tasks() {
        let mut first = obs(TaskEvent::Retried, 2, None);
        first.fields.error = Some("ValueError: card declined 3".into());
        let mut second = obs(TaskEvent::Retried, 4, None);
        second.fields.error = Some("ValueError: card declined 4".into());
        let unknown = obs(TaskEvent::Retried, 6, None);
        let (task, tr) = run(&[
            obs(TaskEvent::Running, 1, Some(0)),
            first,
            obs(TaskEvent::Running, 3, Some(1)),
            second,
            obs(TaskEvent::Running, 5, Some(2)),
            unknown,
            obs(TaskEvent::Running, 7, Some(3)),
        ]);
        let retries: Vec<&Transition> = tr
            .iter()
            .filter(|t| t.state == TaskState::Retried)
            .collect();
        let expected = crate::fingerprint::fingerprint(Some("ValueError: card declined 9"), None)
            .map(|f| f.id);
        assert!(expected.is_some());
        assert_eq!(retries[0].fingerprint, expected);
        assert_eq!(
            retries[1].fingerprint, expected,
            "numbers do not split a group"
        );
        assert_eq!(
            retries[2].fingerprint, None,
            "a retry without its error is not counted"
        );
        assert_eq!(task.fingerprint, expected);

        let mut failed = obs(TaskEvent::Failed, 8, None);
        failed.fields.error = Some("KeyError: 'user'".into());
        let (failed_task, tr2) = run(&[obs(TaskEvent::Running, 1, Some(0)), failed]);
        assert!(failed_task.fingerprint.is_some());
        assert_eq!(tr2[1].fingerprint, failed_task.fingerprint);
        assert_ne!(failed_task.fingerprint, expected);

        let (ok, _) = run(&[
            obs(TaskEvent::Running, 1, Some(0)),
            TaskObservation {
                fields: TaskFields {
                    error: Some("ValueError: x".into()),
                    ..TaskFields::default()
                },
                ..obs(TaskEvent::Retried, 2, None)
            },
            obs(TaskEvent::Succeeded, 3, Some(1)),
        ]);
        assert_eq!(
            ok.fingerprint, None,
            "a success clears the error and its group"
        );
    }

    #[test]
    fn result_before_message_keeps_success_and_fills_fields() {
        let mut queued = obs(TaskEvent::Queued, 0, Some(0));
        queued.fields.name = Some("billing.add".into());
        queued.fields.args = Some(serde_json::json!([1, 2]));
        let (task, tr) = run(&[obs(TaskEvent::Succeeded, 5, None), queued]);
        assert_eq!(task.state, TaskState::Success);
        assert_eq!(task.name.as_deref(), Some("billing.add"));
        assert_eq!(task.args, Some(serde_json::json!([1, 2])));
        assert_eq!(states(&tr), [TaskState::Success]);
    }

    #[test]
    fn duplicate_retry_without_attempt_is_not_counted_twice() {
        let (task, tr) = run(&[
            obs(TaskEvent::Running, 1, Some(0)),
            obs(TaskEvent::Retried, 2, None),
            obs(TaskEvent::Retried, 2, None),
            obs(TaskEvent::Queued, 3, Some(1)),
        ]);
        assert_eq!(task.retries, 1);
        assert_eq!(task.state, TaskState::Retried);
        assert_eq!(states(&tr), [TaskState::Running, TaskState::Retried]);
    }

    #[test]
    fn late_retry_of_previous_attempt_does_not_count_again() {
        // The re-sent message (attempt 1) was seen running before attempt 0's retry record.
        let (task, _) = run(&[
            obs(TaskEvent::Running, 1, Some(0)),
            obs(TaskEvent::Running, 3, Some(1)),
            obs(TaskEvent::Retried, 2, None),
        ]);
        assert_eq!(task.retries, 1);
        assert_eq!(task.state, TaskState::Running);
    }

    #[test]
    fn timeline_never_goes_backwards_across_clocks() {
        // A worker's date_done (its clock) earlier than the start taskscope saw (its clock).
        let (task, tr) = run(&[
            obs(TaskEvent::Running, 5, Some(0)),
            obs(TaskEvent::Succeeded, 4, None),
        ]);
        assert_eq!(task.state, TaskState::Success);
        assert!(tr[0].at <= tr[1].at);
        assert_eq!(
            task.runtime_ms, None,
            "a negative runtime is unknown, not zero"
        );
    }

    #[test]
    fn start_learned_after_the_outcome_still_gives_the_runtime() {
        let (task, tr) = run(&[
            obs(TaskEvent::Succeeded, 5, None),
            obs(TaskEvent::Running, 3, Some(0)),
        ]);
        assert_eq!(task.state, TaskState::Success);
        assert_eq!(task.runtime_ms, Some(2000.0));
        assert_eq!(states(&tr), [TaskState::Success]);
    }

    #[test]
    fn stale_running_after_success_is_ignored() {
        let (task, tr) = run(&[
            obs(TaskEvent::Queued, 0, Some(0)),
            obs(TaskEvent::Succeeded, 2, None),
            obs(TaskEvent::Running, 1, Some(0)),
        ]);
        assert_eq!(task.state, TaskState::Success);
        assert_eq!(tr.len(), 2);
    }

    #[test]
    fn abandoned_task_moves_on_when_redelivered() {
        let (task, tr) = run(&[
            obs(TaskEvent::Running, 1, Some(0)),
            obs(TaskEvent::Abandoned, 100, Some(0)),
            obs(TaskEvent::Queued, 200, Some(0)),
            obs(TaskEvent::Running, 201, Some(0)),
            obs(TaskEvent::Succeeded, 202, None),
        ]);
        assert_eq!(task.state, TaskState::Success);
        assert_eq!(
            states(&tr),
            [
                TaskState::Running,
                TaskState::Abandoned,
                TaskState::Queued,
                TaskState::Running,
                TaskState::Success
            ]
        );
    }

    #[test]
    fn outcome_dated_before_the_sweep_still_moves_an_abandoned_task_on() {
        // The result was written at 99 (its own clock) and read after the sweep gave up at 100.
        for (event, state) in [
            (TaskEvent::Succeeded, TaskState::Success),
            (TaskEvent::Failed, TaskState::Failure),
        ] {
            let (task, tr) = run(&[
                obs(TaskEvent::Running, 1, Some(0)),
                obs(TaskEvent::Abandoned, 100, Some(0)),
                obs(event, 99, Some(0)),
            ]);
            assert_eq!(task.state, state);
            assert_eq!(
                states(&tr),
                [TaskState::Running, TaskState::Abandoned, state]
            );
            assert!(tr[1].at <= tr[2].at, "the timeline never goes backwards");
        }
        // Without an attempt too.
        let (task, _) = run(&[
            obs(TaskEvent::Running, 1, Some(0)),
            obs(TaskEvent::Abandoned, 100, Some(0)),
            obs(TaskEvent::Succeeded, 50, None),
        ]);
        assert_eq!(task.state, TaskState::Success);
    }

    #[test]
    fn outcome_of_an_earlier_attempt_leaves_an_abandoned_retry_alone() {
        // Attempt 0 failed and was retried; attempt 1 was abandoned; attempt 0's record is late.
        let (task, _) = run(&[
            obs(TaskEvent::Running, 1, Some(0)),
            obs(TaskEvent::Retried, 2, Some(0)),
            obs(TaskEvent::Running, 3, Some(1)),
            obs(TaskEvent::Abandoned, 100, Some(1)),
            obs(TaskEvent::Failed, 101, Some(0)),
        ]);
        assert_eq!(task.state, TaskState::Abandoned);
        assert_eq!(task.retries, 1);
    }

    #[test]
    fn stale_running_read_before_the_sweep_does_not_undo_it() {
        let (task, _) = run(&[
            obs(TaskEvent::Running, 1, Some(0)),
            obs(TaskEvent::Abandoned, 100, Some(0)),
            obs(TaskEvent::Running, 99, Some(0)),
        ]);
        assert_eq!(task.state, TaskState::Abandoned);
    }

    #[test]
    fn abandon_only_applies_to_a_running_task() {
        let (task, _) = run(&[
            obs(TaskEvent::Running, 1, Some(0)),
            obs(TaskEvent::Succeeded, 2, None),
            obs(TaskEvent::Abandoned, 100, Some(0)),
        ]);
        assert_eq!(task.state, TaskState::Success);
    }

    #[test]
    fn queued_with_eta_keeps_eta_and_clears_it_when_requeued_without() {
        let mut delayed = obs(TaskEvent::Queued, 0, Some(0));
        delayed.fields = TaskFields {
            eta: Some(t(60)),
            ..TaskFields::default()
        };
        let (task, _) = run(&[delayed]);
        assert_eq!(task.eta, Some(t(60)));
        assert_eq!(task.state, TaskState::Queued);
    }

    fn worker(id: &str, last_seen: i64, online_since: i64, alive: bool) -> Worker {
        Worker {
            broker: Broker::Celery,
            id: id.into(),
            hostname: None,
            alive,
            last_seen: t(last_seen),
            running: 0,
            pid: Some(1),
            online_since: t(online_since),
        }
    }

    fn running_task(worker: Option<&str>, started: i64) -> Task {
        let mut task = Task::new(Broker::Celery, "t1", t(started));
        task.state = TaskState::Running;
        task.started_at = Some(t(started));
        task.worker = worker.map(str::to_string);
        task
    }

    #[test]
    fn sweep_abandons_tasks_of_silent_worker_only() {
        let after = Duration::seconds(60);
        let tasks = [running_task(Some("w1"), 10)];
        assert!(find_abandoned(&tasks, &[worker("w1", 50, 0, true)], t(100), after).is_empty());
        let found = find_abandoned(&tasks, &[worker("w1", 30, 0, true)], t(100), after);
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.as_deref().unwrap().contains("silent"));
        let restarted = find_abandoned(&tasks, &[worker("w1", 99, 50, true)], t(100), after);
        assert_eq!(restarted.len(), 1, "a new process under the same name");
        let offline = find_abandoned(&tasks, &[worker("w1", 99, 0, false)], t(100), after);
        assert_eq!(offline.len(), 1);
    }

    #[test]
    fn sweep_of_task_with_unknown_worker_waits_for_every_candidate() {
        let after = Duration::seconds(60);
        let tasks = [running_task(None, 10)];
        let one_alive = [worker("w1", 30, 0, true), worker("w2", 99, 0, true)];
        assert!(find_abandoned(&tasks, &one_alive, t(100), after).is_empty());
        let both_gone = [worker("w1", 30, 0, true), worker("w2", 99, 0, false)];
        assert_eq!(find_abandoned(&tasks, &both_gone, t(100), after).len(), 1);
        let late_joiner_only = [worker("w1", 30, 0, true), worker("w3", 99, 50, true)];
        assert_eq!(
            find_abandoned(&tasks, &late_joiner_only, t(100), after).len(),
            1,
            "a worker that came up after the task started cannot be running it"
        );
        assert!(find_abandoned(&tasks, &[], t(100), after).is_empty());
    }

    #[test]
    fn sweep_never_abandons_a_taskiq_task_nobody_is_named_for() {
        // A list task (popped: no worker name) next to the stream consumers of the same
        // broker, all of them silent or gone: none of them could have taken it.
        let after = Duration::seconds(6);
        let mut task = running_task(None, 10);
        task.broker = Broker::Taskiq;
        let consumers = [
            Worker {
                broker: Broker::Taskiq,
                ..worker("consumer-1", 11, 0, true)
            },
            Worker {
                broker: Broker::Taskiq,
                ..worker("consumer-2", 30, 0, false)
            },
        ];
        assert!(find_abandoned(&[task.clone()], &consumers, t(100), after).is_empty());
        // A stream task held by a consumer that fell silent still is.
        task.worker = Some("consumer-1".into());
        assert_eq!(find_abandoned(&[task], &consumers, t(100), after).len(), 1);
    }
}
