//! Which task keys the store may hold: a scalable blocked Bloom filter kept in a file beside the
//! database, in front of the writer's lookups.
//!
//! Most observations of a task the writer does not have in memory are of a task it has never
//! seen (a `task-sent`, a new message). Looking one up in the database scans every stored id.
//! The filter answers "certainly never stored" without a query; only a "maybe" (a stored task,
//! or a false positive, about 1 in 20,000) is looked up.
//!
//! The filter's bits live in an unnamed file (deleted on creation, gone when the process ends)
//! in the database's directory, read and written one 64-byte block per key with `pread` and
//! `pwrite` (all of a key's bits are in one block). The kernel's page cache keeps the file's hot
//! pages; they are not the process's memory and the kernel reclaims them under pressure. At 10M
//! tasks the filter was 32 MB of resident heap, the largest part of the idle server after
//! DuckDB (issue #22); in a file it is ~0 resident, for a few microseconds of system calls per
//! new task. It is built from the `tasks` table at every start (the file is never reused, so
//! a crash cannot leave it behind the database).
//!
//! A Bloom filter cannot forget a key, and it grows by appending a segment twice the size of
//! the last one, so it needs no bound up front. Retention deletes tasks the filter still holds:
//! left alone it would grow with every task ever stored, not with those kept. So once retention
//! has deleted half as many tasks as remain, the sink rebuilds the filter from the file
//! ([`load`]) and hands it to the fold thread, which adds the keys it inserted meanwhile (its
//! journal) before it swaps: the filter never misses a stored key (a miss would store a second
//! row). A failed write to the file breaks that promise, so after one the filter answers
//! "maybe" for every key (each new task is looked up: slower, never wrong) and says so once.

use super::StoreError;
use duckdb::Connection;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes of a block: a cache line, so checking a key reads one.
const BLOCK_BYTES: usize = 64;
const BLOCK_BITS: u64 = (BLOCK_BYTES * 8) as u64;
/// Bits a key gets, and bits set per key within its block. Measured by the test below: about
/// 1 false positive in 20,000 strangers (the in-memory filter before was 19 bits at 1 in
/// 10,000). The bits cost file space (30 MB at 10M tasks), not memory.
const BITS_PER_KEY: u64 = 24;
const BITS_SET: u32 = 12;
/// Capacity of the first segment: 3 MB of sparse file, written only where keys land.
const FIRST_CAPACITY: usize = 1 << 20;

/// One filter of the chain: `blocks` blocks from byte `offset` of the file.
#[derive(Debug, Clone, Copy)]
struct Segment {
    offset: u64,
    blocks: u64,
}

impl Segment {
    fn blocks_for(capacity: usize) -> u64 {
        (capacity as u64 * BITS_PER_KEY).div_ceil(BLOCK_BITS).max(1)
    }

    fn end(&self) -> u64 {
        self.offset + self.blocks * BLOCK_BYTES as u64
    }

    /// Byte offset of the block of a key hashed to `hash`.
    fn block_at(&self, hash: u64) -> u64 {
        // Multiply-shift: uniform over the blocks without a division.
        let block = ((u128::from(hash) * u128::from(self.blocks)) >> 64) as u64;
        self.offset + block * BLOCK_BYTES as u64
    }
}

/// The bit positions of a key within its block.
fn bits(hash: u64) -> impl Iterator<Item = usize> {
    let mut state = hash;
    (0..BITS_SET).map(move |_| (splitmix64(&mut state) % BLOCK_BITS) as usize)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key's hash: SipHash with fixed keys, the same in every run of the process (the file is
/// never read by another).
fn hash_key(key: &impl Hash) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn has_bits(block: &[u8; BLOCK_BYTES], hash: u64) -> bool {
    bits(hash).all(|b| block[b / 8] & (1 << (b % 8)) != 0)
}

fn set_bits(block: &mut [u8], hash: u64) {
    for b in bits(hash) {
        block[b / 8] |= 1 << (b % 8);
    }
}

/// A chain of blocked Bloom filters in one unnamed file, each segment twice the capacity of the
/// one before.
pub(super) struct SeenKeys {
    file: File,
    segments: Vec<Segment>,
    /// Capacity of the last segment, and how many keys went into it.
    last_capacity: usize,
    last_len: usize,
    /// Keys inserted into all segments.
    len: usize,
    /// A write to the file failed: every key "may" be stored from then on.
    broken: bool,
}

/// What the filter's file says of a key.
enum Probe {
    /// Every bit of the key is set in one segment's block.
    Present,
    /// None has them; the last segment's block, as read.
    Absent { last_block: [u8; BLOCK_BYTES] },
}

impl SeenKeys {
    /// An empty set sized for about `expected` keys (more are fine), its file in `dir`.
    pub(super) fn with_expected(dir: &Path, expected: usize) -> Result<Self, StoreError> {
        Self::with_capacity(dir, expected.max(FIRST_CAPACITY))
    }

    /// An empty set whose first segment holds `capacity` keys.
    fn with_capacity(dir: &Path, capacity: usize) -> Result<Self, StoreError> {
        let file = tempfile::tempfile_in(dir).map_err(|source| StoreError::FilterFile {
            dir: dir.to_path_buf(),
            source,
        })?;
        let capacity = capacity.max(1);
        let first = Segment {
            offset: 0,
            blocks: Segment::blocks_for(capacity),
        };
        let seen = Self {
            file,
            segments: vec![first],
            last_capacity: capacity,
            last_len: 0,
            len: 0,
            broken: false,
        };
        seen.extend_file(first, dir)?;
        Ok(seen)
    }

    /// Makes the file long enough for `segment` (a sparse extension: no bytes written).
    fn extend_file(&self, segment: Segment, dir: &Path) -> Result<(), StoreError> {
        self.file
            .set_len(segment.end())
            .map_err(|source| StoreError::FilterFile {
                dir: dir.to_path_buf(),
                source,
            })
    }

    /// Keys inserted (a key that seemed present already is not counted).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the filter's file (on disk where keys landed; in memory only as the kernel's
    /// page cache).
    pub(super) fn bytes(&self) -> u64 {
        self.segments.last().map_or(0, Segment::end)
    }

    /// Records `key` as stored.
    pub(super) fn insert(&mut self, key: &impl Hash) {
        if self.broken {
            return;
        }
        let hash = hash_key(key);
        // The last segment's block is kept for the write: a new key costs one read per
        // segment and one write.
        let mut block = match self.probe(hash) {
            Ok(Probe::Present) => return,
            Ok(Probe::Absent { last_block }) => last_block,
            Err(e) => return self.break_on(&e),
        };
        if self.last_len >= self.last_capacity {
            self.last_capacity = self.last_capacity.saturating_mul(2);
            self.last_len = 0;
            let next = Segment {
                offset: self.bytes(),
                blocks: Segment::blocks_for(self.last_capacity),
            };
            if let Err(e) = self.file.set_len(next.end()) {
                return self.break_on(&e);
            }
            self.segments.push(next);
            // A new segment is a sparse extension of the file: all zeros.
            block = [0u8; BLOCK_BYTES];
        }
        let Some(last) = self.segments.last() else {
            return;
        };
        let at = last.block_at(hash);
        set_bits(&mut block, hash);
        if let Err(e) = self.file.write_all_at(&block, at) {
            return self.break_on(&e);
        }
        self.last_len += 1;
        self.len += 1;
    }

    /// `false` only if `key` was never inserted.
    pub(super) fn may_contain(&self, key: &impl Hash) -> bool {
        if self.broken {
            return true;
        }
        // A read that fails answers "maybe": a lookup, never a second row.
        self.probe(hash_key(key))
            .map_or(true, |p| matches!(p, Probe::Present))
    }

    /// Reads the key's block of every segment, oldest first, until one has its bits.
    fn probe(&self, hash: u64) -> std::io::Result<Probe> {
        let mut block = [0u8; BLOCK_BYTES];
        for segment in &self.segments {
            self.file
                .read_exact_at(&mut block, segment.block_at(hash))?;
            if has_bits(&block, hash) {
                return Ok(Probe::Present);
            }
        }
        Ok(Probe::Absent { last_block: block })
    }

    fn break_on(&mut self, e: &std::io::Error) {
        self.broken = true;
        tracing::error!(
            error = %e,
            "The file of the filter of stored task ids failed; every new task is now looked up \
             in the database (slower, still correct) until the filter is rebuilt. Is the \
             database's disk full?"
        );
    }
}

/// A filter of every task key in the file, sized for a quarter more than it holds, its file in
/// `dir`; with the number of keys stored.
///
/// The first segment is built in memory (the keys of the file at once: 3 bytes a task, freed
/// when written) and written in one go: a `pwrite` per key would take minutes at 10M tasks.
pub(super) fn load(conn: &Connection, dir: &Path) -> Result<(SeenKeys, usize), StoreError> {
    let (count, first, last): (i64, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT count(*), min(num), max(num) FROM task_rows",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let count = usize::try_from(count).unwrap_or(0);
    let mut seen = SeenKeys::with_expected(dir, count.saturating_add(count / 4))?;
    if count == 0 {
        return Ok((seen, 0));
    }
    let segment = seen.segments[0];
    let mut bits = vec![0u8; usize::try_from(segment.blocks).unwrap_or(usize::MAX) * BLOCK_BYTES];
    let mut inserted = 0;
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
            let hash = hash_key(&(super::rows::parse_broker(&broker)?, id));
            // `block_at` counts from the segment's offset, 0 for the first.
            let at = usize::try_from(segment.block_at(hash)).unwrap_or(usize::MAX);
            if let Some(block) = bits.get_mut(at..at.saturating_add(BLOCK_BYTES)) {
                set_bits(block, hash);
                inserted += 1;
            }
        }
        lo += CHUNK;
    }
    seen.file
        .write_all_at(&bits, segment.offset)
        .map_err(|source| StoreError::FilterFile {
            dir: dir.to_path_buf(),
            source,
        })?;
    seen.last_len = inserted;
    seen.len = inserted;
    Ok((seen, count))
}

#[cfg(test)]
mod tests {
    use super::SeenKeys;

    #[test]
    fn inserted_keys_are_always_found_and_strangers_rarely() {
        let dir = tempfile::tempdir().unwrap();
        // A small first segment, so the chain grows twice.
        let mut seen = SeenKeys::with_capacity(dir.path(), 100_000).unwrap();
        let n = 400_000;
        for i in 0..n {
            seen.insert(&("celery", format!("task-{i}")));
        }
        assert_eq!(seen.segments.len(), 3, "the chain grew twice");
        // A key that seemed present already (a false positive) is not counted.
        assert!(seen.len() <= n && seen.len() > n - 50, "{}", seen.len());
        for i in 0..n {
            assert!(seen.may_contain(&("celery", format!("task-{i}"))));
        }
        let strangers = 400_000;
        let false_positives = (0..strangers)
            .filter(|i| seen.may_contain(&("celery", format!("stranger-{i}"))))
            .count();
        // Three segments, each at most ~1 in 20,000 when full.
        assert!(
            false_positives < 60,
            "{false_positives} false positives in {strangers}"
        );
        // The broker is part of the key.
        let other_broker = (0..10_000)
            .filter(|i| seen.may_contain(&("rq", format!("task-{i}"))))
            .count();
        assert!(other_broker < 5, "{other_broker}");
    }

    #[test]
    fn a_full_segment_has_the_designed_false_positive_rate() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = 1 << 20;
        let mut seen = SeenKeys::with_expected(dir.path(), capacity).unwrap();
        for i in 0..capacity {
            seen.insert(&("dramatiq", format!("{i:x}-message")));
        }
        let strangers = 1_000_000;
        let false_positives = (0..strangers)
            .filter(|i| seen.may_contain(&("dramatiq", format!("{i:x}-stranger"))))
            .count();
        eprintln!("{false_positives} false positives in {strangers} at {capacity} keys");
        assert!(false_positives < 100, "{false_positives} in {strangers}");
    }

    #[test]
    fn a_failed_write_makes_every_key_a_maybe() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = SeenKeys::with_expected(dir.path(), 0).unwrap();
        seen.insert(&("rq", "a".to_string()));
        seen.break_on(&std::io::Error::other("disk full"));
        assert!(seen.may_contain(&("rq", "never inserted".to_string())));
    }
}
