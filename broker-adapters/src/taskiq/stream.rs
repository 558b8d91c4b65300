//! Redis stream replies, parsed: entry ids, `XRANGE` entries, `XINFO GROUPS`, `XINFO
//! CONSUMERS` and extended `XPENDING`. Works on RESP2 arrays and on RESP3 maps flattened to
//! `[field, value, ...]` alike (what [`Reply`] gives for both).

use crate::adapter::Reply;
use chrono::{DateTime, Utc};
use std::fmt;
use std::str::FromStr;

/// A stream entry id `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// When the entry was added (the id's millisecond part, Redis's clock).
    pub fn time(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(i64::try_from(self.ms).ok()?)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(StreamId {
            ms: ms.trim().parse().map_err(|_| ())?,
            seq: seq.trim().parse().map_err(|_| ())?,
        })
    }
}

fn text(r: &Reply) -> Option<String> {
    r.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn id_of(r: &Reply) -> Option<StreamId> {
    text(r)?.parse().ok()
}

/// One entry of an `XRANGE` / `XREVRANGE` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: StreamId,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// Fields whose value was over `--max-payload-bytes` (not read, not in `fields`).
    pub too_large: Vec<Vec<u8>>,
}

impl Entry {
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// The entries of an `XRANGE` reply (entries whose id does not parse are skipped).
pub fn entries(reply: Reply) -> Vec<Entry> {
    reply
        .into_items()
        .into_iter()
        .filter_map(|item| {
            let mut parts = item.into_items().into_iter();
            let id = id_of(&parts.next()?)?;
            let (mut fields, mut too_large) = (Vec::new(), Vec::new());
            for (f, v) in parts.next().map(Reply::into_pairs).unwrap_or_default() {
                let Some(f) = f.as_bytes() else {
                    continue;
                };
                match v {
                    Reply::TooLarge(_) => too_large.push(f.to_vec()),
                    v => {
                        if let Some(v) = v.as_bytes() {
                            fields.push((f.to_vec(), v.to_vec()));
                        }
                    }
                }
            }
            Some(Entry {
                id,
                fields,
                too_large,
            })
        })
        .collect()
}

/// A map-shaped reply element (`XINFO` rows) as `(name, value)` pairs.
fn fields(item: Reply) -> Vec<(String, Reply)> {
    item.into_pairs()
        .into_iter()
        .filter_map(|(k, v)| Some((text(&k)?, v)))
        .collect()
}

/// One consumer group (`XINFO GROUPS`).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub pending: u64,
    pub last_delivered: Option<StreamId>,
    /// Entries not yet delivered to the group (Redis 7+; `None` when Redis cannot tell).
    pub lag: Option<u64>,
}

pub fn groups(reply: Reply) -> Vec<Group> {
    reply
        .into_items()
        .into_iter()
        .filter_map(|item| {
            let mut g = Group {
                name: String::new(),
                pending: 0,
                last_delivered: None,
                lag: None,
            };
            for (k, v) in fields(item) {
                match k.as_str() {
                    "name" => g.name = text(&v)?,
                    "pending" => g.pending = v.as_i64().unwrap_or(0).max(0) as u64,
                    "last-delivered-id" => g.last_delivered = id_of(&v),
                    "lag" => g.lag = v.as_i64().map(|l| l.max(0) as u64),
                    _ => {}
                }
            }
            (!g.name.is_empty()).then_some(g)
        })
        .collect()
}

/// One consumer of a group (`XINFO CONSUMERS`).
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    pub name: String,
    pub pending: u64,
    /// Milliseconds since the consumer last read (or claimed) from the group.
    pub idle_ms: u64,
}

pub fn consumers(reply: Reply) -> Vec<Consumer> {
    reply
        .into_items()
        .into_iter()
        .filter_map(|item| {
            let mut c = Consumer {
                name: String::new(),
                pending: 0,
                idle_ms: 0,
            };
            for (k, v) in fields(item) {
                match k.as_str() {
                    "name" => c.name = text(&v)?,
                    "pending" => c.pending = v.as_i64().unwrap_or(0).max(0) as u64,
                    "idle" => c.idle_ms = v.as_i64().unwrap_or(0).max(0) as u64,
                    _ => {}
                }
            }
            (!c.name.is_empty()).then_some(c)
        })
        .collect()
}

/// One entry of an extended `XPENDING` reply: delivered to `consumer`, not acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: StreamId,
    pub consumer: String,
    pub idle_ms: u64,
    pub deliveries: u64,
}

pub fn pending(reply: Reply) -> Vec<Pending> {
    reply
        .into_items()
        .into_iter()
        .filter_map(|item| {
            let parts = item.into_items();
            Some(Pending {
                id: id_of(parts.first()?)?,
                consumer: text(parts.get(1)?)?,
                idle_ms: parts.get(2).and_then(Reply::as_i64).unwrap_or(0).max(0) as u64,
                deliveries: parts.get(3).and_then(Reply::as_i64).unwrap_or(0).max(0) as u64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn ids_order_and_parse() {
        let a: StreamId = "1700000000000-0".parse().unwrap();
        let c: StreamId = "1700000000000-10".parse().unwrap();
        assert!(a < c);
        assert_eq!(a.to_string(), "1700000000000-0");
        assert!("x-1".parse::<StreamId>().is_err());
    }

    #[test]
    fn xinfo_groups_and_pending() {
        let g = groups(Reply::Array(vec![Reply::Array(vec![
            b("name"),
            b("taskiq"),
            b("consumers"),
            Reply::Int(1),
            b("pending"),
            Reply::Int(2),
            b("last-delivered-id"),
            b("5-1"),
            b("lag"),
            Reply::Nil,
        ])]));
        assert_eq!(g[0].name, "taskiq");
        assert_eq!(g[0].pending, 2);
        assert_eq!(g[0].last_delivered, Some(StreamId { ms: 5, seq: 1 }));
        assert_eq!(g[0].lag, None);
        let p = pending(Reply::Array(vec![Reply::Array(vec![
            b("5-1"),
            b("c1"),
            Reply::Int(1200),
            Reply::Int(1),
        ])]));
        assert_eq!(p[0].consumer, "c1");
        assert_eq!(p[0].idle_ms, 1200);
    }
}
