//! Following a taskiq stream beside its consumer groups: new entries (`queued`), pending entry
//! lists (`running`, and acknowledgements that send the task to its result), consumers' idle
//! times (worker heartbeats) and groups (queue samples). Never joins a group, never acks.

use super::{
    group_reads, message, stream, ConsumerSeen, EntryInfo, TaskiqAdapter, Why, ENTRY_CAPACITY,
};
use crate::adapter::{Output, ReadRequest, Reply};
use crate::model::{
    Broker, Observation, QueueSample, TaskEvent, TaskObservation, WorkerEvent, WorkerObservation,
};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use stream::{Entry, StreamId};

impl TaskiqAdapter {
    /// New entries of stream `key`: each one `queued` (a retry copy `retried`), remembered until
    /// it is settled.
    pub(super) fn on_entries(
        &mut self,
        key: &str,
        entries: Vec<Entry>,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        for entry in entries {
            // Already read and not settled yet: nothing new to say.
            if self
                .streams
                .get(key)
                .is_some_and(|s| s.entries.contains_key(&entry.id))
            {
                continue;
            }
            if self
                .streams
                .get(key)
                .is_some_and(|s| s.undecodable.contains(&entry.id))
            {
                continue;
            }
            let Some(data) = entry.field(message::STREAM_DATA_FIELD) else {
                self.mark_undecodable(key, entry.id);
                if entry
                    .too_large
                    .iter()
                    .any(|f| f == message::STREAM_DATA_FIELD)
                {
                    continue; // counted by the ingest layer, which did not read it
                }
                out.decode_errors.push(Self::message_error(
                    key,
                    "stream-entry-shape",
                    format!("entry {} has no data field", entry.id),
                ));
                continue;
            };
            let msg = match message::decode(data) {
                Ok(m) => m,
                Err(e) => {
                    self.mark_undecodable(key, entry.id);
                    out.decode_errors.push(Self::message_error(
                        key,
                        e.kind(),
                        format!("entry {}: {e}", entry.id),
                    ));
                    continue;
                }
            };
            let at = entry.id.time().unwrap_or(now);
            let obs = self.queued_observation(&msg, key, at, "stream");
            out.observations.push(obs);
            let state = self.streams.entry(key.to_string()).or_default();
            if state.entries.len() >= ENTRY_CAPACITY {
                state.entries.pop_first();
            }
            state.entries.insert(
                entry.id,
                EntryInfo {
                    task_id: msg.task_id,
                    attempt: msg.retries,
                    consumer: None,
                },
            );
        }
    }

    /// Remembers an entry that did not decode, so that it is counted once.
    pub(super) fn mark_undecodable(&mut self, key: &str, id: StreamId) {
        let state = self.streams.entry(key.to_string()).or_default();
        state.undecodable.insert(id);
    }

    /// Entries acknowledged: their results are read to learn the outcome, unless the record
    /// of that attempt was read already (taskiq saves the result before it acknowledges, so
    /// the `set` notification's read usually comes first).
    pub(super) fn settle(&mut self, settled: Vec<EntryInfo>, out: &mut Output) {
        let mut ids = Vec::new();
        for e in settled {
            let Some(track) = self.tasks.get_mut(&e.task_id) else {
                continue;
            };
            // A later attempt exists: this acknowledgement ended a retried attempt.
            if e.attempt < track.attempt {
                continue;
            }
            if track.result_read.is_some_and(|r| r >= e.attempt) {
                continue;
            }
            track.awaiting.get_or_insert(0);
            ids.push(e.task_id.clone());
        }
        out.follow_up
            .extend(self.result_reads(ids.iter().map(String::as_str)));
    }

    /// One group's pending entries: entries held by a consumer are `running` on it; delivered
    /// entries no group holds any more were acknowledged and are settled.
    pub(super) fn on_pending(
        &mut self,
        key: &str,
        group: &str,
        count: u64,
        reply: Reply,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let listed = stream::pending(reply);
        let complete = (listed.len() as u64) < count;
        let max_listed = listed.last().map(|p| p.id);
        let pel: HashMap<StreamId, &stream::Pending> = listed.iter().map(|p| (p.id, p)).collect();
        let Some(state) = self.streams.get_mut(key) else {
            return;
        };
        let last_delivered = state.groups.get(group).and_then(|g| g.last_delivered);
        state
            .pels
            .insert(group.to_string(), listed.iter().map(|p| p.id).collect());
        state.pels.retain(|g, _| state.groups.contains_key(g));
        // Held or not yet delivered by another group: not done there.
        let elsewhere = |id: &StreamId| {
            state.groups.iter().any(|(name, g)| {
                name != group
                    && (g.last_delivered.is_none_or(|d| *id > d)
                        || state.pels.get(name).is_some_and(|p| p.contains(id)))
            })
        };
        let mut settled = Vec::new();
        let mut running = Vec::new();
        // Entries after the group's last-delivered-id wait undelivered: neither pending nor
        // acknowledged (a backlog of them is not walked on every read).
        let ids: Vec<StreamId> = match last_delivered {
            Some(d) => state.entries.range(..=d).map(|(id, _)| *id).collect(),
            None => Vec::new(),
        };
        for id in ids {
            if let Some(p) = pel.get(&id) {
                let Some(entry) = state.entries.get_mut(&id) else {
                    continue;
                };
                if entry.consumer.as_deref() != Some(p.consumer.as_str()) {
                    entry.consumer = Some(p.consumer.clone());
                    running.push((entry.clone(), p.consumer.clone(), p.deliveries));
                }
            } else if last_delivered.is_some_and(|d| id <= d)
                && (complete || max_listed.is_some_and(|m| id < m))
                && !elsewhere(&id)
            {
                if let Some(entry) = state.entries.remove(&id) {
                    settled.push(entry);
                }
            }
        }
        // Pending entries taskscope never read (older than its window, or read meanwhile).
        let unknown: Vec<StreamId> = listed
            .iter()
            .map(|p| p.id)
            .filter(|id| {
                !state.entries.contains_key(id)
                    && !state.undecodable.contains(id)
                    && state.last_id.is_some_and(|l| *id <= l)
            })
            .take(64)
            .collect();
        for id in unknown {
            out.follow_up
                .push(Why::PendingEntry.read(ReadRequest::XRange {
                    key: key.to_string(),
                    start: id.to_string(),
                    end: id.to_string(),
                    count: 1,
                }));
        }
        for (entry, consumer, deliveries) in running {
            let mut obs = TaskObservation::new(
                Broker::Taskiq,
                entry.task_id.clone(),
                now,
                TaskEvent::Running,
                "stream PEL",
            );
            obs.attempt = Some(entry.attempt);
            obs.fields.worker = Some(consumer.clone());
            obs.fields.queue = Some(key.to_string());
            obs.detail = Some(if deliveries > 1 {
                format!("claimed by consumer {consumer} (delivery {deliveries})")
            } else {
                format!("delivered to consumer {consumer} of group {group}")
            });
            out.observations.push(Observation::Task(obs));
        }
        self.settle(settled, out);
    }

    /// A group's consumers: heartbeats dated by their idle time (or now, when they acknowledged
    /// something since the last read).
    pub(super) fn on_consumers(&mut self, reply: Reply, now: DateTime<Utc>, out: &mut Output) {
        for c in stream::consumers(reply) {
            let idle = i64::try_from(c.idle_ms)
                .ok()
                .and_then(Duration::try_milliseconds)
                .unwrap_or(Duration::MAX);
            // An absurd idle time (or clock) dates the consumer at the epoch, never panics.
            let mut alive = now
                .checked_sub_signed(idle)
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
            let previous = self.consumers.get(&c.name).cloned();
            if let Some(prev) = &previous {
                // It acknowledged something since the last read: alive now, even when it
                // has not read the stream for a while (all its slots busy).
                if c.pending < prev.pending {
                    alive = now;
                }
                alive = alive.max(prev.last_alive);
            }
            let report = previous
                .as_ref()
                .is_none_or(|p| alive - p.last_alive >= Duration::milliseconds(500));
            self.consumers.insert(
                c.name.clone(),
                ConsumerSeen {
                    pending: c.pending,
                    last_alive: alive,
                },
            );
            if report {
                out.observations
                    .push(Observation::Worker(WorkerObservation {
                        broker: Broker::Taskiq,
                        id: c.name,
                        hostname: None,
                        pid: None,
                        at: alive,
                        event: WorkerEvent::Heartbeat,
                        active: Some(u32::try_from(c.pending).unwrap_or(u32::MAX)),
                        heartbeat_every_s: None,
                    }));
            }
        }
    }

    /// The stream's consumer groups: new ones get their reads; a sampling round makes the queue
    /// sample (undelivered entries, pending entries).
    pub(super) fn on_groups(
        &mut self,
        key: &str,
        reply: Reply,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let groups = stream::groups(reply);
        let state = self.streams.entry(key.to_string()).or_default();
        for g in &groups {
            if !state.groups.contains_key(&g.name) {
                out.follow_up.extend(group_reads(key, &g.name));
            }
        }
        state.groups = groups.into_iter().map(|g| (g.name.clone(), g)).collect();
        if self.sampling.remove(key) {
            let running = state.groups.values().map(|g| g.pending).sum();
            let length = if state.groups.is_empty() {
                state.xlen.unwrap_or(0)
            } else {
                state
                    .groups
                    .values()
                    .map(|g| match (g.lag, g.last_delivered) {
                        (Some(lag), _) => lag,
                        (None, d) => state
                            .entries
                            .keys()
                            .filter(|id| d.is_none_or(|d| **id > d))
                            .count() as u64,
                    })
                    .min()
                    .unwrap_or(0)
            };
            let sample = QueueSample {
                broker: Broker::Taskiq,
                name: key.to_string(),
                length,
                delayed: 0,
                dead: 0,
                running,
                sampled_at: now,
                oldest_enqueued_at: None,
            };
            if length == 0 {
                out.queue_samples.push(sample);
                return;
            }
            // The oldest waiting entry is the first after the last id delivered (to the group
            // furthest on, as `length` counts), or the stream's first without a group.
            let delivered = state.groups.values().filter_map(|g| g.last_delivered).max();
            let probe = ReadRequest::XRange {
                key: key.to_string(),
                start: delivered.map_or_else(|| "-".to_string(), |d| format!("({d}")),
                end: "+".to_string(),
                count: 1,
            };
            // One probe per stream at a time: a reply lost to a gap does not pile up.
            self.oldest_probes.retain(|read, _| read.key() != key);
            self.oldest_probes.insert(probe.clone(), sample);
            out.follow_up.push(Why::OldestProbe.read(probe));
        }
    }
}
