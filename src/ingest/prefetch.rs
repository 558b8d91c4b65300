//! Prefetch reads, fired the moment a notification for their key arrives, on a thread of their
//! own.
//!
//! Some keys hold their content for milliseconds only (Celery's `unacked` entries: 1-9 ms
//! between a worker taking a message and acknowledging it). Waiting for the batching loop loses
//! them, and so does a cold wake-up through several tasks on a shared runtime: measured, an
//! idle taskscope's first read after a quiet spell came 1.7 ms after the write. So the
//! prefetcher owns a single-threaded runtime on its own OS thread, with its own subscriber
//! (only to the prefetch keys) and its own read connection: notification in, read out, with no
//! hand-off between threads. Each notification fires its read at once, up to
//! [`MAX_IN_FLIGHT`] per rule; past that, one trailing read follows when one completes. Replies go to the loop as
//! [`Incoming::Prefetched`], stamped with the time they arrived.

use super::{redis, Incoming};
use crate::metrics::{Metrics, Source};
use broker_adapters::adapter::glob_escape;
use broker_adapters::{Prefetch, ReadRequest};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, warn};

/// Prefetch rules by key: (adapter index, rule).
pub type Rules = HashMap<String, Vec<(usize, Prefetch)>>;

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

/// The keyspace pattern the prefetcher subscribes to for a prefetch key; the main subscriber
/// leaves these to it.
pub fn key_pattern(key: &str) -> String {
    glob_escape(key)
}

/// Reads of one rule in flight at once. One would coalesce a burst into a few snapshots taken
/// between entries that each live a millisecond (measured: 7 of 15 names caught in bursts of 5);
/// each notification gets its own read up to this bound, and past it one trailing read follows.
const MAX_IN_FLIGHT: usize = 8;

#[derive(Default)]
struct RuleState {
    in_flight: usize,
    dirty: bool,
}

/// Starts the prefetcher thread. It stops when the loop drops its receiver of `tx`.
pub fn spawn(
    redis_url: &str,
    db: u32,
    tx: mpsc::Sender<Incoming>,
    rules: watch::Receiver<Arc<Rules>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let subscriber = redis::builder(redis_url, true)?.build_subscriber_client()?;
    let client = redis::builder(redis_url, false)?.build()?;
    let thread = std::thread::Builder::new()
        .name("taskscope-prefetch".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "Cannot start the prefetch runtime; prefetching is off.");
                    return;
                }
            };
            runtime.block_on(run(subscriber, client, db, tx, rules, metrics));
        })?;
    Ok(thread)
}

async fn run(
    subscriber: SubscriberClient,
    client: Client,
    db: u32,
    tx: mpsc::Sender<Incoming>,
    mut rules: watch::Receiver<Arc<Rules>>,
    metrics: Arc<Metrics>,
) {
    let mut keys = subscriber.keyspace_event_rx();
    let init = async {
        subscriber.init().await?;
        client.init().await?;
        Ok::<(), fred::error::Error>(())
    };
    tokio::select! {
        r = init => if let Err(e) = r {
            warn!(error = %e, "The prefetcher cannot connect; prefetching is off.");
            return;
        },
        _ = tx.closed() => return,
    }
    let _resubscribe = subscriber.manage_subscriptions();
    let mut subscribed = BTreeSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, ReadRequest)>();
    let mut states: HashMap<(usize, ReadRequest), RuleState> = HashMap::new();
    let fire = |adapter: usize, read: ReadRequest| {
        let client = client.clone();
        let tx = tx.clone();
        let done_tx = done_tx.clone();
        metrics.count_redis_commands(1);
        tokio::spawn(async move {
            let reply = redis::run_reads(&client, std::slice::from_ref(&read))
                .await
                .map_err(|e| e.to_string())
                .and_then(|mut r| r.pop().ok_or_else(|| "no reply".to_string()));
            let at = chrono::Utc::now();
            let request = read.clone();
            let _ = tx
                .send(Incoming::Prefetched {
                    adapter,
                    request,
                    reply,
                    at,
                })
                .await;
            let _ = done_tx.send((adapter, read));
        });
    };
    let mut rules_changed = true;
    loop {
        if std::mem::take(&mut rules_changed) {
            let wanted: BTreeSet<String> = rules
                .borrow()
                .keys()
                .map(|k| format!("__keyspace@{db}__:{}", key_pattern(k)))
                .collect();
            let new: Vec<String> = wanted.difference(&subscribed).cloned().collect();
            if !new.is_empty() {
                match subscriber.psubscribe(new.clone()).await {
                    Ok(()) => subscribed.extend(new),
                    Err(e) => {
                        warn!(error = %e, "Prefetch PSUBSCRIBE failed; retrying on the next rule change.")
                    }
                }
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
            ev = keys.recv() => match ev {
                Ok(ev) if u32::from(ev.db) == db => {
                    let key = String::from_utf8_lossy(ev.key.as_bytes()).into_owned();
                    let matched: Vec<(usize, ReadRequest)> = rules
                        .borrow()
                        .get(&key)
                        .map(|rs| {
                            rs.iter()
                                .filter(|(_, p)| p.ops.contains(&ev.operation))
                                .map(|(a, p)| (*a, p.read.clone()))
                                .collect()
                        })
                        .unwrap_or_default();
                    metrics.ingested(Source::Keyspace, 1);
                    for (adapter, read) in matched {
                        let state = states.entry((adapter, read.clone())).or_default();
                        if state.in_flight >= MAX_IN_FLIGHT {
                            state.dirty = true;
                        } else {
                            state.in_flight += 1;
                            fire(adapter, read);
                        }
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    debug!(dropped = n, "The prefetcher fell behind; the loop will resync.");
                    let _ = tx.send(Incoming::Lagged(n)).await;
                }
                Err(RecvError::Closed) => break,
            },
            Some((adapter, read)) = done_rx.recv() => {
                let state = states.entry((adapter, read.clone())).or_default();
                if std::mem::take(&mut state.dirty) {
                    fire(adapter, read);
                } else {
                    state.in_flight = state.in_flight.saturating_sub(1);
                }
            }
        }
    }
    let _ = subscriber.quit().await;
    let _ = client.quit().await;
}
