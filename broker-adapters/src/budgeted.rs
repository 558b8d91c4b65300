//! JSON and msgpack decoding within a [`Limits`] budget.
//!
//! - JSON: serde_json parses (its recursion limit of 128 holds the depth) into a
//!   `serde_json::Value` built by a visitor that counts every value and every byte of text as it
//!   goes, so `[0,0,0,...]` stops at `max_items` instead of allocating tens of millions of values.
//! - msgpack: an allocation-free pass over the headers checks depth, item count and every
//!   declared length against the bytes actually there (a header announcing 4 billion entries
//!   costs nothing), before `rmpv` decodes what passed.

use crate::limits::{BudgetExceeded, Limits, Spent};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;

/// Why a budgeted JSON parse failed: the JSON itself, or the budget.
#[derive(Debug)]
pub(crate) enum JsonError {
    Json(serde_json::Error),
    Budget(BudgetExceeded),
}

/// Parses JSON into a `Value` within `limits`.
pub(crate) fn json(bytes: &[u8], limits: &Limits) -> Result<Value, JsonError> {
    let spent = RefCell::new(Spent::new(*limits));
    let hit = RefCell::new(None);
    let seed = Counted {
        spent: &spent,
        hit: &hit,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (parsed, hit.into_inner()) {
        (Err(_), Some(budget)) => Err(JsonError::Budget(budget)),
        (Err(e), None) => Err(JsonError::Json(e)),
        (Ok(v), _) => Ok(v),
    }
}

/// The members named in `wanted` of one JSON object, each as a `Value`: what [`json_picked`]
/// keeps of an object.
#[derive(Debug)]
pub(crate) struct Picked {
    wanted: &'static [&'static str],
    values: Vec<Option<Value>>,
}

impl Picked {
    /// The member `key`; `None` when the object has none, or `key` is not in `wanted`.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        let i = self.wanted.iter().position(|w| *w == key)?;
        self.values.get(i)?.as_ref()
    }

    /// Takes the member `key` out (a later [`Picked::get`] of it is `None`).
    pub(crate) fn take(&mut self, key: &str) -> Option<Value> {
        let i = self.wanted.iter().position(|w| *w == key)?;
        self.values.get_mut(i)?.take()
    }
}

/// Parses a JSON object, or an array of objects, keeping only the members named in `wanted`
/// (each built within `limits`, as [`json`] builds a value); the other members are skipped
/// without being built. `None` for anything else (other JSON, malformed JSON, a budget hit):
/// then [`json`] says what it is. The same members as [`json`] would give, for a fraction of
/// the allocations when most members are not wanted (Celery's events).
pub(crate) fn json_picked(
    bytes: &[u8],
    limits: &Limits,
    wanted: &'static [&'static str],
) -> Option<Vec<Picked>> {
    let spent = RefCell::new(Spent::new(*limits));
    let hit = RefCell::new(None);
    let seed = PickedSeed {
        values: Counted {
            spent: &spent,
            hit: &hit,
        },
        wanted,
        many: true,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    parsed.ok()
}

/// Parses an object into a [`Picked`] (or, at the top, an array of them).
#[derive(Clone, Copy)]
struct PickedSeed<'a> {
    values: Counted<'a>,
    wanted: &'static [&'static str],
    /// An array of objects is accepted (only at the top).
    many: bool,
}

impl<'de> DeserializeSeed<'de> for PickedSeed<'_> {
    type Value = Vec<Picked>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Picked>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PickedSeed<'_> {
    type Value = Vec<Picked>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object or an array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Picked>, A::Error> {
        if !self.many {
            return Err(de::Error::custom("an array inside the array"));
        }
        self.values.charge(0)?;
        let one = PickedSeed {
            many: false,
            ..self
        };
        let mut out = Vec::new();
        while let Some(mut picked) = seq.next_element_seed(one)? {
            out.append(&mut picked);
        }
        Ok(out)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Picked>, A::Error> {
        self.values.charge(0)?;
        let mut values: Vec<Option<Value>> = vec![None; self.wanted.len()];
        while let Some(at) = map.next_key_seed(WantedKey {
            wanted: self.wanted,
            values: self.values,
        })? {
            match at {
                Some(i) => values[i] = Some(map.next_value_seed(self.values)?),
                None => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(vec![Picked {
            wanted: self.wanted,
            values,
        }])
    }
}

/// A member's name: its index in `wanted`, or `None` (skipped). Wanted names are charged to
/// the budget as [`json`] charges every name.
#[derive(Clone, Copy)]
struct WantedKey<'a> {
    wanted: &'static [&'static str],
    values: Counted<'a>,
}

impl<'de> DeserializeSeed<'de> for WantedKey<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for WantedKey<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        let at = self.wanted.iter().position(|w| *w == v);
        if at.is_some() {
            self.values
                .spent
                .borrow_mut()
                .bytes(v.len())
                .map_err(|budget| {
                    *self.values.hit.borrow_mut() = Some(budget);
                    E::custom(budget)
                })?;
        }
        Ok(at)
    }
}

/// A seed and visitor building a `Value`, counting as it goes.
#[derive(Clone, Copy)]
struct Counted<'a> {
    spent: &'a RefCell<Spent>,
    /// The budget that stopped the parse (serde's error type cannot carry it).
    hit: &'a RefCell<Option<BudgetExceeded>>,
}

impl Counted<'_> {
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let mut spent = self.spent.borrow_mut();
        let result = spent.items(1).and_then(|()| spent.bytes(bytes));
        result.map_err(|budget| {
            *self.hit.borrow_mut() = Some(budget);
            E::custom(budget)
        })
    }
}

impl<'de> DeserializeSeed<'de> for Counted<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(crate::pickle::float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.charge(key.len())?;
            let v = map.next_value_seed(self)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Checks a msgpack value's headers against `limits` without allocating: depth, number of
/// values, and every declared length against the bytes left. `Err(None)`: malformed
/// (truncated); `Err(Some(_))`: over budget.
pub(crate) fn msgpack_fits(bytes: &[u8], limits: &Limits) -> Result<(), Option<BudgetExceeded>> {
    let mut spent = Spent::new(*limits);
    // Values still to read in each open container, outermost first.
    let mut open: Vec<u64> = Vec::new();
    let mut i = 0usize;
    let mut pending: u64 = 1; // values to read at the current level
    loop {
        while pending == 0 {
            match open.pop() {
                Some(p) => pending = p,
                None => return Ok(()),
            }
        }
        pending -= 1;
        spent.items(1).map_err(Some)?;
        let marker = *bytes.get(i).ok_or(None)?;
        i += 1;
        let be = |i: &mut usize, n: usize| -> Result<u64, Option<BudgetExceeded>> {
            let s = bytes.get(*i..*i + n).ok_or(None)?;
            *i += n;
            Ok(s.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        };
        // (bytes of payload to skip, values inside it)
        let (skip, children): (u64, u64) = match marker {
            // 0xc1 is reserved; rmpv reads it as nil, so it passes here too (found by fuzzing).
            0x00..=0x7f | 0xe0..=0xff | 0xc0..=0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (be(&mut i, 1)?, 0),
            0xc5 | 0xda => (be(&mut i, 2)?, 0),
            0xc6 | 0xdb => (be(&mut i, 4)?, 0),
            0xc7 => (be(&mut i, 1)? + 1, 0),
            0xc8 => (be(&mut i, 2)? + 1, 0),
            0xc9 => (be(&mut i, 4)? + 1, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, be(&mut i, 2)?),
            0xdd => (0, be(&mut i, 4)?),
            0xde => (0, 2 * be(&mut i, 2)?),
            0xdf => (0, 2 * be(&mut i, 4)?),
        };
        let left = (bytes.len() - i) as u64;
        if skip > left {
            return Err(None);
        }
        i += skip as usize;
        if matches!(marker, 0xa0..=0xbf | 0xc4..=0xc6 | 0xd9..=0xdb) {
            spent.bytes(skip as usize).map_err(Some)?;
        }
        if children > 0 {
            // Every value takes at least one byte: a count the input cannot hold is malformed.
            if children > left - skip {
                return Err(None);
            }
            open.push(pending);
            spent.depth(open.len()).map_err(Some)?;
            pending = children;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_within_budget_is_what_serde_json_gives() {
        let text = br#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": "\u00e9"}"#;
        let expected: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(json(text, &Limits::DEFAULT).unwrap(), expected);
    }

    #[test]
    fn json_over_budget_says_which_limit() {
        let small = Limits {
            max_items: 10,
            ..Limits::DEFAULT
        };
        let zeros = format!("[{}0]", "0,".repeat(100));
        assert!(matches!(
            json(zeros.as_bytes(), &small),
            Err(JsonError::Budget(BudgetExceeded::Items(10)))
        ));
        let tight = Limits {
            max_decoded_bytes: 5,
            ..Limits::DEFAULT
        };
        assert!(matches!(
            json(br#"["abcdef"]"#, &tight),
            Err(JsonError::Budget(BudgetExceeded::Bytes(5)))
        ));
        assert!(matches!(json(b"[1,", &tight), Err(JsonError::Json(_))));
    }

    #[test]
    fn msgpack_headers_are_checked_before_decoding() {
        // array32 announcing 4 billion entries, with two bytes behind it.
        assert_eq!(
            msgpack_fits(
                &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02],
                &Limits::DEFAULT
            ),
            Err(None)
        );
        // str32 announcing 4 GB.
        assert_eq!(
            msgpack_fits(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'], &Limits::DEFAULT),
            Err(None)
        );
        // 200 nested fixarrays of one element.
        let mut deep = vec![0x91; 200];
        deep.push(0xc0);
        assert_eq!(
            msgpack_fits(&deep, &Limits::DEFAULT),
            Err(Some(BudgetExceeded::Depth(128)))
        );
        // {"a": [1, 2]}
        assert_eq!(
            msgpack_fits(&[0x81, 0xa1, b'a', 0x92, 0x01, 0x02], &Limits::DEFAULT),
            Ok(())
        );
        assert_eq!(msgpack_fits(&[0x92, 0x01], &Limits::DEFAULT), Err(None));
        // The reserved marker, as rmpv reads it: a nil.
        assert_eq!(msgpack_fits(&[0x91, 0xc1], &Limits::DEFAULT), Ok(()));
    }
}
