//! taskscope's one pub/sub connection and the prefetch reads, fired the moment a notification
//! for their key arrives, on a thread of their own.
//!
//! Every push (keyspace events, key events, messages) comes on this thread's subscriber and
//! goes on to the loop in Redis's order (new keys to the detector); see [`Subscriptions`].
//!
//! Some keys hold their content for milliseconds only (Celery's `unacked` entries: 1-9 ms
//! between a worker taking a message and acknowledging it; a Dramatiq message in its `.msgs`
//! hash with a fast worker). Waiting for the batching loop loses them, and so does a cold
//! wake-up through several tasks on a shared runtime: measured, an idle taskscope's first read
//! after a quiet spell came 1.7 ms after the write. So the prefetcher owns a single-threaded
//! runtime on its own OS thread, with the subscriber and its own read connection: notification
//! in, read out, with no hand-off between threads.
//!
//! Two kinds of rules ([`Prefetch::coalesce`]), plain and coalesced; which runs fire when is
//! decided, without I/O, by [`schedule::Schedule`] (its doc says how). Coalesced rules also
//! run when the loop reconciles ([`Kick`]). [`PrefetchRead::FollowHash`] keeps the previous
//! `HKEYS` snapshot of its hash here, reads only the fields that are new since then (and looks
//! up the departed ones where they may have gone); runs of one hash never overlap, so the
//! adapter sees its snapshots in order. Replies go to the loop as [`Incoming::Prefetched`],
//! stamped with the time they arrived.

mod schedule;

use super::detect::NewKey;
use super::subscriber::{Push, Subscriber, Target};
use super::{forward, redis, Incoming, BARRIER_CHANNEL};
use crate::metrics::{Metrics, Source};
use broker_adapters::adapter::glob_escape;
use broker_adapters::bounded::FifoSet;
use broker_adapters::{FirstSight, Prefetch, PrefetchRead, Read, ReadRequest, Reply};
use fred::prelude::*;
use schedule::{followed, RunKey, Schedule};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, warn};

/// Prefetch rules by key: (adapter index, rule).
pub type Rules = HashMap<String, Vec<(usize, Prefetch)>>;

/// What the prefetcher subscribes to: every adapter's keyspace key patterns (forwarded to the
/// loop as [`Incoming::Key`]), the keys of the rules (run here), and the loop's pub/sub
/// channels (forwarded as [`Incoming::Message`], key events as [`Incoming::Key`]). One
/// connection for all: Redis delivers each notification once (measured, each subscriber a
/// notification goes to costs Redis about as much again as turning notifications on), and the
/// loop gets messages and notifications in Redis's order, so a message is handled before the
/// reads of the keys written after it (a taskiq task's publication before its result).
#[derive(Debug, Default, PartialEq)]
pub struct Subscriptions {
    /// Key glob patterns (without `__keyspace@<db>__:`), empty while polling.
    pub patterns: BTreeSet<String>,
    /// Channel patterns, subscribed to as they are (`PSUBSCRIBE`).
    pub channels: BTreeSet<String>,
    pub rules: Rules,
    /// Reads of keys no rule covers yet, by adapter index (see [`FirstSight`]).
    pub first_sight: Vec<(usize, FirstSight)>,
}

/// Keys whose first sight was read, remembered so each is read once (oldest forgotten first:
/// a key forgotten and notified again costs one more bounded read).
const FIRST_SIGHT_MEMORY: usize = 10_000;

/// The subscriptions the prefetcher has applied (its `PSUBSCRIBE`s answered by Redis), sent
/// back so the loop scans only once the notifications it relies on are flowing: an event
/// between a scan and a late subscription would be lost (an RQ retry, for one).
pub type Applied = watch::Sender<Option<Arc<Subscriptions>>>;

/// The loop's side of the subscriptions: what it wants, and where the prefetcher confirms.
pub struct SubscriptionLink {
    pub wanted: watch::Receiver<Arc<Subscriptions>>,
    pub applied: Applied,
}

/// Wakes the coalesced rules (the loop's reconciliation): a lost notification costs latency.
pub type Kick = Arc<Notify>;

/// Builds the rule table from each adapter's declared prefetches.
pub fn rules(per_adapter: impl IntoIterator<Item = (usize, Vec<Prefetch>)>) -> Rules {
    let mut rules = Rules::new();
    for (adapter, prefetches) in per_adapter {
        for p in prefetches {
            rules.entry(p.key.clone()).or_default().push((adapter, p));
        }
    }
    rules
}

/// The keyspace pattern the prefetcher subscribes to for a prefetch key no key pattern covers.
pub fn key_pattern(key: &str) -> String {
    glob_escape(key)
}

/// Whether `text` matches the Redis glob `pattern` (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), as
/// `PSUBSCRIBE` matches channels.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn matches(p: &[u8], t: &[u8]) -> bool {
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() {
                match p[pi] {
                    b'*' => {
                        star = Some((pi, ti));
                        pi += 1;
                        continue;
                    }
                    b'?' => {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                    b'[' => {
                        if let Some((matched, next)) = class(p, pi, t[ti]) {
                            if matched {
                                pi = next;
                                ti += 1;
                                continue;
                            }
                        }
                    }
                    b'\\' if pi + 1 < p.len() && p[pi + 1] == t[ti] => {
                        pi += 2;
                        ti += 1;
                        continue;
                    }
                    b'\\' if pi + 1 < p.len() => {}
                    c if c == t[ti] => {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            }
        }
        p[pi..].iter().all(|c| *c == b'*')
    }
    /// A `[...]` class at `p[start]`: whether `c` is in it, and where the pattern goes on.
    fn class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
        let mut i = start + 1;
        let negate = p.get(i) == Some(&b'^');
        if negate {
            i += 1;
        }
        let mut found = false;
        while i < p.len() && p[i] != b']' {
            if p[i] == b'\\' && i + 1 < p.len() {
                found |= p[i + 1] == c;
                i += 2;
            } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                let (lo, hi) = (p[i].min(p[i + 2]), p[i].max(p[i + 2]));
                found |= (lo..=hi).contains(&c);
                i += 3;
            } else {
                found |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((found != negate, i + 1))
    }
    matches(pattern.as_bytes(), text.as_bytes())
}

/// The previous snapshot of every followed hash, and the order of snapshots.
#[derive(Default)]
struct Snapshots {
    fields: HashMap<String, HashSet<String>>,
    /// Followed hashes notified since their last snapshot was taken; the others are not read
    /// again (unless a reconciliation forces it): a run for an ack set reads no hash.
    changed: HashSet<String>,
    /// Set by a kick: the next run of each rule reads every hash it follows.
    force: HashSet<RunKey>,
}

/// Starts the prefetcher thread. It stops when the loop drops its receiver of `tx`.
pub fn spawn(
    redis_url: &str,
    db: u32,
    tx: forward::Sender<Incoming>,
    hints: Option<mpsc::Sender<NewKey>>,
    link: SubscriptionLink,
    kick: Kick,
    metrics: Arc<Metrics>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let client = redis::Redis::new(redis::builder(redis_url)?.build()?, metrics.clone());
    // A URL the subscriber cannot use fails here, before the thread starts.
    let target = Target::from_url(redis_url)?;
    let thread = std::thread::Builder::new()
        .name("taskscope-prefetch".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "Cannot start the prefetch runtime; no keyspace events or pub/sub messages will arrive (reconciliation reads only).");
                    return;
                }
            };
            let feeds = Feeds { tx, hints };
            runtime.block_on(run(target, client, db, feeds, link, kick, metrics));
        })?;
    Ok(thread)
}

/// The run loop's state: which runs are in flight or due.
struct Prefetcher {
    client: redis::Redis,
    tx: forward::Sender<Incoming>,
    done_tx: mpsc::UnboundedSender<RunKey>,
    schedule: Schedule,
    snapshots: Arc<Mutex<Snapshots>>,
    /// Keys a [`FirstSight`] read was fired for.
    first_seen: FifoSet<String>,
}

impl Prefetcher {
    /// A notification matched `run`'s rule.
    fn on_match(&mut self, run: RunKey, coalesce: bool) {
        if let Some(run) = self.schedule.on_match(run, coalesce) {
            self.fire(run);
        }
    }

    /// The burst is read: the coalesced runs it asked for start.
    fn fire_due(&mut self) {
        for run in self.schedule.fire_due() {
            self.fire(run);
        }
    }

    fn on_done(&mut self, run: RunKey) {
        for run in self.schedule.on_done(run) {
            self.fire(run);
        }
    }

    /// The loop reconciles: every coalesced rule's next run reads all the hashes it follows.
    fn kick(&mut self) {
        if let Ok(mut snaps) = self.snapshots.lock() {
            snaps.force.extend(self.schedule.coalesced());
        }
        for run in self.schedule.kick() {
            self.fire(run);
        }
    }

    /// Takes the rules now: forgets runs and snapshots no rule asks for any more, and runs each
    /// new coalesced rule once (see [`Schedule::set_rules`]).
    fn set_rules(&mut self, rules: &Rules) {
        let live: HashMap<RunKey, bool> = rules
            .values()
            .flatten()
            .map(|(a, p)| ((*a, p.reads.clone()), p.coalesce))
            .collect();
        let hashes: HashSet<&String> = live.keys().flat_map(|(_, reads)| followed(reads)).collect();
        if let Ok(mut snaps) = self.snapshots.lock() {
            snaps.fields.retain(|k, _| hashes.contains(k));
        }
        for run in self.schedule.set_rules(&live) {
            self.fire(run);
        }
    }

    /// Reads `request` for `adapter` now, outside any rule: the first sight of a key.
    fn fire_first_sight(&self, adapter: usize, read: Read) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let reply = client
                .reads(std::slice::from_ref(&read.request))
                .await
                .map_err(|e| e.to_string())
                .and_then(|mut replies| replies.pop().ok_or_else(|| "no reply".to_string()));
            let _ = tx.send(Incoming::Prefetched {
                adapter,
                read,
                reply,
                at: chrono::Utc::now(),
            });
        });
    }

    fn fire(&self, run: RunKey) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        let done_tx = self.done_tx.clone();
        let snapshots = self.snapshots.clone();
        tokio::spawn(async move {
            let (adapter, reads) = &run;
            let result = run_reads(&client, &run, &snapshots).await;
            let at = chrono::Utc::now();
            match result {
                Ok(replies) => {
                    for (read, reply) in replies {
                        let _ = tx.send(Incoming::Prefetched {
                            adapter: *adapter,
                            read,
                            reply: Ok(reply),
                            at,
                        });
                    }
                }
                Err(e) => {
                    if let Some(first) = reads.first() {
                        let read = first_read(first);
                        let _ = tx.send(Incoming::Prefetched {
                            adapter: *adapter,
                            read,
                            reply: Err(e),
                            at,
                        });
                    }
                }
            }
            let _ = done_tx.send(run);
        });
    }
}

/// The read of a rule's first pipeline for `read` (a followed hash's `HKEYS` snapshot).
fn first_read(read: &PrefetchRead) -> Read {
    match read {
        PrefetchRead::Read(r) => r.clone(),
        PrefetchRead::FollowHash { key, tags, .. } => {
            Read::new(tags.snapshot, ReadRequest::HKeys(key.clone()))
        }
    }
}

/// One run of a rule: its pipeline, then the new and departed fields of the hashes it follows.
/// The replies in the order the adapter gets them (see [`PrefetchRead::FollowHash`]).
async fn run_reads(
    client: &redis::Redis,
    run: &RunKey,
    snapshots: &Mutex<Snapshots>,
) -> Result<Vec<(Read, Reply)>, String> {
    // The hashes are read together or not at all: a snapshot of one may show a write whose
    // notification is still on its way, and of which an earlier write to another hash is the
    // key (Dramatiq's retry copy, written before the original's ack). Not at all when none was
    // notified since its last snapshot (a run for an ack set alone).
    let reads: Vec<&PrefetchRead> = match snapshots.lock() {
        Ok(mut snaps) => {
            let force = snaps.force.remove(run);
            let mut any = force;
            for key in followed(&run.1) {
                any |= snaps.changed.remove(key) | !snaps.fields.contains_key(key);
            }
            run.1
                .iter()
                .filter(|r| any || matches!(r, PrefetchRead::Read(_)))
                .collect()
        }
        Err(_) => run.1.iter().collect(),
    };
    let started = std::time::Instant::now();
    let first: Vec<Read> = reads.iter().map(|r| first_read(r)).collect();
    let requests: Vec<ReadRequest> = first.iter().map(|r| r.request.clone()).collect();
    let replies = client.reads(&requests).await.map_err(|e| e.to_string())?;
    let first_at = started.elapsed();
    let mut second = Vec::new();
    if let Ok(mut snaps) = snapshots.lock() {
        for (read, reply) in reads.iter().zip(&replies) {
            let PrefetchRead::FollowHash {
                key,
                departed_to,
                tags,
            } = *read
            else {
                continue;
            };
            if matches!(reply, Reply::Error(_)) {
                continue;
            }
            let (mut new, mut departed) = snapshot_diff(&mut snaps.fields, key, reply);
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
    }
    // Fields read by the second round trip, for the `debug` log of each run (where the time
    // goes: its round trips, and how much each one carried).
    let second_fields: usize = second
        .iter()
        .map(|r| match &r.request {
            ReadRequest::HMGet { fields, .. } => fields.len(),
            _ => 0,
        })
        .sum();
    let mut out = Vec::with_capacity(second.len() + first.len());
    if !second.is_empty() {
        let requests: Vec<ReadRequest> = second.iter().map(|r| r.request.clone()).collect();
        let more = client.reads(&requests).await.map_err(|e| e.to_string())?;
        out.extend(second.into_iter().zip(more));
    }
    debug!(
        first_us = first_at.as_micros() as u64,
        total_us = started.elapsed().as_micros() as u64,
        second_fields,
        "Prefetch run."
    );
    out.extend(first.into_iter().zip(replies));
    Ok(out)
}

/// Takes `reply` (a followed hash's `HKEYS`) as the new snapshot of `key`: the fields new
/// since the previous one, and those gone. The snapshot is updated in place, so a run costs
/// allocations for what changed only, not for every field of the hash.
fn snapshot_diff(
    snapshots: &mut HashMap<String, HashSet<String>>,
    key: &str,
    reply: &Reply,
) -> (Vec<String>, Vec<String>) {
    let items: &[Reply] = match reply {
        Reply::Array(items) => items,
        _ => &[],
    };
    let current: HashSet<std::borrow::Cow<'_, str>> = items
        .iter()
        .filter_map(Reply::as_bytes)
        .map(String::from_utf8_lossy)
        .collect();
    let Some(previous) = snapshots.get_mut(key) else {
        let new: Vec<String> = current.into_iter().map(|f| f.into_owned()).collect();
        snapshots.insert(key.to_string(), new.iter().cloned().collect());
        return (new, Vec::new());
    };
    let new: Vec<String> = current
        .iter()
        .filter(|f| !previous.contains(f.as_ref()))
        .map(|f| f.to_string())
        .collect();
    let departed: Vec<String> = previous
        .iter()
        .filter(|f| !current.contains(f.as_str()))
        .cloned()
        .collect();
    for f in &departed {
        previous.remove(f);
    }
    previous.extend(new.iter().cloned());
    (new, departed)
}

/// What the prefetcher's subscriber delivered, or how many pushes it dropped since.
enum Event {
    Push(Push),
    Lagged(u64),
}

/// Pushes waiting for the prefetcher at most (a bound, not an allocation: tokio's channel
/// allocates as it fills). The prefetcher only routes and fires reads, so a backlog is a
/// stall of its thread; past the bound pushes are dropped, counted, and the loop resyncs.
const PUSH_QUEUE: usize = 65_536;

/// The subscriber's callback: into the prefetcher's queue, never waiting; when full, dropped
/// and counted ([`Event::Lagged`] goes first once there is room).
fn deliver_to(tx: mpsc::Sender<Event>) -> impl FnMut(Push) -> bool + Send + 'static {
    use tokio::sync::mpsc::error::TrySendError;
    let mut dropped = 0u64;
    move |push| {
        if dropped > 0 {
            match tx.try_send(Event::Lagged(dropped)) {
                Ok(()) => dropped = 0,
                Err(TrySendError::Full(_)) => {
                    dropped += 1;
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match tx.try_send(Event::Push(push)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                dropped += 1;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// Where pushes go: the loop's queue, and new-key notifications to the detector
/// (`--brokers auto`).
struct Feeds {
    tx: forward::Sender<Incoming>,
    hints: Option<mpsc::Sender<NewKey>>,
}

/// How long a subscription Redis refused waits before it is asked again.
const SUBSCRIBE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

async fn run(
    target: Target,
    client: redis::Redis,
    db: u32,
    feeds: Feeds,
    link: SubscriptionLink,
    kick: Kick,
    metrics: Arc<Metrics>,
) {
    let tx = feeds.tx.clone();
    let SubscriptionLink {
        wanted: mut rules,
        applied,
    } = link;
    let (events_tx, mut events) = mpsc::channel(PUSH_QUEUE);
    let mut to_loop = deliver_to(events_tx);
    // On the connection task, in Redis's order: see [`forward_direct`].
    let deliver = move |push| match forward_direct(&feeds, db, push) {
        Ok(alive) => alive,
        Err(push) => to_loop(push),
    };
    let subscriber = Subscriber::spawn(target, "taskscope", deliver);
    let init = async {
        subscriber.connected().await?;
        client.client().init().await?;
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = init => if let Err(e) = r {
            error!(error = %e, "The subscriber cannot connect; no keyspace events or pub/sub messages will arrive (reconciliation reads only).");
            return;
        },
        _ = tx.closed() => return,
    }
    // The loop's read barrier comes back here, after every notification sent before it.
    if let Err(e) = subscriber
        .subscribe(vec![BARRIER_CHANNEL.to_string()])
        .await
    {
        warn!(error = %e, "Cannot subscribe to the read barrier channel; RQ retries may be undercounted.");
    }
    // Events for the loop go into its queue, which never makes this thread wait.
    let forward_tx = tx.clone();
    let mut subscribed = BTreeSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<RunKey>();
    let mut p = Prefetcher {
        client: client.clone(),
        tx: tx.clone(),
        done_tx,
        schedule: Schedule::default(),
        snapshots: Arc::new(Mutex::new(Snapshots::default())),
        first_seen: FifoSet::new(FIRST_SIGHT_MEMORY),
    };
    let mut rules_changed = true;
    // Set when Redis refused a subscription: asked again then.
    let retry = tokio::time::sleep(SUBSCRIBE_RETRY);
    tokio::pin!(retry);
    let mut retrying = false;
    loop {
        if std::mem::take(&mut rules_changed) {
            let current = rules.borrow().clone();
            p.set_rules(&current.rules);
            let wanted = wanted_patterns(&current, db);
            let gone: Vec<String> = subscribed.difference(&wanted).cloned().collect();
            let new: Vec<String> = wanted.difference(&subscribed).cloned().collect();
            let mut refused = false;
            if !gone.is_empty() {
                match subscriber.punsubscribe(gone.clone()).await {
                    Ok(()) => gone.iter().for_each(|g| {
                        subscribed.remove(g);
                    }),
                    Err(e) => debug!(error = %e, "PUNSUBSCRIBE failed."),
                }
            }
            if !new.is_empty() {
                match subscriber.psubscribe(new.clone()).await {
                    Ok(()) => subscribed.extend(new),
                    Err(e) => {
                        refused = true;
                        warn!(error = %e, retry_in = ?SUBSCRIBE_RETRY, "PSUBSCRIBE failed; retrying.")
                    }
                }
            }
            if refused {
                retry
                    .as_mut()
                    .reset(tokio::time::Instant::now() + SUBSCRIBE_RETRY);
                retrying = true;
            } else {
                // Answered: the loop waits for nothing more.
                applied.send_replace(Some(current));
            }
        }
        tokio::select! {
            _ = tx.closed() => break,
            changed = rules.changed() => {
                if changed.is_err() {
                    break;
                }
                rules_changed = true;
            }
            _ = &mut retry, if retrying => {
                retrying = false;
                rules_changed = true;
            }
            _ = kick.notified() => p.kick(),
            ev = events.recv() => {
                let Some(mut ev) = ev else { break };
                // A burst starts: what waits behind this one is the queue's high-water.
                metrics.saw_subscriber_backlog(events.len() + 1);
                let mut yielded = false;
                // Read the whole burst (a script's or a pipeline's notifications) before firing
                // the coalesced runs it asks for. Keyspace events and messages come in Redis's
                // order, and go to the loop in it.
                'burst: loop {
                    let keep_going = match ev {
                        Event::Push(push) => on_push(&mut p, &rules, &forward_tx, &metrics, db, push),
                        Event::Lagged(n) => {
                            debug!(dropped = n, "The subscriber fell behind; the loop will resync.");
                            forward_tx.send(Incoming::Lagged(n)).is_ok()
                        }
                    };
                    if !keep_going {
                        break;
                    }
                    ev = loop {
                        match events.try_recv() {
                            Ok(next) => break next,
                            Err(TryRecvError::Empty) if !yielded && p.schedule.has_due() => {
                                // Let the connection task hand over the rest of the burst.
                                yielded = true;
                                tokio::task::yield_now().await;
                            }
                            Err(TryRecvError::Empty) => break 'burst,
                            Err(TryRecvError::Disconnected) => break 'burst,
                        }
                    };
                }
                p.fire_due();
            }
            Some(run) = done_rx.recv() => p.on_done(run),
        }
    }
    subscriber.quit();
    let _ = client.client().quit().await;
}

/// Every pattern to be subscribed to for `subs` (keyspace ones with their channel prefix).
fn wanted_patterns(subs: &Subscriptions, db: u32) -> BTreeSet<String> {
    subs.patterns
        .iter()
        .cloned()
        .chain(
            subs.rules
                .keys()
                .filter(|k| !subs.patterns.iter().any(|p| glob_match(p, k)))
                .map(|k| key_pattern(k)),
        )
        .chain(
            subs.first_sight
                .iter()
                .map(|(_, f)| f.pattern.clone())
                .filter(|f| !subs.patterns.contains(f)),
        )
        .map(|p| format!("__keyspace@{db}__:{p}"))
        .chain(subs.channels.iter().cloned())
        .collect()
}

/// The pushes that need no rule, handled on the connection task as they arrive: messages (the
/// read barrier aside) and key events go straight into the loop's queue, new keys to the
/// detector. A message is thereby in the loop's queue before anything a later notification
/// causes (the prefetcher's loop handles those after it), and messages, most of what Redis
/// pushes, skip a hop. `Err` hands the push back for the prefetcher's loop.
fn forward_direct(feeds: &Feeds, db: u32, push: Push) -> Result<bool, Push> {
    match push {
        // New keys (of any database) are the detector's, never the adapters'.
        Push::Key {
            db: key_db,
            operation,
            key,
            keyspace: false,
        } if operation == "new" => {
            if let Some(hints) = &feeds.hints {
                let hint = NewKey {
                    db: key_db,
                    key: String::from_utf8_lossy(&key).into_owned(),
                    at: std::time::Instant::now(),
                };
                // Full: the detector is behind; its passes find what it skips.
                let _ = hints.try_send(hint);
            }
            Ok(true)
        }
        Push::Key {
            db: key_db,
            operation,
            key,
            keyspace: false,
        } => Ok(key_db != db
            || feeds
                .tx
                .send(Incoming::Key {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    op: operation,
                })
                .is_ok()),
        Push::Message { channel, payload } if &*channel != BARRIER_CHANNEL => Ok(feeds
            .tx
            .send(Incoming::Message { channel, payload })
            .is_ok()),
        other => Err(other),
    }
}

/// Handles what [`forward_direct`] handed back: keyspace events of this database run the rules
/// (and go to the loop when an adapter's pattern wants them); the read barrier fires what is
/// due, then goes to the loop, as a reconnection does. `false` once the loop is gone.
fn on_push(
    p: &mut Prefetcher,
    rules: &watch::Receiver<Arc<Subscriptions>>,
    forward_tx: &forward::Sender<Incoming>,
    metrics: &Metrics,
    db: u32,
    push: Push,
) -> bool {
    match push {
        Push::Key {
            db: key_db,
            operation,
            key,
            keyspace: true,
        } => {
            if key_db == db {
                on_key_event(p, rules, forward_tx, metrics, operation, &key);
            }
            true
        }
        Push::Key { .. } => true,
        Push::Message { channel, payload } => {
            // Every notification Redis sent before the barrier was handled: its reads are
            // fired before the barrier reaches the loop.
            p.fire_due();
            forward_tx
                .send(Incoming::Message { channel, payload })
                .is_ok()
        }
        Push::Reconnected => forward_tx.send(Incoming::Reconnected).is_ok(),
    }
}

/// Handles one keyspace event of the prefetcher's database: runs the rules it matches and
/// forwards it to the loop when an adapter's pattern wants it.
fn on_key_event(
    p: &mut Prefetcher,
    rules: &watch::Receiver<Arc<Subscriptions>>,
    forward_tx: &forward::Sender<Incoming>,
    metrics: &Metrics,
    operation: String,
    key: &[u8],
) {
    let key = String::from_utf8_lossy(key).into_owned();
    let (matched, first_sight, forward) = {
        let subs = rules.borrow();
        let ruled = subs.rules.get(&key);
        let matched: Vec<(RunKey, bool)> = ruled
            .map(|rs| {
                rs.iter()
                    .filter(|(_, p)| p.ops.contains(&operation))
                    .map(|(a, p)| ((*a, p.reads.clone()), p.coalesce))
                    .collect()
            })
            .unwrap_or_default();
        let first_sight: Vec<(usize, Read)> = if ruled.is_none() && !p.first_seen.contains(&key) {
            subs.first_sight
                .iter()
                .filter(|(_, f)| f.ops.contains(&operation) && glob_match(&f.pattern, &key))
                .map(|(a, f)| (*a, f.read_of(&key)))
                .collect()
        } else {
            Vec::new()
        };
        let forward = subs.patterns.iter().any(|p| glob_match(p, &key));
        (matched, first_sight, forward)
    };
    if !first_sight.is_empty() {
        p.first_seen.insert(key.clone());
        for (adapter, request) in first_sight {
            p.fire_first_sight(adapter, request);
        }
    }
    if !matched.is_empty() {
        if let Ok(mut snaps) = p.snapshots.lock() {
            if snaps.fields.contains_key(&key) {
                snaps.changed.insert(key.clone());
            }
        }
    }
    for (run, coalesce) in matched {
        p.on_match(run, coalesce);
    }
    if forward {
        // Counted by the loop.
        let _ = forward_tx.send(Incoming::Key { key, op: operation });
    } else {
        metrics.ingested(Source::Keyspace, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::{glob_match, snapshot_diff};
    use broker_adapters::Reply;
    use std::collections::{HashMap, HashSet};

    fn fields(names: &[&str]) -> Reply {
        Reply::Array(
            names
                .iter()
                .map(|n| Reply::Bytes(n.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn a_snapshot_gives_the_fields_new_and_gone_since_the_previous_one() {
        let mut snaps = HashMap::new();
        let (new, gone) = snapshot_diff(&mut snaps, "q.msgs", &fields(&["a", "b"]));
        assert_eq!((sorted(new), gone), (vec!["a".into(), "b".into()], vec![]));
        let (new, gone) = snapshot_diff(&mut snaps, "q.msgs", &fields(&["b", "c", "d"]));
        assert_eq!(
            (sorted(new), gone),
            (vec!["c".into(), "d".into()], vec!["a".to_string()])
        );
        let (new, gone) = snapshot_diff(&mut snaps, "q.msgs", &fields(&["b", "c", "d"]));
        assert!(new.is_empty() && gone.is_empty(), "nothing changed");
        let expected: HashSet<String> = ["b", "c", "d"].map(String::from).into();
        assert_eq!(snaps["q.msgs"], expected, "kept as the previous snapshot");
        // Another hash has its own; an empty or odd reply empties the snapshot.
        let (new, _) = snapshot_diff(&mut snaps, "other.msgs", &fields(&["a"]));
        assert_eq!(new, vec!["a".to_string()]);
        let (new, gone) = snapshot_diff(&mut snaps, "q.msgs", &Reply::Nil);
        assert!(new.is_empty());
        assert_eq!(sorted(gone), vec!["b", "c", "d"]);
        assert!(snaps["q.msgs"].is_empty());
    }

    #[test]
    fn globs_match_as_redis_does() {
        assert!(glob_match("dramatiq:*.msgs", "dramatiq:default.msgs"));
        assert!(glob_match("dramatiq:*.msgs", "dramatiq:default.DQ.msgs"));
        assert!(!glob_match("dramatiq:*.msgs", "dramatiq:default"));
        assert!(glob_match(
            "dramatiq:__acks__.*",
            "dramatiq:__acks__.w1.default"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("a[bx]c", "axc"));
        assert!(!glob_match("a[^bx]c", "abc"));
        assert!(glob_match("a[a-c]d", "abd"));
        assert!(glob_match("a\\*b", "a*b"));
        assert!(!glob_match("a\\*b", "axb"));
        assert!(glob_match("*", ""));
        assert!(glob_match("unacked", "unacked"));
        assert!(!glob_match("unacked", "unacked_index"));
        assert!(glob_match("*a*b", "xxaybzb"));
    }
}
