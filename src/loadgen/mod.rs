//! The load generator: task lifecycles written to Redis in each broker's own format, shared by
//! `taskscope demo` and the benchmarks (package `taskscope-bench` under `bench/`).
//!
//! Each broker module turns one lifecycle step of one task into the Redis commands the real
//! library issues for it (the shapes captured under `broker-adapters/tests/fixtures/`), so the
//! generator plays producer and worker at once. [`Driver`] moves tasks through their steps one
//! *tick* at a time; a tick's commands go out as one pipeline:
//!
//! 1. running tasks whose (simulated) runtime is over finish: success, failure, or a failed
//!    first attempt that is requeued (a retry);
//! 2. Dramatiq retries wait in the delay queue for their backoff, then move back to the queue;
//! 3. waiting tasks are delivered to the (simulated) worker, oldest first, up to a capacity;
//! 4. new tasks are enqueued.
//!
//! The driver mirrors each Redis list in a `VecDeque`, so a pop pops exactly the task it
//! believes it pops. Ground truth is the [`Outcome`] each task was given.
//!
//! Around the generator, what both of its users need to run it:
//! - [`redis`]: a plain connection and pipelined commands (not the ingest layer's client);
//! - [`sandbox`]: a private `redis-server` and a child `taskscope serve`, killed with us;
//! - [`http`]: a std-only HTTP `GET`, and waiting for a child server to answer.

// fred lives in the Redis I/O layers (clippy.toml): this is one.
#![allow(clippy::disallowed_types)]

pub mod arq;
pub mod bullmq;
pub mod celery;
pub mod dramatiq;
pub mod http;
pub mod redis;
pub mod rq;
pub mod sandbox;
pub mod sidekiq;
pub mod taskiq;

use fred::prelude::Value;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// One Redis command: name and arguments.
pub type Cmd = (&'static str, Vec<Value>);

/// Builds a command from string-like arguments.
pub fn cmd<I, S>(name: &'static str, args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    (
        name,
        args.into_iter().map(|a| Value::from(a.into())).collect(),
    )
}

/// Which broker, and for Celery whether workers send task events (`-E`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Flavor {
    /// Celery without task events: queue, `unacked`, result backend (`SETEX` + `PUBLISH`).
    Celery,
    /// Celery with task events (`-E`): the above plus `task.multi` events on `celeryev`.
    CeleryEvents,
    /// Dramatiq's `RedisBroker` (no Results middleware).
    Dramatiq,
    /// RQ 2+/3 (job hashes, queue lists, registries, results streams).
    Rq,
    /// taskiq's `RedisStreamBroker` with a JSON result backend.
    Taskiq,
    /// arq with a JSON `job_serializer` (job, in-progress, try counter, result keys).
    Arq,
    /// BullMQ 6 (job hash, wait/active lists, completed/failed sets, the events stream).
    Bullmq,
    /// Sidekiq 6.4 (queue list, retry and dead sets, a process's heartbeat and work hash).
    Sidekiq,
}

impl Flavor {
    pub const ALL: [Flavor; 8] = [
        Flavor::Celery,
        Flavor::CeleryEvents,
        Flavor::Dramatiq,
        Flavor::Rq,
        Flavor::Taskiq,
        Flavor::Arq,
        Flavor::Bullmq,
        Flavor::Sidekiq,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Celery => "celery",
            Flavor::CeleryEvents => "celery-events",
            Flavor::Dramatiq => "dramatiq",
            Flavor::Rq => "rq",
            Flavor::Taskiq => "taskiq",
            Flavor::Arq => "arq",
            Flavor::Bullmq => "bullmq",
            Flavor::Sidekiq => "sidekiq",
        }
    }

    /// The `--brokers` name taskscope watches it with.
    pub fn broker(self) -> &'static str {
        match self {
            Flavor::Celery | Flavor::CeleryEvents => "celery",
            Flavor::Dramatiq => "dramatiq",
            Flavor::Rq => "rq",
            Flavor::Taskiq => "taskiq",
            Flavor::Arq => "arq",
            Flavor::Bullmq => "bullmq",
            Flavor::Sidekiq => "sidekiq",
        }
    }

    /// Whether the target says no lifecycle may be lost in this mode. Not Celery
    /// without events, nor Sidekiq: a job a fetcher pops before taskscope reads the list, that
    /// succeeds before the next heartbeat, leaves no trace in Redis.
    pub fn must_not_lose(self) -> bool {
        !matches!(self, Flavor::Celery | Flavor::Sidekiq)
    }

    /// Whether taskscope sees this flavor's successes only at the workers' next heartbeats
    /// (Sidekiq): after the last lifecycle, the generator keeps beating as live workers do.
    pub fn success_needs_heartbeats(self) -> bool {
        matches!(self, Flavor::Sidekiq)
    }
}

/// How a task ends: the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Fails, no retry (Dramatiq: dead-lettered).
    Failure,
    /// The first attempt fails and is retried; the second succeeds.
    RetryThenSuccess,
}

impl Outcome {
    /// The final state taskscope must show.
    pub fn final_state(self) -> &'static str {
        match self {
            Outcome::Success | Outcome::RetryThenSuccess => "success",
            Outcome::Failure => "failure",
        }
    }

    /// The `retries` taskscope must show.
    pub fn retries(self) -> u32 {
        match self {
            Outcome::RetryThenSuccess => 1,
            _ => 0,
        }
    }

    /// 80 % successes, 12 % failures, 8 % retried once, from a number in `0..100`.
    pub fn from_percent(p: u64) -> Outcome {
        match p {
            0..=79 => Outcome::Success,
            80..=91 => Outcome::Failure,
            _ => Outcome::RetryThenSuccess,
        }
    }
}

/// A task the driver is moving through its lifecycle.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub flavor: Flavor,
    pub outcome: Outcome,
    /// 0 for the first attempt, 1 after a retry.
    pub attempt: u32,
    /// A number unique to the task, used for varied arguments.
    pub seq: u64,
    /// The broker's per-delivery id: Celery delivery tag, Dramatiq `redis_message_id`, taskiq
    /// stream entry id, RQ execution id.
    pub delivery: String,
    /// Runtime of the current attempt.
    pub runtime: Duration,
}

/// Tiny deterministic PRNG (xorshift64*): varied arguments and outcomes without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A 32-hex-digit id from the generator's sequence: unique within a run (the low half is a
/// bijection of `seq`) and as random-looking as the uuid4 ids real producers make. Ids that
/// share a prefix are not what the store meets: DuckDB bit-packs such a key column, and a scan
/// of bit-packed 128-bit values is ~5x slower than of random ones (measured: 0.28 s against
/// 0.06 s per 2M keys), which made soaks' CPU grow with the history for the bench's ids only.
pub fn hex_id(run: u64, seq: u64) -> String {
    let lo = splitmix64(seq ^ run.rotate_left(32));
    let hi = splitmix64(lo ^ run);
    format!("{hi:016x}{lo:016x}")
}

/// SplitMix64's finaliser: a bijection of `u64` that scatters neighbouring inputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uuid-shaped id (Celery, Dramatiq) from the generator's sequence.
pub fn uuid_id(run: u64, seq: u64) -> String {
    let h = hex_id(run, seq);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct TickOutput {
    pub commands: Vec<Cmd>,
    /// Tasks (indices into [`Driver::tasks`]) whose final state was written this tick.
    pub finished: Vec<usize>,
    pub enqueued: usize,
}

/// Moves tasks of every flavor through their lifecycles (see the module docs).
#[derive(Debug)]
pub struct Driver {
    pub tasks: Vec<Task>,
    run: u64,
    rng: Rng,
    waiting: HashMap<Flavor, VecDeque<usize>>,
    running: Vec<(Instant, usize)>,
    /// Dramatiq retries in the delay queue, moved back when due.
    delayed: Vec<(Instant, usize)>,
    /// How long a Dramatiq retry waits in the delay queue (its backoff; Dramatiq's default
    /// `min_backoff` is 15 s).
    pub retry_delay: Duration,
    taskiq: taskiq::StreamIds,
    last_heartbeat: Option<Instant>,
    pub active_flavors: Vec<Flavor>,
}

impl Driver {
    pub fn new(run: u64, flavors: &[Flavor]) -> Self {
        Driver {
            tasks: Vec::new(),
            run,
            rng: Rng::new(run ^ 0x9E37_79B9_7F4A_7C15),
            waiting: HashMap::new(),
            running: Vec::new(),
            delayed: Vec::new(),
            retry_delay: Duration::from_secs(1),
            taskiq: taskiq::StreamIds::default(),
            last_heartbeat: None,
            active_flavors: flavors.to_vec(),
        }
    }

    /// The heartbeats of idle workers of the active flavors that need them
    /// ([`Flavor::success_needs_heartbeats`]): what live workers keep writing after the last
    /// lifecycle.
    pub fn idle_heartbeats(&self, wall: chrono::DateTime<chrono::Utc>) -> Vec<Cmd> {
        let mut out = Vec::new();
        for f in &self.active_flavors {
            if *f == Flavor::Sidekiq {
                out.extend(sidekiq::heartbeat(self.run, &[], wall));
            }
        }
        out
    }

    /// Commands to run once before the first tick (consumer groups, registries).
    pub fn setup(&self) -> Vec<Cmd> {
        let mut out = Vec::new();
        for f in &self.active_flavors {
            match f {
                Flavor::Taskiq => out.extend(taskiq::setup()),
                Flavor::Rq => out.extend(rq::setup()),
                Flavor::Bullmq => out.extend(bullmq::setup()),
                _ => {}
            }
        }
        out
    }

    /// Tasks not finished yet.
    pub fn open_tasks(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum::<usize>()
            + self.running.len()
            + self.delayed.len()
    }

    /// A new task of `flavor`; its outcome is drawn unless given.
    pub fn new_task(&mut self, flavor: Flavor, outcome: Option<Outcome>) -> usize {
        let seq = self.tasks.len() as u64;
        let outcome = outcome.unwrap_or_else(|| Outcome::from_percent(self.rng.below(100)));
        let id = match flavor {
            Flavor::Taskiq | Flavor::Rq | Flavor::Arq => hex_id(self.run, seq),
            // The job key: `bull:load:<job id>`.
            Flavor::Bullmq => format!("{}:{}", bullmq::QUEUE, hex_id(self.run, seq)),
            // A jid: 24 hex digits.
            Flavor::Sidekiq => hex_id(self.run, seq)[8..].to_string(),
            _ => uuid_id(self.run, seq),
        };
        self.tasks.push(Task {
            id,
            flavor,
            outcome,
            attempt: 0,
            seq,
            delivery: String::new(),
            runtime: Duration::ZERO,
        });
        self.tasks.len() - 1
    }

    /// One tick at `now`: finishes, requeues, delivers up to `capacity` per flavor (`None`: all
    /// waiting), then enqueues `new` (indices from [`Driver::new_task`]). `runtime` draws each
    /// delivered attempt's runtime.
    pub fn tick(
        &mut self,
        now: Instant,
        new: &[usize],
        capacity: &dyn Fn(Flavor) -> Option<usize>,
        runtime: &mut dyn FnMut(&mut Rng) -> Duration,
    ) -> TickOutput {
        let mut out = TickOutput::default();
        let wall = chrono::Utc::now();

        if self
            .last_heartbeat
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_heartbeat = Some(now);
            let sidekiq_running: Vec<&Task> = self
                .running
                .iter()
                .map(|(_, i)| &self.tasks[*i])
                .filter(|t| t.flavor == Flavor::Sidekiq)
                .collect();
            let sidekiq_beat = sidekiq::heartbeat(self.run, &sidekiq_running, wall);
            for f in self.active_flavors.clone() {
                out.commands.extend(match f {
                    Flavor::Sidekiq => sidekiq_beat.clone(),
                    Flavor::Celery | Flavor::CeleryEvents => celery::heartbeat(wall),
                    Flavor::Dramatiq => dramatiq::heartbeat(wall),
                    Flavor::Rq => rq::heartbeat(wall),
                    Flavor::Taskiq => Vec::new(),
                    Flavor::Arq => arq::heartbeat(wall),
                    // BullMQ workers write no key of their own.
                    Flavor::Bullmq => Vec::new(),
                });
            }
        }

        // 1. Finish what ran long enough.
        let (due, still): (Vec<_>, Vec<_>) = self.running.drain(..).partition(|(at, _)| *at <= now);
        self.running = still;
        for (_, i) in due {
            let retry =
                self.tasks[i].outcome == Outcome::RetryThenSuccess && self.tasks[i].attempt == 0;
            if retry {
                let cmds = self.retry(i, now, wall);
                out.commands.extend(cmds);
            } else {
                let t = &self.tasks[i];
                out.commands.extend(match t.flavor {
                    Flavor::Celery | Flavor::CeleryEvents => celery::finish(t, wall),
                    Flavor::Dramatiq => dramatiq::finish(t, wall),
                    Flavor::Rq => rq::finish(t, wall),
                    Flavor::Taskiq => taskiq::finish(t),
                    Flavor::Arq => arq::finish(t, wall),
                    Flavor::Bullmq => bullmq::finish(t, wall),
                    Flavor::Sidekiq => sidekiq::finish(t, wall),
                });
                out.finished.push(i);
            }
        }

        // 2. Dramatiq: delay queue back to the queue (the worker's `enqueue` of a due message);
        // Sidekiq: the retry poller's move from `retry` back to the queue.
        let (due, later): (Vec<_>, Vec<_>) = self.delayed.drain(..).partition(|(at, _)| *at <= now);
        self.delayed = later;
        for (_, i) in due {
            if self.tasks[i].flavor == Flavor::Sidekiq {
                let member = std::mem::take(&mut self.tasks[i].delivery);
                out.commands
                    .extend(sidekiq::requeue_from_retry(&self.tasks[i], wall, &member));
                self.waiting
                    .entry(Flavor::Sidekiq)
                    .or_default()
                    .push_back(i);
                continue;
            }
            let old = self.tasks[i].delivery.clone();
            let new_rid = uuid_id(self.run ^ 0xD0, self.tasks[i].seq * 4 + 2);
            self.tasks[i].delivery = new_rid;
            out.commands
                .extend(dramatiq::requeue_from_delay(&self.tasks[i], &old, wall));
            self.waiting
                .entry(Flavor::Dramatiq)
                .or_default()
                .push_back(i);
        }

        // 3. Deliver the oldest waiting tasks.
        for f in self.active_flavors.clone() {
            let queue = self.waiting.entry(f).or_default();
            let n = capacity(f).map_or(queue.len(), |c| c.min(queue.len()));
            let batch: Vec<usize> = queue.drain(..n).collect();
            if batch.is_empty() {
                continue;
            }
            if f == Flavor::Taskiq {
                out.commands.push(taskiq::read_group(batch.len()));
            }
            for i in batch {
                let rt = runtime(&mut self.rng);
                let t = &mut self.tasks[i];
                t.runtime = rt;
                if matches!(f, Flavor::Celery | Flavor::CeleryEvents | Flavor::Rq) {
                    t.delivery = uuid_id(self.run ^ 0xDE, t.seq * 4 + u64::from(t.attempt));
                }
                let t = &self.tasks[i];
                out.commands.extend(match f {
                    Flavor::Celery | Flavor::CeleryEvents => celery::deliver(t, wall),
                    Flavor::Dramatiq => dramatiq::deliver(t, wall),
                    Flavor::Rq => rq::deliver(t, wall),
                    Flavor::Taskiq => Vec::new(),
                    Flavor::Arq => arq::deliver(t),
                    Flavor::Bullmq => bullmq::deliver(t, wall),
                    Flavor::Sidekiq => sidekiq::deliver(t),
                });
                self.running.push((now + rt, i));
            }
        }

        // 4. Enqueue.
        for &i in new {
            let flavor = self.tasks[i].flavor;
            if flavor == Flavor::Dramatiq {
                self.tasks[i].delivery = uuid_id(self.run ^ 0xD0, self.tasks[i].seq * 4);
            }
            if flavor == Flavor::Taskiq {
                self.tasks[i].delivery = self.taskiq.next(wall);
            }
            let t = &self.tasks[i];
            out.commands.extend(match flavor {
                Flavor::Celery | Flavor::CeleryEvents => celery::enqueue(t, wall),
                Flavor::Dramatiq => dramatiq::enqueue(t, wall),
                Flavor::Rq => rq::enqueue(t, wall),
                Flavor::Taskiq => taskiq::enqueue(t),
                Flavor::Arq => arq::enqueue(t, wall),
                Flavor::Bullmq => bullmq::enqueue(t, wall),
                Flavor::Sidekiq => sidekiq::enqueue(t, wall),
            });
            self.waiting.entry(flavor).or_default().push_back(i);
            out.enqueued += 1;
        }
        out
    }

    /// A failed first attempt that will run again: the broker's retry commands; the task goes
    /// back to waiting (Dramatiq: to the delay queue first).
    fn retry(&mut self, i: usize, now: Instant, wall: chrono::DateTime<chrono::Utc>) -> Vec<Cmd> {
        let flavor = self.tasks[i].flavor;
        let cmds = match flavor {
            Flavor::Celery | Flavor::CeleryEvents => {
                let c = celery::retry(&self.tasks[i], wall);
                self.tasks[i].attempt = 1;
                let mut c = c;
                c.extend(celery::enqueue(&self.tasks[i], wall));
                c
            }
            Flavor::Dramatiq => {
                let old = self.tasks[i].delivery.clone();
                self.tasks[i].delivery = uuid_id(self.run ^ 0xD0, self.tasks[i].seq * 4 + 1);
                self.tasks[i].attempt = 1;
                let c = dramatiq::retry(&self.tasks[i], &old, wall);
                self.delayed.push((now + self.retry_delay, i));
                return c;
            }
            Flavor::Rq => {
                let c = rq::retry(&self.tasks[i], wall);
                self.tasks[i].attempt = 1;
                c
            }
            Flavor::Taskiq => {
                let old = self.tasks[i].delivery.clone();
                self.tasks[i].delivery = self.taskiq.next(wall);
                self.tasks[i].attempt = 1;
                taskiq::retry(&self.tasks[i], &old)
            }
            Flavor::Arq => {
                let c = arq::retry(&self.tasks[i]);
                self.tasks[i].attempt = 1;
                c
            }
            Flavor::Bullmq => {
                let c = bullmq::retry(&self.tasks[i]);
                self.tasks[i].attempt = 1;
                c
            }
            Flavor::Sidekiq => {
                self.tasks[i].attempt = 1;
                let member = sidekiq::retry_member(&self.tasks[i], wall);
                let c = sidekiq::retry(&member, wall);
                self.tasks[i].delivery = member;
                self.delayed.push((now + self.retry_delay, i));
                return c;
            }
        };
        self.waiting.entry(flavor).or_default().push_back(i);
        cmds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_finishes_and_lists_stay_in_step() {
        let flavors = Flavor::ALL;
        let mut d = Driver::new(7, &flavors);
        let new: Vec<usize> = (0..50)
            .map(|n| d.new_task(flavors[n % flavors.len()], None))
            .collect();
        let mut finished = 0;
        let mut t = Instant::now();
        let mut out = d.tick(t, &new, &|_| Some(3), &mut |_| Duration::ZERO);
        assert_eq!(out.enqueued, 50);
        d.retry_delay = Duration::ZERO;
        for _ in 0..200 {
            t += Duration::from_millis(10);
            out = d.tick(t, &[], &|_| Some(3), &mut |_| Duration::ZERO);
            finished += out.finished.len();
        }
        assert_eq!(finished, 50);
        assert_eq!(d.open_tasks(), 0);
    }

    #[test]
    fn ids_are_unique_and_uuid_shaped() {
        let a = uuid_id(1, 2);
        assert_eq!(a.len(), 36);
        assert_ne!(uuid_id(1, 2), uuid_id(1, 3));
        let ids: std::collections::HashSet<String> = (0..10_000).map(|s| hex_id(7, s)).collect();
        assert_eq!(ids.len(), 10_000);
        let ids: std::collections::HashSet<String> = (0..10_000).map(|s| uuid_id(7, s)).collect();
        assert_eq!(ids.len(), 10_000);
        // No shared prefix between neighbours (real ids are uuid4s).
        assert_ne!(hex_id(7, 1)[..8], hex_id(7, 2)[..8]);
    }
}
