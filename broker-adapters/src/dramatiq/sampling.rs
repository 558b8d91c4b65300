//! Sampling rounds: lengths of a queue's three lists and its head, the heartbeats that close the
//! round (worker observations) and the queue samples; a sample also decides whether a queue is
//! followed.

use super::*;

impl DramatiqAdapter {
    pub(super) fn on_length(&mut self, key: &str, n: u64) {
        let Some(KeyKind::List { queue, part }) = self.layout.classify(key) else {
            return;
        };
        let Some(entry) = self.sampling.as_mut().and_then(|s| s.get_mut(queue)) else {
            return;
        };
        match part {
            Part::Main => entry.0 += n,
            Part::Delayed => entry.1 += n,
            Part::Dead => entry.2 += n,
        }
    }

    /// The heartbeats ZSET closes a sampling round: worker observations and queue samples.
    pub(super) fn on_heartbeats(&mut self, reply: Reply, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        // The whole set (an error reply tells nothing about who is alive).
        let complete = matches!(reply, Reply::Array(_));
        let mut beating: HashSet<String> = HashSet::new();
        for (worker, score) in reply.into_pairs() {
            let Some(worker) = worker
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
            else {
                continue;
            };
            beating.insert(worker.clone());
            if !self.consumers.contains(&worker) {
                continue; // a producer's broker: it dispatches, it does not consume
            }
            let Some(at) = score
                .as_f64()
                .and_then(|ms| crate::codec::unix_seconds(ms / 1000.0))
            else {
                continue;
            };
            out.observations
                .push(Observation::Worker(WorkerObservation {
                    broker: Broker::Dramatiq,
                    id: worker,
                    hostname: None,
                    pid: None,
                    at,
                    event: WorkerEvent::Heartbeat,
                    active: None,
                    heartbeat_every_s: None,
                }));
        }
        if complete {
            self.forget_empty_ack_sets_of_dead_workers(&beating);
        }
        if let Some(sampling) = self.sampling.take() {
            let mut heads = std::mem::take(&mut self.sampled_heads);
            for (queue, (length, delayed, dead)) in sampling {
                let oldest_enqueued_at = heads
                    .remove(&queue)
                    .and_then(|id| self.known.get(&id).and_then(|k| k.waiting_since));
                let fetched: u64 = self
                    .acks
                    .iter()
                    .filter(|(key, _)| {
                        self.ack_set(key)
                            .is_some_and(|(_, q, delayed)| !delayed && q == queue)
                    })
                    .map(|(_, members)| members.len() as u64)
                    .sum();
                let size = length + fetched;
                if size > FOLLOW_MAX {
                    if self.unfollowed.insert(queue.clone()) {
                        self.snapshot.remove(&queue);
                    }
                } else if size <= FOLLOW_MAX / 2 {
                    self.unfollowed.remove(&queue);
                }
                let running: u64 = self
                    .acks
                    .iter()
                    .filter(|(key, _)| {
                        self.ack_set(key)
                            .is_some_and(|(_, q, delayed)| !delayed && q == queue)
                    })
                    .map(|(_, members)| members.len() as u64)
                    .sum();
                let held: u64 = self
                    .acks
                    .iter()
                    .filter(|(key, _)| {
                        self.ack_set(key)
                            .is_some_and(|(_, q, delayed)| delayed && q == queue)
                    })
                    .map(|(_, members)| members.len() as u64)
                    .sum();
                out.queue_samples.push(QueueSample {
                    broker: Broker::Dramatiq,
                    name: queue,
                    length,
                    delayed: delayed + held,
                    dead,
                    running,
                    sampled_at: now,
                    oldest_enqueued_at,
                });
            }
        }
        out
    }

    /// Forgets the ack sets that are empty and whose worker had no heartbeat in two sampling
    /// rounds in a row. Each worker process has its own ack sets (its id is a fresh uuid), and
    /// a dead one's are requeued and deleted by another worker's maintenance, which leaves
    /// them empty here: kept, they would pile up with every deploy (and each sampling round
    /// walks them all). A live worker's empty set is kept (it empties and fills with every
    /// task: dropping it would change the interest, and its prefetch rule, each time); Dramatiq
    /// writes a worker's heartbeat on every call of its script, so a live worker misses at most
    /// the round that read the heartbeats just before its first call. Its set, if dropped
    /// anyway, is learned again from its next `sadd`, but what it held meanwhile is read late.
    fn forget_empty_ack_sets_of_dead_workers(&mut self, beating: &HashSet<String>) {
        let layout = &self.layout;
        let before = std::mem::take(&mut self.acks_without_heartbeat);
        let mut now_without = HashSet::new();
        self.acks.retain(|key, members| {
            if !members.is_empty() {
                return true;
            }
            match layout.classify(key) {
                Some(KeyKind::Acks { worker, .. }) if !beating.contains(worker) => {
                    if before.contains(key) {
                        return false;
                    }
                    now_without.insert(key.clone());
                    true
                }
                _ => true,
            }
        });
        self.acks_without_heartbeat = now_without;
    }
}
