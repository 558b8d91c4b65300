//! What taskiq-redis's brokers and result backend write, command for command (taskiq 0.13.0,
//! taskiq-redis 1.2.4, as observed with `redis-cli monitor` in
//! `tests/fixtures/taskiq/README.md`), applied to a [`FakeRedis`]. Each function is one
//! command or one `MULTI`; the caller delivers the notifications.
//!
//! `RedisStreamBroker`: producers and workers `XGROUP CREATE <queue> taskiq $ MKSTREAM` at
//! start; `kiq` is `XADD <queue> * data <message>`; a worker `XREADGROUP GROUP taskiq
//! <consumer> COUNT 100 ... STREAMS <queue> >`, and after every non-empty read a `MULTI` of
//! `SET autoclaim:<queue>:taskiq <token> NX`, `XAUTOCLAIM <queue> taskiq <consumer> 600000 0-0
//! COUNT 100` and the lock's release; a task ends with its result `SET <task_id>` then `XACK`
//! (`when_saved`, failures too); a retry's `XADD` comes before the failed attempt's result and
//! acknowledgement. `ListQueueBroker`: `LPUSH <queue> <message>`, workers `BRPOP <queue>`.

use super::fake_redis::FakeRedis;
use serde_json::Value;

pub const QUEUE: &str = "taskiq";
pub const GROUP: &str = "taskiq";
/// `XAUTOCLAIM`'s min idle time (the broker's `idle_timeout`, 10 minutes).
pub const IDLE_TIMEOUT_MS: i64 = 600_000;

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/taskiq/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `task_id` of a captured file, from the fixtures' manifest.
pub fn task_id(name: &str) -> String {
    let manifest: Value = serde_json::from_slice(&fixture("manifest.json")).expect("JSON");
    manifest[name]["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in the manifest"))
        .to_string()
}

/// A worker's or producer's `startup()`.
pub fn startup(r: &mut FakeRedis, queue: &str) {
    r.xgroup_create(queue, GROUP, "$", true);
}

/// `kiq` on a `RedisStreamBroker`: the entry's id.
pub fn kiq(r: &mut FakeRedis, queue: &str, message: &[u8]) -> String {
    r.xadd(queue, "*", &[("data", message)])
}

/// One `XREADGROUP` of `consumer` (COUNT 100), then, when it got entries, the autoclaim
/// `MULTI` (which claims nothing younger than [`IDLE_TIMEOUT_MS`]). The entries' ids.
pub fn read(r: &mut FakeRedis, queue: &str, consumer: &str) -> Vec<String> {
    let got = r.xreadgroup(queue, GROUP, consumer, 100);
    if !got.is_empty() {
        autoclaim(r, queue, consumer);
    }
    got.into_iter().map(|(id, _)| id).collect()
}

/// The autoclaim `MULTI`: the lock, `XAUTOCLAIM ... 600000 0-0 COUNT 100`, the lock released.
/// The ids claimed.
pub fn autoclaim(r: &mut FakeRedis, queue: &str, consumer: &str) -> Vec<String> {
    let lock = format!("autoclaim:{queue}:{GROUP}");
    r.set(&lock, b"0f1e2d3c");
    let (_, claimed) = r.xautoclaim(queue, GROUP, consumer, IDLE_TIMEOUT_MS, "0-0", 100);
    r.del(&lock);
    claimed.into_iter().map(|(id, _)| id).collect()
}

/// `RedisAsyncResultBackend.set_result`: `SET <prefix:>task_id <record>` (no `result_ex_time`).
pub fn save_result(r: &mut FakeRedis, key: &str, record: &[u8]) {
    r.set(key, record);
}

/// The acknowledgement of entry `id`.
pub fn ack(r: &mut FakeRedis, queue: &str, id: &str) {
    r.xack(queue, GROUP, &[id]);
}

/// `kiq` on a `ListQueueBroker`.
pub fn lpush(r: &mut FakeRedis, queue: &str, message: &[u8]) {
    r.lpush(queue, message);
}

/// A `ListQueueBroker` worker's `BRPOP`.
pub fn brpop(r: &mut FakeRedis, queue: &str) -> Option<Vec<u8>> {
    r.rpop(queue)
}
