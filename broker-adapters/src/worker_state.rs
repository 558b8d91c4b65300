//! The worker state machine: folds [`WorkerObservation`]s into [`Worker`]s. What it keeps
//! (alive, last heard from, the process and since when it is up) is what
//! [`crate::state::find_abandoned`] judges running tasks by, so its rules are the ones that
//! decide "worker restarted":
//!
//! * A worker first heard of by its `Online` event is up since that event. A worker first heard
//!   of by anything else (a heartbeat read after taskscope started, a consumer or an ack set
//!   found by a read) has been up since before taskscope looked: since the epoch, never "after
//!   the task it already runs started", which would read as a restart.
//! * A new process under the same name (another pid), or an `Online` after `Offline`, is a
//!   restart: up since that observation.
//! * Observations arrive out of order: an older one than the last heard only fills what is not
//!   known yet (pid, hostname).

use crate::model::{Worker, WorkerEvent, WorkerObservation};
use chrono::{DateTime, Utc};

/// The worker after `obs` (`current` is what was known, `None` for a worker never seen).
pub fn fold(current: Option<&Worker>, obs: &WorkerObservation) -> Worker {
    let Some(current) = current else {
        let online_since = if obs.event == WorkerEvent::Online {
            obs.at
        } else {
            DateTime::<Utc>::UNIX_EPOCH
        };
        return Worker {
            broker: obs.broker,
            id: obs.id.clone(),
            hostname: obs.hostname.clone(),
            alive: obs.event != WorkerEvent::Offline,
            last_seen: obs.at,
            running: 0,
            pid: obs.pid,
            online_since,
        };
    };
    let mut w = current.clone();
    if obs.at >= w.last_seen {
        let new_process = matches!((obs.pid, w.pid), (Some(new), Some(old)) if new != old);
        let back_online = obs.event == WorkerEvent::Online && !w.alive;
        if obs.event != WorkerEvent::Offline && (new_process || back_online) {
            w.online_since = obs.at;
        }
        w.alive = obs.event != WorkerEvent::Offline;
        w.last_seen = obs.at;
        if obs.pid.is_some() {
            w.pid = obs.pid;
        }
        if obs.hostname.is_some() {
            w.hostname = obs.hostname.clone();
        }
    } else {
        if w.pid.is_none() {
            w.pid = obs.pid;
        }
        if w.hostname.is_none() {
            w.hostname = obs.hostname.clone();
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Broker, Task, TaskState};
    use crate::state::find_abandoned;
    use chrono::{Duration, TimeZone};

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms)
            .single()
            .expect("valid time")
    }

    fn obs(event: WorkerEvent, pid: Option<u32>, at_ms: i64) -> WorkerObservation {
        WorkerObservation {
            broker: Broker::Taskiq,
            id: "f4dce95e".into(),
            hostname: None,
            pid,
            at: t(at_ms),
            event,
            active: None,
            heartbeat_every_s: None,
        }
    }

    fn fold_all(observations: &[WorkerObservation]) -> Worker {
        let mut worker: Option<Worker> = None;
        for o in observations {
            worker = Some(fold(worker.as_ref(), o));
        }
        worker.expect("at least one observation")
    }

    fn running_on(worker: &str, started_ms: i64) -> Task {
        let mut task = Task::new(Broker::Taskiq, "task-1", t(started_ms));
        task.state = TaskState::Running;
        task.started_at = Some(t(started_ms));
        task.worker = Some(worker.into());
        task
    }

    fn abandoned(worker: &Worker, task: &Task, now_ms: i64) -> Vec<String> {
        find_abandoned(
            std::slice::from_ref(task),
            std::slice::from_ref(worker),
            t(now_ms),
            Duration::seconds(30),
        )
        .into_iter()
        .filter_map(|o| o.detail)
        .collect()
    }

    /// Seen in a fresh-clone test run (#15): a consumer that had just claimed a task (delivery
    /// 2) was declared restarted 110 ms later, because the first thing heard of it (its
    /// consumer entry, read after the claim) was taken as the start of its process.
    #[test]
    fn a_worker_first_heard_after_it_claimed_a_task_has_not_restarted() {
        let task = running_on("f4dce95e", 0);
        let worker = fold_all(&[
            obs(WorkerEvent::Heartbeat, None, 110),
            obs(WorkerEvent::Heartbeat, None, 1_110),
        ]);
        assert_eq!(worker.online_since, DateTime::<Utc>::UNIX_EPOCH);
        assert!(abandoned(&worker, &task, 2_000).is_empty());
    }

    #[test]
    fn a_new_process_under_the_same_name_is_a_restart() {
        let worker = fold_all(&[
            obs(WorkerEvent::Online, Some(10), 0),
            obs(WorkerEvent::Heartbeat, Some(10), 1_000),
            obs(WorkerEvent::Heartbeat, Some(11), 5_000),
        ]);
        assert_eq!(worker.online_since, t(5_000));
        let task = running_on("f4dce95e", 2_000);
        assert_eq!(
            abandoned(&worker, &task, 6_000),
            vec!["abandoned: worker f4dce95e restarted".to_string()]
        );
        // A task it started after coming back is its own.
        assert!(abandoned(&worker, &running_on("f4dce95e", 5_500), 6_000).is_empty());
    }

    #[test]
    fn online_is_the_start_and_online_after_offline_a_restart() {
        let first = fold_all(&[obs(WorkerEvent::Online, None, 100)]);
        assert_eq!(first.online_since, t(100));
        let back = fold_all(&[
            obs(WorkerEvent::Online, None, 100),
            obs(WorkerEvent::Offline, None, 200),
            obs(WorkerEvent::Online, None, 300),
        ]);
        assert!(back.alive);
        assert_eq!(back.online_since, t(300));
        let gone = fold_all(&[
            obs(WorkerEvent::Online, None, 100),
            obs(WorkerEvent::Offline, None, 200),
        ]);
        assert!(!gone.alive);
        assert_eq!(
            abandoned(&gone, &running_on("f4dce95e", 150), 250),
            vec!["abandoned: worker f4dce95e went offline".to_string()]
        );
    }

    #[test]
    fn an_older_observation_only_fills_what_is_unknown() {
        let mut late = obs(WorkerEvent::Offline, Some(7), 50);
        late.hostname = Some("box".into());
        let worker = fold_all(&[obs(WorkerEvent::Heartbeat, None, 1_000), late]);
        assert!(
            worker.alive,
            "an old goodbye does not kill a worker heard since"
        );
        assert_eq!(worker.last_seen, t(1_000));
        assert_eq!(worker.pid, Some(7));
        assert_eq!(worker.hostname.as_deref(), Some("box"));
    }
}
