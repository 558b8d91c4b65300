//! Following a `ListQueueBroker` list: items waiting are `queued`; an item gone between two
//! reads was popped by a worker (`running`, worker unknown) and its result is read.

use super::{message, TaskiqAdapter};
use crate::adapter::{Output, Reply};
use crate::model::{Broker, Observation, TaskEvent, TaskObservation};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

impl TaskiqAdapter {
    /// The items of list `key`: new ones `queued`, vanished ones `running` (popped) with their
    /// result read.
    pub(super) fn on_list(
        &mut self,
        key: &str,
        reply: Reply,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let mut present = HashSet::new();
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        for item in reply.into_items() {
            let Some(bytes) = item.as_bytes() else {
                continue;
            };
            match message::decode(bytes) {
                Ok(msg) => {
                    present.insert((msg.task_id.clone(), msg.retries));
                    fresh.push(msg);
                }
                Err(e) => errors.push(Self::message_error(
                    key,
                    e.kind(),
                    format!("list item: {e}"),
                )),
            }
        }
        if self.probation.contains(key) {
            if !fresh.is_empty() {
                self.probation.remove(key);
            } else if !errors.is_empty() {
                // Found by timing alone, and what it holds is not taskiq's: not a taskiq queue.
                tracing::info!(list = %key, "A list taken for a taskiq queue holds no taskiq message; no longer following it.");
                self.unfollow(key);
                return;
            }
        }
        out.decode_errors.extend(errors);
        let previous = self.lists.get(key).cloned().flatten();
        for msg in fresh {
            let seen = previous
                .as_ref()
                .is_some_and(|p| p.contains(&(msg.task_id.clone(), msg.retries)));
            if !seen {
                let obs = self.queued_observation(&msg, key, now, "list");
                out.observations.push(obs);
            }
        }
        let mut taken = Vec::new();
        if let Some(previous) = previous {
            for (task_id, attempt) in previous.difference(&present) {
                let mut obs = TaskObservation::new(
                    Broker::Taskiq,
                    task_id.clone(),
                    now,
                    TaskEvent::Running,
                    "list",
                );
                obs.attempt = Some(*attempt);
                obs.fields.queue = Some(key.to_string());
                obs.detail = Some(format!("taken from list {key} by a worker"));
                out.observations.push(Observation::Task(obs));
                self.track(task_id, *attempt, key).awaiting.get_or_insert(0);
                taken.push(task_id.clone());
            }
        }
        out.follow_up
            .extend(self.result_reads(taken.iter().map(String::as_str)));
        self.lists.insert(key.to_string(), Some(present));
    }

    /// Stops following list `key` (a detected list that turned out not to be taskiq's).
    fn unfollow(&mut self, key: &str) {
        self.probation.remove(key);
        self.queues.retain(|q| q != key);
        self.kinds.remove(key);
        self.lists.remove(key);
    }
}
