//! Which task keys the store may hold: a scalable Bloom filter in front of the writer's lookups.
//!
//! Most observations of a task the writer does not have in memory are of a task it has never
//! seen (a `task-sent`, a new message). Looking one up in the database scans every stored id.
//! The filter answers "certainly never stored" without I/O; only a "maybe" (a stored task, or a
//! 0.01 % false positive) is looked up. A Bloom filter cannot forget a key, and the filter grows
//! by appending a new filter twice the size of the last one, so it needs no bound up front.
//! A key costs 19 bits at 0.01 % false positives; a filter sized for N keys allocates those bits
//! at once (the writer sizes the first for the stored count and a quarter more).
//!
//! Retention deletes tasks the filter still holds: left alone it would grow with every task
//! ever stored, not with those kept (issue #22: months of traffic). So once retention has
//! deleted half as many tasks as remain, the sink rebuilds the filter from the file ([`load`])
//! and hands it to the fold thread, which adds the keys it inserted meanwhile (its journal)
//! before it swaps: the filter never misses a stored key (a miss would store a second row).

use super::StoreError;
use duckdb::Connection;
use fastbloom::BloomFilter;
use std::hash::Hash;

/// False positive rate of each filter; the chain's rate is at most their sum. Each false
/// positive costs a lookup that scans every stored id (DuckDB decompressing 16-byte keys): at
/// 0.5 % a soak at 500 Celery lifecycles/s spent a whole core in them once 700k tasks were
/// stored, growing with the history. At 0.01 %: 19 bits a key (30 MB at 10M tasks, sized at
/// a quarter more), one such scan per 10,000 new tasks.
const FALSE_POSITIVE_RATE: f64 = 0.0001;
/// Capacity of the first filter.
const FIRST_CAPACITY: usize = 64 * 1024;

/// A chain of Bloom filters, each twice the capacity of the one before.
pub(super) struct SeenKeys {
    filters: Vec<BloomFilter>,
    /// Capacity of the last filter, and how many keys went into it.
    last_capacity: usize,
    last_len: usize,
    /// Keys inserted into all filters.
    len: usize,
}

impl SeenKeys {
    /// An empty set sized for about `expected` keys (more are fine).
    pub(super) fn with_expected(expected: usize) -> Self {
        let capacity = expected.max(FIRST_CAPACITY);
        Self {
            filters: vec![new_filter(capacity)],
            last_capacity: capacity,
            last_len: 0,
            len: 0,
        }
    }

    /// Keys inserted (a key that seemed present already is not counted).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Records `key` as stored.
    pub(super) fn insert(&mut self, key: &impl Hash) {
        if self.may_contain(key) {
            return;
        }
        if self.last_len >= self.last_capacity {
            self.last_capacity *= 2;
            self.last_len = 0;
            self.filters.push(new_filter(self.last_capacity));
        }
        if let Some(last) = self.filters.last_mut() {
            last.insert(key);
            self.last_len += 1;
            self.len += 1;
        }
    }

    /// Bytes the filters' bits take.
    pub(super) fn bytes(&self) -> usize {
        self.filters.iter().map(|f| f.num_bits().div_ceil(8)).sum()
    }

    /// `false` only if `key` was never inserted.
    pub(super) fn may_contain(&self, key: &impl Hash) -> bool {
        self.filters.iter().any(|f| f.contains(key))
    }
}

/// A filter of every task key in the file, sized for a quarter more than it holds; with the
/// number of keys stored.
pub(super) fn load(conn: &Connection) -> Result<(SeenKeys, usize), StoreError> {
    let (count, first, last): (i64, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT count(*), min(num), max(num) FROM task_rows",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let count = usize::try_from(count).unwrap_or(0);
    let mut seen = SeenKeys::with_expected(count.saturating_add(count / 4));
    // In ranges of task numbers (zone maps find them): DuckDB materialises a query's result,
    // and all ids at once held ~600 MB at 10M tasks.
    const CHUNK: i64 = 250_000;
    let mut stmt = conn.prepare("SELECT broker, id FROM tasks WHERE num >= ? AND num < ?")?;
    let (mut lo, end) = (first.unwrap_or(0), last.unwrap_or(-1));
    while lo <= end {
        let mut rows = stmt.query([lo, lo + CHUNK])?;
        while let Some(row) = rows.next()? {
            let broker: String = row.get(0)?;
            let id: String = row.get(1)?;
            seen.insert(&(super::rows::parse_broker(&broker)?, id));
        }
        lo += CHUNK;
    }
    Ok((seen, count))
}

fn new_filter(capacity: usize) -> BloomFilter {
    BloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(capacity)
}

#[cfg(test)]
mod tests {
    use super::SeenKeys;

    #[test]
    fn inserted_keys_are_always_found_and_strangers_mostly_not() {
        let mut seen = SeenKeys::with_expected(0);
        // Past the first filter's capacity, so the chain grows twice.
        let n = 300_000;
        for i in 0..n {
            seen.insert(&("celery", format!("task-{i}")));
        }
        assert!(
            seen.filters.len() >= 3,
            "the chain grew: {}",
            seen.filters.len()
        );
        for i in 0..n {
            assert!(seen.may_contain(&("celery", format!("task-{i}"))));
        }
        let false_positives = (0..100_000)
            .filter(|i| seen.may_contain(&("celery", format!("stranger-{i}"))))
            .count();
        assert!(
            false_positives < 2_000,
            "{false_positives} false positives in 100k"
        );
        // The broker is part of the key.
        let other_broker = (0..10_000)
            .filter(|i| seen.may_contain(&("rq", format!("task-{i}"))))
            .count();
        assert!(other_broker < 200, "{other_broker}");
    }
}
