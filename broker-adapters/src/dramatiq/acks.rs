//! Ack sets (`<ns>:__acks__.<worker>.<q>`): ids a worker fetched are `running` on it; ids that
//! left are departures, settled by [`super::settle`] (unfollowed queue) or by the next snapshot
//! of the followed queue.

use super::*;

impl DramatiqAdapter {
    /// An ack set's worker, base queue, and whether it holds delayed messages (`<q>.DQ`).
    pub(super) fn ack_set<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str, bool)> {
        match self.layout.classify(key) {
            Some(KeyKind::Acks {
                worker,
                queue,
                delayed,
            }) => Some((worker, queue, delayed)),
            _ => None,
        }
    }

    /// SMEMBERS of an ack set: new members are taken, departed ones are settled by reads.
    pub(super) fn on_acks(&mut self, key: &str, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let Some((worker, base, delayed)) = self.ack_set(key) else {
            return out;
        };
        let (worker, base) = (worker.to_string(), base.to_string());
        self.consumers.insert(worker.clone());
        self.queues.insert(&base);
        let members: BTreeSet<String> = reply.into_strings();
        // Taken out and put back at the end (no copy of the members per read).
        let before = self.acks.remove(key).unwrap_or_default();
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
            let part = if delayed { Part::Delayed } else { Part::Main };
            out.follow_up.push(Why::Messages.read(ReadRequest::HMGet {
                key: self.layout.messages(&base, part),
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
        self.acks.insert(key.to_string(), members);
        out
    }
}
