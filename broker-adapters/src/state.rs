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
//!   redelivery, a late result) moves it on.
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
    let mut task =
        current.unwrap_or_else(|| Task::new(obs.broker, obs.task_id.clone(), obs.at));
    let before = task.clone();

    match decide(&task, obs, is_new) {
        Decision::Move { state, attempt } => {
            move_to(&mut task, obs, state, attempt);
            let transition = if is_new || before.state != task.state || before.retries != task.retries
            {
                Some(Transition {
                    task_id: task.id.clone(),
                    broker: task.broker,
                    state: task.state,
                    at: obs.at,
                    worker: task.worker.clone(),
                    detail: Some(detail(obs, &task)),
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
            let changed = task != before;
            Applied {
                task,
                transition: None,
                changed,
            }
        }
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
        return Decision::FillOnly;
    }
    let forward = if task.state == TaskState::Abandoned {
        // A redelivery or a late outcome after the worker was given up on.
        target >= pos(current.attempt, RANK_QUEUED) && obs.at >= task.updated_at
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

fn pos(attempt: u32, rank: u8) -> Position {
    Position { attempt, rank }
}

fn move_to(task: &mut Task, obs: &TaskObservation, state: TaskState, attempt: u32) {
    let new_attempt = attempt > task.retries;
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
                Some(s) if !new_attempt && s <= started && task_was_running_this_attempt(task) => {
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
                task.runtime_ms = task.started_at.and_then(|s| {
                    let ms = (obs.at - s).num_microseconds()? as f64 / 1000.0;
                    (ms >= 0.0).then_some(ms)
                });
            }
        }
        TaskState::Abandoned => {}
    }
    if task.enqueued_at.is_none() {
        task.enqueued_at = obs.fields.enqueued_at;
    }
    task.updated_at = task.updated_at.max(obs.at);
}

/// Whether `started_at` already belongs to the current attempt (the task ran or finished in it).
fn task_was_running_this_attempt(task: &Task) -> bool {
    matches!(
        task.state,
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
    }
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
pub fn find_abandoned(
    running: &[Task],
    workers: &[Worker],
    now: DateTime<Utc>,
    abandon_after: Duration,
) -> Vec<TaskObservation> {
    let mut out = Vec::new();
    for task in running.iter().filter(|t| t.state == TaskState::Running) {
        let started = task.started_at.unwrap_or(task.updated_at);
        let reason = match &task.worker {
            Some(name) => workers
                .iter()
                .find(|w| w.broker == task.broker && &w.id == name)
                .and_then(|w| {
                    if !w.alive {
                        Some(format!("abandoned: worker {} went offline", w.id))
                    } else if now - w.last_seen > abandon_after {
                        Some(format!(
                            "abandoned: worker {} silent since {}",
                            w.id,
                            crate::model::rfc3339(&w.last_seen)
                        ))
                    } else if w.online_since > started {
                        Some(format!("abandoned: worker {} restarted", w.id))
                    } else {
                        None
                    }
                }),
            None => {
                let mut same_broker = workers.iter().filter(|w| w.broker == task.broker).peekable();
                if same_broker.peek().is_none() {
                    None
                } else {
                    let survivor = same_broker.any(|w| {
                        w.online_since <= started && worker_alive(w, now, abandon_after)
                    });
                    (!survivor && now - started > abandon_after.min(Duration::seconds(5)))
                        .then(|| "abandoned: every worker up when it started is gone".to_string())
                }
            }
        };
        if let Some(reason) = reason {
            let mut obs = TaskObservation::new(
                task.broker,
                task.id.clone(),
                now,
                TaskEvent::Abandoned,
                "sweep",
            );
            obs.attempt = Some(task.retries);
            obs.detail = Some(reason);
            out.push(obs);
        }
    }
    out
}
