//! The queue between Redis's pushes (fred's pub/sub broadcast channels, the prefetcher) and the
//! ingest loop: a sender never waits, and the queue grows as needed up to a cap.
//!
//! fred drops messages for a broadcast receiver that falls more than its channel's capacity
//! behind, and allocates every slot of that channel up front. So fred's channels stay small
//! and are emptied into this queue at once; this one allocates only what is waiting. Past
//! [`Sender::send`]'s cap a message is dropped and counted ([`Receiver::take_dropped`]), never
//! blocking the sender: the loop then resyncs by reading, as for a lag of fred's. Order is
//! kept: the receiver takes everything waiting at once (one lock per batch, not per message).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// A drained queue keeps at most this many slots allocated (a burst's are given back).
const KEEP_SLOTS: usize = 4_096;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the receiver: a message arrived in an empty queue, or the last sender left.
    ready: Notify,
    senders: AtomicUsize,
    cap: usize,
}

struct State<T> {
    items: VecDeque<T>,
    /// Messages dropped at the cap since the receiver last asked.
    dropped: u64,
}

/// The sending side; clone it for every producer.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
    /// Fails (`changed` errors) once the receiver is gone.
    receiver_alive: watch::Receiver<()>,
}

/// The ingest loop's side.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// What was taken from the queue and not handed out yet, in order.
    taken: VecDeque<T>,
    _alive: watch::Sender<()>,
}

/// The receiver is gone: nothing will read this message.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// A queue holding at most `cap` messages (`cap` >= 1).
pub fn queue<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            dropped: 0,
        }),
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
        cap: cap.max(1),
    });
    let (alive_tx, alive_rx) = watch::channel(());
    (
        Sender {
            shared: shared.clone(),
            receiver_alive: alive_rx,
        },
        Receiver {
            shared,
            taken: VecDeque::new(),
            _alive: alive_tx,
        },
    )
}

impl<T> Sender<T> {
    /// Queues `item` without waiting. A full queue drops it and counts it (`Ok` all the same:
    /// the receiver learns of it); `Err` only when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), Closed> {
        if self.is_closed() {
            return Err(Closed);
        }
        let was_empty = {
            let mut state = lock(&self.shared.state);
            if state.items.len() >= self.shared.cap {
                state.dropped += 1;
                return Ok(());
            }
            let was_empty = state.items.is_empty();
            state.items.push_back(item);
            was_empty
        };
        // A receiver that found the queue empty waits for this; a non-empty queue already
        // woke it.
        if was_empty {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.receiver_alive.has_changed().is_err()
    }

    /// Resolves once the receiver is gone.
    pub async fn closed(&self) {
        let mut alive = self.receiver_alive.clone();
        while alive.changed().await.is_ok() {}
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
            receiver_alive: self.receiver_alive.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// The next message; `None` once every sender is gone and the queue is empty.
    /// Cancel-safe: a message is only taken when it is returned.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                // A sender's last message may have landed just before it left.
                return self.try_recv();
            }
            // `notify_one` keeps a permit when nobody waits: a message sent between the check
            // above and this wait still wakes it.
            self.shared.ready.notified().await;
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        if let Some(item) = self.taken.pop_front() {
            return Some(item);
        }
        // Take everything at once; hand the sender back an empty queue (a small one when a
        // burst grew the last).
        let mut state = lock(&self.shared.state);
        if state.items.is_empty() {
            return None;
        }
        if self.taken.capacity() > KEEP_SLOTS {
            self.taken = VecDeque::new();
        }
        std::mem::swap(&mut state.items, &mut self.taken);
        drop(state);
        self.taken.pop_front()
    }

    /// Whether any waiting message matches `pred` (looked at under the queue's lock, none
    /// taken).
    pub fn any_waiting(&self, pred: impl Fn(&T) -> bool) -> bool {
        self.taken.iter().any(&pred) || lock(&self.shared.state).items.iter().any(&pred)
    }

    /// Messages dropped at the cap since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut lock(&self.shared.state).dropped)
    }
}

/// Records the high-water mark of a fred subscriber buffer ([`crate::metrics::Metrics`]
/// `subscriber_backlog_max`): what waits in it is looked at once per burst (when the messages
/// seen waiting last time are taken), not per message, since each look takes the channel's
/// lock.
pub struct BacklogGauge {
    metrics: Arc<crate::metrics::Metrics>,
    until_check: usize,
}

impl BacklogGauge {
    pub fn new(metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            metrics,
            until_check: 0,
        }
    }

    /// Call after each message taken from `rx`.
    pub fn taken<T: Clone>(&mut self, rx: &tokio::sync::broadcast::Receiver<T>) {
        if self.until_check == 0 {
            // The one just taken waited too.
            let waiting = rx.len() + 1;
            self.metrics.saw_subscriber_backlog(waiting);
            self.until_check = waiting;
        }
        self.until_check -= 1;
    }
}

/// The state's lock; a panic while holding it (none can: pushes and swaps only) is ignored.
fn lock<T>(m: &Mutex<State<T>>) -> std::sync::MutexGuard<'_, State<T>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_order_and_counts_what_the_cap_drops() {
        let (tx, mut rx) = queue::<u32>(3);
        for i in 0..5 {
            assert_eq!(tx.send(i), Ok(()));
        }
        assert_eq!(rx.take_dropped(), 2);
        assert_eq!(rx.take_dropped(), 0);
        assert_eq!(rx.recv().await, Some(0));
        // Room again once taken: sent after the first batch, received after it.
        tx.send(10).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(10));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(rx.take_dropped(), 0);
    }

    #[tokio::test]
    async fn any_waiting_looks_without_taking() {
        let (tx, mut rx) = queue::<u32>(10);
        assert!(!rx.any_waiting(|_| true));
        for i in [1, 2, 3] {
            tx.send(i).unwrap();
        }
        assert!(rx.any_waiting(|&i| i == 3));
        assert!(!rx.any_waiting(|&i| i == 4));
        assert_eq!(rx.recv().await, Some(1));
        // What was taken with the first and not handed out yet counts too.
        assert!(rx.any_waiting(|&i| i == 2));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert!(!rx.any_waiting(|_| true));
    }

    #[tokio::test]
    async fn wakes_a_waiting_receiver_and_ends_with_the_last_sender() {
        let (tx, mut rx) = queue::<u32>(100);
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(i) = rx.recv().await {
                got.push(i);
            }
            got
        });
        tokio::task::yield_now().await;
        let producer = tokio::spawn(async move {
            for i in 0..50 {
                tx2.send(i).unwrap();
                tokio::task::yield_now().await;
            }
        });
        producer.await.unwrap();
        tx.send(50).unwrap();
        drop(tx);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the receiver ends once every sender is gone")
            .unwrap();
        assert_eq!(got, (0..=50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_sender_learns_that_the_receiver_is_gone() {
        let (tx, rx) = queue::<u32>(4);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(1), Err(Closed));
        tokio::time::timeout(std::time::Duration::from_secs(5), tx.closed())
            .await
            .expect("closed() resolves once the receiver is gone");
    }

    #[test]
    fn across_threads_nothing_is_lost_below_the_cap() {
        let (tx, mut rx) = queue::<(u8, u32)>(1_000_000);
        let producers: Vec<_> = (0..2u8)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        tx.send((p, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let mut got = Vec::new();
            while let Some(x) = rx.recv().await {
                got.push(x);
            }
            got
        });
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(got.len(), 40_000);
        for p in 0..2u8 {
            let mine: Vec<u32> = got.iter().filter(|x| x.0 == p).map(|x| x.1).collect();
            assert_eq!(
                mine,
                (0..20_000).collect::<Vec<_>>(),
                "each producer's order kept"
            );
        }
        assert_eq!(rx.take_dropped(), 0);
    }
}
