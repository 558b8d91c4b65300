//! One Redis stream of the fake: its entries, and its consumer groups with their pending entry
//! lists and consumers, as Redis 7.2 keeps them. [`super::fake_redis::FakeRedis`] wraps these
//! operations into commands (keyspace events, missing keys); the replies here are shaped as the
//! ingest layer converts Redis's RESP2 replies (`src/ingest/redis.rs`).

use broker_adapters::Reply;
use std::collections::BTreeMap;
use std::fmt;

/// A stream entry id `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Id {
    pub ms: u64,
    pub seq: u64,
}

impl Id {
    /// Parses `ms-seq` or `ms` (seq 0); `-` and `+` are the smallest and largest ids.
    pub fn parse(s: &str) -> Option<Id> {
        match s {
            "-" => Some(Id { ms: 0, seq: 0 }),
            "+" => Some(Id {
                ms: u64::MAX,
                seq: u64::MAX,
            }),
            _ => {
                let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
                Some(Id {
                    ms: ms.parse().ok()?,
                    seq: seq.parse().ok()?,
                })
            }
        }
    }

    /// The id right after this one (for exclusive starts `(id`).
    fn next(self) -> Id {
        if self.seq == u64::MAX {
            Id {
                ms: self.ms + 1,
                seq: 0,
            }
        } else {
            Id {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }

    /// The id right before this one (for exclusive ends `(id`).
    fn prev(self) -> Id {
        match self {
            Id { ms: 0, seq: 0 } => self,
            Id { ms, seq: 0 } => Id {
                ms: ms - 1,
                seq: u64::MAX,
            },
            Id { ms, seq } => Id { ms, seq: seq - 1 },
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A range bound as `XRANGE` takes it: `-`, `+`, `id`, or exclusive `(id`.
fn bound(s: &str, start: bool) -> Option<Id> {
    match s.strip_prefix('(') {
        Some(rest) => {
            let id = Id::parse(rest)?;
            Some(if start { id.next() } else { id.prev() })
        }
        None => Id::parse(s),
    }
}

/// The fields of one entry, in the order they were added.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A delivered entry not yet acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEntry {
    pub consumer: String,
    /// When it was last delivered (ms, the fake's clock).
    pub delivered_at: i64,
    pub deliveries: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    /// Last attempted interaction (`idle` in `XINFO CONSUMERS`).
    pub seen_at: i64,
    /// Last successful interaction (`inactive`): -1 never.
    pub active_at: i64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Group {
    pub last_delivered: Id,
    pub entries_read: Option<u64>,
    pub pel: BTreeMap<Id, PendingEntry>,
    pub consumers: BTreeMap<String, Consumer>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stream {
    pub entries: BTreeMap<Id, Fields>,
    pub last_id: Id,
    /// Every entry ever added (`entries-added`), for the groups' `lag`.
    pub entries_added: u64,
    pub groups: BTreeMap<String, Group>,
}

fn bulk(b: &[u8]) -> Reply {
    Reply::Bytes(b.to_vec())
}

fn text(s: &str) -> Reply {
    bulk(s.as_bytes())
}

/// One `XRANGE` entry: `[id, [field, value, ...]]`.
fn entry_reply(id: Id, fields: &Fields) -> Reply {
    Reply::Array(vec![
        text(&id.to_string()),
        Reply::Array(
            fields
                .iter()
                .flat_map(|(f, v)| [bulk(f), bulk(v)])
                .collect(),
        ),
    ])
}

impl Stream {
    /// `XADD key <id> field value...`: `id` `*` takes the clock (`now_ms`) or the last id's ms,
    /// and the next sequence. An explicit id not above the last one is Redis's error.
    pub fn add(&mut self, id: &str, fields: Fields, now_ms: i64) -> Result<Id, String> {
        let id = if id == "*" {
            let ms = (now_ms.max(0) as u64).max(self.last_id.ms);
            Id {
                ms,
                seq: if ms > self.last_id.ms {
                    0
                } else {
                    self.last_id.seq + 1
                },
            }
        } else {
            let id = Id::parse(id)
                .ok_or("ERR Invalid stream ID specified as stream command argument")?;
            if id <= self.last_id {
                return Err(
                    "ERR The ID specified in XADD is equal or smaller than the target stream top item"
                        .into(),
                );
            }
            id
        };
        self.entries.insert(id, fields);
        self.last_id = id;
        self.entries_added += 1;
        Ok(id)
    }

    /// `XTRIM key MAXLEN n`: the oldest entries dropped; how many.
    pub fn trim_maxlen(&mut self, max: usize) -> usize {
        let mut dropped = 0;
        while self.entries.len() > max {
            self.entries.pop_first();
            dropped += 1;
        }
        dropped
    }

    /// `XRANGE key start end COUNT count` (or `XREVRANGE key end start`, `rev`).
    pub fn range(&self, start: &str, end: &str, count: u64, rev: bool) -> Reply {
        let (Some(lo), Some(hi)) = (bound(start, true), bound(end, false)) else {
            return Reply::Error(
                "ERR Invalid stream ID specified as stream command argument".into(),
            );
        };
        if lo > hi {
            return Reply::Array(Vec::new());
        }
        let items = self.entries.range(lo..=hi);
        let take = usize::try_from(count).unwrap_or(usize::MAX);
        let replies: Vec<Reply> = if rev {
            items
                .rev()
                .take(take)
                .map(|(id, f)| entry_reply(*id, f))
                .collect()
        } else {
            items
                .take(take)
                .map(|(id, f)| entry_reply(*id, f))
                .collect()
        };
        Reply::Array(replies)
    }

    /// `XGROUP CREATE key group <id>`: `$` is the last id; false when the group exists.
    pub fn create_group(&mut self, group: &str, id: &str) -> bool {
        if self.groups.contains_key(group) {
            return false;
        }
        let (last_delivered, entries_read) = match id {
            "$" => (self.last_id, Some(self.entries_added)),
            id => (Id::parse(id).unwrap_or_default(), None),
        };
        self.groups.insert(
            group.to_string(),
            Group {
                last_delivered,
                entries_read: if last_delivered == Id::default() {
                    Some(0)
                } else {
                    entries_read
                },
                ..Group::default()
            },
        );
        true
    }

    fn group_mut(&mut self, group: &str) -> &mut Group {
        self.groups
            .get_mut(group)
            .unwrap_or_else(|| panic!("NOGROUP no consumer group {group}"))
    }

    /// `XREADGROUP GROUP g consumer COUNT n STREAMS key >`: the next undelivered entries, each
    /// added to the consumer's pending entries (delivery 1). Also whether the consumer is new.
    pub fn read_group(
        &mut self,
        group: &str,
        consumer: &str,
        count: usize,
        now_ms: i64,
    ) -> (Vec<(Id, Fields)>, bool) {
        let from = self.group_mut(group).last_delivered.next();
        let delivered: Vec<(Id, Fields)> = self
            .entries
            .range(from..)
            .take(count)
            .map(|(id, f)| (*id, f.clone()))
            .collect();
        let g = self.group_mut(group);
        let created = !g.consumers.contains_key(consumer);
        let c = g.consumers.entry(consumer.to_string()).or_insert(Consumer {
            seen_at: now_ms,
            active_at: -1,
        });
        c.seen_at = now_ms;
        if !delivered.is_empty() {
            c.active_at = now_ms;
        }
        for (id, _) in &delivered {
            g.last_delivered = *id;
            g.entries_read = g.entries_read.map(|n| n + 1);
            g.pel.insert(
                *id,
                PendingEntry {
                    consumer: consumer.to_string(),
                    delivered_at: now_ms,
                    deliveries: 1,
                },
            );
        }
        (delivered, created)
    }

    /// `XACK key group id...`: how many were pending.
    pub fn ack(&mut self, group: &str, ids: &[Id]) -> usize {
        let g = self.group_mut(group);
        ids.iter().filter(|id| g.pel.remove(id).is_some()).count()
    }

    /// `XCLAIM key group consumer min-idle id...`: the pending entries idle at least
    /// `min_idle_ms` move to `consumer`, their delivery count up one; entries deleted from the
    /// stream leave the PEL (Redis 7). The claimed entries.
    pub fn claim(
        &mut self,
        group: &str,
        consumer: &str,
        min_idle_ms: i64,
        ids: &[Id],
        now_ms: i64,
    ) -> Vec<(Id, Fields)> {
        let entries = self.entries.clone();
        let g = self.group_mut(group);
        let mut claimed = Vec::new();
        for id in ids {
            let Some(p) = g.pel.get_mut(id) else {
                continue;
            };
            if now_ms - p.delivered_at < min_idle_ms {
                continue;
            }
            let Some(fields) = entries.get(id) else {
                g.pel.remove(id);
                continue;
            };
            p.consumer = consumer.to_string();
            p.delivered_at = now_ms;
            p.deliveries += 1;
            claimed.push((*id, fields.clone()));
        }
        let c = g.consumers.entry(consumer.to_string()).or_insert(Consumer {
            seen_at: now_ms,
            active_at: -1,
        });
        c.seen_at = now_ms;
        if !claimed.is_empty() {
            c.active_at = now_ms;
        }
        claimed
    }

    /// `XAUTOCLAIM key group consumer min-idle start COUNT count`: [`Stream::claim`] over the
    /// PEL from `start`, at most `count` entries looked at; (next cursor, claimed).
    pub fn autoclaim(
        &mut self,
        group: &str,
        consumer: &str,
        min_idle_ms: i64,
        start: &str,
        count: usize,
        now_ms: i64,
    ) -> (Id, Vec<(Id, Fields)>) {
        let from = Id::parse(start).unwrap_or_default();
        let g = self.group_mut(group);
        let mut looked: Vec<Id> = g.pel.range(from..).map(|(id, _)| *id).collect();
        let next = if looked.len() > count {
            looked[count]
        } else {
            Id::default()
        };
        looked.truncate(count);
        let claimed = self.claim(group, consumer, min_idle_ms, &looked, now_ms);
        (next, claimed)
    }

    /// `XPENDING key group - + count`: `[[id, consumer, idle, deliveries], ...]`.
    pub fn pending_reply(&self, group: &str, count: u64, now_ms: i64) -> Reply {
        let Some(g) = self.groups.get(group) else {
            return nogroup(group);
        };
        Reply::Array(
            g.pel
                .iter()
                .take(usize::try_from(count).unwrap_or(usize::MAX))
                .map(|(id, p)| {
                    Reply::Array(vec![
                        text(&id.to_string()),
                        text(&p.consumer),
                        Reply::Int(now_ms - p.delivered_at),
                        Reply::Int(p.deliveries as i64),
                    ])
                })
                .collect(),
        )
    }

    /// `XINFO GROUPS key`: one flat `[name, .., consumers, .., pending, .., last-delivered-id,
    /// .., entries-read, .., lag, ..]` array per group.
    pub fn groups_reply(&self) -> Reply {
        Reply::Array(
            self.groups
                .iter()
                .map(|(name, g)| {
                    let lag = g.entries_read.map_or(Reply::Nil, |read| {
                        Reply::Int((self.entries_added - read) as i64)
                    });
                    Reply::Array(vec![
                        text("name"),
                        text(name),
                        text("consumers"),
                        Reply::Int(g.consumers.len() as i64),
                        text("pending"),
                        Reply::Int(g.pel.len() as i64),
                        text("last-delivered-id"),
                        text(&g.last_delivered.to_string()),
                        text("entries-read"),
                        g.entries_read.map_or(Reply::Nil, |n| Reply::Int(n as i64)),
                        text("lag"),
                        lag,
                    ])
                })
                .collect(),
        )
    }

    /// `XINFO CONSUMERS key group`: `[name, .., pending, .., idle, .., inactive, ..]` each.
    pub fn consumers_reply(&self, group: &str, now_ms: i64) -> Reply {
        let Some(g) = self.groups.get(group) else {
            return nogroup(group);
        };
        Reply::Array(
            g.consumers
                .iter()
                .map(|(name, c)| {
                    let pending = g.pel.values().filter(|p| p.consumer == *name).count();
                    Reply::Array(vec![
                        text("name"),
                        text(name),
                        text("pending"),
                        Reply::Int(pending as i64),
                        text("idle"),
                        Reply::Int(now_ms - c.seen_at),
                        text("inactive"),
                        Reply::Int(if c.active_at < 0 {
                            -1
                        } else {
                            now_ms - c.active_at
                        }),
                    ])
                })
                .collect(),
        )
    }
}

pub fn nogroup(group: &str) -> Reply {
    Reply::Error(format!("NOGROUP No such key or consumer group '{group}'"))
}
