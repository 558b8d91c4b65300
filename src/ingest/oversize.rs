//! Values too large to read (`--max-payload-bytes`): turns the [`Reply::TooLarge`] markers of a
//! reply, and pub/sub payloads over the limit, into decode errors, each counted once.
//!
//! The bounded reads of [`super::redis`] never bring such a value over; this module only makes
//! them visible (`taskscope_decode_errors_total`, one log line per broker). Adapters that know
//! the task a value belongs to show it with the error "payload too large (N bytes)" on their
//! own. The same value is read again at every reconciliation; a value is counted once per key
//! and length, among the last [`REMEMBERED`] ones.

use broker_adapters::bounded::FifoSet;
use broker_adapters::{too_large_error, Broker, DecodeError, Reply};

/// Oversize values remembered so that re-reads do not count them again.
const REMEMBERED: usize = 10_000;

/// The decode error's `kind` for a value over the limit.
pub const KIND: &str = "payload-too-large";

/// Oversize values seen lately, by (key, length), oldest first out.
#[derive(Debug)]
pub struct Oversize {
    seen: FifoSet<(String, u64)>,
}

impl Default for Oversize {
    fn default() -> Self {
        Oversize {
            seen: FifoSet::new(REMEMBERED),
        }
    }
}

impl Oversize {
    /// Decode errors for the values of `reply` that were too large to read, leaving out those
    /// counted already.
    pub fn in_reply(&mut self, broker: Broker, key: &str, reply: &Reply) -> Vec<DecodeError> {
        let mut lengths = Vec::new();
        collect(reply, &mut lengths);
        lengths
            .into_iter()
            .filter_map(|n| self.first_time(broker, key, n))
            .collect()
    }

    fn first_time(&mut self, broker: Broker, key: &str, len: u64) -> Option<DecodeError> {
        if !self.seen.insert((key.to_string(), len)) {
            return None;
        }
        Some(error(broker, key, len, "not read"))
    }
}

/// The decode error of a pub/sub payload of `len` bytes over the limit. Each message is its
/// own (nothing reads it again); fred has received it already, so it is only not decoded
/// (Redis bounds a subscriber's output buffer: 32 MB by default).
pub fn message_error(broker: Broker, channel: &str, len: u64) -> DecodeError {
    error(broker, channel, len, "not decoded")
}

fn error(broker: Broker, key: &str, len: u64, what: &str) -> DecodeError {
    DecodeError {
        broker,
        kind: KIND,
        key: key.to_string(),
        message: format!(
            "{} (over --max-payload-bytes; {what})",
            too_large_error(len)
        ),
    }
}

/// The lengths of the values of `reply` that were too large to read.
fn collect(reply: &Reply, into: &mut Vec<u64>) {
    match reply {
        Reply::TooLarge(n) => into.push(*n),
        Reply::Array(items) => items.iter().for_each(|i| collect(i, into)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversize_value_is_counted_once_however_often_it_is_read() {
        let mut o = Oversize::default();
        let reply = Reply::Array(vec![
            Reply::Bytes(b"status".to_vec()),
            Reply::TooLarge(20_000_000),
        ]);
        let first = o.in_reply(Broker::Rq, "rq:job:1", &reply);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, KIND);
        assert!(first[0]
            .message
            .starts_with("payload too large (20000000 bytes)"));
        assert!(o.in_reply(Broker::Rq, "rq:job:1", &reply).is_empty());
        // Another key, or the same key with another value, counts.
        assert_eq!(o.in_reply(Broker::Rq, "rq:job:2", &reply).len(), 1);
        assert_eq!(
            o.in_reply(Broker::Rq, "rq:job:1", &Reply::TooLarge(5))
                .len(),
            1
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut o = Oversize::default();
        for i in 0..(REMEMBERED as u64 + 10) {
            o.in_reply(Broker::Taskiq, "k", &Reply::TooLarge(i));
        }
        assert_eq!(o.seen.len(), REMEMBERED);
    }
}
