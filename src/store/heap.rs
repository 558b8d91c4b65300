//! Gives the C heap's free memory back to the system, after the work that frees a lot of it.
//!
//! glibc keeps what is freed in its arenas (one per thread that allocates concurrently) and
//! returns it only from the top of a heap, so a burst (a rescan re-reading 45k result keys: the
//! fold's lookups load the tasks, DuckDB joins and materialises them) leaves its memory
//! resident after it is freed. Measured in a soak at 500 Celery lifecycles/s: resident memory
//! stepped from ~150 to ~330 MiB after each 5-minute rescan and fell back by ~90 MiB only when
//! housekeeping, which trimmed, ran next. `malloc_trim` walks every arena and returns the pages
//! of their free chunks.
//!
//! The `taskscope` binary itself runs on jemalloc (`src/main.rs`), which gives freed pages back
//! within about a second on its own; there this trims only the little glibc still holds. It
//! matters for programs that use the store on glibc's allocator (the benchmarks' in-process
//! store, the tests).

use std::time::{Duration, Instant};

/// Work (observations written, keys looked up) after which the heap is trimmed at once.
const TRIM_AFTER_WORK: u64 = 20_000;
/// Otherwise the heap is trimmed at most this often, when anything was done.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Returns the C heap's free pages to the system (glibc on Linux; elsewhere nothing).
pub(super) fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks glibc's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// When the sink trims: after [`TRIM_AFTER_WORK`] of work, or [`TRIM_EVERY`] after the last
/// trim when there was any.
pub(super) struct TrimPolicy {
    work: u64,
    last: Instant,
}

impl Default for TrimPolicy {
    fn default() -> Self {
        Self {
            work: 0,
            last: Instant::now(),
        }
    }
}

impl TrimPolicy {
    /// Counts `work` done, and trims when due. Returns whether it trimmed.
    pub(super) fn done(&mut self, work: u64) -> bool {
        self.work = self.work.saturating_add(work);
        let due =
            self.work >= TRIM_AFTER_WORK || (self.work > 0 && self.last.elapsed() >= TRIM_EVERY);
        if due {
            self.trim_now();
        }
        due
    }

    /// Trims now (after work known to free much, as housekeeping), and counts from zero again.
    pub(super) fn trim_now(&mut self) {
        give_back_freed_memory();
        self.work = 0;
        self.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_enough_work_and_not_before() {
        let mut policy = TrimPolicy::default();
        assert!(!policy.done(TRIM_AFTER_WORK - 1));
        assert!(policy.done(1));
        // Counted from zero again.
        assert!(!policy.done(10));
        // Nothing done: never due, however long ago the last trim was.
        policy.last = Instant::now() - TRIM_EVERY * 2;
        policy.work = 0;
        assert!(!policy.done(0));
        assert!(policy.done(1));
    }
}
