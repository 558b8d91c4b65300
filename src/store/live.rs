//! The live tail: what the fold thread has published but the sink has not yet written.
//!
//! The fold thread (`writer.rs`) publishes a transition as soon as it has folded it; the sink
//! thread (`sink.rs`) writes to the file once per flush interval. So the file can be up to one
//! flush interval behind the live view. Readers merge this tail over what the file answers, so
//! the API never shows a task, a count or a queue older than what `/api/events` already said.
//!
//! Each fold round has a number; a tail entry remembers the round that last changed it. Once the
//! sink has written every round up to `r`, entries last changed at or before `r` leave the tail;
//! newer ones stay, with the state the file now holds for them and only their unwritten
//! transitions.
//!
//! Consistency is a sequence lock: the sink bumps [`LiveTail::generation`] to an odd number
//! before a commit and to the next even number after it has taken the written entries out. A
//! reader takes the generation, queries the file, takes its snapshot of the tail, and starts
//! again when the generation was odd or moved meanwhile (the file and the snapshot could then
//! both hold a change, and a merge would count it twice).

use broker_adapters::{Broker, QueueSample, Task, TaskState, Transition};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// A task's key: broker and id.
pub(super) type Key = (Broker, String);

/// One unwritten task: its live version, the state its stored row has (`None` when it has
/// none yet) and the transitions not yet in the file.
#[derive(Debug, Clone)]
pub(super) struct TailTask {
    pub task: Arc<Task>,
    pub stored_state: Option<TaskState>,
    pub transitions: Vec<Transition>,
    /// The `seq` of each of `transitions` (increasing).
    seqs: Vec<i64>,
    /// The fold round that last changed the task.
    round: u64,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    tasks: HashMap<Key, TailTask>,
    /// The newest unwritten sample of each queue, with its round.
    queues: HashMap<(Broker, String), (QueueSample, u64)>,
}

/// Shared between the writer threads (the only ones that change it) and the readers.
#[derive(Debug, Default)]
pub(super) struct LiveTail {
    inner: RwLock<Inner>,
}

/// One task a fold round changed, for [`LiveTail::put_round`].
pub(super) struct TailChange<'a> {
    pub key: &'a Key,
    pub task: &'a Arc<Task>,
    /// The state of the version before the round (`None`: a new task). Used only when the
    /// task enters the tail: that version is then the one in the file.
    pub prior_state: Option<TaskState>,
    /// The round's transitions of the task, with their `seq`.
    pub transitions: Vec<(i64, Transition)>,
}

/// What a reader saw of the tail.
#[derive(Debug, Clone)]
pub(super) struct Snapshot<T> {
    pub generation: u64,
    pub value: T,
}

impl LiveTail {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-changed in a way that matters
        // more than losing the live view: keep serving.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Whether no commit was under way at `generation` and none started since.
    pub fn unchanged_since(&self, generation: u64) -> bool {
        generation % 2 == 0 && self.generation() == generation
    }

    /// Sleeps a little while a commit is under way (a reader about to try again).
    pub fn wait_out_commit(&self) {
        if self.generation() % 2 == 1 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Records what fold round `round` changed: tasks (their live versions and new
    /// transitions) and queue samples.
    pub fn put_round<'a>(
        &self,
        round: u64,
        changes: impl IntoIterator<Item = TailChange<'a>>,
        samples: &[QueueSample],
    ) {
        let mut inner = self.write();
        for change in changes {
            // The key is cloned only for a task new to the tail.
            if !inner.tasks.contains_key(change.key) {
                inner.tasks.insert(
                    change.key.clone(),
                    TailTask {
                        task: Arc::clone(change.task),
                        stored_state: change.prior_state,
                        transitions: Vec::new(),
                        seqs: Vec::new(),
                        round,
                    },
                );
            }
            let Some(entry) = inner.tasks.get_mut(change.key) else {
                continue;
            };
            entry.task = Arc::clone(change.task);
            entry.round = round;
            for (seq, t) in change.transitions {
                entry.seqs.push(seq);
                entry.transitions.push(t);
            }
        }
        for sample in samples {
            let key = (sample.broker, sample.name.clone());
            match inner.queues.get(&key) {
                Some((s, _)) if s.sampled_at > sample.sampled_at => {}
                _ => {
                    inner.queues.insert(key, (sample.clone(), round));
                }
            }
        }
    }

    /// Marks the start of a commit (readers retry until [`Self::written`]).
    pub fn begin_commit(&self) {
        let mut inner = self.write();
        if inner.generation % 2 == 0 {
            inner.generation += 1;
        }
    }

    /// After a change of the file that is not a batch (a housekeeping step).
    pub fn end_commit(&self) {
        let mut inner = self.write();
        inner.generation += if inner.generation % 2 == 0 { 2 } else { 1 };
    }

    /// After a commit (or after giving a batch up) of every round up to `round`, whose last
    /// transition is `max_seq` and whose tasks' written states `written` tells: what the file
    /// now holds leaves the tail.
    pub fn written(&self, round: u64, max_seq: i64, written: impl Fn(&Key) -> Option<TaskState>) {
        let mut inner = self.write();
        inner.tasks.retain(|key, t| {
            if t.round <= round {
                return false;
            }
            if let Some(state) = written(key) {
                t.stored_state = Some(state);
            }
            let keep_from = t.seqs.iter().take_while(|s| **s <= max_seq).count();
            t.seqs.drain(..keep_from);
            t.transitions.drain(..keep_from);
            true
        });
        inner.queues.retain(|_, (_, r)| *r > round);
        inner.generation += if inner.generation % 2 == 0 { 2 } else { 1 };
    }

    /// The live version of every task of the tail whose id is `id` (any broker).
    pub fn tasks_with_id(&self, id: &str) -> Snapshot<Vec<TailTask>> {
        let inner = self.read();
        Snapshot {
            generation: inner.generation,
            value: inner
                .tasks
                .iter()
                .filter(|(k, _)| k.1 == id)
                .map(|(_, t)| t.clone())
                .collect(),
        }
    }

    /// The live versions of `keys` that are in the tail.
    pub fn tasks_of(&self, keys: &[Key]) -> Snapshot<HashMap<Key, Task>> {
        let inner = self.read();
        Snapshot {
            generation: inner.generation,
            value: keys
                .iter()
                .filter_map(|k| {
                    inner
                        .tasks
                        .get(k)
                        .map(|t| (k.clone(), Task::clone(&t.task)))
                })
                .collect(),
        }
    }

    /// The live version of every tail task `keep` accepts (its uncommitted transitions given).
    pub fn tasks_where(&self, keep: impl Fn(&Task, &[Transition]) -> bool) -> Vec<Task> {
        self.read()
            .tasks
            .values()
            .filter(|t| keep(&t.task, &t.transitions))
            .map(|t| Task::clone(&t.task))
            .collect()
    }

    /// How the tail changes the all-time counts by (broker, state).
    pub fn count_deltas(&self) -> Snapshot<BTreeMap<(Broker, TaskState), i64>> {
        let inner = self.read();
        let mut deltas = BTreeMap::new();
        for t in inner.tasks.values() {
            if t.stored_state == Some(t.task.state) {
                continue;
            }
            *deltas.entry((t.task.broker, t.task.state)).or_insert(0) += 1;
            if let Some(stored) = t.stored_state {
                *deltas.entry((t.task.broker, stored)).or_insert(0) -= 1;
            }
        }
        Snapshot {
            generation: inner.generation,
            value: deltas,
        }
    }

    /// The newest uncommitted sample of every queue that has one.
    pub fn queues(&self) -> Snapshot<Vec<QueueSample>> {
        let inner = self.read();
        Snapshot {
            generation: inner.generation,
            value: inner.queues.values().map(|(s, _)| s.clone()).collect(),
        }
    }
}

/// Runs `query` (a read of the file) and merges the tail's snapshot into its answer, again when
/// a commit emptied the tail in between (at most a few times: a commit is at most once per
/// flush interval).
pub(super) fn merged<S, T, E>(
    tail: &LiveTail,
    snapshot: impl Fn(&LiveTail) -> Snapshot<S>,
    query: impl FnMut() -> Result<T, E>,
    merge: impl Fn(T, S) -> T,
) -> Result<T, E> {
    let mut retries = Retries::new();
    merged_while(tail, snapshot, query, merge, || retries.again())
}

/// [`merged`], tried again while `again` says so (the clock is the caller's: tests drive it).
fn merged_while<S, T, E>(
    tail: &LiveTail,
    snapshot: impl Fn(&LiveTail) -> Snapshot<S>,
    mut query: impl FnMut() -> Result<T, E>,
    merge: impl Fn(T, S) -> T,
    mut again: impl FnMut() -> bool,
) -> Result<T, E> {
    loop {
        let snap = snapshot(tail);
        let answer = query()?;
        if tail.unchanged_since(snap.generation) || !again() {
            return Ok(merge(answer, snap.value));
        }
        tail.wait_out_commit();
    }
}

/// How many times a read is tried before it merges what it has (a commit lasts tens of ms).
const MAX_ATTEMPTS: u32 = 40;

/// How long a read keeps trying. Under steady ingest a commit lands once per flush interval,
/// so a read slower than that (a search of 10M tasks: ~2 s) finds one under way at every try:
/// tried up to 40 times, it ran past the request timeout (30 s). Past this budget it merges what
/// it has: at worst a task committed during the read shows its version of the read's start.
const RETRY_BUDGET: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether a read of the file and the tail should be tried again (see [`MAX_ATTEMPTS`] and
/// [`RETRY_BUDGET`]).
pub(super) struct Retries {
    started: std::time::Instant,
    attempts: u32,
}

impl Retries {
    pub(super) fn new() -> Retries {
        Retries {
            started: std::time::Instant::now(),
            attempts: 0,
        }
    }

    /// Counts an attempt; true when another one is allowed.
    pub(super) fn again(&mut self) -> bool {
        self.again_after(self.started.elapsed())
    }

    /// [`Self::again`], `elapsed` after the first attempt started.
    fn again_after(&mut self, elapsed: std::time::Duration) -> bool {
        self.attempts += 1;
        self.attempts < MAX_ATTEMPTS && elapsed < RETRY_BUDGET
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    /// A read that commits keep overtaking (steady ingest) is tried again only within the
    /// budget: a slow one merges what it has instead of running 40 times.
    #[test]
    fn a_slow_read_overtaken_by_commits_is_not_tried_forty_times() {
        use std::time::Duration;
        let tail = LiveTail::default();
        let generation_only = |t: &LiveTail| Snapshot {
            generation: t.generation(),
            value: (),
        };
        // Each read takes 200 ms of a clock the test drives (real sleeps made this flaky on a
        // loaded machine, CI49).
        let elapsed = std::cell::Cell::new(Duration::ZERO);
        let mut retries = Retries::new();
        let mut tries = 0;
        let answer = merged_while(
            &tail,
            generation_only,
            || {
                tries += 1;
                // A commit starts and ends while the file is read.
                tail.begin_commit();
                elapsed.set(elapsed.get() + Duration::from_millis(200));
                tail.end_commit();
                Ok::<_, ()>(tries)
            },
            |answer, ()| answer,
            || retries.again_after(elapsed.get()),
        );
        // Ended at 200 and 400 ms: tried again; at 600 ms, past the 500 ms budget: merged.
        assert_eq!(answer, Ok(3), "200 ms reads within the 500 ms budget");
        // A fast read is tried again as often as it takes (up to 40 times).
        let mut fast = 0;
        let answer = merged(
            &tail,
            generation_only,
            || {
                fast += 1;
                if fast < 10 {
                    tail.begin_commit();
                    tail.end_commit();
                }
                Ok::<_, ()>(fast)
            },
            |answer, ()| answer,
        );
        assert_eq!(answer, Ok(10));
    }

    fn task(id: &str, state: TaskState, secs: i64) -> Arc<Task> {
        let at =
            Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(secs);
        let mut t = Task::new(Broker::Celery, id, at);
        t.state = state;
        t.updated_at = at;
        Arc::new(t)
    }

    fn transition(t: &Task) -> Transition {
        Transition {
            task_id: t.id.clone(),
            broker: t.broker,
            state: t.state,
            at: t.updated_at,
            worker: None,
            detail: None,
            fingerprint: None,
        }
    }

    /// A commit of round 1 while round 2 already changed the task again: the task stays in the
    /// tail with the state the file now has and only round 2's transition, so counts and
    /// timelines merged over the file count nothing twice.
    #[test]
    fn a_commit_of_earlier_rounds_keeps_what_later_rounds_changed() {
        let tail = LiveTail::default();
        let (key_a, key_b) = (
            (Broker::Celery, "a".to_string()),
            (Broker::Celery, "b".to_string()),
        );
        let queued = task("a", TaskState::Queued, 0);
        tail.put_round(
            1,
            [TailChange {
                key: &key_a,
                task: &queued,
                prior_state: None,
                transitions: vec![(1, transition(&queued))],
            }],
            &[],
        );
        let running = task("a", TaskState::Running, 1);
        let other = task("b", TaskState::Queued, 1);
        tail.put_round(
            2,
            [
                TailChange {
                    key: &key_a,
                    task: &running,
                    prior_state: Some(TaskState::Queued),
                    transitions: vec![(2, transition(&running))],
                },
                TailChange {
                    key: &key_b,
                    task: &other,
                    prior_state: None,
                    transitions: vec![(3, transition(&other))],
                },
            ],
            &[],
        );
        let before = tail.generation();
        tail.begin_commit();
        assert!(
            !tail.unchanged_since(tail.generation()),
            "mid-commit is never stable"
        );
        let written = HashMap::from([((Broker::Celery, "a".to_string()), TaskState::Queued)]);
        tail.written(1, 1, |k| written.get(k).copied());
        assert!(tail.unchanged_since(tail.generation()));
        assert_eq!(tail.generation(), before + 2);
        let a = tail.tasks_with_id("a").value;
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].task.state, TaskState::Running);
        assert_eq!(a[0].stored_state, Some(TaskState::Queued));
        assert_eq!(a[0].transitions.len(), 1);
        assert_eq!(a[0].transitions[0].state, TaskState::Running);
        let deltas = tail.count_deltas().value;
        assert_eq!(deltas.get(&(Broker::Celery, TaskState::Queued)), Some(&0));
        assert_eq!(deltas.get(&(Broker::Celery, TaskState::Running)), Some(&1));
        // Round 2 written: the tail is empty.
        tail.begin_commit();
        tail.written(2, 3, |_| None);
        assert!(tail.tasks_with_id("a").value.is_empty());
        assert!(tail.tasks_with_id("b").value.is_empty());
    }
}
