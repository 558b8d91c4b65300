//! One settlement model: what became of a message that left (an ack set, or `.msgs` under the
//! prefetcher's eyes). Every departure of a known message goes through
//! [`DramatiqAdapter::depart`], whatever noticed it: an ack set read without it (unfollowed
//! queue), an `hdel` on `.msgs` ([`DramatiqAdapter::check_acked`]), a snapshot of a followed
//! `.msgs` without it, or a reconciliation. `depart` waits while a read that may carry a retry
//! copy of the same queue is in flight (`discovering`), then [`DramatiqAdapter::settle`] judges:
//! requeued, retried (a copy with more retries is known), or acknowledged (success). Open tasks
//! of the store whose message was never read (taskscope was away) are settled in bulk after a
//! gap ([`DramatiqAdapter::settle_open`]).

use super::*;

/// Departures of one queue kept waiting for its discovery reads, at most; past it a departure
/// is settled at once.
const MAX_DEFERRED_PER_QUEUE: usize = 10_000;

/// An id that left a worker's ack set, waiting for the reads that tell what became of it.
#[derive(Debug, Clone)]
pub(super) struct Leaving {
    pub(super) known: Known,
    /// The worker whose ack set it left; `None` when the ack was noticed on `.msgs` instead.
    pub(super) worker: Option<String>,
    /// Whether the id is still in `<q>.msgs` (a requeue keeps it there; an ack deletes it).
    pub(super) still_queued: Option<bool>,
}

/// Open tasks being checked against every message Redis still holds for their queues.
pub(super) struct Settlement {
    /// `message_id` of each open task.
    pub(super) open: HashSet<String>,
    /// Hashes (`.msgs`, `.DQ.msgs`, `.XQ.msgs`) still to be read.
    pub(super) awaiting: HashSet<String>,
    /// `message_id`s found in them.
    pub(super) present: HashSet<String>,
}

impl DramatiqAdapter {
    /// Records what a whole `.msgs` hash read for a settlement holds; settles when the last is in.
    pub(super) fn settle_open(
        &mut self,
        key: &str,
        fields: &[String],
        values: &[Reply],
        now: DateTime<Utc>,
    ) -> Vec<Observation> {
        let Some(settlement) = self.settlement.as_mut() else {
            return Vec::new();
        };
        if !settlement.awaiting.remove(key) {
            return Vec::new();
        }
        for (field, value) in fields.iter().zip(values) {
            match value.as_bytes().map(message::decode) {
                Some(Ok(msg)) => {
                    settlement.present.insert(msg.message_id);
                }
                // There but unreadable (too large, or does not decode): its field names it.
                Some(Err(_)) => {
                    settlement.present.insert(field.clone());
                }
                None if value.too_large().is_some() => {
                    settlement.present.insert(field.clone());
                }
                None => {}
            }
        }
        if !settlement.awaiting.is_empty() {
            return Vec::new();
        }
        let Some(settlement) = self.settlement.take() else {
            return Vec::new();
        };
        settlement
            .open
            .difference(&settlement.present)
            .map(|id| {
                // Neither waiting, nor running, nor retried, nor dead: it was acknowledged.
                Observation::Task(TaskObservation::new(
                    Broker::Dramatiq,
                    id.clone(),
                    now,
                    TaskEvent::Succeeded,
                    "acknowledged while taskscope was away",
                ))
            })
            .collect()
    }

    pub(super) fn forget_in_flight(&mut self, queue: &str, id: &str) {
        if let Some(ids) = self.in_flight.get_mut(queue) {
            ids.remove(id);
        }
    }

    /// An `hdel` on `<q>.msgs`: some message of `q` was acknowledged (or nacked). Check the
    /// oldest unsettled ones (consumers take the oldest first).
    pub(super) fn check_acked(&mut self, queue: &str) -> Vec<Read> {
        let ids: Vec<String> = self
            .in_flight
            .get(queue)
            .map(|ids| ids.iter().take(CHECK_ON_ACK).cloned().collect())
            .unwrap_or_default();
        let mut fresh = Vec::new();
        for id in ids {
            if self.leaving.contains_key(&id) {
                continue;
            }
            if let Some(k) = self.known.get(&id).cloned() {
                self.leaving.insert(
                    id.clone(),
                    Leaving {
                        known: k,
                        worker: None,
                        still_queued: None,
                    },
                );
                fresh.push(id);
            }
        }
        if fresh.is_empty() {
            return Vec::new();
        }
        self.settlement_reads(queue, fresh)
    }

    /// The three reads that tell what became of ids that left an ack set of `queue`, in this
    /// order, the last one settling: a requeue keeps the id in `.msgs`; a retry put a copy in
    /// `.DQ.msgs` just before the ack (read whole: the delay-queue consumer may already have
    /// taken the copy off the `.DQ` list); a nack moved the id to `.XQ.msgs`.
    pub(super) fn settlement_reads(&self, queue: &str, ids: Vec<String>) -> Vec<Read> {
        vec![
            Why::CheckQueued.read(ReadRequest::HMGet {
                key: self.layout.messages(queue, Part::Main),
                fields: ids.clone(),
            }),
            Why::CheckRetried.read(ReadRequest::HGetAll(
                self.layout.messages(queue, Part::Delayed),
            )),
            Why::CheckDead.read(ReadRequest::HMGet {
                key: self.layout.messages(queue, Part::Dead),
                fields: ids,
            }),
        ]
    }

    /// Notes the reads of `reads` that may find new messages of a main queue (see
    /// `discovering`).
    pub(super) fn track_discovery(&mut self, reads: &[Read]) {
        for read in reads {
            if !matches!(
                Why::try_from(read.tag),
                Ok(Why::NewMessages | Why::Messages)
            ) {
                continue;
            }
            let queue = match self.layout.classify(read.request.key()) {
                Some(KeyKind::List {
                    queue,
                    part: Part::Main,
                })
                | Some(KeyKind::Messages {
                    queue,
                    part: Part::Main,
                }) => queue.to_string(),
                _ => continue,
            };
            self.discovering
                .entry(queue)
                .or_default()
                .insert(read.request.clone());
        }
    }

    /// A discovery read answered (or refused): when it was its queue's last in flight, the
    /// departures deferred meanwhile are settled now.
    pub(super) fn discovered(&mut self, request: &ReadRequest, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        let queue = match self.layout.classify(request.key()) {
            Some(KeyKind::List { queue, .. }) | Some(KeyKind::Messages { queue, .. }) => {
                queue.to_string()
            }
            _ => return out,
        };
        let drained = match self.discovering.get_mut(&queue) {
            Some(reads) => {
                reads.remove(request);
                reads.is_empty()
            }
            None => true,
        };
        if !drained {
            return out;
        }
        self.discovering.remove(&queue);
        for (id, leaving) in self.deferred.remove(&queue).unwrap_or_default() {
            self.settle_departure(&id, leaving, now, &mut out);
        }
        out
    }

    /// Settles an id that left an ack set and is neither requeued-and-checked nor dead, or
    /// defers it while a read that may carry its retry copy is in flight.
    pub(super) fn depart(
        &mut self,
        id: &str,
        leaving: Leaving,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let queue = leaving.known.queue.clone();
        if self.discovering.get(&queue).is_some_and(|r| !r.is_empty()) {
            let waiting = self.deferred.entry(queue).or_default();
            // Bounded: a queue whose discovery reads never all drain between two
            // reconciliations (constant traffic) settles the rest at once, as before deferral.
            if waiting.len() < MAX_DEFERRED_PER_QUEUE {
                waiting.push((id.to_string(), leaving));
                return;
            }
        }
        self.settle_departure(id, leaving, now, out);
    }

    pub(super) fn settle_departure(
        &mut self,
        id: &str,
        leaving: Leaving,
        now: DateTime<Utc>,
        out: &mut Output,
    ) {
        let (queue, actor, message_id) = (
            leaving.known.queue.clone(),
            leaving.known.actor.clone(),
            leaving.known.message_id.clone(),
        );
        if let Some(obs) = self.settle(id, leaving, now) {
            let succeeded = matches!(&obs, Observation::Task(o) if o.event == TaskEvent::Succeeded);
            out.observations.push(obs);
            if succeeded {
                out.follow_up
                    .extend(self.probe_result(&queue, &actor, &message_id));
            }
        }
    }

    /// What became of an id that left an ack set of a main queue and is not dead-lettered.
    pub(super) fn settle(
        &mut self,
        id: &str,
        leaving: Leaving,
        now: DateTime<Utc>,
    ) -> Option<Observation> {
        let k = &leaving.known;
        if leaving.still_queued == Some(true) && leaving.worker.is_none() {
            // Checked on an ack of another message: this one is simply still there.
            return None;
        }
        if leaving.still_queued == Some(true) {
            // Requeued (a graceful stop, or maintenance after the worker died): waiting again.
            return Some(Observation::Task(self.known_observation(
                k,
                TaskEvent::Queued,
                now,
                "requeued",
            )));
        }
        if self
            .copies
            .get(&k.message_id)
            .is_some_and(|c| c.highest > k.retries)
        {
            // The Retries middleware enqueued a copy before acking this one.
            let queue = k.queue.clone();
            self.forget_in_flight(&queue, id);
            self.known.remove(id);
            return None;
        }
        self.known.remove(id);
        let mut obs = self.known_observation(k, TaskEvent::Succeeded, now, "acknowledged");
        obs.fields.worker = leaving.worker;
        let queue = k.queue.clone();
        self.forget_in_flight(&queue, id);
        Some(Observation::Task(obs))
    }

    /// The settlement's part of a reconciliation: departures deferred for a discovery read
    /// whose reply never came (a gap, or a read the ingest layer merged with an identical one)
    /// are checked again, and settled; messages read but not seen leaving an ack set (both
    /// moves fell between two reads) are checked too, not only on the next `hdel` of their
    /// queue (a followed queue's departures are in the prefetcher's snapshots, re-read now
    /// too); after a gap, the open tasks are checked against every message Redis still holds.
    pub(super) fn settlement_reconcile(&mut self, open: &[OpenTask]) -> Vec<Read> {
        let mut reads = Vec::new();
        self.discovering.clear();
        for (queue, departed) in std::mem::take(&mut self.deferred) {
            let ids: Vec<String> = departed.iter().map(|(id, _)| id.clone()).collect();
            for (id, leaving) in departed {
                self.leaving.insert(id, leaving);
            }
            reads.extend(self.settlement_reads(&queue, ids));
        }
        let unsettled: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(q, ids)| !ids.is_empty() && !self.followed(q))
            .map(|(q, _)| q.clone())
            .collect();
        for q in &unsettled {
            reads.extend(self.check_acked(q));
        }
        if std::mem::take(&mut self.needs_settlement) {
            let queues: BTreeSet<&str> = open.iter().filter_map(|t| t.queue.as_deref()).collect();
            let awaiting: HashSet<String> = queues
                .iter()
                .flat_map(|q| {
                    [Part::Main, Part::Delayed, Part::Dead].map(|p| self.layout.messages(q, p))
                })
                .collect();
            if !awaiting.is_empty() {
                reads.extend(
                    awaiting
                        .iter()
                        .cloned()
                        .map(|k| Why::Settlement.read(ReadRequest::HGetAll(k))),
                );
                self.settlement = Some(Settlement {
                    open: open
                        .iter()
                        .filter(|t| t.queue.is_some())
                        .map(|t| t.id.clone())
                        .collect(),
                    awaiting,
                    present: HashSet::new(),
                });
            }
        }
        reads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = include_bytes!("../../tests/fixtures/dramatiq/queue_message.bin");
    const RID: &str = "16deba5e-78c0-48dd-9722-a2be2c56937d";
    const ID: &str = "bc48c9a5-7594-4bdc-9f09-cd942381a3c9";
    const ACKS: &str = "dramatiq:__acks__.w1.default";

    fn bulk(items: &[&[u8]]) -> Reply {
        Reply::Array(items.iter().map(|b| Reply::Bytes(b.to_vec())).collect())
    }

    /// What Redis answers once the message is acknowledged and gone: nothing anywhere.
    fn gone(read: &Read) -> Reply {
        match &read.request {
            ReadRequest::HMGet { fields, .. } => Reply::Array(vec![Reply::Nil; fields.len()]),
            _ => Reply::Array(vec![]),
        }
    }

    fn successes(out: &Output) -> usize {
        out.observations
            .iter()
            .filter(|o| matches!(o, Observation::Task(t) if t.task_id == ID && t.event == TaskEvent::Succeeded))
            .count()
    }

    /// A departure waits for a read of its queue that may carry a retry copy; when that reply
    /// never comes (lost to a gap, merged away), the next reconciliation checks the departure
    /// again and settles it. On a followed queue the reconciliation has no other way to: its
    /// departures are seen only by snapshots, and this one was seen already.
    #[test]
    fn a_departure_deferred_for_a_read_that_never_answers_is_settled_by_reconciliation() {
        let now = Utc::now();
        let mut a = DramatiqAdapter::new(DramatiqConfig::default());
        let msgs = "dramatiq:default.msgs";
        // The queue's first message, read at first sight: the queue is followed.
        let first = Why::FirstSight.read(ReadRequest::HScanFirstPage {
            key: msgs.into(),
            count: 200,
        });
        let page = Reply::Array(vec![
            Reply::Bytes(b"0".to_vec()),
            bulk(&[RID.as_bytes(), MSG]),
        ]);
        assert_eq!(a.handle_reply(&first, page, now).observations.len(), 1);
        assert!(a.followed("default"));
        let snapshot = Why::Snapshot.read(ReadRequest::HKeys(msgs.into()));
        a.handle_reply(&snapshot, bulk(&[RID.as_bytes()]), now);
        // Taken, beside another message whose payload is read next, and never answered.
        let ack = Why::Acks.read(ReadRequest::SMembers(ACKS.into()));
        let out = a.handle_reply(&ack, bulk(&[RID.as_bytes(), b"other"]), now);
        assert!(matches!(
            Why::try_from(out.follow_up[0].tag),
            Ok(Why::Messages)
        ));
        // Acknowledged: gone from the ack set, not dead-lettered, gone from `.msgs`.
        a.handle_reply(&ack, bulk(&[b"other"]), now);
        let dead = Why::DepartedDead.read(ReadRequest::HMGet {
            key: "dramatiq:default.XQ.msgs".into(),
            fields: vec![RID.into()],
        });
        a.handle_reply(&dead, Reply::Array(vec![Reply::Nil]), now);
        let out = a.handle_reply(&snapshot, bulk(&[b"other"]), now);
        assert_eq!(
            successes(&out),
            0,
            "deferred while a read of its queue is in flight"
        );
        // The reconciliation checks it again and settles it.
        let reads = a.reconcile(&[], now);
        let mut out = Output::default();
        for read in &reads {
            out.merge(a.handle_reply(read, gone(read), now));
        }
        assert_eq!(successes(&out), 1, "{out:#?}");
    }

    /// The read that would settle a departure is refused (a timeout, a busy script): the id is
    /// not left waiting for it for good, the next reconciliation checks it again.
    #[test]
    fn a_departure_whose_settling_read_fails_is_checked_again_by_reconciliation() {
        let now = Utc::now();
        let mut a = DramatiqAdapter::new(DramatiqConfig::default());
        // Found by a scan: not followed (its departures are settled by reads, not snapshots).
        a.on_scan("dramatiq:*.msgs", vec!["dramatiq:default.msgs".into()], now);
        assert!(!a.followed("default"));
        let ack = Why::Acks.read(ReadRequest::SMembers(ACKS.into()));
        let out = a.handle_reply(&ack, bulk(&[RID.as_bytes()]), now);
        let message = out
            .follow_up
            .iter()
            .find(|r| matches!(Why::try_from(r.tag), Ok(Why::Messages)))
            .expect("its message is read")
            .clone();
        a.handle_reply(
            &message,
            Reply::Array(vec![Reply::Bytes(MSG.to_vec())]),
            now,
        );
        // Acknowledged; of the reads that settle it, the dead-letter check is refused.
        let out = a.handle_reply(&ack, bulk(&[]), now);
        let mut settled = Output::default();
        for read in &out.follow_up {
            let reply = match Why::try_from(read.tag) {
                Ok(Why::CheckDead) => Reply::Error("ERR busy".into()),
                _ => gone(read),
            };
            settled.merge(a.handle_reply(read, reply, now));
        }
        assert!(
            out.follow_up
                .iter()
                .any(|r| matches!(Why::try_from(r.tag), Ok(Why::CheckDead))),
            "{out:#?}"
        );
        assert_eq!(successes(&settled), 0, "{settled:#?}");
        let reads = a.reconcile(&[], now);
        let mut out = Output::default();
        for read in &reads {
            out.merge(a.handle_reply(read, gone(read), now));
        }
        assert_eq!(successes(&out), 1, "{out:#?}");
    }
}
