//! What the benchmarks' smoke tests share: the binary under test, and one test at a time.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// `taskscope-bench`, as cargo built it for these tests.
pub fn bench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taskscope-bench"))
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Each run starts a redis-server and a taskscope: on a 2-core CI machine, two at once make the
/// figures (and the settle deadlines) flaky. Hold the guard for the whole test.
pub fn test_slot() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
