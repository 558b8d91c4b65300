//! The queue between Redis's pushes (the subscribers' connection tasks, the prefetcher) and the
//! ingest loop: a sender never waits, and the queue grows as needed up to a cap.
//!
//! It allocates only what is waiting. Past [`Sender::send`]'s caps (messages, and bytes by the
//! queue's weight function) a message is dropped and counted ([`Receiver::take_dropped`]),
//! never blocking the sender: the loop then resyncs by reading. Order is kept: the receiver
//! takes everything waiting at once (one lock per batch, not per message), and what it took
//! counts against the caps until it has handed the last of it out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// A drained queue keeps at most this many slots allocated (a burst's are given back).
const KEEP_SLOTS: usize = 4_096;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Items that end a [`Receiver::linger`] at once.
    urgent: fn(&T) -> bool,
    /// Wakes the receiver: a message arrived in an empty queue, or the last sender left.
    ready: Notify,
    senders: AtomicUsize,
    cap: usize,
    /// What an item weighs (its bytes) and how much the queue holds at most.
    weigh: fn(&T) -> usize,
    byte_cap: usize,
}

struct State<T> {
    items: VecDeque<T>,
    /// What `items` weigh.
    bytes: usize,
    /// How many items the receiver took at its last take, and what they weighed: held until it
    /// has handed the last of them out.
    taken: usize,
    taken_bytes: usize,
    /// Messages dropped at the cap since the receiver last asked.
    dropped: u64,
    /// The thread of a receiver in [`Receiver::linger`]: an urgent item unparks it.
    lingerer: Option<std::thread::Thread>,
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

/// A queue holding at most `cap` messages (`cap` >= 1), with no bound on bytes.
#[cfg(test)]
pub fn queue<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    queue_with(cap, usize::MAX, |_| 0, |_| false)
}

/// A queue holding at most `cap` messages (`cap` >= 1) and at most `byte_cap` bytes as `weigh`
/// counts them (one item is always let into an empty queue, whatever it weighs), where an item
/// for which `urgent` is true ends the receiver's [`Receiver::linger`].
pub fn queue_with<T>(
    cap: usize,
    byte_cap: usize,
    weigh: fn(&T) -> usize,
    urgent: fn(&T) -> bool,
) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            taken: 0,
            taken_bytes: 0,
            dropped: 0,
            lingerer: None,
        }),
        urgent,
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
        cap: cap.max(1),
        weigh,
        byte_cap,
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
        let weight = (self.shared.weigh)(&item);
        let (was_empty, lingerer) = {
            let mut state = lock(&self.shared.state);
            let held = state.items.len() + state.taken;
            let held_bytes = state.bytes + state.taken_bytes;
            if held >= self.shared.cap
                || (held > 0 && held_bytes.saturating_add(weight) > self.shared.byte_cap)
            {
                state.dropped += 1;
                return Ok(());
            }
            state.bytes += weight;
            let was_empty = state.items.is_empty();
            let lingerer = match &state.lingerer {
                Some(thread) if (self.shared.urgent)(&item) => Some(thread.clone()),
                _ => None,
            };
            state.items.push_back(item);
            (was_empty, lingerer)
        };
        if let Some(thread) = lingerer {
            thread.unpark();
        }
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
            if self.taken.is_empty() {
                // The last of a take handed out: its room is the senders' again.
                let mut state = lock(&self.shared.state);
                state.taken = 0;
                state.taken_bytes = 0;
            }
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
        state.taken = self.taken.len();
        state.taken_bytes = std::mem::take(&mut state.bytes);
        if self.taken.len() == 1 {
            state.taken = 0;
            state.taken_bytes = 0;
        }
        drop(state);
        self.taken.pop_front()
    }

    /// Blocks the calling thread for `timeout`, or until an urgent item (see
    /// [`queue_with`]) waits: one wake-up for the whole wait, where sleeping in slices
    /// and looking after each cost a context switch a slice (perf of Celery's event stream:
    /// ~6 % of the process in `clock_nanosleep`'s switches with 1 ms slices).
    pub fn linger(&self, timeout: std::time::Duration) {
        let until = std::time::Instant::now() + timeout;
        let urgent = self.shared.urgent;
        if self.taken.iter().any(urgent) {
            return;
        }
        {
            let mut state = lock(&self.shared.state);
            if state.items.iter().any(urgent) {
                return;
            }
            // Set under the lock the senders push under: an urgent item pushed from now on
            // unparks this thread, even before it parks (the token is kept).
            state.lingerer = Some(std::thread::current());
        }
        loop {
            let now = std::time::Instant::now();
            if now >= until {
                break;
            }
            std::thread::park_timeout(until - now);
            // Woken by a sender, by the timeout, or spuriously.
            if lock(&self.shared.state).items.iter().any(urgent) {
                break;
            }
        }
        lock(&self.shared.state).lingerer = None;
    }

    /// Messages dropped at the cap since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut lock(&self.shared.state).dropped)
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
        // What the receiver took and has not handed out still counts.
        tx.send(10).unwrap();
        assert_eq!(rx.take_dropped(), 1);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        // Room again once handed out: sent after the first batch, received after it.
        tx.send(11).unwrap();
        assert_eq!(rx.recv().await, Some(11));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(rx.take_dropped(), 0);
    }

    #[tokio::test]
    async fn holds_at_most_its_bytes_taken_or_not_and_lets_one_large_item_in() {
        let (tx, mut rx) = queue_with::<Vec<u8>>(1_000, 100, Vec::len, |_| false);
        for _ in 0..4 {
            tx.send(vec![0; 30]).unwrap();
        }
        // 90 bytes held: a fourth 30 would make 120.
        assert_eq!(rx.take_dropped(), 1);
        assert_eq!(rx.recv().await.map(|v| v.len()), Some(30));
        // Two left of the take (60 bytes, counted as the take's 90 until handed out).
        tx.send(vec![0; 20]).unwrap();
        assert_eq!(rx.take_dropped(), 1);
        rx.recv().await;
        rx.recv().await;
        assert_eq!(rx.try_recv(), None);
        // An empty queue lets in one item larger than the cap, and nothing beside it.
        tx.send(vec![0; 500]).unwrap();
        tx.send(vec![0; 1]).unwrap();
        assert_eq!(rx.take_dropped(), 1);
        assert_eq!(rx.recv().await.map(|v| v.len()), Some(500));
        tx.send(vec![0; 100]).unwrap();
        assert_eq!(rx.take_dropped(), 0);
        assert_eq!(rx.recv().await.map(|v| v.len()), Some(100));
    }

    /// A linger lasts its whole time through ordinary items, and ends as soon as an urgent one
    /// is sent from another thread (or at once when one already waits).
    #[test]
    fn a_linger_ends_when_an_urgent_item_is_sent_and_not_before() {
        use std::time::{Duration, Instant};
        let (tx, rx) = queue_with::<u32>(100, usize::MAX, |_| 0, |&i| i >= 100);
        let ordinary = std::thread::spawn({
            let tx = tx.clone();
            move || {
                for i in 0..5 {
                    tx.send(i).unwrap();
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        let started = Instant::now();
        rx.linger(Duration::from_millis(150));
        assert!(started.elapsed() >= Duration::from_millis(150));
        ordinary.join().unwrap();

        let urgent = std::thread::spawn({
            let tx = tx.clone();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                tx.send(100).unwrap();
            }
        });
        let started = Instant::now();
        rx.linger(Duration::from_secs(30));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
        urgent.join().unwrap();
        // Already waiting: no wait at all.
        let started = Instant::now();
        rx.linger(Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(10));
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
