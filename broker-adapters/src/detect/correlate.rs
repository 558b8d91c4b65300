//! Finding a taskiq `ListQueueBroker` list from timing alone.
//!
//! An idle `ListQueueBroker` worker sits in `BRPOP`, so Redis hands it each message inside the
//! producer's `LPUSH`: the list is never seen holding one and sampling it finds nothing. What
//! remains visible is the pair "a push on the list, then (after the task ran) a new taskiq
//! result key". [`ListCorrelator`] pairs them: the ingest layer feeds it the `lpush`/`rpush`
//! events of lists nobody classified and the writes of taskiq result keys, and it names a list
//! once that pairing held often enough to be more than chance.
//!
//! The rule, with a window `w` (2 s by default) and `needed` hits (3):
//! * A result at `t` is paired with a push of list `L` only when `L` is the **only**
//!   unclassified list pushed in `[t - w, t]` and one of its pushes in that window is not paired
//!   yet. With two lists pushed in the window nothing is paired: the result could be either's.
//!   A result not paired is *unexplained* (a stream broker's, another app's...).
//! * Only a push made while the system was quiet, with no unexplained result in the `w` before
//!   it, is evidence: paired, it is a hit for its list; left unpaired past the window, a miss.
//!   A push amid unexplained results is neutral: results that keep coming anyway say nothing
//!   about it.
//! * `L` is adopted once `hits >= needed` and `hits > misses + its unpaired pushes still in
//!   the window` (those are misses in the making).
//!
//! What this keeps out: a busy unrelated list gets at most one hit per result but a miss for
//! every other push, so it stays below its misses; a list pushed while no results appear only
//! collects misses; an unrelated list pushed now and then next to a stream broker whose results
//! keep coming is never judged. What it cannot tell: an unrelated list pushed exactly as often
//! as, and just before, results appear in an otherwise quiet Redis. And a taskiq list whose
//! pushes always fall amid another broker's results is not found this way. The taskiq adapter
//! therefore watches a list found this way on probation: the first time it holds items and
//! none is a taskiq message, it stops watching it. Tasks longer than `w` are never paired (a
//! list running only those is not found this way).
//!
//! Memory is bounded: at most `capacity` pushes in the window and `capacity` lists scored (the
//! longest-unscored list is forgotten first).

use crate::bounded::FifoMap;
use chrono::{DateTime, Duration, Utc};
use std::collections::VecDeque;

/// Pushes and results further apart than this are not paired.
const DEFAULT_WINDOW_MS: i64 = 2_000;
/// Pairings a list needs before it is adopted.
const DEFAULT_NEEDED: u32 = 3;
/// Pushes kept in the window and lists scored.
const DEFAULT_CAPACITY: usize = 1_024;

/// One push seen on an unclassified list.
#[derive(Debug, Clone)]
struct Push {
    list: String,
    at: DateTime<Utc>,
    paired: bool,
    /// Made while no unexplained result was in the window before it: evidence either way.
    counts: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Score {
    hits: u32,
    misses: u32,
}

/// Pairs pushes on unclassified lists with new taskiq result keys (see the module doc).
#[derive(Debug, Clone)]
pub struct ListCorrelator {
    window: Duration,
    needed: u32,
    capacity: usize,
    /// Pushes of the last `window`, oldest first.
    pushes: VecDeque<Push>,
    /// The last result no push explained.
    last_unexplained: Option<DateTime<Utc>>,
    /// Scored lists, least recently scored first (eviction order).
    scores: FifoMap<String, Score>,
}

impl Default for ListCorrelator {
    fn default() -> Self {
        ListCorrelator::new(
            Duration::milliseconds(DEFAULT_WINDOW_MS),
            DEFAULT_NEEDED,
            DEFAULT_CAPACITY,
        )
    }
}

impl ListCorrelator {
    /// A correlator pairing within `window`, adopting after `needed` hits, remembering at most
    /// `capacity` pushes and `capacity` lists (`needed` and `capacity` are at least 1).
    pub fn new(window: Duration, needed: u32, capacity: usize) -> ListCorrelator {
        ListCorrelator {
            window,
            needed: needed.max(1),
            capacity: capacity.max(1),
            pushes: VecDeque::new(),
            last_unexplained: None,
            scores: FifoMap::new(capacity.max(1)),
        }
    }

    /// An `lpush` or `rpush` on `list_key`, a list no broker has claimed, at `at`.
    pub fn on_push(&mut self, list_key: &str, at: DateTime<Utc>) {
        self.expire(at);
        if self.pushes.len() >= self.capacity {
            // A flood of pushes: the oldest leaves unjudged rather than as a miss.
            self.pushes.pop_front();
        }
        let counts = self.last_unexplained.is_none_or(|u| at - u >= self.window);
        self.pushes.push_back(Push {
            list: list_key.to_string(),
            at,
            paired: false,
            counts,
        });
    }

    /// A new taskiq result key was written at `at`. Returns the list to adopt as a taskiq
    /// `ListQueueBroker` queue when this pairing completes its evidence (once per list: it is
    /// forgotten here, the caller watches it from now on).
    pub fn on_taskiq_result(&mut self, at: DateTime<Utc>) -> Option<String> {
        self.expire(at);
        let Some((list, counts)) = self.pair(at) else {
            self.last_unexplained = Some(at);
            return None;
        };
        if !counts {
            return None;
        }
        // Pushes of the list still waiting in the window are misses in the making.
        let waiting = self
            .pushes
            .iter()
            .filter(|p| p.list == list && !p.paired && p.counts)
            .count();
        let score = self.score(&list);
        score.hits += 1;
        let Score { hits, misses } = *score;
        let against = u64::from(misses) + waiting as u64;
        if hits >= self.needed && u64::from(hits) > against {
            self.forget(&list);
            return Some(list);
        }
        None
    }

    /// Pairs a result at `at` with the oldest unpaired push in its window, when one list alone
    /// was pushed there: that list, and whether the push counts as evidence.
    fn pair(&mut self, at: DateTime<Utc>) -> Option<(String, bool)> {
        let from = at - self.window;
        let mut in_window = self
            .pushes
            .iter_mut()
            .filter(|p| p.at >= from && p.at <= at);
        let first = in_window.next()?;
        let list = first.list.clone();
        let mut candidate = (!first.paired).then_some(first);
        for push in in_window {
            if push.list != list {
                // Two lists pushed in the window: the result could be either's.
                return None;
            }
            if candidate.is_none() && !push.paired {
                candidate = Some(push);
            }
        }
        let push = candidate?;
        push.paired = true;
        Some((list, push.counts))
    }

    /// Stops scoring `list_key` (it was classified some other way).
    pub fn forget(&mut self, list_key: &str) {
        self.scores.remove(list_key);
        self.pushes.retain(|p| p.list != list_key);
    }

    /// Pushes older than the window at `now` leave it; unpaired ones count as misses.
    fn expire(&mut self, now: DateTime<Utc>) {
        let from = now - self.window;
        while self.pushes.front().is_some_and(|p| p.at < from) {
            let Some(push) = self.pushes.pop_front() else {
                break;
            };
            if !push.paired && push.counts {
                self.score(&push.list).misses += 1;
            }
        }
    }

    fn score(&mut self, list: &str) -> &mut Score {
        self.scores.make_newest(list);
        self.scores
            .get_or_insert_with(list.to_string(), Score::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ms(n: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + n)
            .single()
            .expect("a valid time")
    }

    /// `n` tasks through an idle list worker: push, result `run_ms` later, every `every_ms`.
    fn idle_list_worker(
        c: &mut ListCorrelator,
        list: &str,
        n: i64,
        every_ms: i64,
        run_ms: i64,
    ) -> Vec<String> {
        let mut adopted = Vec::new();
        for i in 0..n {
            c.on_push(list, ms(i * every_ms));
            adopted.extend(c.on_taskiq_result(ms(i * every_ms + run_ms)));
        }
        adopted
    }

    #[test]
    fn idle_list_worker_is_found_after_three_pairings() {
        let mut c = ListCorrelator::default();
        c.on_push("lq", ms(0));
        assert_eq!(c.on_taskiq_result(ms(30)), None);
        c.on_push("lq", ms(1_000));
        assert_eq!(c.on_taskiq_result(ms(1_500)), None);
        c.on_push("lq", ms(5_000));
        assert_eq!(c.on_taskiq_result(ms(5_010)).as_deref(), Some("lq"));
        // Named once: its score is gone, a fourth pairing names nothing.
        c.on_push("lq", ms(9_000));
        assert_eq!(c.on_taskiq_result(ms(9_010)), None);
    }

    #[test]
    fn steady_list_traffic_is_found() {
        let mut c = ListCorrelator::default();
        assert_eq!(
            idle_list_worker(&mut c, "lq", 3, 300, 120),
            vec!["lq".to_string()]
        );
    }

    #[test]
    fn one_push_explains_one_result_only() {
        let mut c = ListCorrelator::default();
        c.on_push("lq", ms(0));
        for i in 1..10 {
            assert_eq!(c.on_taskiq_result(ms(i * 10)), None, "result {i}");
        }
    }

    #[test]
    fn results_longer_than_the_window_after_the_push_are_not_paired() {
        let mut c = ListCorrelator::default();
        assert!(idle_list_worker(&mut c, "lq", 10, 5_000, 2_500).is_empty());
    }

    #[test]
    fn busy_unrelated_list_next_to_stream_results_is_not_adopted() {
        let mut c = ListCorrelator::default();
        // `cache:jobs` pushed every 100 ms; a stream broker's results every 500 ms.
        for i in 0..600 {
            c.on_push("cache:jobs", ms(i * 100));
            if i % 5 == 4 {
                assert_eq!(c.on_taskiq_result(ms(i * 100 + 50)), None, "at {i}");
            }
        }
    }

    #[test]
    fn unrelated_list_pushed_now_and_then_next_to_a_busy_stream_is_not_adopted() {
        let mut c = ListCorrelator::default();
        // A stream broker's results every 500 ms; `events` pushed every 10 s.
        for i in 0..400 {
            if i % 20 == 5 {
                c.on_push("events", ms(i * 500 + 100));
            }
            assert_eq!(c.on_taskiq_result(ms(i * 500 + 300)), None, "at {i}");
        }
    }

    #[test]
    fn list_is_found_in_a_quiet_spell_after_stream_traffic() {
        let mut c = ListCorrelator::default();
        for i in 0..20 {
            assert_eq!(c.on_taskiq_result(ms(i * 500)), None);
        }
        // Quiet from 9.5 s on; the list's traffic starts at 15 s.
        let mut adopted = Vec::new();
        for i in 0..3 {
            c.on_push("lq", ms(15_000 + i * 3_000));
            adopted.extend(c.on_taskiq_result(ms(15_000 + i * 3_000 + 200)));
        }
        assert_eq!(adopted, vec!["lq".to_string()]);
    }

    #[test]
    fn two_lists_pushed_in_the_window_are_not_credited() {
        let mut c = ListCorrelator::default();
        for i in 0..20 {
            c.on_push("lq", ms(i * 3_000));
            c.on_push("other", ms(i * 3_000 + 200));
            assert_eq!(c.on_taskiq_result(ms(i * 3_000 + 400)), None);
        }
    }

    #[test]
    fn list_pushed_while_no_results_appear_collects_misses_first() {
        let mut c = ListCorrelator::default();
        // An unrelated list pushed ten times with no result anywhere...
        for i in 0..10 {
            c.on_push("events", ms(i * 3_000));
        }
        // ...then three coincidences are not enough against its ten misses.
        for i in 10..13 {
            c.on_push("events", ms(i * 3_000));
            assert_eq!(c.on_taskiq_result(ms(i * 3_000 + 100)), None);
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut c = ListCorrelator::new(Duration::seconds(2), 3, 8);
        for i in 0..1_000 {
            c.on_push(&format!("list{i}"), ms(i));
        }
        c.on_taskiq_result(ms(5_000));
        assert!(c.pushes.len() <= 8);
        assert!(c.scores.len() <= 8);
    }
}
