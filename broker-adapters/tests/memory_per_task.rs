//! What an adapter's bounded memories cost per task. A long-lived sidecar fills each of them
//! up to its capacity (200,000 tasks), so the bytes per task here are RSS at the plateau of a
//! busy deployment: the soak's growth in its second half hour was the Celery adapter's
//! attempt numbering filling up (jemalloc heap profiles, issue #22).
//!
//! One test in this file: the counting allocator is global to the test binary.

use broker_adapters::adapter::Adapter;
use broker_adapters::celery::{CeleryAdapter, CeleryConfig};
use chrono::Utc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// Counts the bytes live in the heap (requested sizes, not the allocator's size classes).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn uuid(n: u64) -> String {
    let h = format!("{:016x}{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15), n);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Feeds `n` tasks' `STARTED` then `SUCCESS` records (the result channel: every task with a
/// result backend) and returns the heap bytes the adapter kept per task.
fn celery_bytes_per_task(a: &mut CeleryAdapter, from: u64, n: u64) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    for i in from..from + n {
        let id = uuid(i);
        let channel = format!("celery-task-meta-{id}");
        for status in ["STARTED", "SUCCESS"] {
            let record = serde_json::to_vec(&serde_json::json!({
                "status": status, "result": 1, "traceback": null, "children": [],
                "date_done": "2026-12-07T01:00:00.000000+00:00", "task_id": id,
            }))
            .unwrap();
            drop(a.on_message(&channel, &record, Utc::now()));
        }
    }
    (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64
}

#[test]
fn the_celery_adapter_keeps_under_100_bytes_per_task() {
    let mut a = CeleryAdapter::new(CeleryConfig::default());
    // Warm: the maps' first growth steps.
    celery_bytes_per_task(&mut a, 0, 1_000);
    let per_task = celery_bytes_per_task(&mut a, 1_000, 60_000);
    eprintln!("celery adapter: {per_task:.1} heap bytes kept per task");
    assert!(per_task < 100.0, "{per_task:.1} bytes per task");
}
