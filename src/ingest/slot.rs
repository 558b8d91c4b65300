//! One adapter's place in the ingest loop. Calls run inline, except the decoding of a large
//! reply or pub/sub payload: the adapter then moves to tokio's blocking pool and the loop goes
//! on with every other adapter, without waiting. Calls for the adapter that arrive meanwhile
//! wait in its queue, in order, and run when it is back ([`Slot::restore`]): a task's
//! observations keep their order, and one hostile payload parks one broker for the time of
//! its decode, never the loop.
//!
//! Every call that decodes is timed; one over [`SLOW_DECODE`] is logged with its key (that is
//! how a decoder without a budget shows up). A panic inside an adapter running off the loop
//! costs that payload (a decode error), not the process.

use broker_adapters::{Adapter, Broker, DecodeError, Interest, OpenTask, Output, Read, Reply};
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{error, warn};

/// Replies and payloads of at least this many bytes are decoded off the loop. A typical
/// message is ~1 KB; a page of a queue (`LRANGE` of 500 messages) is a few hundred KB.
pub const OFF_LOOP_BYTES: usize = 64 * 1024;

/// Calls that wait for an adapter away decoding, at most (a decode takes at most a few
/// hundred ms; at tens of thousands of events a second this is seconds of them).
pub const WAITING_CAPACITY: usize = 200_000;

/// An adapter call slower than this is logged.
pub const SLOW_DECODE: Duration = Duration::from_millis(20);

/// A call for an adapter, run at once or queued while the adapter decodes off the loop.
pub enum Call {
    Key {
        key: String,
        op: String,
        now: DateTime<Utc>,
    },
    Reply {
        read: Read,
        reply: Reply,
        at: DateTime<Utc>,
    },
    Message {
        channel: fred::bytes_utils::Str,
        payload: fred::bytes::Bytes,
        now: DateTime<Utc>,
    },
    Scan {
        pattern: String,
        keys: Vec<String>,
        now: DateTime<Utc>,
    },
    Reconcile {
        open: Vec<OpenTask>,
        now: DateTime<Utc>,
    },
    Gap,
    /// The end of a batch of notifications ([`Adapter::end_of_batch`]).
    BatchEnd {
        now: DateTime<Utc>,
    },
}

/// What a call gave.
pub enum Outcome {
    /// It ran: the reads it asks for and what it observed.
    Ran(Output),
    /// The adapter is decoding off the loop (this call, or an earlier one): the outcome comes
    /// back as a [`Decoded`].
    Later,
}

/// An adapter back from the blocking pool, with what its call gave.
pub struct Decoded {
    pub slot: usize,
    adapter: Box<dyn Adapter>,
    output: std::thread::Result<Output>,
    took: Duration,
    key: String,
    bytes: usize,
}

/// An adapter, or its stand-in while it decodes off the loop, with the calls waiting for it.
pub struct Slot {
    index: usize,
    broker: Broker,
    adapter: Option<Box<dyn Adapter>>,
    /// Its interest when last asked (answered for it while it is away).
    interest: Interest,
    /// The [`Adapter::interest_version`] `interest` was built at.
    interest_version: Option<u64>,
    wants_read_barrier: bool,
    /// Its side URL when last asked.
    side_url: Option<String>,
    waiting: VecDeque<Call>,
    /// Calls were dropped because too many waited: the loop resyncs.
    overflowed: bool,
}

impl Slot {
    pub fn new(index: usize, adapter: Box<dyn Adapter>) -> Slot {
        Slot {
            index,
            broker: adapter.broker(),
            interest: adapter.interest(),
            interest_version: adapter.interest_version(),
            wants_read_barrier: adapter.wants_read_barrier(),
            side_url: adapter.side_url(),
            adapter: Some(adapter),
            waiting: VecDeque::new(),
            overflowed: false,
        }
    }

    pub fn broker(&self) -> Broker {
        self.broker
    }

    /// Its current interest; while it is away, the one it had when it left.
    pub fn interest(&mut self) -> Interest {
        self.refresh_interest().clone()
    }

    /// [`Slot::interest`] without a copy; built again only when the adapter's
    /// [`Adapter::interest_version`] changed (or it does not keep one).
    pub fn refresh_interest(&mut self) -> &Interest {
        if let Some(a) = &self.adapter {
            let version = a.interest_version();
            if version.is_none() || version != self.interest_version {
                self.interest = a.interest();
                self.interest_version = version;
            }
        }
        &self.interest
    }

    /// Its [`Adapter::side_url`]; while it is away, the one it had when it left.
    pub fn side_url(&mut self) -> Option<String> {
        if let Some(a) = &self.adapter {
            self.side_url = a.side_url();
        }
        self.side_url.clone()
    }

    pub fn wants_read_barrier(&self) -> bool {
        self.wants_read_barrier
    }

    /// The adapter, when it is here and has no calls waiting (for the calls that are not
    /// queued: sampling, detection settings, side URLs).
    pub fn here(&mut self) -> Option<&mut Box<dyn Adapter>> {
        if self.waiting.is_empty() {
            self.adapter.as_mut()
        } else {
            None
        }
    }

    /// Whether it is decoding off the loop (or has calls waiting).
    pub fn is_away(&self) -> bool {
        self.adapter.is_none() || !self.waiting.is_empty()
    }

    /// Runs `call`, or queues it behind the calls already waiting.
    /// At most [`WAITING_CAPACITY`] calls wait: past that the oldest are dropped and
    /// [`Slot::take_overflow`] tells the loop to re-read what they were about.
    pub fn call(&mut self, call: Call, done: &mpsc::UnboundedSender<Decoded>) -> Outcome {
        if self.adapter.is_none() || !self.waiting.is_empty() {
            if self.waiting.len() >= WAITING_CAPACITY {
                self.waiting.pop_front();
                self.overflowed = true;
            }
            self.waiting.push_back(call);
            return Outcome::Later;
        }
        self.run(call, done)
    }

    /// Whether calls were dropped since last asked.
    pub fn take_overflow(&mut self) -> bool {
        std::mem::take(&mut self.overflowed)
    }

    /// Puts the adapter back; its call's output is returned. The calls that waited are run
    /// next with [`Slot::resume`].
    pub fn restore(&mut self, decoded: Decoded) -> Output {
        let Decoded {
            adapter,
            output,
            took,
            key,
            bytes,
            ..
        } = decoded;
        self.adapter = Some(adapter);
        log_if_slow(self.broker, &key, bytes, took, true);
        output.unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Output {
                decode_errors: vec![DecodeError {
                    broker: self.broker,
                    kind: "decoder-panic",
                    key,
                    message: format!("the decoder panicked ({why}); payload skipped"),
                }],
                ..Output::default()
            }
        })
    }

    /// Runs the calls that waited, in order, until none is left or one goes off the loop.
    pub fn resume(&mut self, done: &mpsc::UnboundedSender<Decoded>) -> Output {
        let mut out = Output::default();
        while self.adapter.is_some() {
            let Some(call) = self.waiting.pop_front() else {
                break;
            };
            match self.run(call, done) {
                Outcome::Ran(o) => out.merge(o),
                Outcome::Later => break,
            }
        }
        out
    }

    fn run(&mut self, call: Call, done: &mpsc::UnboundedSender<Decoded>) -> Outcome {
        let Some(adapter) = self.adapter.as_mut() else {
            self.waiting.push_front(call);
            return Outcome::Later;
        };
        let reads = |reads: Vec<Read>| {
            Outcome::Ran(Output {
                follow_up: reads,
                ..Output::default()
            })
        };
        match call {
            Call::Key { key, op, now } => reads(adapter.on_key_event(&key, &op, now)),
            Call::Scan { pattern, keys, now } => reads(adapter.on_scan(&pattern, keys, now)),
            Call::Reconcile { open, now } => reads(adapter.reconcile(&open, now)),
            Call::Gap => {
                adapter.on_gap();
                Outcome::Ran(Output::default())
            }
            Call::BatchEnd { now } => Outcome::Ran(adapter.end_of_batch(now)),
            Call::Reply { read, reply, at } => {
                let bytes = reply_bytes(&reply, OFF_LOOP_BYTES);
                if bytes < OFF_LOOP_BYTES {
                    let start = Instant::now();
                    let out = adapter.handle_reply(&read, reply, at);
                    log_if_slow(
                        self.broker,
                        read.request.key(),
                        bytes,
                        start.elapsed(),
                        false,
                    );
                    return Outcome::Ran(out);
                }
                let key = read.request.key().to_string();
                self.off_loop(key, bytes, done, move |a| a.handle_reply(&read, reply, at))
            }
            Call::Message {
                channel,
                payload,
                now,
            } => {
                let bytes = payload.len();
                if bytes < OFF_LOOP_BYTES {
                    let start = Instant::now();
                    let out = adapter.on_message(&channel, &payload, now);
                    log_if_slow(self.broker, &channel, bytes, start.elapsed(), false);
                    return Outcome::Ran(out);
                }
                let key = channel.to_string();
                self.off_loop(key, bytes, done, move |a| {
                    a.on_message(&channel, &payload, now)
                })
            }
        }
    }

    /// Runs `call` on the adapter in the blocking pool; it comes back through `done`.
    fn off_loop(
        &mut self,
        key: String,
        bytes: usize,
        done: &mpsc::UnboundedSender<Decoded>,
        call: impl FnOnce(&mut dyn Adapter) -> Output + Send + 'static,
    ) -> Outcome {
        let Some(mut adapter) = self.adapter.take() else {
            return Outcome::Later;
        };
        let (slot, broker, done) = (self.index, self.broker, done.clone());
        self.interest = adapter.interest();
        self.interest_version = adapter.interest_version();
        let task = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let output = std::panic::catch_unwind(AssertUnwindSafe(|| call(adapter.as_mut())));
            let decoded = Decoded {
                slot,
                adapter,
                output,
                took: start.elapsed(),
                key,
                bytes,
            };
            // The loop is gone (shutting down): nothing left to hand the output to.
            let _ = done.send(decoded);
        });
        // Only the runtime shutting down can cancel it (the call's panics are caught).
        tokio::spawn(async move {
            if let Err(e) = task.await {
                error!(%broker, error = %e, "An adapter was lost off the ingest loop.");
            }
        });
        Outcome::Later
    }
}

fn log_if_slow(broker: Broker, key: &str, bytes: usize, took: Duration, off_loop: bool) {
    if took >= SLOW_DECODE {
        warn!(%broker, key, bytes, ms = took.as_secs_f64() * 1000.0, off_loop,
            "A payload took long to decode.");
    }
}

/// The bytes of a reply's bulk strings, counted up to `enough`.
fn reply_bytes(reply: &Reply, enough: usize) -> usize {
    match reply {
        Reply::Bytes(b) => b.len(),
        Reply::Array(items) => {
            let mut total = 0;
            for item in items {
                total += reply_bytes(item, enough - total.min(enough));
                if total >= enough {
                    break;
                }
            }
            total
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_adapters::{ReadRequest, Tag};
    use std::sync::{Arc, Mutex};

    /// Records which thread ran each call and what it was; panics on a payload starting
    /// with `!`.
    struct Probe(Arc<Mutex<Vec<(String, String)>>>);

    impl Probe {
        fn record(&self, what: &str) -> Output {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if let Ok(mut t) = self.0.lock() {
                t.push((name, what.to_string()));
            }
            Output::default()
        }
    }

    impl Adapter for Probe {
        fn broker(&self) -> Broker {
            Broker::Rq
        }
        fn interest(&self) -> Interest {
            Interest {
                scan_patterns: vec!["rq:*".into()],
                ..Interest::default()
            }
        }
        fn on_scan(&mut self, _: &str, _: Vec<String>, _: DateTime<Utc>) -> Vec<Read> {
            Vec::new()
        }
        fn on_key_event(&mut self, key: &str, _: &str, _: DateTime<Utc>) -> Vec<Read> {
            self.record(key);
            vec![Read::new(Tag(0), ReadRequest::Get(key.to_string()))]
        }
        fn on_message(&mut self, channel: &str, payload: &[u8], _: DateTime<Utc>) -> Output {
            assert!(payload.first() != Some(&b'!'), "hostile payload");
            self.record(channel)
        }
        fn on_reply(
            &mut self,
            _: Tag,
            request: &ReadRequest,
            _: Reply,
            _: DateTime<Utc>,
        ) -> Output {
            self.record(request.key())
        }
        fn reconcile(&mut self, _: &[OpenTask], _: DateTime<Utc>) -> Vec<Read> {
            Vec::new()
        }
        fn sample_queues(&mut self, _: DateTime<Utc>) -> Vec<Read> {
            Vec::new()
        }
    }

    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    fn probe() -> (Slot, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (Slot::new(0, Box::new(Probe(seen.clone()))), seen)
    }

    fn seen(s: &Seen) -> Vec<(String, String)> {
        s.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn get(key: &str, bytes: usize) -> Call {
        Call::Reply {
            read: Read::new(Tag(0), ReadRequest::Get(key.into())),
            reply: Reply::Array(vec![Reply::Bytes(vec![b'x'; bytes])]),
            at: Utc::now(),
        }
    }

    fn key(key: &str) -> Call {
        Call::Key {
            key: key.into(),
            op: "hset".into(),
            now: Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_large_reply_is_decoded_off_the_loop_and_later_calls_wait_for_it_in_order() {
        let (mut slot, threads) = probe();
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(matches!(slot.call(get("small", 10), &tx), Outcome::Ran(_)));
        assert!(matches!(
            slot.call(get("large", OFF_LOOP_BYTES), &tx),
            Outcome::Later
        ));
        assert!(slot.is_away());
        // The loop goes on: these calls do not run yet, and nothing waited for the decode.
        assert!(matches!(slot.call(key("k1"), &tx), Outcome::Later));
        assert!(matches!(slot.call(get("after", 10), &tx), Outcome::Later));
        assert!(slot.here().is_none(), "away: sampling skips it");
        assert_eq!(slot.interest().scan_patterns, vec!["rq:*".to_string()]);
        let decoded = rx.recv().await.expect("the adapter comes back");
        assert_eq!(decoded.slot, 0);
        let out = slot.restore(decoded);
        assert!(out.decode_errors.is_empty());
        let out = slot.resume(&tx);
        assert_eq!(
            out.follow_up,
            vec![Read::new(Tag(0), ReadRequest::Get("k1".into()))]
        );
        assert!(!slot.is_away());
        let seen = seen(&threads);
        let order: Vec<&str> = seen.iter().map(|(_, what)| what.as_str()).collect();
        assert_eq!(order, ["small", "large", "k1", "after"]);
        assert_ne!(
            seen[0].0, seen[1].0,
            "the large reply ran on a blocking thread"
        );
    }

    #[tokio::test]
    async fn a_panicking_decoder_off_the_loop_costs_one_decode_error() {
        let (mut slot, threads) = probe();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut hostile = vec![b'x'; OFF_LOOP_BYTES];
        hostile[0] = b'!';
        let call = Call::Message {
            channel: "ch".into(),
            payload: hostile.into(),
            now: Utc::now(),
        };
        assert!(matches!(slot.call(call, &tx), Outcome::Later));
        let out = slot.restore(rx.recv().await.expect("back"));
        assert_eq!(out.decode_errors.len(), 1);
        assert_eq!(out.decode_errors[0].kind, "decoder-panic");
        // The adapter is back in its slot and goes on.
        let call = Call::Message {
            channel: "ch".into(),
            payload: vec![b'x'; 3].into(),
            now: Utc::now(),
        };
        let Outcome::Ran(out) = slot.call(call, &tx) else {
            panic!("small payloads run at once");
        };
        assert!(out.decode_errors.is_empty());
        assert_eq!(seen(&threads).len(), 1);
    }

    #[tokio::test]
    async fn calls_waiting_past_capacity_drop_the_oldest_and_ask_for_a_resync() {
        let (mut slot, threads) = probe();
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(matches!(
            slot.call(get("large", OFF_LOOP_BYTES), &tx),
            Outcome::Later
        ));
        for i in 0..WAITING_CAPACITY + 2 {
            let _ = slot.call(key(&format!("k{i}")), &tx);
        }
        let _ = slot.restore(rx.recv().await.expect("back"));
        let out = slot.resume(&tx);
        assert_eq!(out.follow_up.len(), WAITING_CAPACITY);
        assert_eq!(out.follow_up[0].request, ReadRequest::Get("k2".into()));
        assert!(slot.take_overflow());
        assert!(!slot.take_overflow(), "reported once");
        assert_eq!(seen(&threads).len(), WAITING_CAPACITY + 1);
    }

    #[test]
    fn reply_bytes_stop_counting_once_enough() {
        let r = Reply::Array(vec![
            Reply::Bytes(vec![0; 10]),
            Reply::Array(vec![Reply::Bytes(vec![0; 10]), Reply::Int(3)]),
            Reply::Bytes(vec![0; 10]),
        ]);
        assert_eq!(reply_bytes(&r, 1000), 30);
        assert!(reply_bytes(&r, 15) >= 15);
    }
}
