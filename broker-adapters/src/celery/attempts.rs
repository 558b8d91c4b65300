//! Which attempt an observation is about, when the payload does not say.
//!
//! Celery names the attempt (`retries`) in messages, `task-received` events and extended results,
//! but not in `task-started/succeeded/failed/retried` events nor in plain `RETRY` / `STARTED`
//! results. Guessing "the current attempt" goes wrong when sources overtake each other (a
//! retried task's next message is pushed, and may be taken, before the `RETRY` record of the
//! attempt that failed is stored; task events are buffered). Each source is ordered in itself,
//! so the adapter numbers its observations per source: the k-th `task-retried` event,
//! `task-started` event, `RETRY` record or `STARTED` record of a task (each source counted on its
//! own) is attempt `first + k - 1`, `first` being the attempt of the first explicit sign of the
//! task seen. Anything else stays unknown, and the state machine's rules for unknown attempts
//! apply. (The attempt of the last `task-received` event is no guide: with a prefork pool the
//! main process sends `task-received` and the pool process the others, unordered.)
//!
//! Reads overtake pub/sub: a queue read run for an older notification sees Redis as it is now,
//! so a retried task's re-queued message (attempt 1) can be the first sign of it while the
//! events of attempt 0 still wait in taskscope's queue. An attempt 0 seen after that, before
//! anything unnumbered was counted, still anchors the numbering: otherwise attempt 0's
//! `task-started` would be taken for attempt 1's start, and attempt 0's `RETRY` record, newer
//! than that start, for a second retry.
//!
//! A `RETRY` record published before any other sign of its task (passive mode, a taskscope
//! that fell behind: the task's messages lived and went while it was not reading) is taken for
//! attempt 0's, and the records after it for the next attempts: pub/sub delivers each record
//! once, so two records are two retries (issue #13: a task that retried twice counted one,
//! the second record taken by the state machine for a copy of the first). Had taskscope missed
//! the first records (it started, or lost pub/sub, while the task was retrying), numbering from
//! 0 counts too few, never too many; a message whose attempt the assumption cannot explain
//! (more than one past the records counted: a retry publishes the next message before it
//! stores its record) withdraws it, and what follows is left unnumbered. A task the store
//! already holds (open at a reconciliation: taskscope restarted while it was retrying) is
//! never assumed to start from a record.

use crate::bounded::FifoMap;

/// Per-task numbering state.
#[derive(Debug, Default, Clone)]
struct Memo {
    /// `Some(0)` once an explicit observation was attempt 0 and nothing unnumbered came before
    /// it.
    first: Option<u32>,
    /// How many of each unnumbered kind were seen, by [`Unnumbered`] index. Any of them counted
    /// before `first` is known means `first` can no longer be trusted.
    counts: [u32; 4],
    /// Whether anything but unnumbered observations told of the task: an observation that named
    /// its attempt, or the store (an open task at reconciliation, e.g. after a restart).
    other_sign: bool,
    /// `first` was assumed from a `RETRY` record that was the first sign of the task (module
    /// docs), not seen: a message attempt it cannot explain withdraws it.
    assumed: bool,
}

/// Where an observation without an attempt came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unnumbered {
    RetryEvent = 0,
    StartedEvent = 1,
    /// A `RETRY` record published on the result channel.
    RetryResult = 2,
    /// A `STARTED` record published on the result channel.
    StartedResult = 3,
}

/// A bounded memory of task numbering; the oldest tasks are forgotten first.
pub struct Attempts {
    memos: FifoMap<String, Memo>,
}

impl Attempts {
    pub fn new(capacity: usize) -> Attempts {
        Attempts {
            memos: FifoMap::new(capacity),
        }
    }

    fn memo(&mut self, task_id: &str) -> &mut Memo {
        self.memos.get_or_insert_with_ref(task_id, Memo::default)
    }

    /// Records an observation that named its attempt. Counting starts only from a task's
    /// attempt 0: while only a later attempt was seen (its first message may have been missed),
    /// the records seen next may be the late `RETRY` of the attempt before it, and counting
    /// would be off by one. An attempt 0 seen after a later one (a read overtook the pub/sub
    /// messages of attempt 0, see the module docs) anchors the count as long as nothing
    /// unnumbered was counted yet.
    pub fn explicit(&mut self, task_id: &str, attempt: u32) {
        let memo = self.memo(task_id);
        memo.other_sign = true;
        if memo.assumed {
            // Records of attempts 0..k-1 counted: the messages of attempts up to k+1 exist.
            let records = memo.counts[Unnumbered::RetryResult as usize];
            if attempt == 0 {
                memo.assumed = false;
            } else if attempt > records + 1 {
                memo.first = None;
                memo.assumed = false;
            }
            return;
        }
        if memo.first.is_none() && attempt == 0 && memo.counts == [0; 4] {
            memo.first = Some(0);
        }
    }

    /// The store holds the task (it is open): a `RETRY` record seen next may be of any attempt
    /// (taskscope restarted while the task was retrying), so it is not taken for attempt 0's.
    pub fn stored(&mut self, task_id: &str) {
        self.memo(task_id).other_sign = true;
    }

    /// The attempt of an observation that did not name one, if it can be told.
    pub fn number(&mut self, task_id: &str, source: Unnumbered) -> Option<u32> {
        let memo = self.memo(task_id);
        if source == Unnumbered::RetryResult && !memo.other_sign && memo.counts == [0; 4] {
            memo.first = Some(0);
            memo.assumed = true;
        }
        let count = &mut memo.counts[source as usize];
        *count += 1;
        let k = *count;
        memo.first.map(|first| first + k - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_sign_past_attempt_zero_leaves_records_unnumbered() {
        let mut a = Attempts::new(10);
        a.explicit("t", 1); // attempt 0's message was missed; this is the re-queued one
        assert_eq!(a.number("t", Unnumbered::RetryResult), None);
    }

    #[test]
    fn retry_records_are_numbered_from_the_first_message_seen() {
        let mut a = Attempts::new(10);
        a.explicit("t", 0);
        a.explicit("t", 1); // the re-queued message, seen before attempt 0's RETRY
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(0));
        a.explicit("t", 2);
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(1));
    }

    #[test]
    fn each_source_is_counted_on_its_own() {
        let mut a = Attempts::new(10);
        a.explicit("t", 0);
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(0));
        assert_eq!(a.number("t", Unnumbered::RetryEvent), Some(0));
        assert_eq!(a.number("t", Unnumbered::StartedEvent), Some(0));
        assert_eq!(a.number("t", Unnumbered::StartedEvent), Some(1));
    }

    #[test]
    fn attempt_zero_seen_after_the_requeued_message_still_anchors() {
        // A queue read saw the re-queued message (attempt 1) before the pub/sub messages of
        // attempt 0 were handled: task-received(0), task-started, RETRY, task-retried,
        // task-received(1), task-started.
        let mut a = Attempts::new(10);
        a.explicit("t", 1);
        a.explicit("t", 0);
        assert_eq!(a.number("t", Unnumbered::StartedEvent), Some(0));
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(0));
        assert_eq!(a.number("t", Unnumbered::RetryEvent), Some(0));
        a.explicit("t", 1);
        assert_eq!(a.number("t", Unnumbered::StartedEvent), Some(1));
    }

    #[test]
    fn attempt_zero_seen_after_something_unnumbered_does_not_anchor() {
        let mut a = Attempts::new(10);
        a.explicit("t", 1);
        assert_eq!(a.number("t", Unnumbered::RetryResult), None);
        a.explicit("t", 0);
        assert_eq!(a.number("t", Unnumbered::RetryResult), None);
    }

    #[test]
    fn a_record_before_any_message_leaves_the_rest_unknown() {
        let mut a = Attempts::new(10);
        assert_eq!(a.number("t", Unnumbered::StartedResult), None);
        a.explicit("t", 1);
        assert_eq!(a.number("t", Unnumbered::RetryResult), None);
    }

    #[test]
    fn retry_records_before_any_other_sign_are_numbered_from_attempt_zero() {
        // Issue #13: taskscope fell behind; attempt 0's message came and went unseen. Its
        // RETRY record, the re-sent message (attempt 1), the RETRY record of attempt 1.
        let mut a = Attempts::new(10);
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(0));
        a.explicit("t", 1);
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(1));
        a.explicit("t", 2);
        a.explicit("t", 1); // a late read of attempt 1's message
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(2));
    }

    #[test]
    fn a_message_the_assumed_numbering_cannot_explain_withdraws_it() {
        // taskscope started while the task was retrying: the first record it got was attempt
        // 3's; the message of attempt 4 shows the records were not numbered from attempt 0.
        let mut a = Attempts::new(10);
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(0));
        a.explicit("t", 4);
        assert_eq!(a.number("t", Unnumbered::RetryResult), None);
        a.explicit("t", 0);
        assert_eq!(a.number("t", Unnumbered::RetryResult), None);
    }

    #[test]
    fn a_retry_record_of_a_stored_task_is_not_taken_for_attempt_zero() {
        let mut a = Attempts::new(10);
        a.stored("t"); // open in the store: taskscope restarted while it was retrying
        assert_eq!(a.number("t", Unnumbered::RetryResult), None);
        // A task whose numbering was assumed keeps it when it is stored meanwhile.
        assert_eq!(a.number("u", Unnumbered::RetryResult), Some(0));
        a.stored("u");
        assert_eq!(a.number("u", Unnumbered::RetryResult), Some(1));
    }

    #[test]
    fn attempt_zero_confirms_the_assumed_numbering() {
        let mut a = Attempts::new(10);
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(0));
        a.explicit("t", 0); // a late read of attempt 0's message
        a.explicit("t", 5); // however far the reads run ahead now
        assert_eq!(a.number("t", Unnumbered::RetryResult), Some(1));
    }

    #[test]
    fn memory_is_bounded() {
        let mut a = Attempts::new(2);
        a.explicit("a", 0);
        a.explicit("b", 0);
        a.explicit("c", 0);
        assert_eq!(a.number("a", Unnumbered::RetryEvent), None);
        assert_eq!(a.number("c", Unnumbered::RetryEvent), Some(0));
    }
}
