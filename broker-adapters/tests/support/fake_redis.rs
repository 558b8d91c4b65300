//! An in-memory stand-in for the Redis data structures the adapters read: strings, lists,
//! hashes, sets and sorted sets, with the keyspace notification each write causes.
//!
//! Writes are the commands a broker's worker runs (`HSET`, `RPUSH`, `LPOP`, `SADD`...); each
//! records the events Redis would publish (`hset`, and `del` when a write empties a key), in
//! order, for [`super::driver::Driver`] to deliver. Reads answer a [`ReadRequest`] the way the
//! ingest layer would after converting Redis's reply: a missing key reads as empty (`Nil` for
//! `GET`), a key of another type is a `WRONGTYPE` [`Reply::Error`].
//!
//! Streams with consumer groups ([`super::fake_stream`]): `XADD` (`xadd`, then `xtrim` when
//! `MAXLEN` trims), `XTRIM` (`xtrim`), `XDEL` (`xdel`), `XGROUP CREATE` (`xgroup-create`),
//! `XREADGROUP` / `XCLAIM` / `XAUTOCLAIM` (`xgroup-createconsumer` for a new consumer; no event
//! otherwise), `XACK` (none); reads `XLEN`, `XRANGE`, `XREVRANGE`, `XPENDING`, `XINFO GROUPS`,
//! `XINFO CONSUMERS`.
//!
//! TTLs on the fake's own clock (milliseconds, moved by [`FakeRedis::advance_to`], which the
//! driver calls as its clock moves): `SETEX` / `SET PX` (`set` then `expire`), `EXPIRE` /
//! `PEXPIRE` (`expire`), `PTTL`; a key whose time is up is removed with an `expired` event.
//! `SET` without a TTL clears the key's TTL, as Redis does; other writes keep it.

use super::fake_stream::{self, Fields, Id, Stream};
use broker_adapters::{ReadRequest, Reply};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The fake's clock at start: the driver's (2026-12-06T12:00:00Z), in ms.
pub const START_MS: i64 = 1_796_558_400_000;

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(Vec<u8>),
    List(VecDeque<Vec<u8>>),
    Hash(BTreeMap<String, Vec<u8>>),
    Set(BTreeSet<String>),
    /// Member -> score; read back in Redis's order (score, then member).
    ZSet(BTreeMap<String, f64>),
    Stream(Box<Stream>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Hash(_) => "hash",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
            Value::Stream(_) => "stream",
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::List(l) => l.is_empty(),
            Value::Hash(h) => h.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::ZSet(z) => z.is_empty(),
            // A stream stays when its last entry goes (its groups and last id with it).
            Value::Stream(_) => false,
        }
    }
}

/// A keyspace notification: `op` happened on `key` (`__keyevent@0__:<op>` -> `<key>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    pub key: String,
    pub op: String,
}

/// The fake database, plus the notifications its writes caused and nobody took yet.
#[derive(Debug)]
pub struct FakeRedis {
    keys: BTreeMap<String, Value>,
    events: Vec<KeyEvent>,
    /// The clock (ms since the epoch): stream ids, idle times, expiries.
    now_ms: i64,
    /// Keys with a TTL: when they expire (ms).
    expires: BTreeMap<String, i64>,
    /// What `CLIENT LIST` answers (one `id=.. name=..` line per connection).
    pub client_list: String,
    /// `PUBLISH`ed messages nobody took yet, `(channel, payload)`, oldest first.
    published: Vec<(String, Vec<u8>)>,
    /// `SORT_RO` is refused, as by a Redis older than 7.0.
    pub refuse_sort_ro: bool,
}

impl Default for FakeRedis {
    fn default() -> FakeRedis {
        FakeRedis {
            keys: BTreeMap::new(),
            events: Vec::new(),
            now_ms: START_MS,
            expires: BTreeMap::new(),
            client_list: String::new(),
            published: Vec::new(),
            refuse_sort_ro: false,
        }
    }
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

fn bulk(b: &[u8]) -> Reply {
    Reply::Bytes(b.to_vec())
}

fn text(s: &str) -> Reply {
    Reply::Bytes(s.as_bytes().to_vec())
}

/// Redis's `start..=stop` with negative indices counted from the end, clamped to `len`.
fn range(len: usize, start: i64, stop: i64) -> std::ops::Range<usize> {
    let len = len as i64;
    let norm = |i: i64| if i < 0 { len + i } else { i };
    let (start, stop) = (norm(start).max(0), norm(stop).min(len - 1));
    if start > stop || start >= len {
        0..0
    } else {
        start as usize..stop as usize + 1
    }
}

impl FakeRedis {
    pub fn new() -> FakeRedis {
        FakeRedis::default()
    }

    /// The notifications caused since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<KeyEvent> {
        std::mem::take(&mut self.events)
    }

    /// Puts notifications back to be delivered (a test that drops some of them).
    pub fn put_events(&mut self, events: Vec<KeyEvent>) {
        self.events.extend(events);
    }

    fn event(&mut self, key: &str, op: &str) {
        self.events.push(KeyEvent {
            key: key.to_string(),
            op: op.to_string(),
        });
    }

    /// Drops `key` if the last write emptied it, as Redis does (with a `del` event).
    fn drop_if_empty(&mut self, key: &str) {
        if self.keys.get(key).is_some_and(Value::is_empty) {
            self.keys.remove(key);
            self.expires.remove(key);
            self.event(key, "del");
        }
    }

    /// The value at `key`, created by `new` when missing; panics on a type mismatch (a test
    /// that writes a hash where a list is is wrong, not Redis).
    fn entry(&mut self, key: &str, new: fn() -> Value) -> &mut Value {
        let value = self.keys.entry(key.to_string()).or_insert_with(new);
        let fresh = new();
        assert_eq!(value.type_name(), fresh.type_name(), "{key}: {WRONGTYPE}");
        value
    }

    pub fn exists(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.keys.keys()
    }

    // --- strings ---

    pub fn set(&mut self, key: &str, value: &[u8]) {
        self.keys
            .insert(key.to_string(), Value::Str(value.to_vec()));
        self.expires.remove(key);
        self.event(key, "set");
    }

    /// `INCR key` (`incrby` event): the new value. The key keeps its TTL.
    pub fn incr(&mut self, key: &str) -> i64 {
        let current = self
            .get(key)
            .and_then(|v| String::from_utf8(v).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        let next = current + 1;
        self.keys
            .insert(key.to_string(), Value::Str(next.to_string().into_bytes()));
        self.event(key, "incrby");
        next
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.keys.get(key) {
            Some(Value::Str(s)) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn del(&mut self, key: &str) -> bool {
        self.expires.remove(key);
        let existed = self.keys.remove(key).is_some();
        if existed {
            self.event(key, "del");
        }
        existed
    }

    // --- pub/sub ---

    /// `PUBLISH channel payload` (no keyspace event; the driver delivers it to a subscriber).
    pub fn publish(&mut self, channel: &str, payload: &[u8]) {
        self.published.push((channel.to_string(), payload.to_vec()));
    }

    /// The messages published since the last call, oldest first.
    pub fn take_published(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.published)
    }

    // --- TTLs and the clock ---

    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Moves the clock to `ms` (never back) and expires the keys whose time is up, each with
    /// an `expired` event, in order of expiry.
    pub fn advance_to(&mut self, ms: i64) {
        self.now_ms = self.now_ms.max(ms);
        let mut due: Vec<(i64, String)> = self
            .expires
            .iter()
            .filter(|(_, at)| **at <= self.now_ms)
            .map(|(k, at)| (*at, k.clone()))
            .collect();
        due.sort();
        for (_, key) in due {
            self.expires.remove(&key);
            self.keys.remove(&key);
            self.event(&key, "expired");
        }
    }

    /// `SET key value PX ms`.
    pub fn set_px(&mut self, key: &str, value: &[u8], ms: i64) {
        self.set(key, value);
        self.pexpire(key, ms);
    }

    /// `SETEX key seconds value`.
    pub fn setex(&mut self, key: &str, seconds: i64, value: &[u8]) {
        self.set_px(key, value, seconds * 1000);
    }

    /// `EXPIRE key seconds`: false when there is no such key.
    pub fn expire(&mut self, key: &str, seconds: i64) -> bool {
        self.pexpire(key, seconds * 1000)
    }

    /// `PEXPIRE key ms`: false when there is no such key. A time not in the future deletes the
    /// key (`del`), as Redis does.
    pub fn pexpire(&mut self, key: &str, ms: i64) -> bool {
        if !self.keys.contains_key(key) {
            return false;
        }
        if ms <= 0 {
            self.del(key);
        } else {
            self.expires.insert(key.to_string(), self.now_ms + ms);
            self.event(key, "expire");
        }
        true
    }

    /// `PTTL key`: ms left, -1 without a TTL, -2 without the key.
    pub fn pttl(&self, key: &str) -> i64 {
        match (self.keys.contains_key(key), self.expires.get(key)) {
            (false, _) => -2,
            (true, None) => -1,
            (true, Some(at)) => at - self.now_ms,
        }
    }

    // --- streams ---

    fn stream_mut(&mut self, key: &str) -> &mut Stream {
        match self.entry(key, || Value::Stream(Box::default())) {
            Value::Stream(s) => s,
            _ => unreachable!("entry checks the type"),
        }
    }

    fn stream(&self, key: &str) -> Option<&Stream> {
        match self.keys.get(key) {
            Some(Value::Stream(s)) => Some(s),
            _ => None,
        }
    }

    /// `XADD key <id> field value ...` (`id` `*` for a new one on the clock): the entry's id.
    pub fn xadd(&mut self, key: &str, id: &str, fields: &[(&str, &[u8])]) -> String {
        let fields: Fields = fields
            .iter()
            .map(|(f, v)| (f.as_bytes().to_vec(), v.to_vec()))
            .collect();
        let now = self.now_ms;
        let id = self
            .stream_mut(key)
            .add(id, fields, now)
            .unwrap_or_else(|e| panic!("XADD {key}: {e}"));
        self.event(key, "xadd");
        id.to_string()
    }

    /// `XADD key MAXLEN n <id> ...`: the add (`xadd`), then the trim (`xtrim` if any dropped).
    pub fn xadd_maxlen(
        &mut self,
        key: &str,
        maxlen: usize,
        id: &str,
        fields: &[(&str, &[u8])],
    ) -> String {
        let id = self.xadd(key, id, fields);
        if self.stream_mut(key).trim_maxlen(maxlen) > 0 {
            self.event(key, "xtrim");
        }
        id
    }

    /// `XTRIM key MAXLEN n`: how many entries went.
    pub fn xtrim(&mut self, key: &str, maxlen: usize) -> usize {
        let Some(Value::Stream(s)) = self.keys.get_mut(key) else {
            return 0;
        };
        let dropped = s.trim_maxlen(maxlen);
        if dropped > 0 {
            self.event(key, "xtrim");
        }
        dropped
    }

    /// `XDEL key id`.
    pub fn xdel(&mut self, key: &str, id: &str) -> bool {
        let (Some(Value::Stream(s)), Some(id)) = (self.keys.get_mut(key), Id::parse(id)) else {
            return false;
        };
        let removed = s.entries.remove(&id).is_some();
        if removed {
            self.event(key, "xdel");
        }
        removed
    }

    pub fn xlen(&self, key: &str) -> usize {
        self.stream(key).map_or(0, |s| s.entries.len())
    }

    /// `XGROUP CREATE key group <id> [MKSTREAM]`: false when the group exists (Redis's
    /// `BUSYGROUP`); panics without the stream and without `mkstream` (Redis's error).
    pub fn xgroup_create(&mut self, key: &str, group: &str, id: &str, mkstream: bool) -> bool {
        assert!(
            mkstream || self.stream(key).is_some(),
            "XGROUP CREATE {key}: no such key (MKSTREAM not given)"
        );
        let created = self.stream_mut(key).create_group(group, id);
        if created {
            self.event(key, "xgroup-create");
        }
        created
    }

    /// `XREADGROUP GROUP group consumer COUNT count STREAMS key >`: the entries delivered,
    /// `(id, fields)`.
    pub fn xreadgroup(
        &mut self,
        key: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Vec<(String, Fields)> {
        let now = self.now_ms;
        let (delivered, created) = self.stream_mut(key).read_group(group, consumer, count, now);
        if created {
            self.event(key, "xgroup-createconsumer");
        }
        delivered
            .into_iter()
            .map(|(id, f)| (id.to_string(), f))
            .collect()
    }

    /// `XACK key group id...`: how many were pending.
    pub fn xack(&mut self, key: &str, group: &str, ids: &[&str]) -> usize {
        let ids: Vec<Id> = ids.iter().filter_map(|i| Id::parse(i)).collect();
        match self.keys.get_mut(key) {
            Some(Value::Stream(s)) => s.ack(group, &ids),
            _ => 0,
        }
    }

    fn consumer_exists(&self, key: &str, group: &str, consumer: &str) -> bool {
        self.stream(key)
            .and_then(|s| s.groups.get(group))
            .is_some_and(|g| g.consumers.contains_key(consumer))
    }

    /// `XCLAIM key group consumer min-idle-ms id...`: the entries claimed.
    pub fn xclaim(
        &mut self,
        key: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: i64,
        ids: &[&str],
    ) -> Vec<(String, Fields)> {
        let ids: Vec<Id> = ids.iter().filter_map(|i| Id::parse(i)).collect();
        let known = self.consumer_exists(key, group, consumer);
        let now = self.now_ms;
        let claimed = self
            .stream_mut(key)
            .claim(group, consumer, min_idle_ms, &ids, now);
        if !known {
            self.event(key, "xgroup-createconsumer");
        }
        claimed
            .into_iter()
            .map(|(id, f)| (id.to_string(), f))
            .collect()
    }

    /// `XAUTOCLAIM key group consumer min-idle-ms start COUNT count`: the next cursor and the
    /// entries claimed.
    pub fn xautoclaim(
        &mut self,
        key: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: i64,
        start: &str,
        count: usize,
    ) -> (String, Vec<(String, Fields)>) {
        let known = self.consumer_exists(key, group, consumer);
        let now = self.now_ms;
        let (next, claimed) =
            self.stream_mut(key)
                .autoclaim(group, consumer, min_idle_ms, start, count, now);
        if !known {
            self.event(key, "xgroup-createconsumer");
        }
        (
            next.to_string(),
            claimed
                .into_iter()
                .map(|(id, f)| (id.to_string(), f))
                .collect(),
        )
    }

    /// The ids of the entries pending in `group`, with their consumer and delivery count.
    pub fn xpending(&self, key: &str, group: &str) -> Vec<(String, String, u64)> {
        self.stream(key)
            .and_then(|s| s.groups.get(group))
            .map(|g| {
                g.pel
                    .iter()
                    .map(|(id, p)| (id.to_string(), p.consumer.clone(), p.deliveries))
                    .collect()
            })
            .unwrap_or_default()
    }

    // --- lists ---

    pub fn rpush(&mut self, key: &str, value: &[u8]) {
        if let Value::List(l) = self.entry(key, || Value::List(VecDeque::new())) {
            l.push_back(value.to_vec());
        }
        self.event(key, "rpush");
    }

    pub fn lpush(&mut self, key: &str, value: &[u8]) {
        if let Value::List(l) = self.entry(key, || Value::List(VecDeque::new())) {
            l.push_front(value.to_vec());
        }
        self.event(key, "lpush");
    }

    pub fn lpop(&mut self, key: &str) -> Option<Vec<u8>> {
        let Some(Value::List(l)) = self.keys.get_mut(key) else {
            return None;
        };
        let popped = l.pop_front();
        if popped.is_some() {
            self.event(key, "lpop");
            self.drop_if_empty(key);
        }
        popped
    }

    pub fn rpop(&mut self, key: &str) -> Option<Vec<u8>> {
        let Some(Value::List(l)) = self.keys.get_mut(key) else {
            return None;
        };
        let popped = l.pop_back();
        if popped.is_some() {
            self.event(key, "rpop");
            self.drop_if_empty(key);
        }
        popped
    }

    /// `LREM key 1 value`: the first occurrence removed (`lrem`, and `del` when emptied).
    pub fn lrem(&mut self, key: &str, value: &[u8]) -> bool {
        let Some(Value::List(l)) = self.keys.get_mut(key) else {
            return false;
        };
        let Some(at) = l.iter().position(|v| v == value) else {
            return false;
        };
        l.remove(at);
        self.event(key, "lrem");
        self.drop_if_empty(key);
        true
    }

    pub fn list(&self, key: &str) -> Vec<Vec<u8>> {
        match self.keys.get(key) {
            Some(Value::List(l)) => l.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    // --- hashes ---

    pub fn hset(&mut self, key: &str, field: &str, value: &[u8]) {
        if let Value::Hash(h) = self.entry(key, || Value::Hash(BTreeMap::new())) {
            h.insert(field.to_string(), value.to_vec());
        }
        self.event(key, "hset");
    }

    /// `HSET key f v f v ...`: one command, one `hset` event.
    pub fn hset_many(&mut self, key: &str, fields: &[(&str, &[u8])]) {
        if let Value::Hash(h) = self.entry(key, || Value::Hash(BTreeMap::new())) {
            for (f, v) in fields {
                h.insert(f.to_string(), v.to_vec());
            }
        }
        self.event(key, "hset");
    }

    /// `HINCRBY key field by` (`hincrby` event): the new value.
    pub fn hincrby(&mut self, key: &str, field: &str, by: i64) -> i64 {
        let current = self
            .hget(key, field)
            .and_then(|v| String::from_utf8(v).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        let next = current + by;
        if let Value::Hash(h) = self.entry(key, || Value::Hash(BTreeMap::new())) {
            h.insert(field.to_string(), next.to_string().into_bytes());
        }
        self.event(key, "hincrby");
        next
    }

    pub fn hget(&self, key: &str, field: &str) -> Option<Vec<u8>> {
        match self.keys.get(key) {
            Some(Value::Hash(h)) => h.get(field).cloned(),
            _ => None,
        }
    }

    pub fn hdel(&mut self, key: &str, field: &str) -> bool {
        let Some(Value::Hash(h)) = self.keys.get_mut(key) else {
            return false;
        };
        let removed = h.remove(field).is_some();
        if removed {
            self.event(key, "hdel");
            self.drop_if_empty(key);
        }
        removed
    }

    // --- sets ---

    pub fn sadd(&mut self, key: &str, member: &str) -> bool {
        let added = match self.entry(key, || Value::Set(BTreeSet::new())) {
            Value::Set(s) => s.insert(member.to_string()),
            _ => false,
        };
        if added {
            self.event(key, "sadd");
        }
        added
    }

    pub fn srem(&mut self, key: &str, member: &str) -> bool {
        let Some(Value::Set(s)) = self.keys.get_mut(key) else {
            return false;
        };
        let removed = s.remove(member);
        if removed {
            self.event(key, "srem");
            self.drop_if_empty(key);
        }
        removed
    }

    pub fn smembers(&self, key: &str) -> Vec<String> {
        match self.keys.get(key) {
            Some(Value::Set(s)) => s.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    // --- sorted sets ---

    pub fn zadd(&mut self, key: &str, score: f64, member: &str) {
        if let Value::ZSet(z) = self.entry(key, || Value::ZSet(BTreeMap::new())) {
            z.insert(member.to_string(), score);
        }
        self.event(key, "zadd");
    }

    /// `ZINCRBY key by member` (`zincr` event): the new score.
    pub fn zincrby(&mut self, key: &str, by: f64, member: &str) -> f64 {
        let mut score = by;
        if let Value::ZSet(z) = self.entry(key, || Value::ZSet(BTreeMap::new())) {
            let s = z.entry(member.to_string()).or_insert(0.0);
            *s += by;
            score = *s;
        }
        self.event(key, "zincr");
        score
    }

    pub fn zrem(&mut self, key: &str, member: &str) -> bool {
        let Some(Value::ZSet(z)) = self.keys.get_mut(key) else {
            return false;
        };
        let removed = z.remove(member).is_some();
        if removed {
            self.event(key, "zrem");
            self.drop_if_empty(key);
        }
        removed
    }

    fn zsorted(z: &BTreeMap<String, f64>) -> Vec<(&String, f64)> {
        let mut items: Vec<(&String, f64)> = z.iter().map(|(m, s)| (m, *s)).collect();
        items.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        items
    }

    // --- reads ---

    /// The reply Redis (through the ingest layer) gives to `request`. A `Side` read goes to this
    /// same database (an adapter without a side connection reads the main one).
    pub fn read(&self, request: &ReadRequest) -> Reply {
        let value = self.keys.get(request.key());
        let wrong = |expected: &str| {
            value.is_some_and(|v| v.type_name() != expected)
                && !matches!(request, ReadRequest::MGet(_))
        };
        match request {
            ReadRequest::Side(inner) => self.read(inner),
            ReadRequest::Get(_) if wrong("string") => Reply::Error(WRONGTYPE.into()),
            ReadRequest::Get(_) => match value {
                Some(Value::Str(s)) => bulk(s),
                _ => Reply::Nil,
            },
            ReadRequest::MGet(keys) => Reply::Array(
                keys.iter()
                    .map(|k| match self.keys.get(k) {
                        Some(Value::Str(s)) => bulk(s),
                        _ => Reply::Nil,
                    })
                    .collect(),
            ),
            ReadRequest::LLen(_) | ReadRequest::LRange { .. } if wrong("list") => {
                Reply::Error(WRONGTYPE.into())
            }
            ReadRequest::LLen(_) => match value {
                Some(Value::List(l)) => Reply::Int(l.len() as i64),
                _ => Reply::Int(0),
            },
            ReadRequest::LRange { start, stop, .. } => match value {
                Some(Value::List(l)) => {
                    Reply::Array(range(l.len(), *start, *stop).map(|i| bulk(&l[i])).collect())
                }
                _ => Reply::Array(Vec::new()),
            },
            ReadRequest::HGetAll(_)
            | ReadRequest::HScanFirstPage { .. }
            | ReadRequest::HKeys(_)
            | ReadRequest::HLen(_)
            | ReadRequest::HMGet { .. }
                if wrong("hash") =>
            {
                Reply::Error(WRONGTYPE.into())
            }
            ReadRequest::HGetAll(_) => match value {
                Some(Value::Hash(h)) => {
                    Reply::Array(h.iter().flat_map(|(f, v)| [text(f), bulk(v)]).collect())
                }
                _ => Reply::Array(Vec::new()),
            },
            // Small hashes come whole in one page, as from Redis; `count` is not modelled.
            ReadRequest::HScanFirstPage { .. } => Reply::Array(vec![
                text("0"),
                match value {
                    Some(Value::Hash(h)) => {
                        Reply::Array(h.iter().flat_map(|(f, v)| [text(f), bulk(v)]).collect())
                    }
                    _ => Reply::Array(Vec::new()),
                },
            ]),
            ReadRequest::HKeys(_) => match value {
                Some(Value::Hash(h)) => Reply::Array(h.keys().map(|f| text(f)).collect()),
                _ => Reply::Array(Vec::new()),
            },
            ReadRequest::HLen(_) => match value {
                Some(Value::Hash(h)) => Reply::Int(h.len() as i64),
                _ => Reply::Int(0),
            },
            ReadRequest::HMGet { fields, .. } => Reply::Array(
                fields
                    .iter()
                    .map(|f| match value {
                        Some(Value::Hash(h)) => h.get(f).map_or(Reply::Nil, |v| bulk(v)),
                        _ => Reply::Nil,
                    })
                    .collect(),
            ),
            ReadRequest::SMembers(_) if wrong("set") => Reply::Error(WRONGTYPE.into()),
            ReadRequest::SMembers(_) => match value {
                Some(Value::Set(s)) => Reply::Array(s.iter().map(|m| text(m)).collect()),
                _ => Reply::Array(Vec::new()),
            },
            ReadRequest::ZCard(_) | ReadRequest::ZRangeWithScores { .. } if wrong("zset") => {
                Reply::Error(WRONGTYPE.into())
            }
            ReadRequest::ZCard(_) => match value {
                Some(Value::ZSet(z)) => Reply::Int(z.len() as i64),
                _ => Reply::Int(0),
            },
            ReadRequest::ZRangeWithScores { start, stop, .. } => match value {
                Some(Value::ZSet(z)) => {
                    let items = Self::zsorted(z);
                    Reply::Array(
                        items[range(items.len(), *start, *stop)]
                            .iter()
                            .flat_map(|(m, s)| [text(m), Reply::Double(*s)])
                            .collect(),
                    )
                }
                _ => Reply::Array(Vec::new()),
            },
            ReadRequest::SortGet { .. } if self.refuse_sort_ro => {
                Reply::Error("ERR unknown command 'SORT_RO'".into())
            }
            ReadRequest::SortGet {
                desc, count, gets, ..
            } => {
                let mut members: Vec<&str> = match value {
                    Some(Value::List(l)) => l
                        .iter()
                        .map(|m| std::str::from_utf8(m).unwrap_or(""))
                        .collect(),
                    Some(Value::ZSet(z)) => Self::zsorted(z)
                        .into_iter()
                        .map(|(m, _)| m.as_str())
                        .collect(),
                    Some(_) => return Reply::Error(WRONGTYPE.into()),
                    None => Vec::new(),
                };
                if *desc {
                    members.reverse();
                }
                members.truncate(*count as usize);
                let mut out = Vec::new();
                for m in members {
                    out.push(text(m));
                    for get in gets {
                        // `<prefix>*->field`: the field of the hash `<prefix><member>`.
                        let (pattern, field) = get.rsplit_once("->").unwrap_or((get, ""));
                        let key = pattern.replacen('*', m, 1);
                        out.push(match self.keys.get(&key) {
                            Some(Value::Hash(h)) => h.get(field).map_or(Reply::Nil, |v| bulk(v)),
                            _ => Reply::Nil,
                        });
                    }
                }
                Reply::Array(out)
            }
            ReadRequest::PTtl(key) => Reply::Int(self.pttl(key)),
            ReadRequest::Type(_) => text(value.map_or("none", Value::type_name)),
            ReadRequest::ClientList => text(&self.client_list),
            ReadRequest::XLen(_)
            | ReadRequest::XRange { .. }
            | ReadRequest::XRevRange { .. }
            | ReadRequest::XPending { .. }
            | ReadRequest::XInfoGroups(_)
            | ReadRequest::XInfoConsumers { .. }
                if wrong("stream") =>
            {
                Reply::Error(WRONGTYPE.into())
            }
            ReadRequest::XLen(key) => Reply::Int(self.xlen(key) as i64),
            ReadRequest::XRange {
                key,
                start,
                end,
                count,
            } => self.stream(key).map_or(Reply::Array(Vec::new()), |s| {
                s.range(start, end, *count, false)
            }),
            ReadRequest::XRevRange {
                key,
                end,
                start,
                count,
            } => self.stream(key).map_or(Reply::Array(Vec::new()), |s| {
                s.range(start, end, *count, true)
            }),
            ReadRequest::XReadFirst { keys, count } => {
                let found: Vec<Reply> = keys
                    .iter()
                    .filter_map(|k| {
                        let entries = self.stream(k)?.range("-", "+", *count, false);
                        match &entries {
                            Reply::Array(e) if e.is_empty() => None,
                            _ => Some(Reply::Array(vec![text(k), entries])),
                        }
                    })
                    .collect();
                if found.is_empty() {
                    Reply::Nil
                } else {
                    Reply::Array(found)
                }
            }
            ReadRequest::XPending { key, group, count } => match self.stream(key) {
                Some(s) => s.pending_reply(group, *count, self.now_ms),
                None => fake_stream::nogroup(group),
            },
            ReadRequest::XInfoGroups(key) => match self.stream(key) {
                Some(s) => s.groups_reply(),
                None => Reply::Error("ERR no such key".into()),
            },
            ReadRequest::XInfoConsumers { key, group } => match self.stream(key) {
                Some(s) => s.consumers_reply(group, self.now_ms),
                None => fake_stream::nogroup(group),
            },
        }
    }
}

/// Redis's glob matching (`*`, `?`, `[abc]`, `[a-z]`, `[^a]`, `\` escapes), for key patterns.
pub fn glob_match(pattern: &str, key: &str) -> bool {
    fn go(p: &[u8], k: &[u8]) -> bool {
        match p.first() {
            None => k.is_empty(),
            Some(b'*') => (0..=k.len()).any(|i| go(&p[1..], &k[i..])),
            Some(b'?') => !k.is_empty() && go(&p[1..], &k[1..]),
            Some(b'[') => {
                let Some(close) = p.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                    return k.first() == Some(&b'[') && go(&p[1..], &k[1..]);
                };
                let Some(&c) = k.first() else { return false };
                let (negate, class) = match &p[1..close] {
                    [b'^', rest @ ..] => (true, rest),
                    class => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == b'-' {
                        hit |= (class[i]..=class[i + 2]).contains(&c);
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[close + 1..], &k[1..])
            }
            Some(b'\\') if p.len() > 1 => k.first() == Some(&p[1]) && go(&p[2..], &k[1..]),
            Some(&c) => k.first() == Some(&c) && go(&p[1..], &k[1..]),
        }
    }
    go(pattern.as_bytes(), key.as_bytes())
}
