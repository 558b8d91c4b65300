//! Ack sets (`<ns>:__acks__.<worker>.<q>`): ids a worker fetched are `running` on it; ids that
//! left are departures, settled by [`super::settle`] (unfollowed queue) or by the next snapshot
//! of the followed queue.

use super::*;

impl DramatiqAdapter {
    /// `<ns>:__acks__.<worker>.<queue>` -> (worker, queue as named, e.g. `default.DQ`).
    pub(super) fn parse_acks_key<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        self.layout.parse_acks(key)
    }

    /// SMEMBERS of an ack set: new members are taken, departed ones are settled by reads.
    pub(super) fn on_acks(&mut self, key: &str, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let Some((worker, queue_name)) = self.parse_acks_key(key) else {
            return out;
        };
        let (worker, queue_name) = (worker.to_string(), queue_name.to_string());
        self.consumers.insert(worker.clone());
        let delayed = queue_name.ends_with(".DQ");
        let base = message::base_queue(&queue_name).to_string();
        self.queues.insert(base.clone());
        let members: BTreeSet<String> = reply.into_strings();
        let before = self
            .acks
            .insert(key.to_string(), members.clone())
            .unwrap_or_default();
        let mut to_read = Vec::new();
        for id in members.difference(&before) {
            if !delayed {
                self.running_on.insert(id.clone(), worker.clone());
            }
            match self.known.get(id) {
                Some(k) if !delayed => {
                    let mut obs = self.known_observation(k, TaskEvent::Running, now, "ack set");
                    obs.fields.worker = Some(worker.clone());
                    out.observations.push(Observation::Task(obs));
                }
                Some(_) => {}
                None => {
                    if !delayed {
                        self.pending_running.insert(id.clone(), worker.clone());
                    }
                    to_read.push(id.clone());
                }
            }
        }
        if !to_read.is_empty() {
            let (queue, part) = layout::split_queue(&queue_name);
            out.follow_up.push(Why::Messages.read(ReadRequest::HMGet {
                key: self.layout.messages(queue, part),
                fields: to_read,
            }));
        }
        if !delayed && self.followed(&base) {
            // Acknowledged, dead-lettered and retried ids leave `.msgs` too, where the
            // prefetcher's snapshots see them go; one still there at the next snapshot was
            // requeued.
            for id in before.difference(&members) {
                if self.known.contains_key(id) {
                    self.acks_left.insert(id.clone(), worker.clone());
                }
            }
        } else if !delayed {
            let departed: Vec<String> = before
                .difference(&members)
                .filter(|id| self.known.contains_key(*id))
                .cloned()
                .collect();
            if !departed.is_empty() {
                for id in &departed {
                    if let Some(k) = self.known.get(id).cloned() {
                        self.leaving.insert(
                            id.clone(),
                            Leaving {
                                known: k,
                                worker: Some(worker.clone()),
                                still_queued: None,
                            },
                        );
                    }
                }
                out.follow_up.extend(self.settlement_reads(&base, departed));
            }
        }
        out
    }
}
