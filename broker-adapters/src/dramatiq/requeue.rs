//! Delayed copies moved back to their queue whose new message was taken and acknowledged
//! before any read saw it (a fast worker, a busy Redis: the new message lives between two
//! snapshots of `.msgs`).
//!
//! Dramatiq moves a due message from `<q>.DQ` by enqueuing a copy under a new redis id into
//! `<q>.msgs`, then acknowledging the delayed one (`HDEL` of `.DQ.msgs`): a known delayed copy
//! gone from a followed `.DQ.msgs` snapshot was moved back. The new message was written before
//! that snapshot, so the queue's next snapshot run either lists it (and its `HMGET` reads it:
//! the usual path takes over) or it is gone already. A move still undecided after that run was
//! taken and finished between two reads: a failure when the newest dead letters hold it, a new
//! retry when a copy with more retries was read, else acknowledged (success). Without a later
//! run (a queue gone quiet) the reconciliation's settlement decides, as after a gap.
//!
//! Before this, such a task stayed `retried` until a reconciliation settled it in bulk, with
//! `HGETALL`s of the queue's three hashes (measured at `taskscope-bench load --broker dramatiq
//! --rate max`: the retried tasks' final states came 2.4-3.3 s late).

use super::*;

/// Newest dead letters read to tell a failed attempt of a moved message from an acknowledged
/// one; a page of dead letters none of which was reported yet leaves the decision to the
/// settlement (there may be more).
const DEAD_PAGE: i64 = 64;
/// Moves waiting for a decision per queue at most; past it the settlement decides.
const MAX_MOVED: usize = 10_000;
/// Delayed copies remembered per queue (the oldest forgotten first: a forgotten one's move is
/// left to the settlement).
const DELAYED_CAPACITY: usize = 10_000;

/// The transition's source of a move settled as a success.
pub const MOVED_AND_ACKNOWLEDGED: &str =
    "moved back from the delay queue, then taken and acknowledged between two reads";

/// A delayed copy seen leaving `.DQ.msgs`.
#[derive(Debug, Clone)]
pub(super) struct Moved {
    /// The delayed copy (its `message_id`, actor, queue and retries are the new message's).
    known: Known,
    /// The queue's snapshot run that saw it leave.
    run: u64,
    /// A reconciliation found it undecided (the next one hands it to the settlement).
    waited: bool,
}

/// What the adapter keeps about delayed copies and their moves, per base queue.
#[derive(Default)]
pub(super) struct Requeues {
    /// Redis ids of the delayed copies read, until a snapshot finds them gone.
    delayed: HashMap<String, FifoSet<String>>,
    /// Snapshot runs seen (a run's `.DQ.msgs` snapshot is its last reply).
    runs: HashMap<String, u64>,
    /// Moves not decided yet.
    moved: HashMap<String, Vec<Moved>>,
    /// Moves whose dead-letter check is in flight.
    checking: HashMap<String, Vec<Moved>>,
}

impl DramatiqAdapter {
    /// A message read from one of `msg.queue`'s hashes: delayed copies are remembered; one read
    /// in `.msgs` or `.XQ.msgs` is noted in its [`Copies`], which [`Self::move_decided`] asks
    /// at every decision.
    pub(super) fn note_copy(&mut self, id: &str, msg: &DramatiqMessage, part: Part) {
        match part {
            Part::Delayed => {
                self.requeues
                    .delayed
                    .entry(msg.queue.clone())
                    .or_insert_with(|| FifoSet::new(DELAYED_CAPACITY))
                    .insert(id.to_string());
            }
            Part::Main => {
                if let Some(c) = self.copies.get_mut(&msg.message_id) {
                    c.main = Some(c.main.map_or(msg.retries, |m| m.max(msg.retries)));
                }
            }
            Part::Dead => {
                if let Some(c) = self.copies.get_mut(&msg.message_id) {
                    c.dead = true;
                }
            }
        }
    }

    /// Whether the move of `k` is decided by what was read: a copy with more retries (retried
    /// again), its new message in `.msgs`, or a dead letter.
    fn move_decided(&self, k: &Known) -> bool {
        self.copies.get(&k.message_id).is_some_and(|c| {
            c.dead || c.highest > k.retries || c.main.is_some_and(|m| m >= k.retries)
        })
    }

    /// The prefetcher's `HKEYS` of a followed `<q>.DQ.msgs`, the last reply of a snapshot run:
    /// delayed copies gone from it were moved back; moves seen by an earlier run and still
    /// undecided go to the dead-letter check.
    pub(super) fn on_delayed_snapshot(&mut self, queue: &str, reply: Reply) -> Output {
        let mut out = Output::default();
        let items = reply.into_items();
        let current: HashSet<&[u8]> = items.iter().filter_map(Reply::as_bytes).collect();
        let run = self.requeues.runs.get(queue).copied().unwrap_or(0);
        let gone: Vec<String> = match self.requeues.delayed.get_mut(queue) {
            Some(ids) => {
                let gone: Vec<String> = ids
                    .iter()
                    .filter(|id| !current.contains(id.as_bytes()))
                    .cloned()
                    .collect();
                for id in &gone {
                    ids.remove(id);
                }
                gone
            }
            None => Vec::new(),
        };
        let fresh: Vec<Moved> = gone
            .iter()
            .filter_map(|id| self.known.get(id))
            .filter(|k| !self.move_decided(k))
            .map(|k| Moved {
                known: k.clone(),
                run,
                waited: false,
            })
            .collect();
        let earlier: Vec<Moved> = {
            let moved = self.requeues.moved.entry(queue.to_string()).or_default();
            moved.extend(fresh);
            if moved.len() > MAX_MOVED {
                moved.clear();
                self.needs_settlement = true;
            }
            let (earlier, latest): (Vec<Moved>, Vec<Moved>) =
                moved.drain(..).partition(|m| m.run < run);
            *moved = latest;
            earlier
        };
        let earlier: Vec<Moved> = earlier
            .into_iter()
            .filter(|m| !self.move_decided(&m.known))
            .collect();
        if !earlier.is_empty() {
            let checking = self.requeues.checking.entry(queue.to_string()).or_default();
            if checking.is_empty() {
                checking.extend(earlier);
                out.follow_up
                    .push(Why::MovedDead.read(ReadRequest::ZRangeWithScores {
                        key: self.layout.list(queue, Part::Dead),
                        start: -DEAD_PAGE,
                        stop: -1,
                    }));
            } else {
                // A check is in flight (its page may predate these moves): the next run's.
                self.requeues
                    .moved
                    .entry(queue.to_string())
                    .or_default()
                    .extend(earlier);
            }
        }
        self.requeues.runs.insert(queue.to_string(), run + 1);
        out
    }

    /// The newest dead letters of a queue with moves being checked: the ones never reported
    /// are read (their attempts failed), then the moves are settled.
    pub(super) fn on_moved_dead_list(
        &mut self,
        key: &str,
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output {
        let Some(KeyKind::List { queue, .. }) = self.layout.classify(key) else {
            return Output::default();
        };
        let queue = queue.to_string();
        let ids = Self::dead_page_ids(reply);
        let page_full = ids.len() as i64 >= DEAD_PAGE;
        let fresh: Vec<String> = ids
            .into_iter()
            .filter(|id| !self.dead_seen.contains(&key128(id)))
            .collect();
        if page_full && fresh.len() as i64 >= DEAD_PAGE {
            // More dead letters may be unreported beyond the page.
            self.moves_undecided(&queue);
            return Output::default();
        }
        if fresh.is_empty() {
            return self.settle_moved(&queue, now);
        }
        Output {
            follow_up: vec![Why::MovedDeadMessages.read(ReadRequest::HMGet {
                key: self.layout.messages(&queue, Part::Dead),
                fields: fresh,
            })],
            ..Output::default()
        }
    }

    /// The unreported dead letters of a queue with moves being checked: reported (failures,
    /// which decide their moves), then the other moves settled.
    pub(super) fn on_moved_dead_messages(
        &mut self,
        key: &str,
        fields: &[String],
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output {
        let mut out = self.on_messages(key, fields, reply, now);
        if let Some(KeyKind::Messages { queue, .. }) = self.layout.classify(key) {
            let queue = queue.to_string();
            out.merge(self.settle_moved(&queue, now));
        }
        out
    }

    /// A check's read failed: its moves are left to the settlement.
    pub(super) fn moves_undecided(&mut self, queue: &str) {
        if self.requeues.checking.remove(queue).is_some() {
            self.needs_settlement = true;
        }
    }

    /// The queue of a check's read (`<q>.XQ` or `<q>.XQ.msgs`).
    pub(super) fn checked_queue(&self, key: &str) -> Option<String> {
        match self.layout.classify(key) {
            Some(KeyKind::List { queue, .. } | KeyKind::Messages { queue, .. }) => {
                Some(queue.to_string())
            }
            _ => None,
        }
    }

    /// The checked moves of `queue` not decided otherwise were acknowledged.
    fn settle_moved(&mut self, queue: &str, now: DateTime<Utc>) -> Output {
        let mut out = Output::default();
        for m in self.requeues.checking.remove(queue).unwrap_or_default() {
            if self.move_decided(&m.known) {
                continue;
            }
            let k = &m.known;
            let obs = self.known_observation(k, TaskEvent::Succeeded, now, MOVED_AND_ACKNOWLEDGED);
            out.observations.push(Observation::Task(obs));
            let (queue, actor, message_id) =
                (k.queue.clone(), k.actor.clone(), k.message_id.clone());
            out.follow_up
                .extend(self.probe_result(&queue, &actor, &message_id));
        }
        out
    }

    /// A reconciliation: moves undecided since the previous one (their queue had no snapshot
    /// run since) go to the settlement; the others wait one more period.
    pub(super) fn moves_reconcile(&mut self) {
        let mut any = false;
        for moves in self.requeues.moved.values_mut() {
            let before = moves.len();
            moves.retain(|m| !m.waited);
            any |= moves.len() < before;
            for m in moves.iter_mut() {
                m.waited = true;
            }
        }
        if any {
            self.needs_settlement = true;
        }
    }

    /// After a gap: what was read before is stale; the settlement decides.
    pub(super) fn moves_forget(&mut self) {
        self.requeues = Requeues::default();
    }
}
