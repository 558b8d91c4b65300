//! Drives any [`Adapter`] against a [`FakeRedis`] the way the ingest layer does, without I/O:
//! notifications to `on_key_event` (when a key pattern of the adapter matches), the adapter's
//! prefetch rules (`interest().prefetch`, with [`PrefetchRead::FollowHash`] snapshots kept here
//! as the prefetcher keeps them), reconciliation, sampling and scans; every read the adapter
//! asks for (and every follow-up read its replies ask for) is answered from the fake's state
//! until none is left. Task observations are folded with the shared state machine, so a test
//! can ask what a task's state is, as the store would show it.
//!
//! Reads run synchronously after each delivered notification (after the adapter's
//! `end_of_batch`): the fake's state at that moment is what a prompt read would see. Writes of one Lua script call should be applied together
//! before [`Driver::deliver`] (a script is atomic: no read runs inside it).

use super::fake_redis::{glob_match, FakeRedis, KeyEvent};
use broker_adapters::{state, worker_state};
use broker_adapters::{
    Adapter, DecodeError, FollowTags, Observation, OpenTask, Output, PrefetchRead, QueueSample,
    Read, ReadRequest, Task, TaskEvent, TaskObservation, TaskState, Worker,
};
use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// A followed hash's `departed_to` and tags, beside its `HKEYS` read.
type Followed<'r> = (&'r Option<String>, FollowTags);

pub struct Driver<A: Adapter> {
    pub redis: FakeRedis,
    pub adapter: A,
    /// The clock handed to the adapter; [`Driver::advance`] moves it.
    pub now: DateTime<Utc>,
    /// Every observation, in the order the adapter produced them.
    pub observations: Vec<Observation>,
    pub decode_errors: Vec<DecodeError>,
    pub samples: Vec<QueueSample>,
    /// Every read answered, in order (the prefetcher's included).
    pub reads: Vec<ReadRequest>,
    /// Tasks as the state machine folds the observations.
    tasks: BTreeMap<String, Task>,
    /// The prefetcher's last `HKEYS` snapshot of each followed hash.
    snapshots: HashMap<String, HashSet<String>>,
    /// Followed hashes notified since their last snapshot.
    changed: HashSet<String>,
    /// Keys whose first sight the prefetcher read (each is read once).
    first_seen: HashSet<String>,
}

impl<A: Adapter> Driver<A> {
    pub fn new(adapter: A) -> Driver<A> {
        Driver {
            redis: FakeRedis::new(),
            adapter,
            now: DateTime::parse_from_rfc3339("2026-12-06T12:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            observations: Vec::new(),
            decode_errors: Vec::new(),
            samples: Vec::new(),
            reads: Vec::new(),
            tasks: BTreeMap::new(),
            snapshots: HashMap::new(),
            changed: HashSet::new(),
            first_seen: HashSet::new(),
        }
    }

    pub fn advance(&mut self, ms: i64) {
        self.now += Duration::milliseconds(ms);
        self.redis.advance_to(self.now.timestamp_millis());
    }

    /// Delivers every notification the fake's writes caused since the last delivery, in order.
    pub fn deliver(&mut self) {
        for KeyEvent { key, op } in self.redis.take_events() {
            self.notify(&key, &op);
        }
    }

    /// Delivers the pending notifications as one batch of a loop that lagged behind them: every
    /// `on_key_event` first, their reads then answered in rounds (follow-ups after the whole
    /// round), as the ingest loop pipelines a batch. Plain prefetch rules run at each
    /// notification; a coalesced rule runs once, after the burst (its trailing run).
    pub fn deliver_batch(&mut self) {
        let mut reads = Vec::new();
        let mut coalesced = Vec::new();
        for KeyEvent { key, op } in self.redis.take_events() {
            reads.extend(self.key_event(&key, &op, Some(&mut coalesced)));
        }
        for run in coalesced {
            self.run_prefetch(&run, false);
        }
        self.pump(reads);
    }

    /// Delivers the pending notifications to a loop that a worker outruns: the prefetcher's
    /// reads (its rules and first sights) run at each notification, then `meanwhile` writes (an
    /// idle worker fetching and acknowledging), then the loop's reads for those notifications are
    /// answered, then the notifications of `meanwhile` are delivered.
    pub fn deliver_outrun(&mut self, meanwhile: impl FnOnce(&mut FakeRedis)) {
        let mut reads = Vec::new();
        for KeyEvent { key, op } in self.redis.take_events() {
            reads.extend(self.key_event(&key, &op, None));
        }
        meanwhile(&mut self.redis);
        self.pump(reads);
        self.deliver();
    }

    /// Delivers the messages published since the last delivery, in order, to the adapter when
    /// one of its channel patterns matches (as its pub/sub subscription would).
    pub fn deliver_published(&mut self) {
        for (channel, payload) in self.redis.take_published() {
            self.message(&channel, &payload);
        }
    }

    /// One pub/sub message on `channel`; then the reads it asks for are answered.
    pub fn message(&mut self, channel: &str, payload: &[u8]) {
        let subscribed = self
            .adapter
            .interest()
            .channel_patterns
            .iter()
            .any(|p| glob_match(p, channel));
        if subscribed {
            let out = self.adapter.on_message(channel, payload, self.now);
            let more = self.absorb(out);
            self.pump(more);
        }
    }

    /// Discards the published messages not delivered yet (lost while disconnected).
    pub fn lose_published(&mut self) {
        self.redis.take_published();
    }

    /// Discards the pending notifications (lost while disconnected, say).
    pub fn lose_notifications(&mut self) {
        self.redis.take_events();
    }

    /// One notification: to the adapter when one of its key patterns matches, and to the
    /// prefetch rules on that key and op (each distinct set of reads run once, answered at
    /// once); then the adapter's reads are answered.
    pub fn notify(&mut self, key: &str, op: &str) {
        let reads = self.key_event(key, op, None);
        self.pump(reads);
    }

    /// A notification's prefetch runs (answered at once, or the coalesced ones added to
    /// `coalesced` when given) and the reads the adapter asks for.
    fn key_event(
        &mut self,
        key: &str,
        op: &str,
        mut coalesced: Option<&mut Vec<Vec<PrefetchRead>>>,
    ) -> Vec<Read> {
        let interest = self.adapter.interest();
        self.retain_snapshots(&interest.prefetch);
        let ruled = interest.prefetch.iter().any(|r| r.key == key);
        // A followed hash with a snapshot is marked changed when the notification runs a rule
        // (as the prefetcher does: an op no rule names, `del` say, marks nothing).
        let runs_a_rule = interest
            .prefetch
            .iter()
            .any(|rule| rule.key == key && rule.ops.iter().any(|o| o == op));
        if runs_a_rule && self.snapshots.contains_key(key) {
            self.changed.insert(key.to_string());
        }
        let reads = if interest.key_patterns.iter().any(|p| glob_match(p, key)) {
            self.adapter.on_key_event(key, op, self.now)
        } else {
            Vec::new()
        };
        let mut runs: Vec<Vec<PrefetchRead>> = Vec::new();
        for rule in interest.prefetch {
            if rule.key != key || !rule.ops.iter().any(|o| o == op) {
                continue;
            }
            let runs = match coalesced.as_deref_mut() {
                Some(later) if rule.coalesce => later,
                _ => &mut runs,
            };
            if !runs.contains(&rule.reads) {
                runs.push(rule.reads);
            }
        }
        for run in runs {
            self.run_prefetch(&run, false);
        }
        // A key no rule covers is read at its first sight, as the prefetcher does it.
        if !ruled && !self.first_seen.contains(key) {
            let first: Vec<Read> = interest
                .first_sight
                .iter()
                .filter(|f| f.ops.iter().any(|o| o == op) && glob_match(&f.pattern, key))
                .map(|f| f.read_of(key))
                .collect();
            if !first.is_empty() {
                self.first_seen.insert(key.to_string());
            }
            for read in first {
                let reply = self.redis.read(&read.request);
                self.reads.push(read.request.clone());
                let out = self.adapter.handle_reply(&read, reply, self.now);
                let more = self.absorb(out);
                self.pump(more);
            }
        }
        reads
    }

    /// One run of a prefetch rule, as `src/ingest/prefetch` does it: the followed hashes are
    /// read only when one was notified since its last snapshot (or has none, or `force`); their
    /// new fields (and the departed ones, looked up in `departed_to`) are read next, and the
    /// adapter gets those `HMGET` replies first, then the first pipeline's replies in order.
    fn run_prefetch(&mut self, rule: &[PrefetchRead], force: bool) {
        let mut any = force;
        for read in rule {
            if let PrefetchRead::FollowHash { key, .. } = read {
                any |= self.changed.remove(key) | !self.snapshots.contains_key(key);
            }
        }
        let first: Vec<(Read, Option<Followed>)> = rule
            .iter()
            .filter(|r| any || matches!(r, PrefetchRead::Read(_)))
            .map(|r| match r {
                PrefetchRead::Read(r) => (r.clone(), None),
                PrefetchRead::FollowHash {
                    key,
                    departed_to,
                    tags,
                } => (
                    Read::new(tags.snapshot, ReadRequest::HKeys(key.clone())),
                    Some((departed_to, *tags)),
                ),
            })
            .collect();
        let replies: Vec<_> = first
            .iter()
            .map(|(r, _)| self.redis.read(&r.request))
            .collect();
        let mut second = Vec::new();
        for ((read, follow), reply) in first.iter().zip(&replies) {
            let Some((departed_to, tags)) = follow else {
                continue;
            };
            let key = read.request.key().to_string();
            let current: HashSet<String> = reply.clone().into_strings();
            let previous = self.snapshots.insert(key.clone(), current.clone());
            let mut new: Vec<String> = match &previous {
                Some(prev) => current.difference(prev).cloned().collect(),
                None => current.iter().cloned().collect(),
            };
            let mut departed: Vec<String> = previous
                .map(|prev| prev.difference(&current).cloned().collect())
                .unwrap_or_default();
            if !new.is_empty() {
                new.sort_unstable();
                second.push(Read::new(
                    tags.new,
                    ReadRequest::HMGet {
                        key: key.clone(),
                        fields: new,
                    },
                ));
            }
            if let Some(to) = departed_to.as_ref().filter(|_| !departed.is_empty()) {
                departed.sort_unstable();
                second.push(Read::new(
                    tags.departed,
                    ReadRequest::HMGet {
                        key: to.clone(),
                        fields: departed,
                    },
                ));
            }
        }
        let second: Vec<_> = second
            .into_iter()
            .map(|r| {
                let reply = self.redis.read(&r.request);
                (r, reply)
            })
            .collect();
        let mut follow_up = Vec::new();
        let answers = second
            .into_iter()
            .chain(first.into_iter().map(|(r, _)| r).zip(replies));
        for (read, reply) in answers {
            self.reads.push(read.request.clone());
            let out = self.adapter.handle_reply(&read, reply, self.now);
            follow_up.extend(self.absorb(out));
        }
        self.pump(follow_up);
    }

    /// Answers `reads` and every follow-up they cause, breadth first (one pipelined round
    /// after another).
    pub fn pump(&mut self, reads: Vec<Read>) {
        let mut queue: VecDeque<Read> = reads.into();
        let mut answered = 0;
        loop {
            // What the adapter deferred to the end of the notifications (the ingest loop asks
            // at each round).
            let out = self.adapter.end_of_batch(self.now);
            queue.extend(self.absorb(out));
            let Some(read) = queue.pop_front() else {
                break;
            };
            answered += 1;
            assert!(answered < 100_000, "the adapter keeps asking: {read:?}");
            let reply = self.redis.read(&read.request);
            self.reads.push(read.request.clone());
            let out = self.adapter.handle_reply(&read, reply, self.now);
            queue.extend(self.absorb(out));
        }
    }

    /// An observation from outside the adapter (the abandon sweep's, say), folded like the rest.
    pub fn observe(&mut self, obs: TaskObservation) {
        self.absorb(Output {
            observations: vec![Observation::Task(obs)],
            ..Output::default()
        });
    }

    fn absorb(&mut self, out: Output) -> Vec<Read> {
        for obs in &out.observations {
            if let Observation::Task(t) = obs {
                let applied = state::apply(self.tasks.remove(&t.task_id), t);
                self.tasks.insert(t.task_id.clone(), applied.task);
            }
        }
        self.observations.extend(out.observations);
        self.decode_errors.extend(out.decode_errors);
        self.samples.extend(out.queue_samples);
        out.follow_up
    }

    /// The tasks not final yet, as ingest lists them for a reconciliation.
    fn open_tasks(&self) -> Vec<OpenTask> {
        self.tasks
            .values()
            .filter(|t| !t.state.is_final())
            .map(|t| OpenTask {
                id: t.id.clone(),
                queue: t.queue.clone(),
                name: t.name.clone(),
            })
            .collect()
    }

    /// The periodic reconciliation: the adapter's reads (with the tasks still open), then every
    /// coalesced prefetch rule, forced.
    pub fn reconcile(&mut self) {
        let reads = self.adapter.reconcile(&self.open_tasks(), self.now);
        self.pump(reads);
        let prefetch = self.adapter.interest().prefetch;
        self.retain_snapshots(&prefetch);
        let mut runs: Vec<Vec<PrefetchRead>> = Vec::new();
        for rule in prefetch {
            if rule.coalesce && !runs.contains(&rule.reads) {
                runs.push(rule.reads);
            }
        }
        for reads in runs {
            self.run_prefetch(&reads, true);
        }
    }

    /// A reconciliation whose pipeline a worker interleaves: the first `answered` of its reads
    /// are answered, then `meanwhile` writes (Redis runs other clients' commands between two of
    /// one pipeline), then the rest and their follow-ups; then the notifications of `meanwhile`
    /// are delivered.
    pub fn reconcile_interleaved(
        &mut self,
        answered: usize,
        meanwhile: impl FnOnce(&mut FakeRedis),
    ) {
        let mut reads = self.adapter.reconcile(&self.open_tasks(), self.now);
        let rest = reads.split_off(answered.min(reads.len()));
        self.pump(reads);
        meanwhile(&mut self.redis);
        self.pump(rest);
        self.deliver();
    }

    /// A sampling tick.
    pub fn sample(&mut self) {
        let reads = self.adapter.sample_queues(self.now);
        self.pump(reads);
    }

    /// A SCAN pass over the adapter's scan patterns.
    pub fn scan(&mut self) {
        for pattern in self.adapter.interest().scan_patterns {
            let keys: Vec<String> = self
                .redis
                .keys()
                .filter(|k| glob_match(&pattern, k))
                .cloned()
                .collect();
            if !keys.is_empty() {
                let reads = self.adapter.on_scan(&pattern, keys, self.now);
                self.pump(reads);
            }
        }
    }

    /// A connection gap: the adapter drops its snapshots. The prefetcher keeps its own (it
    /// forgets only the hashes no rule follows any more), as `src/ingest/prefetch` does.
    pub fn gap(&mut self) {
        self.adapter.on_gap();
    }

    /// The prefetcher's `retain`: snapshots of hashes no rule follows any more are forgotten.
    fn retain_snapshots(&mut self, prefetch: &[broker_adapters::Prefetch]) {
        let followed: HashSet<&String> = prefetch
            .iter()
            .flat_map(|rule| &rule.reads)
            .filter_map(|r| match r {
                PrefetchRead::FollowHash { key, .. } => Some(key),
                PrefetchRead::Read(_) => None,
            })
            .collect();
        self.snapshots.retain(|k, _| followed.contains(k));
    }

    /// The workers as the worker state machine folds the worker observations so far.
    pub fn workers(&self) -> Vec<Worker> {
        let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
        for obs in &self.observations {
            if let Observation::Worker(w) = obs {
                let folded = worker_state::fold(workers.get(&w.id), w);
                workers.insert(w.id.clone(), folded);
            }
        }
        workers.into_values().collect()
    }

    /// The shared abandon sweep at the driver's clock (`abandon_after_ms` of silence), its
    /// observations folded like the rest.
    pub fn sweep(&mut self, abandon_after_ms: i64) {
        let running: Vec<Task> = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Running)
            .cloned()
            .collect();
        let found = state::find_abandoned(
            &running,
            &self.workers(),
            self.now,
            Duration::milliseconds(abandon_after_ms),
        );
        for obs in found {
            self.observe(obs);
        }
    }

    /// The events of `id`'s observations, in order.
    pub fn events_of(&self, id: &str) -> Vec<TaskEvent> {
        self.observations_of(id).iter().map(|o| o.event).collect()
    }

    pub fn task(&self, id: &str) -> &Task {
        self.tasks
            .get(id)
            .unwrap_or_else(|| panic!("no task {id}; observations: {:#?}", self.observations))
    }

    pub fn state(&self, id: &str) -> TaskState {
        self.task(id).state
    }

    /// The task observations about `id`, in order.
    pub fn observations_of(&self, id: &str) -> Vec<&TaskObservation> {
        self.observations
            .iter()
            .filter_map(|o| match o {
                Observation::Task(t) if t.task_id == id => Some(t),
                _ => None,
            })
            .collect()
    }
}
