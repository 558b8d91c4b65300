//! The prefetcher's scheduling, without I/O: given notifications matching rules, completed
//! runs and reconciliation kicks, which runs fire now and which wait. The prefetcher
//! ([`super::Prefetcher`]) does the reads of the runs this returns and reports each one done.
//!
//! - A **plain** rule fires one run per notification, up to [`MAX_IN_FLIGHT`] at once; past
//!   that it is marked dirty, and one trailing run follows when one completes.
//! - A **coalesced** rule runs at most once at a time: notifications meanwhile (and the rest of
//!   their burst, gathered before [`Schedule::fire_due`]) only mark it dirty, and one trailing
//!   run follows. Coalesced rules also all run at a [`Schedule::kick`] (the loop reconciling).
//! - Runs following one hash ([`PrefetchRead::FollowHash`]) never overlap, so its snapshots
//!   reach the adapter in order.

use broker_adapters::PrefetchRead;
use std::collections::HashMap;

/// Runs of one plain rule in flight at once. One would coalesce a burst into a few snapshots
/// taken between entries that each live a millisecond (measured: 7 of 15 names caught in bursts
/// of 5); each notification gets its own run up to this bound, and past it one trailing run
/// follows.
pub const MAX_IN_FLIGHT: usize = 8;

/// What a run reads: the adapter and the rule's reads. Rules with the same reads share runs.
pub type RunKey = (usize, Vec<PrefetchRead>);

#[derive(Debug, Default)]
struct RunState {
    in_flight: usize,
    dirty: bool,
    coalesce: bool,
}

/// Which runs are in flight, dirty or due.
#[derive(Debug, Default)]
pub struct Schedule {
    states: HashMap<RunKey, RunState>,
    /// Coalesced runs asked for by the current burst of notifications.
    due: Vec<RunKey>,
    /// Followed hashes with a run in flight, and how many.
    busy: HashMap<String, usize>,
}

/// The hashes a rule's reads follow.
pub fn followed(reads: &[PrefetchRead]) -> impl Iterator<Item = &String> {
    reads.iter().filter_map(|r| match r {
        PrefetchRead::FollowHash { key, .. } => Some(key),
        PrefetchRead::Read(_) => None,
    })
}

impl Schedule {
    /// A notification matched `run`'s rule. A plain run to fire now is returned; a coalesced
    /// one becomes due (fired by [`Schedule::fire_due`] once the burst is read).
    pub fn on_match(&mut self, run: RunKey, coalesce: bool) -> Option<RunKey> {
        let state = self.states.entry(run.clone()).or_default();
        state.coalesce = coalesce;
        if coalesce {
            if !self.due.contains(&run) {
                self.due.push(run);
            }
            None
        } else if state.in_flight >= MAX_IN_FLIGHT {
            state.dirty = true;
            None
        } else {
            state.in_flight += 1;
            self.start(&run);
            Some(run)
        }
    }

    /// Whether coalesced runs wait for the end of the burst.
    pub fn has_due(&self) -> bool {
        !self.due.is_empty()
    }

    /// The due coalesced runs that can start (not running, none of their hashes busy); the
    /// others are marked dirty and run once more after.
    pub fn fire_due(&mut self) -> Vec<RunKey> {
        let mut fire = Vec::new();
        for run in std::mem::take(&mut self.due) {
            let busy = followed(&run.1).any(|k| self.busy.contains_key(k));
            let state = self.states.entry(run.clone()).or_default();
            if state.in_flight > 0 || busy {
                state.dirty = true;
            } else {
                state.in_flight = 1;
                self.start(&run);
                fire.push(run);
            }
        }
        fire
    }

    /// A run completed: its trailing run, and coalesced runs that waited for its hashes.
    pub fn on_done(&mut self, run: RunKey) -> Vec<RunKey> {
        for k in followed(&run.1) {
            if let Some(n) = self.busy.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(k);
                }
            }
        }
        let state = self.states.entry(run.clone()).or_default();
        if state.coalesce {
            state.in_flight = 0;
            let waiting: Vec<RunKey> = self
                .states
                .iter_mut()
                .filter(|(_, s)| s.coalesce && s.dirty && s.in_flight == 0)
                .map(|(k, s)| {
                    s.dirty = false;
                    k.clone()
                })
                .collect();
            self.due.extend(waiting);
            self.fire_due()
        } else if std::mem::take(&mut state.dirty) {
            self.start(&run);
            vec![run]
        } else {
            state.in_flight = state.in_flight.saturating_sub(1);
            Vec::new()
        }
    }

    /// Every coalesced rule known.
    pub fn coalesced(&self) -> Vec<RunKey> {
        self.states
            .iter()
            .filter(|(_, s)| s.coalesce)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The loop reconciles: every coalesced rule runs (now, or after the run in flight).
    pub fn kick(&mut self) -> Vec<RunKey> {
        for run in self.coalesced() {
            if !self.due.contains(&run) {
                self.due.push(run);
            }
        }
        self.fire_due()
    }

    /// The rules now, each run with whether it is coalesced: runs no rule asks for any more are
    /// forgotten (unless in flight). Coalesced rules new since the last call are known from now
    /// on (a kick runs them, though no notification matched them yet) and are returned to run
    /// once now: a rule installed after its hash was written (a new queue's first message,
    /// taken and acknowledged meanwhile) settles that from its first snapshot at once.
    pub fn set_rules(&mut self, live: &HashMap<RunKey, bool>) -> Vec<RunKey> {
        self.states
            .retain(|k, s| live.contains_key(k) || s.in_flight > 0);
        self.due.retain(|k| live.contains_key(k));
        for (run, coalesce) in live {
            if self.states.contains_key(run) {
                continue;
            }
            self.states.insert(
                run.clone(),
                RunState {
                    coalesce: *coalesce,
                    ..RunState::default()
                },
            );
            if *coalesce {
                self.due.push(run.clone());
            }
        }
        self.fire_due()
    }

    fn start(&mut self, run: &RunKey) {
        for k in followed(&run.1) {
            *self.busy.entry(k.clone()).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_adapters::{FollowTags, Read, ReadRequest, Tag};
    use std::collections::HashSet;

    fn plain(key: &str) -> RunKey {
        (
            0,
            vec![PrefetchRead::Read(Read::new(
                Tag(0),
                ReadRequest::HGetAll(key.into()),
            ))],
        )
    }

    fn follow(ack: &str, hash: &str) -> RunKey {
        (
            0,
            vec![
                PrefetchRead::Read(Read::new(Tag(0), ReadRequest::SMembers(ack.into()))),
                PrefetchRead::FollowHash {
                    key: hash.into(),
                    departed_to: None,
                    tags: FollowTags {
                        snapshot: Tag(1),
                        new: Tag(2),
                        departed: Tag(3),
                    },
                },
            ],
        )
    }

    #[test]
    fn a_plain_rule_fires_per_notification_up_to_the_bound_then_one_trailing_run() {
        let mut s = Schedule::default();
        let run = plain("unacked");
        for _ in 0..MAX_IN_FLIGHT {
            assert_eq!(s.on_match(run.clone(), false), Some(run.clone()));
        }
        // A burst past the bound: one trailing run, whatever its size.
        for _ in 0..5 {
            assert_eq!(s.on_match(run.clone(), false), None);
        }
        assert_eq!(
            s.on_done(run.clone()),
            vec![run.clone()],
            "the trailing run"
        );
        for _ in 0..MAX_IN_FLIGHT {
            assert!(s.on_done(run.clone()).is_empty());
        }
        // All done: the next notification fires at once again.
        assert_eq!(s.on_match(run.clone(), false), Some(run));
    }

    #[test]
    fn a_coalesced_rule_runs_once_at_a_time_and_a_burst_costs_one_trailing_run() {
        let mut s = Schedule::default();
        let run = follow("acks", "q.msgs");
        assert_eq!(s.on_match(run.clone(), true), None, "due, not fired");
        assert!(s.has_due());
        assert_eq!(s.fire_due(), vec![run.clone()]);
        for _ in 0..10 {
            s.on_match(run.clone(), true);
        }
        assert!(s.fire_due().is_empty(), "running: marked dirty");
        assert_eq!(
            s.on_done(run.clone()),
            vec![run.clone()],
            "one trailing run"
        );
        assert!(s.on_done(run).is_empty(), "nothing left");
    }

    #[test]
    fn runs_following_one_hash_never_overlap() {
        let mut s = Schedule::default();
        let a = follow("acks.worker1", "q.msgs");
        let b = follow("acks.worker2", "q.msgs");
        s.on_match(a.clone(), true);
        assert_eq!(s.fire_due(), vec![a.clone()]);
        s.on_match(b.clone(), true);
        assert!(s.fire_due().is_empty(), "q.msgs is being read by a");
        assert_eq!(s.on_done(a), vec![b.clone()], "b runs once a is done");
        assert!(s.on_done(b).is_empty());
    }

    #[test]
    fn a_kick_runs_every_coalesced_rule_and_the_busy_ones_after() {
        let mut s = Schedule::default();
        let a = follow("acks.1", "a.msgs");
        let b = follow("acks.2", "b.msgs");
        let p = plain("unacked");
        s.on_match(a.clone(), true);
        s.on_match(b.clone(), true);
        assert_eq!(s.fire_due().len(), 2);
        assert_eq!(s.on_match(p.clone(), false), Some(p.clone()));
        assert!(s.on_done(b.clone()).is_empty());
        // a still runs: it gets a trailing run; b runs now; plain rules are not kicked.
        assert_eq!(s.kick(), vec![b.clone()]);
        assert_eq!(s.on_done(a.clone()), vec![a.clone()]);
        let coalesced: HashSet<RunKey> = s.coalesced().into_iter().collect();
        assert_eq!(coalesced, HashSet::from([a, b]));
    }

    #[test]
    fn rules_dropped_are_forgotten_unless_running() {
        let mut s = Schedule::default();
        let a = follow("acks.1", "a.msgs");
        let b = follow("acks.2", "b.msgs");
        s.on_match(a.clone(), true);
        s.on_match(b.clone(), true);
        s.fire_due();
        assert!(s.on_done(b.clone()).is_empty());
        s.set_rules(&HashMap::new());
        assert_eq!(s.coalesced(), vec![a.clone()], "a is still running");
        assert!(s.on_done(a).is_empty());
        s.set_rules(&HashMap::new());
        assert!(s.coalesced().is_empty());
        assert!(s.kick().is_empty());
    }

    #[test]
    fn a_new_coalesced_rule_runs_at_once_and_at_every_kick_before_any_notification() {
        let mut s = Schedule::default();
        let a = follow("acks.1", "a.msgs");
        let p = plain("unacked");
        let rules = HashMap::from([(a.clone(), true), (p.clone(), false)]);
        assert_eq!(
            s.set_rules(&rules),
            vec![a.clone()],
            "its first snapshot, now"
        );
        assert!(s.on_done(a.clone()).is_empty());
        assert!(
            s.set_rules(&rules).is_empty(),
            "known already: not run again"
        );
        assert_eq!(s.kick(), vec![a.clone()], "kicked, never notified");
        assert!(s.on_done(a).is_empty());
    }
}
