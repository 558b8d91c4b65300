//! Hands replies and pub/sub payloads to their adapter, whose `on_reply` / `on_message` decode
//! them: small ones inline on the ingest loop, large ones on tokio's blocking pool, so that a
//! slow decode never holds a runtime thread that HTTP and fred's connections need. Either way
//! the loop awaits the adapter before the next payload: a task's observations keep their order.
//!
//! Every call is timed; one over [`SLOW_DECODE`] is logged with its key (that is how a decoder
//! without a budget shows up). A panic inside an adapter running off the loop costs that
//! payload (a decode error), not the process.

use broker_adapters::{
    Adapter, Broker, DecodeError, Interest, OpenTask, Output, ReadRequest, Reply,
};
use chrono::{DateTime, Utc};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// Replies and payloads of at least this many bytes are decoded off the loop. A typical
/// message is ~1 KB; a page of a queue (`LRANGE` of 500 messages) is a few hundred KB.
pub const OFF_LOOP_BYTES: usize = 64 * 1024;

/// An adapter call slower than this is logged.
pub const SLOW_DECODE: Duration = Duration::from_millis(20);

/// `adapter.on_reply(request, reply, at)`, off the loop when the reply is large.
pub async fn reply(
    slot: &mut Box<dyn Adapter>,
    request: &ReadRequest,
    reply: Reply,
    at: DateTime<Utc>,
) -> Output {
    let bytes = reply_bytes(&reply, OFF_LOOP_BYTES);
    if bytes < OFF_LOOP_BYTES {
        let start = Instant::now();
        let out = slot.on_reply(request, reply, at);
        log_if_slow(slot.broker(), request.key(), bytes, start.elapsed(), false);
        return out;
    }
    let request = request.clone();
    let key = request.key().to_string();
    off_loop(slot, key, bytes, move |a| a.on_reply(&request, reply, at)).await
}

/// `adapter.on_message(channel, payload, now)`, off the loop when the payload is large.
pub async fn message(
    slot: &mut Box<dyn Adapter>,
    channel: &str,
    payload: &Arc<Vec<u8>>,
    now: DateTime<Utc>,
) -> Output {
    if payload.len() < OFF_LOOP_BYTES {
        let start = Instant::now();
        let out = slot.on_message(channel, payload, now);
        log_if_slow(
            slot.broker(),
            channel,
            payload.len(),
            start.elapsed(),
            false,
        );
        return out;
    }
    let (channel, payload) = (channel.to_string(), payload.clone());
    let len = payload.len();
    off_loop(slot, channel.clone(), len, move |a| {
        a.on_message(&channel, &payload, now)
    })
    .await
}

/// Runs `call` on the adapter in the blocking pool: the adapter moves there and back (a
/// [`Parked`] stand-in holds its place meanwhile; nothing else runs on it, the loop awaits).
async fn off_loop(
    slot: &mut Box<dyn Adapter>,
    key: String,
    bytes: usize,
    call: impl FnOnce(&mut dyn Adapter) -> Output + Send + 'static,
) -> Output {
    let broker = slot.broker();
    let mut adapter = std::mem::replace(slot, Box::new(Parked(broker)));
    let joined = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| call(adapter.as_mut())));
        (adapter, out, start.elapsed())
    })
    .await;
    let (adapter, out, took) = match joined {
        Ok(done) => done,
        Err(e) => {
            // Only a panic outside catch_unwind (none is expected) loses the adapter.
            error!(%broker, key, error = %e, "An adapter was lost off the ingest loop; its broker is no longer watched until restart.");
            return Output::default();
        }
    };
    *slot = adapter;
    log_if_slow(broker, &key, bytes, took, true);
    out.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Output {
            decode_errors: vec![DecodeError {
                broker,
                kind: "decoder-panic",
                key,
                message: format!("the decoder panicked ({why}); payload skipped"),
            }],
            ..Output::default()
        }
    })
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

/// Holds an adapter's place while it decodes off the loop; never called meanwhile.
struct Parked(Broker);

impl Adapter for Parked {
    fn broker(&self) -> Broker {
        self.0
    }
    fn interest(&self) -> Interest {
        Interest::default()
    }
    fn on_scan(&mut self, _: &str, _: Vec<String>, _: DateTime<Utc>) -> Vec<ReadRequest> {
        Vec::new()
    }
    fn on_key_event(&mut self, _: &str, _: &str, _: DateTime<Utc>) -> Vec<ReadRequest> {
        Vec::new()
    }
    fn on_message(&mut self, _: &str, _: &[u8], _: DateTime<Utc>) -> Output {
        Output::default()
    }
    fn on_reply(&mut self, _: &ReadRequest, _: Reply, _: DateTime<Utc>) -> Output {
        Output::default()
    }
    fn reconcile(&mut self, _: &[OpenTask], _: DateTime<Utc>) -> Vec<ReadRequest> {
        Vec::new()
    }
    fn sample_queues(&mut self, _: DateTime<Utc>) -> Vec<ReadRequest> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records which thread decoded; panics on a payload starting with `!`.
    struct Probe(Arc<Mutex<Vec<String>>>);

    impl Probe {
        fn record(&self) -> Output {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if let Ok(mut t) = self.0.lock() {
                t.push(name);
            }
            Output::default()
        }
    }

    impl Adapter for Probe {
        fn broker(&self) -> Broker {
            Broker::Rq
        }
        fn interest(&self) -> Interest {
            Interest::default()
        }
        fn on_scan(&mut self, _: &str, _: Vec<String>, _: DateTime<Utc>) -> Vec<ReadRequest> {
            Vec::new()
        }
        fn on_key_event(&mut self, _: &str, _: &str, _: DateTime<Utc>) -> Vec<ReadRequest> {
            Vec::new()
        }
        fn on_message(&mut self, _: &str, payload: &[u8], _: DateTime<Utc>) -> Output {
            assert!(payload.first() != Some(&b'!'), "hostile payload");
            self.record()
        }
        fn on_reply(&mut self, _: &ReadRequest, _: Reply, _: DateTime<Utc>) -> Output {
            self.record()
        }
        fn reconcile(&mut self, _: &[OpenTask], _: DateTime<Utc>) -> Vec<ReadRequest> {
            Vec::new()
        }
        fn sample_queues(&mut self, _: DateTime<Utc>) -> Vec<ReadRequest> {
            Vec::new()
        }
    }

    fn probe() -> (Box<dyn Adapter>, Arc<Mutex<Vec<String>>>) {
        let threads = Arc::new(Mutex::new(Vec::new()));
        (Box::new(Probe(threads.clone())), threads)
    }

    fn seen(threads: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        threads.lock().map(|t| t.clone()).unwrap_or_default()
    }

    #[tokio::test]
    async fn large_replies_are_decoded_off_the_loop_and_small_ones_on_it() {
        let (mut slot, threads) = probe();
        let get = ReadRequest::Get("k".into());
        reply(&mut slot, &get, Reply::Bytes(vec![b'x'; 10]), Utc::now()).await;
        let large = Reply::Array(vec![Reply::Bytes(vec![b'x'; OFF_LOOP_BYTES])]);
        reply(&mut slot, &get, large, Utc::now()).await;
        let seen = seen(&threads);
        assert_eq!(seen.len(), 2);
        assert_ne!(seen[0], seen[1], "the large reply ran on a blocking thread");
    }

    #[tokio::test]
    async fn a_panicking_decoder_off_the_loop_costs_one_decode_error() {
        let (mut slot, threads) = probe();
        let mut hostile = vec![b'x'; OFF_LOOP_BYTES];
        hostile[0] = b'!';
        let out = message(&mut slot, "ch", &Arc::new(hostile), Utc::now()).await;
        assert_eq!(out.decode_errors.len(), 1);
        assert_eq!(out.decode_errors[0].kind, "decoder-panic");
        // The adapter is back in its slot and goes on.
        let out = message(&mut slot, "ch", &Arc::new(vec![b'x'; 3]), Utc::now()).await;
        assert!(out.decode_errors.is_empty());
        assert_eq!(seen(&threads).len(), 1);
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
