//! Following short queues with the prefetcher: the coalesced rule per queue (its ack sets and
//! `FollowHash` snapshots of `.msgs` and `.DQ.msgs`), and what a snapshot tells (ids gone since
//! the previous one departed; ids that left an ack set and are still there were requeued). A
//! queue is followed while short, unfollowed once a sample finds it long.

use super::*;

impl DramatiqAdapter {
    /// Whether the prefetcher follows `queue` (a base queue name).
    pub(super) fn followed(&self, queue: &str) -> bool {
        !self.unfollowed.contains(queue)
    }

    /// The prefetcher's `HKEYS` of a followed `<q>.msgs` (after the `HMGET`s of its new fields
    /// and of the departed ones in `.XQ.msgs`): ids gone since the previous snapshot were
    /// acknowledged (success, or a retry whose copy is already known), or dead-lettered
    /// (reported from `.XQ.msgs`); ids that left an ack set and are still here were requeued.
    /// A snapshot of `.DQ.msgs` (its new messages came in the `HMGET` before) tells which
    /// delayed copies were moved back (`requeue.rs`).
    pub(super) fn on_snapshot(&mut self, key: &str, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let (queue, part) = match self.layout.classify(key) {
            Some(KeyKind::Messages { queue, part }) if part != Part::Dead => {
                (queue.to_string(), part)
            }
            _ => return out,
        };
        if !self.followed(&queue) {
            return out;
        }
        if part == Part::Delayed {
            return self.on_delayed_snapshot(&queue, reply);
        }
        // Borrowed from the reply: the stored snapshot is updated in place below, so a
        // snapshot costs allocations for the fields that changed only.
        let items = reply.into_items();
        let current: HashSet<std::borrow::Cow<'_, str>> = items
            .iter()
            .filter_map(Reply::as_bytes)
            .map(String::from_utf8_lossy)
            .collect();
        let left: Vec<(String, String)> = self
            .acks_left
            .iter()
            .filter(|(id, _)| self.known.get(*id).is_some_and(|k| k.queue == queue))
            .map(|(id, w)| (id.clone(), w.clone()))
            .collect();
        for (id, worker) in left {
            self.acks_left.remove(&id);
            if current.contains(id.as_str()) {
                if let Some(k) = self.known.get(&id) {
                    let mut obs = self.known_observation(k, TaskEvent::Queued, now, "requeued");
                    obs.fields.worker = Some(worker);
                    out.observations.push(Observation::Task(obs));
                }
                self.running_on.remove(&id);
            }
        }
        let departed: Vec<String> = match self.snapshot.get(&queue) {
            Some(previous) => previous
                .iter()
                .filter(|id| !current.contains(id.as_str()))
                .cloned()
                .collect(),
            // The first snapshot since the queue is followed (or since a gap): what was read
            // before and is gone now left meanwhile.
            None => self
                .in_flight
                .get(&queue)
                .map(|ids| {
                    ids.iter()
                        .filter(|id| {
                            !current.contains(id.as_str()) && !self.leaving.contains_key(*id)
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        };
        match self.snapshot.get_mut(&queue) {
            Some(previous) => {
                for id in &departed {
                    previous.remove(id);
                }
                for id in &current {
                    if !previous.contains(id.as_ref()) {
                        previous.insert(id.to_string());
                    }
                }
            }
            None => {
                let owned = current.iter().map(|id| id.to_string()).collect();
                self.snapshot.insert(queue.clone(), owned);
            }
        }
        let mut gone = HashSet::new();
        let mut unchecked = Vec::new();
        for id in departed {
            if self.dead_seen.contains(&key128(&id)) {
                // Reported from `.XQ.msgs` already.
                self.known.remove(&id);
                self.running_on.remove(&id);
                self.xq_checked.remove(&id);
                gone.insert(id);
                continue;
            }
            let Some(k) = self.known.get(&id).cloned() else {
                continue; // never read (gone before its HMGET)
            };
            if !self.xq_checked.remove(&id) {
                unchecked.push((id, k));
                continue;
            }
            // Looked up in `.XQ.msgs` already, not there: acknowledged, or retried when a copy
            // (read already) outranks it.
            let worker = self.running_on.remove(&id);
            gone.insert(id.clone());
            let leaving = Leaving {
                known: k,
                worker,
                still_queued: Some(false),
            };
            self.depart(&id, leaving, now, &mut out);
        }
        if !gone.is_empty() {
            if let Some(ids) = self.in_flight.get_mut(&queue) {
                ids.retain(|id| !gone.contains(id));
            }
        }
        if !unchecked.is_empty() {
            // Not looked up by the prefetcher (its snapshots and ours differ after a gap):
            // the loop reads `.XQ.msgs`, then `settle` decides.
            let mut fields = Vec::with_capacity(unchecked.len());
            for (id, k) in unchecked {
                let worker = self.running_on.get(&id).cloned();
                self.leaving.insert(
                    id.clone(),
                    Leaving {
                        known: k,
                        worker,
                        still_queued: Some(false),
                    },
                );
                fields.push(id);
            }
            out.follow_up.push(Why::CheckDead.read(ReadRequest::HMGet {
                key: self.layout.messages(&queue, Part::Dead),
                fields,
            }));
        }
        out
    }

    /// The prefetch rule that follows `queue`: any of its writes (an enqueue, a fetch, an ack or
    /// a nack, a retry copy) runs one pipeline of its ack sets' `SMEMBERS` and the `HKEYS` of
    /// `<q>.msgs` and `<q>.DQ.msgs`, then `HMGET`s of the new messages only and of the departed
    /// ids in `.XQ.msgs`. Coalesced: reads follow round trips, not messages.
    pub(super) fn follow_rules(&self, queue: &str) -> Vec<Prefetch> {
        let msgs = self.layout.messages(queue, Part::Main);
        let delayed = self.layout.messages(queue, Part::Delayed);
        let mut ack_keys: Vec<(&String, bool)> = self
            .acks
            .keys()
            .filter_map(|k| {
                let (_, q, delayed) = self.ack_set(k)?;
                (q == queue).then_some((k, delayed))
            })
            .collect();
        ack_keys.sort();
        let mut reads: Vec<PrefetchRead> = ack_keys
            .iter()
            .map(|(k, _)| PrefetchRead::Read(Why::Acks.read(ReadRequest::SMembers((*k).clone()))))
            .collect();
        let tags = FollowTags {
            snapshot: Why::Snapshot.into(),
            new: Why::Followed.into(),
            departed: Why::DepartedDead.into(),
        };
        reads.push(PrefetchRead::FollowHash {
            key: msgs.clone(),
            departed_to: Some(self.layout.messages(queue, Part::Dead)),
            tags,
        });
        reads.push(PrefetchRead::FollowHash {
            key: delayed.clone(),
            departed_to: None,
            tags,
        });
        let rule = |key: String, ops: &[&str]| Prefetch {
            key,
            ops: ops.iter().map(|o| o.to_string()).collect(),
            reads: reads.clone(),
            coalesce: true,
        };
        let mut rules = vec![rule(msgs, &["hset", "hdel"]), rule(delayed, &["hset"])];
        rules.extend(
            ack_keys
                .iter()
                .filter(|(_, delayed)| !delayed)
                .map(|(k, _)| rule((*k).clone(), &["sadd"])),
        );
        rules
    }
}
