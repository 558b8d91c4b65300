//! What RQ 3.0's queue and worker write, command for command (the MONITOR captures behind
//! `tests/fixtures/rq/README.md` and `src/loadgen/rq.rs`), applied to a [`FakeRedis`], on the
//! captured job hashes and results entries of `tests/fixtures/rq/` with their times rewritten.
//! Each function is one pipeline; the caller delivers the notifications.
//!
//! - enqueue: `SADD rq:queues rq:queue:<q>`, `HSET rq:job:<id> ...` (`status` `queued`),
//!   `RPUSH rq:queue:<q> <id>`;
//! - a worker's heartbeat: `SADD rq:workers rq:worker:<name>`, `HSET rq:worker:<name> ...`,
//!   `EXPIRE rq:worker:<name> 90` (busy forking worker);
//! - dequeue and start: `LPOP`, the attempt's execution (`HSET rq:execution:<id>:<exec>`,
//!   `EXPIRE`, `ZADD rq:executions:<id>`, `EXPIRE`, `ZADD rq:wip:<q> <now + 90> <id>:<exec>`,
//!   `SADD rq:worker:<name>:executions`, `EXPIRE`), `HSET rq:job:<id>` `status` `started`;
//! - the end: the execution cleaned up (`DEL`, `ZREM`s, `SREM`), `HSET rq:job:<id>` `status`
//!   `finished`/`failed`/`stopped`, `ZADD rq:<finished|failed>:<q>`, then `XADD
//!   rq:results:<id> MAXLEN ~ 10 * type <1|2|3> ...` (last, as in `keyspace_retried_twice.json`);
//!   a success's hash then `EXPIRE`s after `result_ttl`;
//! - `Retry(max=n)`: the execution cleaned up, `HSET` `status` `queued` with `retries_left`
//!   one less, `RPUSH` again; no results entry for the failed attempt.

use super::fake_redis::FakeRedis;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::Value;

pub const QUEUE: &str = "default";
/// A successful job's hash lives this long after it ends (`result_ttl`).
pub const RESULT_TTL_S: i64 = 500;
/// A busy forking worker's heartbeat TTL (`job_monitoring_interval` 30 s + 60 s).
pub const WORKER_TTL_S: i64 = 90;

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("a fixture value is base64")
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/rq/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_slice(&bytes).expect("JSON")
}

/// A captured hash (`{field: base64(value)}`) as fields and values.
fn hash_fixture(name: &str) -> Vec<(String, Vec<u8>)> {
    fixture(name)
        .as_object()
        .expect("a hash")
        .iter()
        .map(|(f, v)| (f.clone(), b64(v.as_str().expect("base64 text"))))
        .collect()
}

fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// `HSET key f v f v ...`: one command, one `hset` event.
fn hset(r: &mut FakeRedis, key: &str, fields: &[(&str, &[u8])]) {
    r.hset_many(key, fields);
}

pub fn job_key(id: &str) -> String {
    format!("rq:job:{id}")
}

fn queue_key() -> String {
    format!("rq:queue:{QUEUE}")
}

/// `queue.enqueue(...)` of the captured `rq_app.add(2, 3, note='x')` as job `id` at `now`;
/// `retries_left`: enqueued with `Retry(max=n)`.
pub fn enqueue(r: &mut FakeRedis, id: &str, now: DateTime<Utc>, retries_left: Option<u32>) {
    r.sadd("rq:queues", &queue_key());
    let mut fields = hash_fixture("job_pickle_queued.json");
    for (f, v) in &mut fields {
        if f == "created_at" || f == "enqueued_at" {
            *v = iso(now).into_bytes();
        }
    }
    if let Some(n) = retries_left {
        fields.push(("retries_left".into(), n.to_string().into_bytes()));
        fields.push(("retry_intervals".into(), b"[0]".to_vec()));
    }
    let fields: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(f, v)| (f.as_str(), v.as_slice()))
        .collect();
    hset(r, &job_key(id), &fields);
    r.rpush(&queue_key(), id.as_bytes());
}

/// A worker's heartbeat (its birth too, the first time).
pub fn heartbeat(r: &mut FakeRedis, worker: &str, birth: DateTime<Utc>, now: DateTime<Utc>) {
    let key = format!("rq:worker:{worker}");
    r.sadd("rq:workers", &key);
    let (birth, now) = (iso(birth), iso(now));
    hset(
        r,
        &key,
        &[
            ("birth", birth.as_bytes()),
            ("hostname", b"vm"),
            ("last_heartbeat", now.as_bytes()),
            ("pid", b"21104"),
            ("queues", QUEUE.as_bytes()),
            ("state", b"busy"),
            ("version", b"3.0.0"),
        ],
    );
    r.expire(&key, WORKER_TTL_S);
}

fn wip_member(id: &str, exec: &str) -> String {
    format!("{id}:{exec}")
}

/// The worker's `LPOP` and the attempt's start (`prepare_execution`, then the job's status).
/// The job id popped.
pub fn dequeue_and_start(
    r: &mut FakeRedis,
    worker: &str,
    exec: &str,
    now: DateTime<Utc>,
) -> Option<String> {
    let id = String::from_utf8(r.lpop(&queue_key())?).expect("an id");
    let execution = format!("rq:execution:{}", wip_member(&id, exec));
    let t = format!("{:.6}", secs(now));
    hset(
        r,
        &execution,
        &[
            ("id", exec.as_bytes()),
            ("job_id", id.as_bytes()),
            ("created_at", t.as_bytes()),
            ("last_heartbeat", t.as_bytes()),
            ("worker_name", worker.as_bytes()),
        ],
    );
    r.expire(&execution, 90);
    let executions = format!("rq:executions:{id}");
    r.zadd(&executions, (now.timestamp() + 150) as f64, exec);
    r.expire(&executions, 150);
    r.zadd(
        &format!("rq:wip:{QUEUE}"),
        (now.timestamp() + 90) as f64,
        &wip_member(&id, exec),
    );
    let index = format!("rq:worker:{worker}:executions");
    r.sadd(&index, &wip_member(&id, exec));
    r.expire(&index, 150);
    let at = iso(now);
    hset(
        r,
        &job_key(&id),
        &[
            ("status", b"started"),
            ("started_at", at.as_bytes()),
            ("last_heartbeat", at.as_bytes()),
            ("worker_name", worker.as_bytes()),
        ],
    );
    Some(id)
}

/// `cleanup_execution`, at the end of every attempt.
fn end_execution(r: &mut FakeRedis, id: &str, worker: &str, exec: &str) {
    r.del(&format!("rq:execution:{}", wip_member(id, exec)));
    r.zrem(&format!("rq:wip:{QUEUE}"), &wip_member(id, exec));
    r.zrem(&format!("rq:executions:{id}"), exec);
    r.srem(
        &format!("rq:worker:{worker}:executions"),
        &wip_member(id, exec),
    );
}

/// A success with `result_ttl=0`: no results entry, no registry; the job hash deleted
/// (`job.cleanup(0)`), then the execution cleaned up.
pub fn end_discarded(r: &mut FakeRedis, id: &str, worker: &str, exec: &str) {
    r.del(&job_key(id));
    end_execution(r, id, worker, exec);
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    Finished,
    Failed,
    /// `rq job stop` / `send_stop_job_command`: results type 2 (as RQ 3.0 writes it; type 3
    /// exists but the real worker does not use it), status `stopped`, failed registry.
    Stopped,
}

/// A stopped job's `exc_string` as RQ 3.0 writes it: base64 of zlib of its sentence.
fn stopped_exc_string() -> Vec<u8> {
    use base64::Engine;
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(b"Job stopped by user, work-horse terminated.")
        .expect("zlib to memory");
    let bytes = z.finish().expect("zlib to memory");
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into_bytes()
}

/// The execution cleaned up, the job's status, the registry, the results entry; a success's
/// hash expires after [`RESULT_TTL_S`].
pub fn end(
    r: &mut FakeRedis,
    id: &str,
    worker: &str,
    exec: &str,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
    how: End,
) {
    let captured = match how {
        End::Finished => fixture("results_success.json"),
        End::Failed | End::Stopped => fixture("results_failure.json"),
    };
    let (started_s, ended_s) = (format!("{:.6}", secs(started)), format!("{:.6}", secs(now)));
    let kind: &[u8] = match how {
        End::Finished => b"1",
        End::Failed => b"2",
        // RQ 3.0 writes a stopped job's entry as a failure (type 2, `exc_string` "Job stopped
        // by user, work-horse terminated."): only the hash's status says `stopped`.
        End::Stopped => b"2",
    };
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for (f, v) in captured["fields"].as_object().expect("fields") {
        let value = match f.as_str() {
            "type" => kind.to_vec(),
            "worker_name" => worker.as_bytes().to_vec(),
            "execution_id" => exec.as_bytes().to_vec(),
            "execution_started_at" => started_s.as_bytes().to_vec(),
            "execution_ended_at" => ended_s.as_bytes().to_vec(),
            // RQ's own sentence instead of a traceback (`StopRequested` in `worker_classes.py`).
            "exc_string" if how == End::Stopped => stopped_exc_string(),
            _ => b64(v.as_str().expect("base64 text")),
        };
        fields.push((f.clone(), value));
    }
    let fields: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(f, v)| (f.as_str(), v.as_slice()))
        .collect();
    let (status, registry): (&[u8], &str) = match how {
        End::Finished => (b"finished", "finished"),
        End::Failed => (b"failed", "failed"),
        End::Stopped => (b"stopped", "failed"),
    };
    let at = iso(now);
    end_execution(r, id, worker, exec);
    hset(
        r,
        &job_key(id),
        &[
            ("status", status),
            ("ended_at", at.as_bytes()),
            ("last_heartbeat", at.as_bytes()),
        ],
    );
    r.zadd(
        &format!("rq:{registry}:{QUEUE}"),
        (now.timestamp() + RESULT_TTL_S) as f64,
        id,
    );
    r.xadd_maxlen(&format!("rq:results:{id}"), 10, "*", &fields);
    if how == End::Finished {
        r.expire(&job_key(id), RESULT_TTL_S);
    }
}

/// `Retry(max=n)` after a failed attempt: back to `queued`, `retries_left` now `left`,
/// requeued at the tail; no results entry.
pub fn retry(r: &mut FakeRedis, id: &str, worker: &str, exec: &str, left: u32, now: DateTime<Utc>) {
    end_execution(r, id, worker, exec);
    let at = iso(now);
    let left = left.to_string();
    hset(
        r,
        &job_key(id),
        &[
            ("status", b"queued"),
            ("retries_left", left.as_bytes()),
            ("ended_at", at.as_bytes()),
            ("enqueued_at", at.as_bytes()),
        ],
    );
    r.rpush(&queue_key(), id.as_bytes());
}

/// RQ's cleanup of an abandoned job (`StartedJobRegistry.cleanup` by another worker, its
/// `rq:wip` score long past): out of `wip`, failed with `AbandonedJobError`.
pub fn cleanup_abandoned(r: &mut FakeRedis, id: &str, exec: &str, now: DateTime<Utc>) {
    r.zrem(&format!("rq:wip:{QUEUE}"), &wip_member(id, exec));
    let at = iso(now);
    hset(
        r,
        &job_key(id),
        &[("status", b"failed"), ("ended_at", at.as_bytes())],
    );
    r.zadd(
        &format!("rq:failed:{QUEUE}"),
        (now.timestamp() + 31_536_000) as f64,
        id,
    );
}

/// `queue.enqueue_in(...)`: the job hash with status `scheduled`, its id in
/// `rq:scheduled:<q>` scored by its due time (no queue list yet).
pub fn enqueue_at(r: &mut FakeRedis, id: &str, now: DateTime<Utc>, due: DateTime<Utc>) {
    r.sadd("rq:queues", &queue_key());
    let mut fields = hash_fixture("job_pickle_queued.json");
    for (f, v) in &mut fields {
        match f.as_str() {
            "created_at" => *v = iso(now).into_bytes(),
            "enqueued_at" => *v = Vec::new(),
            "status" => *v = b"scheduled".to_vec(),
            _ => {}
        }
    }
    let fields: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(f, v)| (f.as_str(), v.as_slice()))
        .collect();
    hset(r, &job_key(id), &fields);
    r.zadd(&format!("rq:scheduled:{QUEUE}"), due.timestamp() as f64, id);
}

/// The scheduler moves a due job to its queue: out of `scheduled`, status `queued`, `RPUSH`.
pub fn enqueue_scheduled(r: &mut FakeRedis, id: &str, now: DateTime<Utc>) {
    r.zrem(&format!("rq:scheduled:{QUEUE}"), id);
    let at = iso(now);
    hset(
        r,
        &job_key(id),
        &[("status", b"queued"), ("enqueued_at", at.as_bytes())],
    );
    r.rpush(&queue_key(), id.as_bytes());
}
