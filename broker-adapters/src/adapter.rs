//! The seam between the pure adapters and the ingest layer that does the I/O.
//!
//! An adapter is a sans-I/O state machine: it says which pub/sub channels and which keys it cares
//! about, asks for reads ([`Read`]s) when a key changes or a periodic pass is due, and turns the
//! replies and pub/sub payloads into [`Observation`]s. The ingest layer owns the Redis
//! connection, batches and pipelines the reads, and routes each reply back with the request that
//! asked for it and its [`Tag`]. Nothing here knows about fred, tokio or DuckDB.
//!
//! # Tags
//! Every read carries a [`Tag`]: why the adapter asked for it, opaque to the ingest layer, which
//! hands it back with the reply. Each adapter declares its reasons with [`read_reasons!`] (an
//! enum, one variant per reason) and matches on them in [`Adapter::on_reply`], never on key
//! strings; a tag it does not know is a counted decode error ([`unknown_tag`]), never a panic.
//! Data a reason needs (which queue, which task) comes from the request's key, not the tag.

use crate::model::{Broker, Observation, QueueSample};
use chrono::{DateTime, Utc};

/// A Redis reply, reduced to what adapters need. Bulk strings stay bytes: payloads may be
/// msgpack, pickle or zlib.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Nil,
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<Reply>),
    /// A per-command error inside a pipeline (e.g. WRONGTYPE): that read failed, the others did not.
    Error(String),
    /// A bulk string the ingest layer did not read because it is longer than
    /// `--max-payload-bytes`: its length in bytes. Where a task id is known without it, the
    /// adapter still shows the task, with [`too_large_error`] as its error.
    TooLarge(u64),
}

/// The task error shown for a payload that was too large to read.
pub fn too_large_error(bytes: u64) -> String {
    format!("payload too large ({bytes} bytes)")
}

impl Reply {
    /// The bytes of a bulk-string reply.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The length of a value too large to be read ([`Reply::TooLarge`]).
    pub fn too_large(&self) -> Option<u64> {
        match self {
            Reply::TooLarge(n) => Some(*n),
            _ => None,
        }
    }

    /// An integer reply, or a bulk string holding an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            _ => None,
        }
    }

    /// A float reply (sorted-set scores), or a bulk string holding one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Reply::Double(d) => Some(*d),
            Reply::Int(i) => Some(*i as f64),
            Reply::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            _ => None,
        }
    }

    /// The items of an array reply; empty for anything else (a missing key reads as empty).
    pub fn into_items(self) -> Vec<Reply> {
        match self {
            Reply::Array(items) => items,
            _ => Vec::new(),
        }
    }

    /// The bulk strings of an array reply (SMEMBERS, HKEYS, LRANGE), as text; other items are
    /// skipped.
    pub fn into_strings<C: FromIterator<String>>(self) -> C {
        self.into_items()
            .iter()
            .filter_map(|r| {
                r.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .collect()
    }

    /// A flat `[field, value, field, value, ...]` array (HGETALL, ZRANGE WITHSCORES) as pairs.
    pub fn into_pairs(self) -> Vec<(Reply, Reply)> {
        let mut items = self.into_items().into_iter();
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            pairs.push((k, v));
        }
        pairs
    }
}

/// Escapes Redis glob characters so a key matches only itself in a pattern.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Why an adapter asked for a read: opaque to the ingest layer, which hands it back with the
/// reply. Adapters make them from their own reason enum ([`read_reasons!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u16);

/// A tag an adapter did not hand out (see [`unknown_tag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownTag(pub Tag);

/// A read an adapter asks for, with why it asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Read {
    pub tag: Tag,
    pub request: ReadRequest,
}

impl Read {
    pub fn new(tag: impl Into<Tag>, request: ReadRequest) -> Read {
        Read {
            tag: tag.into(),
            request,
        }
    }
}

/// A read is its request, whatever its tag (what tests and logs compare).
impl PartialEq<ReadRequest> for Read {
    fn eq(&self, other: &ReadRequest) -> bool {
        self.request == *other
    }
}

/// The output of a reply whose tag the adapter does not know: one `unknown-tag` decode error.
pub fn unknown_tag(broker: Broker, request: &ReadRequest, tag: Tag) -> Output {
    Output {
        decode_errors: vec![DecodeError {
            broker,
            kind: "unknown-tag",
            key: request.key().to_string(),
            message: format!(
                "a reply came back with tag {}, which this adapter never hands out",
                tag.0
            ),
        }],
        ..Output::default()
    }
}

/// Declares an adapter's reasons to read: a `#[repr(u16)]` enum with `From<Why> for Tag`,
/// `TryFrom<Tag>` (an unknown tag is an [`UnknownTag`] error) and `why.read(request)`, the
/// [`Read`] of `request` for that reason.
#[macro_export]
macro_rules! read_reasons {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl From<$name> for $crate::adapter::Tag {
            fn from(why: $name) -> $crate::adapter::Tag {
                $crate::adapter::Tag(why as u16)
            }
        }

        impl TryFrom<$crate::adapter::Tag> for $name {
            type Error = $crate::adapter::UnknownTag;
            fn try_from(tag: $crate::adapter::Tag) -> Result<$name, $crate::adapter::UnknownTag> {
                $(if tag.0 == $name::$variant as u16 {
                    return Ok($name::$variant);
                })+
                Err($crate::adapter::UnknownTag(tag))
            }
        }

        impl $name {
            /// The read of `request` for this reason.
            #[allow(dead_code)]
            $vis fn read(self, request: $crate::adapter::ReadRequest) -> $crate::adapter::Read {
                $crate::adapter::Read::new(self, request)
            }
        }
    };
}

/// A read-only command an adapter wants run. The ingest layer pipelines many of them in one
/// round trip; every request gets exactly one reply, in [`Adapter::on_reply`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReadRequest {
    Get(String),
    MGet(Vec<String>),
    LLen(String),
    LRange {
        key: String,
        start: i64,
        stop: i64,
    },
    HGetAll(String),
    /// `HSCAN key 0 COUNT count`: the first page of a hash's fields and values, a small hash
    /// whole (Redis answers a small hash in one page whatever the count), a big one bounded in
    /// count where `HGETALL` is not. The reply is `[cursor, [field, value, ...]]`.
    HScanFirstPage {
        key: String,
        count: u64,
    },
    /// `HKEYS key`: the fields of a hash, without their values.
    HKeys(String),
    HLen(String),
    HMGet {
        key: String,
        fields: Vec<String>,
    },
    SMembers(String),
    ZCard(String),
    ZRangeWithScores {
        key: String,
        start: i64,
        stop: i64,
    },
    /// `PTTL key`: milliseconds left before the key expires (-1 none, -2 no such key).
    PTtl(String),
    /// `TYPE key`: which kind of key a configured name is (taskiq queues are streams or lists).
    Type(String),
    XLen(String),
    /// `XRANGE key start end COUNT count` (`start` may be exclusive: `(1700000000000-0`).
    XRange {
        key: String,
        start: String,
        end: String,
        count: u64,
    },
    /// `XREVRANGE key end start COUNT count`: the newest entries first.
    XRevRange {
        key: String,
        end: String,
        start: String,
        count: u64,
    },
    /// `XREAD COUNT count STREAMS key... 0...`: the first `count` entries of each stream, in
    /// one command for many streams (RQ's results streams, one per job). The reply is
    /// `[[key, [[id, [field, value, ...]], ...]], ...]` for the streams that have entries, nil
    /// when none has.
    XReadFirst {
        keys: Vec<String>,
        count: u64,
    },
    /// `SORT_RO key BY nosort [DESC] LIMIT 0 count GET # GET pattern...`: the first `count`
    /// members of a list or sorted set in its own order (a sorted set's newest first with
    /// `desc`), each followed by the values its `GET` patterns name (`<prefix>*->field`: a field
    /// of the hash `<prefix><member>`), in one command: the fields of many hashes at once
    /// (BullMQ's finished and active jobs). The reply is flat: `count` x (1 + patterns) items,
    /// nil for a missing hash or field. Redis 7.0+ (older ones refuse it: a [`Reply::Error`]).
    SortGet {
        key: String,
        desc: bool,
        count: u64,
        gets: Vec<String>,
    },
    /// `XPENDING key group - + count`: the pending entries of a consumer group, with consumer,
    /// idle time and delivery count. Never joins or acknowledges for the group.
    XPending {
        key: String,
        group: String,
        count: u64,
    },
    /// `XINFO GROUPS key`.
    XInfoGroups(String),
    /// `XINFO CONSUMERS key group`.
    XInfoConsumers {
        key: String,
        group: String,
    },
    /// `CLIENT LIST`: the connections of every client, one line each (BullMQ's workers are
    /// known only by their connection names). Redis may refuse it (ACL): a [`Reply::Error`].
    ClientList,
    /// The same read on the adapter's side connection ([`Adapter::side_url`], e.g. Celery's
    /// result backend in another database); on the main connection when there is none.
    Side(Box<ReadRequest>),
}

impl ReadRequest {
    /// The key (or first key) the request reads, for logs and error context.
    pub fn key(&self) -> &str {
        match self {
            ReadRequest::Get(k)
            | ReadRequest::LLen(k)
            | ReadRequest::HGetAll(k)
            | ReadRequest::HKeys(k)
            | ReadRequest::HLen(k)
            | ReadRequest::SMembers(k)
            | ReadRequest::ZCard(k)
            | ReadRequest::PTtl(k)
            | ReadRequest::Type(k)
            | ReadRequest::XLen(k)
            | ReadRequest::XInfoGroups(k)
            | ReadRequest::XRange { key: k, .. }
            | ReadRequest::XRevRange { key: k, .. }
            | ReadRequest::SortGet { key: k, .. }
            | ReadRequest::XPending { key: k, .. }
            | ReadRequest::XInfoConsumers { key: k, .. }
            | ReadRequest::LRange { key: k, .. }
            | ReadRequest::HMGet { key: k, .. }
            | ReadRequest::HScanFirstPage { key: k, .. }
            | ReadRequest::ZRangeWithScores { key: k, .. } => k,
            ReadRequest::MGet(keys) | ReadRequest::XReadFirst { keys, .. } => {
                keys.first().map(String::as_str).unwrap_or("")
            }
            ReadRequest::ClientList => "",
            ReadRequest::Side(inner) => inner.key(),
        }
    }

    /// The read itself, whichever connection it goes to.
    pub fn inner(&self) -> &ReadRequest {
        match self {
            ReadRequest::Side(inner) => inner.inner(),
            other => other,
        }
    }
}

/// A payload that did not decode. The ingest layer logs the first of each `kind` per broker
/// with its key, counts all of them, and goes on with the neighbours.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub broker: Broker,
    /// A stable short name for the failure (`envelope-json`, `body-base64`, `result-json`...).
    pub kind: &'static str,
    /// The key or channel the payload came from.
    pub key: String,
    pub message: String,
}

/// The decode error a read Redis refused counts as.
pub fn read_error(broker: Broker, request: &ReadRequest, error: &str) -> DecodeError {
    DecodeError {
        broker,
        kind: "redis-reply",
        key: request.key().to_string(),
        message: error.to_string(),
    }
}

/// What an adapter produced from one reply or message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    pub observations: Vec<Observation>,
    pub decode_errors: Vec<DecodeError>,
    /// Reads that this reply showed are needed (e.g. a discovered queue to read).
    pub follow_up: Vec<Read>,
    /// Queue sizes read in this reply.
    pub queue_samples: Vec<QueueSample>,
}

impl Output {
    pub fn merge(&mut self, other: Output) {
        self.observations.extend(other.observations);
        self.decode_errors.extend(other.decode_errors);
        self.follow_up.extend(other.follow_up);
        self.queue_samples.extend(other.queue_samples);
    }
}

/// What an adapter wants to hear about, at a given moment. Re-read after every batch: it grows
/// as the adapter discovers queues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    /// Pub/sub channel patterns (PSUBSCRIBE), e.g. `celery-task-meta-*`.
    pub channel_patterns: Vec<String>,
    /// Key glob patterns whose keyspace notifications the adapter wants (`__keyspace@db__:<p>`).
    pub key_patterns: Vec<String>,
    /// Key glob patterns to find with a bounded SCAN at start and then periodically.
    pub scan_patterns: Vec<String>,
    /// The same, scanned on the side connection ([`Adapter::side_url`]).
    pub side_scan_patterns: Vec<String>,
    /// The `notify-keyspace-events` classes the key patterns need (`l` lists, `h` hashes, `s`
    /// sets, `z` sorted sets, `t` streams, `$` strings, `g` generic, `x` expired).
    pub notify_classes: String,
    /// Reads to run the moment a notification arrives, for keys whose content lives only
    /// milliseconds.
    pub prefetch: Vec<Prefetch>,
    /// Reads to run the moment a key the adapter has no [`Prefetch`] rule for yet is first
    /// notified (a new queue's first message).
    pub first_sight: Vec<FirstSight>,
}

/// A read of a key no [`Prefetch`] rule covers yet, run by the prefetcher the moment one of
/// `ops` first happens on a key matching `pattern`, once per key: the first messages of a queue
/// that appears while a worker is idle live a few milliseconds (a Dramatiq message is fetched and
/// acknowledged within 1-3 ms of a worker's poll), far less than the loop's reply to the
/// notification and the prefetch rule it then installs. The reply reaches
/// [`Adapter::on_reply`] as the read [`FirstSight::read_of`] makes, with [`FirstSight::tag`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FirstSight {
    /// A Redis glob over key names (as the adapter's key patterns).
    pub pattern: String,
    pub ops: Vec<String>,
    pub read: FirstSightRead,
    /// The tag its reply comes back with.
    pub tag: Tag,
}

/// What a [`FirstSight`] reads of the notified key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirstSightRead {
    /// [`ReadRequest::HScanFirstPage`]: a new hash whole, an old big one bounded.
    HashFirstPage { count: u64 },
}

impl FirstSight {
    /// The read of `key`, a key matching [`FirstSight::pattern`].
    pub fn read_of(&self, key: &str) -> Read {
        let request = match self.read {
            FirstSightRead::HashFirstPage { count } => ReadRequest::HScanFirstPage {
                key: key.to_string(),
                count,
            },
        };
        Read::new(self.tag, request)
    }
}

/// Reads the ingest layer runs as soon as one of `ops` happens on `key`, ahead of its batching
/// loop (Celery's `unacked` entries live 2-9 ms; a Dramatiq message with a fast worker lives in
/// its `.msgs` hash for a few ms). The notification still reaches [`Adapter::on_key_event`]
/// when a key pattern of the adapter matches it. The replies go to [`Adapter::on_reply`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefetch {
    pub key: String,
    pub ops: Vec<String>,
    /// Run as one pipeline; rules with equal `reads` (of one adapter) share their runs.
    pub reads: Vec<PrefetchRead>,
    /// `false`: every notification fires its own run, up to a few in flight (each snapshot of a
    /// short-lived entry counts). `true`: at most one run in flight, and one trailing run when a
    /// notification came meanwhile, so reads scale with round trips, not with writes; such rules
    /// also run at every reconciliation.
    pub coalesce: bool,
}

/// One read of a [`Prefetch`] rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PrefetchRead {
    /// A plain read; its reply is handed over as it is, with its tag.
    Read(Read),
    /// Follows the fields of a hash: `HKEYS key` in the rule's pipeline, then a second pipeline
    /// with `HMGET key` of the fields the previous snapshot of `key` lacked and, with
    /// `departed_to`, `HMGET departed_to` of the fields that left `key` since that snapshot
    /// (where they may have moved). The adapter gets those as [`ReadRequest::HMGet`] replies
    /// first (when not empty; the first snapshot reads every field), then every first-pipeline
    /// reply in order, this one as [`ReadRequest::HKeys`] with the whole snapshot. The hashes of
    /// a rule are read together, and only when one was notified since the last run (or at a
    /// reconciliation); runs of one hash never overlap. Each of the three reads comes back with
    /// its own tag of `tags`.
    FollowHash {
        key: String,
        departed_to: Option<String>,
        tags: FollowTags,
    },
}

/// The tags of a [`PrefetchRead::FollowHash`]'s replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FollowTags {
    /// The `HKEYS` snapshot of the followed hash.
    pub snapshot: Tag,
    /// The `HMGET` of the fields new since the previous snapshot.
    pub new: Tag,
    /// The `HMGET` of `departed_to` for the fields that left.
    pub departed: Tag,
}
/// A task the ingest layer still considers open (not success/failure), handed to adapters so
/// they can check on it (e.g. read its result key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTask {
    pub id: String,
    pub queue: Option<String>,
    pub name: Option<String>,
}

/// One broker's decoding and inference. Implementations are pure and deterministic given their
/// inputs (`now` is passed in, never read from the clock).
pub trait Adapter: Send {
    fn broker(&self) -> Broker;

    /// Channels and keys this adapter wants notifications for.
    fn interest(&self) -> Interest;

    /// A number that changes whenever [`Adapter::interest`] may answer something new, so that
    /// the ingest loop (which looks after every batch) builds it only then. `None`, the
    /// default: not tracked, the interest is built every time.
    fn interest_version(&self) -> Option<u64> {
        None
    }

    /// Keys that a SCAN with one of `interest().scan_patterns` found.
    fn on_scan(&mut self, pattern: &str, keys: Vec<String>, now: DateTime<Utc>) -> Vec<Read>;

    /// A keyspace notification: `op` (`lpush`, `hset`, `del`...) happened on `key`.
    fn on_key_event(&mut self, key: &str, op: &str, now: DateTime<Utc>) -> Vec<Read>;

    /// A pub/sub message on a channel matching one of the adapter's patterns.
    fn on_message(&mut self, channel: &str, payload: &[u8], now: DateTime<Utc>) -> Output;

    /// The reply to a read this adapter asked for, with the read's tag (route on it, not on
    /// the key); never a [`Reply::Error`] (those go to [`Adapter::on_read_error`]). Callers use
    /// [`Adapter::handle_reply`].
    fn on_reply(
        &mut self,
        tag: Tag,
        request: &ReadRequest,
        reply: Reply,
        now: DateTime<Utc>,
    ) -> Output;

    /// A read that Redis refused (`WRONGTYPE`, `NOGROUP`, a script error...): by default one
    /// `redis-reply` decode error; an adapter that waits for the reply (a sampling round, a
    /// key's kind) overrides it to account for it as well.
    fn on_read_error(
        &mut self,
        _tag: Tag,
        request: &ReadRequest,
        error: &str,
        _now: DateTime<Utc>,
    ) -> Output {
        Output {
            decode_errors: vec![read_error(self.broker(), request, error)],
            ..Output::default()
        }
    }

    /// Hands a reply to [`Adapter::on_reply`], or a refused read to [`Adapter::on_read_error`]:
    /// the one place replies are routed (the ingest layer and the tests' driver both call it).
    fn handle_reply(&mut self, read: &Read, reply: Reply, now: DateTime<Utc>) -> Output {
        match reply {
            Reply::Error(e) => self.on_read_error(read.tag, &read.request, &e, now),
            reply => self.on_reply(read.tag, &read.request, reply, now),
        }
    }

    /// Periodic reconciliation: reads that catch what notifications could not carry (and, when
    /// notifications are off, the polling itself). `open` are tasks not yet finished.
    fn reconcile(&mut self, open: &[OpenTask], now: DateTime<Utc>) -> Vec<Read>;

    /// Reads whose replies produce this adapter's queue samples.
    fn sample_queues(&mut self, now: DateTime<Utc>) -> Vec<Read>;

    /// The connection to Redis was lost (or notifications lagged): anything may have happened
    /// meanwhile, including a Redis that restarted empty. Forget snapshots whose differences
    /// would otherwise be read as events (a list emptied by a restart is not a list drained by
    /// workers).
    fn on_gap(&mut self) {}

    /// Auto-detection learned a setting of this broker while the adapter was running (another
    /// queue, say): the reads that start watching it. Settings an adapter cannot take (a second
    /// Dramatiq namespace) are ignored.
    fn on_detected(&mut self, _setting: &crate::detect::Setting) -> Vec<Read> {
        Vec::new()
    }

    /// A second Redis this adapter reads from ([`ReadRequest::Side`], `side_scan_patterns`),
    /// when part of its data lives elsewhere. Configuration, not I/O: the ingest layer connects.
    fn side_url(&self) -> Option<String> {
        None
    }

    /// Whether replies to this adapter's reads must wait until every keyspace notification
    /// Redis sent before the reads ran has been handed to [`Adapter::on_key_event`]: notifications
    /// travel on another connection, so a read can overtake them, and an adapter that counts
    /// what notifications name (RQ's attempts) would judge a reply without them.
    fn wants_read_barrier(&self) -> bool {
        false
    }

    /// Called once the notifications of a batch (and of a read barrier) were handed to
    /// [`Adapter::on_key_event`], before that round's reads run: an adapter that defers reads
    /// until it has seen every notification of a burst (RQ: a job's hash is not read when the
    /// burst also holds its results entry) asks for them here.
    fn end_of_batch(&mut self, _now: DateTime<Utc>) -> Output {
        Output::default()
    }

    /// Messages this adapter publishes on its own schedule (asked about every second), such as
    /// Celery's `enable_events` broadcast. Only what the operator opted into: an adapter's
    /// configuration says whether it publishes anything at all. Configuration, not I/O: the
    /// ingest layer sends them.
    fn due_publishes(&mut self, _now: DateTime<Utc>) -> Vec<Publish> {
        Vec::new()
    }
}

/// A pub/sub message an adapter asks to publish ([`Adapter::due_publishes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub channel: String,
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{arq, bullmq, celery, dramatiq, rq, sidekiq, taskiq};

    crate::read_reasons! {
        enum Why {
            First,
            Second,
        }
    }

    #[test]
    fn reasons_go_to_tags_and_back_and_an_unknown_tag_is_an_error() {
        for why in [Why::First, Why::Second] {
            assert_eq!(Why::try_from(Tag::from(why)), Ok(why));
        }
        assert_eq!(Why::try_from(Tag(2)), Err(UnknownTag(Tag(2))));
        let read = Why::Second.read(ReadRequest::Get("k".into()));
        assert_eq!(read.tag, Tag(1));
        assert_eq!(read, ReadRequest::Get("k".into()));
    }

    /// A reply with a tag the adapter never handed out (data from a bug, not from Redis) is one
    /// counted `unknown-tag` decode error, never a panic, for every adapter and every request.
    #[test]
    fn every_adapter_counts_a_reply_with_an_unknown_tag_as_a_decode_error() {
        let adapters: Vec<Box<dyn Adapter>> = vec![
            Box::new(arq::ArqAdapter::new(arq::ArqConfig::default())),
            Box::new(bullmq::BullmqAdapter::new(bullmq::BullmqConfig::default())),
            Box::new(celery::CeleryAdapter::new(celery::CeleryConfig::default())),
            Box::new(dramatiq::DramatiqAdapter::new(
                dramatiq::DramatiqConfig::default(),
            )),
            Box::new(rq::RqAdapter::new(rq::RqConfig::default())),
            Box::new(sidekiq::SidekiqAdapter::new(
                sidekiq::SidekiqConfig::default(),
            )),
            Box::new(taskiq::TaskiqAdapter::new(taskiq::TaskiqConfig::default())),
        ];
        let requests = [
            ReadRequest::Get("k".into()),
            ReadRequest::HGetAll("k".into()),
            ReadRequest::LRange {
                key: "k".into(),
                start: 0,
                stop: 0,
            },
        ];
        for mut adapter in adapters {
            for request in &requests {
                let read = Read::new(Tag(u16::MAX), request.clone());
                let out = adapter.handle_reply(&read, Reply::Array(vec![]), chrono::Utc::now());
                assert_eq!(out.decode_errors.len(), 1, "{}", adapter.broker());
                assert_eq!(out.decode_errors[0].kind, "unknown-tag");
                assert!(out.observations.is_empty() && out.follow_up.is_empty());
            }
        }
    }
}
