//! Outcomes from the result backend's records, and what a missing record means (see the
//! module documentation of [`super`]).
//!
//! A record can be read before the stream entries written before it: the stream's read and the
//! record's ran in one pipeline while a worker wrote between them, or a loop that waited for
//! more notifications read a newer record than the one notified. taskiq writes a retry's copy
//! (`XADD`, `_retries` + 1) before the failed attempt's record, and an attempt's message before
//! its record, so a record that may have such entries unread (a failure, or an attempt later
//! than any message read) of a stream task is held: it goes out after the next read of the
//! stream's new entries, behind the re-sends that read finds (each one `retried`), never before
//! them. Correctness then never depends on which batch a write was read in.

use super::{result, QueueKind, TaskiqAdapter, RESULT_TRIES};
use crate::adapter::{Output, Reply};
use crate::model::{Broker, Observation, TaskEvent, TaskObservation};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// Outcomes held per stream before they go out unheld (a budget against a stream whose reads
/// never come back).
const HELD_CAPACITY: usize = 10_000;

impl TaskiqAdapter {
    /// The values of result keys (one `GET`, or an `MGET` of several tasks' keys under every
    /// known prefix): each record found is an outcome; a task none of whose keys holds one
    /// counts one miss ([`Self::result_missing`]), however many prefixes were tried.
    pub(super) fn on_results(
        &mut self,
        keys: &[String],
        values: Vec<Reply>,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let mut missing: Vec<String> = Vec::new();
        let mut found: HashSet<String> = HashSet::new();
        for (key, value) in keys.iter().zip(values) {
            let Some(task_id) = self.task_of_result_key(key).map(str::to_string) else {
                continue;
            };
            match value {
                Reply::Nil if !missing.contains(&task_id) => missing.push(task_id),
                Reply::Bytes(bytes) if self.on_result(key, &task_id, &bytes, now, out) => {
                    found.insert(task_id);
                }
                // A record that is not taskiq's, WRONGTYPE and friends: not a result.
                _ => {}
            }
        }
        for task_id in missing.iter().filter(|id| !found.contains(*id)) {
            self.result_missing(task_id, now, out);
        }
    }

    /// A result key's value: the outcome of the attempt its labels name (`_retries`). Whether
    /// it was a taskiq result record.
    fn on_result(
        &mut self,
        key: &str,
        task_id: &str,
        bytes: &[u8],
        now: DateTime<Utc>,
        out: &mut Output,
    ) -> bool {
        let record = match result::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                // Other 32-hex keys (Dramatiq's result keys, say) are not taskiq's: only a key
                // of a task taskscope knows is a decode error.
                if self.tasks.contains_key(task_id) {
                    out.decode_errors
                        .push(Self::message_error(key, e.kind(), e.to_string()));
                }
                return false;
            }
        };
        let attempt = record.retries.unwrap_or(0);
        // The stream to read before this outcome goes out (see the module documentation).
        let hold_for = self.tasks.get(task_id).and_then(|track| {
            let unread = attempt > track.attempt || (record.is_err && attempt >= track.attempt);
            let stream = self.kinds.get(&track.queue) == Some(&QueueKind::Stream);
            (unread && stream).then(|| track.queue.clone())
        });
        if let Some(track) = self.tasks.get_mut(task_id) {
            if attempt >= track.attempt {
                track.awaiting = None;
            }
            track.result_read = Some(track.result_read.map_or(attempt, |r| r.max(attempt)));
            if !self.results_seen.contains(&track.queue) {
                self.results_seen.insert(track.queue.clone());
            }
        }
        let event = if record.is_err {
            TaskEvent::Failed
        } else {
            TaskEvent::Succeeded
        };
        let mut obs = TaskObservation::new(Broker::Taskiq, task_id, now, event, "result");
        obs.attempt = Some(attempt);
        obs.fields.runtime_ms = record.runtime_ms;
        obs.fields.queue = record.queue_label;
        if record.is_err {
            obs.fields.error = record.error;
            obs.fields.traceback = record.traceback;
        } else {
            obs.fields.result = Some(record.return_value);
        }
        let obs = Observation::Task(obs);
        match hold_for {
            Some(stream) => self.hold(stream, obs, out),
            None => out.observations.push(obs),
        }
        true
    }

    /// Holds `obs` until stream `stream`'s new entries are read (the read is asked for here).
    fn hold(&mut self, stream: String, obs: Observation, out: &mut Output) {
        let read = self.entries_read(&stream);
        let held = self.held.entry(stream).or_default();
        if held.len() >= HELD_CAPACITY {
            out.observations.push(obs);
            return;
        }
        held.push(obs);
        out.follow_up.push(read);
    }

    /// Hands out the outcomes held for `stream`, after what its read just found.
    pub(super) fn release_held(&mut self, stream: &str, out: &mut Output) {
        if let Some(held) = self.held.remove(stream) {
            out.observations.extend(held);
        }
    }

    /// An awaited result key read empty: on the first miss the task is `running` (taken, no
    /// outcome yet); after a few, a stream task of a queue that never had results is settled as
    /// an assumed success.
    pub(super) fn result_missing(&mut self, task_id: &str, now: DateTime<Utc>, out: &mut Output) {
        let Some(track) = self.tasks.get_mut(task_id) else {
            return;
        };
        let results_seen = self.results_seen.contains(&track.queue);
        let Some(misses) = track.awaiting.as_mut() else {
            return;
        };
        *misses += 1;
        if *misses == 1 {
            // Taken and acknowledged, no outcome yet: it runs (ack_type `when_received`
            // acknowledges before the task starts; a PEL read may never have caught it).
            let mut obs = TaskObservation::new(
                Broker::Taskiq,
                task_id,
                now,
                TaskEvent::Running,
                "acknowledgement",
            );
            obs.attempt = Some(track.attempt);
            obs.detail = Some("taken by a worker; no result yet".to_string());
            out.observations.push(Observation::Task(obs));
        }
        // A list item's disappearance says it was taken, not that it finished: only a stream's
        // acknowledgement (after the task, by default) may stand for an unstored outcome.
        let acknowledged = self.kinds.get(&track.queue) == Some(&QueueKind::Stream);
        if *misses < RESULT_TRIES || results_seen || !acknowledged {
            return;
        }
        track.awaiting = None;
        let mut obs = TaskObservation::new(
            Broker::Taskiq,
            task_id,
            now,
            TaskEvent::Succeeded,
            "acknowledgement",
        );
        obs.attempt = Some(track.attempt);
        obs.detail = Some(
            "acknowledged; no result stored (no result backend?): success assumed".to_string(),
        );
        out.observations.push(Observation::Task(obs));
    }
}
