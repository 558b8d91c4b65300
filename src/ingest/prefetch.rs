//! Keyspace notifications in, with the adapters' prefetch reads fired the moment they arrive.
//!
//! Some keys hold their content for milliseconds only (Celery's `unacked` entries: 2-9 ms
//! between a worker taking a message and acknowledging it). Waiting for the batching loop to
//! get to the notification loses them under load, so this forwarder runs the adapters'
//! [`Prefetch`] reads itself, coalesced per rule: at most one read in flight, plus one trailing
//! read if the key changed while it was. Every other notification goes to the loop unchanged.

use super::{redis, Incoming};
use crate::metrics::Metrics;
use broker_adapters::{Prefetch, ReadRequest};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};

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

#[derive(Default)]
struct RuleState {
    in_flight: bool,
    dirty: bool,
}

/// Spawns the forwarder of keyspace notifications for database `db`.
pub fn spawn(
    subscriber: &SubscriberClient,
    client: Client,
    db: u32,
    tx: mpsc::Sender<Incoming>,
    rules: watch::Receiver<Arc<Rules>>,
    metrics: Arc<Metrics>,
) {
    let mut keys = subscriber.keyspace_event_rx();
    tokio::spawn(async move {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, ReadRequest)>();
        let mut states: HashMap<(usize, ReadRequest), RuleState> = HashMap::new();
        let fire = |adapter: usize, read: ReadRequest| {
            let client = client.clone();
            let tx = tx.clone();
            let done_tx = done_tx.clone();
            metrics.redis_commands.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let reply = redis::run_reads(&client, std::slice::from_ref(&read))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|mut r| r.pop().ok_or_else(|| "no reply".to_string()));
                let _ = tx
                    .send(Incoming::Prefetched {
                        adapter,
                        request: read.clone(),
                        reply,
                        at: chrono::Utc::now(),
                    })
                    .await;
                let _ = done_tx.send((adapter, read));
            });
        };
        loop {
            tokio::select! {
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
                        if matched.is_empty() {
                            if tx.send(Incoming::Key { key, op: ev.operation }).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        metrics.ingested(crate::metrics::Source::Keyspace, 1);
                        for (adapter, read) in matched {
                            let state = states.entry((adapter, read.clone())).or_default();
                            if state.in_flight {
                                state.dirty = true;
                            } else {
                                state.in_flight = true;
                                fire(adapter, read);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        let _ = tx.send(Incoming::Lagged(n)).await;
                    }
                    Err(RecvError::Closed) => return,
                },
                Some((adapter, read)) = done_rx.recv() => {
                    let state = states.entry((adapter, read.clone())).or_default();
                    if std::mem::take(&mut state.dirty) {
                        fire(adapter, read);
                    } else {
                        state.in_flight = false;
                    }
                }
            }
        }
    });
}
