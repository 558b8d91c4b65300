//! Sidekiq 6.4 (queue `default`, one process `taskscope-load:1:<run>`), as captured in
//! `broker-adapters/tests/fixtures/sidekiq/` and watched with `redis-cli monitor`: a push is
//! `SADD queues default` + `LPUSH queue:default <job JSON>`; a fetcher's `BRPOP` (here `RPOP`)
//! takes it; a success writes nothing; a failure with retries left is `ZADD retry <due>
//! <job JSON with error_class, error_message, failed_at, retry_count>`, which the poller later
//! `ZREM`s and `LPUSH`es back; a failure without is `ZADD dead <now> <job JSON>`. Every
//! heartbeat (here every tick second) rewrites the process's work hash (`UNLINK` + `HSET` of
//! the running jobs) and hash (`SADD processes`, `HSET info busy beat quiet`).

use super::{cmd, Cmd, Outcome, Task};
use chrono::{DateTime, Utc};
use serde_json::json;

pub const QUEUE: &str = "default";
const HOSTNAME: &str = "taskscope-load";

fn class(t: &Task) -> &'static str {
    match t.seq % 3 {
        0 => "AddJob",
        1 => "SendEmailJob",
        _ => "ChargeJob",
    }
}

fn seconds(wall: DateTime<Utc>) -> f64 {
    wall.timestamp_micros() as f64 / 1e6
}

/// The job's JSON as a client pushes it (`t.attempt` > 0: as the retry poller pushes it back,
/// with the first failure's fields).
fn job(t: &Task, wall: DateTime<Utc>) -> serde_json::Value {
    let mut j = json!({"retry": true, "queue": QUEUE, "args": [t.seq % 1000, 1],
        "class": class(t), "jid": t.id, "created_at": seconds(wall), "enqueued_at": seconds(wall)});
    if t.attempt > 0 {
        j["error_message"] = json!(format!("card declined {}", t.seq % 1000));
        j["error_class"] = json!("ArgumentError");
        j["failed_at"] = json!(seconds(wall));
        j["retry_count"] = json!(t.attempt - 1);
    }
    j
}

/// The process identity of a load run.
pub fn identity(run: u64) -> String {
    format!("{HOSTNAME}:1:{run:012x}")
}

pub fn enqueue(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    vec![
        cmd("SADD", ["queues", QUEUE]),
        cmd(
            "LPUSH",
            [format!("queue:{QUEUE}"), job(t, wall).to_string()],
        ),
    ]
}

/// A fetcher takes the oldest job.
pub fn deliver(_t: &Task) -> Vec<Cmd> {
    vec![cmd("RPOP", [format!("queue:{QUEUE}")])]
}

/// A try ends: nothing for a success, `dead` for a failure.
pub fn finish(t: &Task, wall: DateTime<Utc>) -> Vec<Cmd> {
    if t.outcome != Outcome::Failure {
        return Vec::new();
    }
    let mut j = job(t, wall);
    j["retry"] = json!(0);
    j["error_message"] = json!(format!("card declined {}", t.seq % 1000));
    j["error_class"] = json!("ArgumentError");
    j["failed_at"] = json!(seconds(wall));
    j["retry_count"] = json!(0);
    vec![cmd(
        "ZADD",
        ["dead".to_string(), seconds(wall).to_string(), j.to_string()],
    )]
}

/// The `retry` member of a failed first try (`t.attempt` already 1).
pub fn retry_member(t: &Task, wall: DateTime<Utc>) -> String {
    job(t, wall).to_string()
}

/// The first try failed with retries left: `member` ([`retry_member`]) into `retry`, due in a
/// second.
pub fn retry(member: &str, wall: DateTime<Utc>) -> Vec<Cmd> {
    vec![cmd(
        "ZADD",
        [
            "retry".to_string(),
            (seconds(wall) + 1.0).to_string(),
            member.to_string(),
        ],
    )]
}

/// The retry poller: out of `retry`, back into the queue. `member` is what [`retry`] added.
pub fn requeue_from_retry(t: &Task, wall: DateTime<Utc>, member: &str) -> Vec<Cmd> {
    vec![
        cmd("ZREM", ["retry", member]),
        cmd(
            "LPUSH",
            [format!("queue:{QUEUE}"), job(t, wall).to_string()],
        ),
    ]
}

/// The process's heartbeat with `running` in its work hash.
pub fn heartbeat(run: u64, running: &[&Task], wall: DateTime<Utc>) -> Vec<Cmd> {
    let id = identity(run);
    let workers = format!("{id}:workers");
    let mut out = vec![cmd("UNLINK", [workers.clone()])];
    for (n, t) in running.iter().enumerate() {
        let entry = json!({"queue": QUEUE, "payload": job(t, wall).to_string(),
            "run_at": wall.timestamp()});
        out.push(cmd(
            "HSET",
            [workers.clone(), format!("t{n}"), entry.to_string()],
        ));
    }
    out.push(cmd("EXPIRE", [workers, "60".to_string()]));
    let info = json!({"hostname": HOSTNAME, "started_at": seconds(wall), "pid": 1,
        "tag": "", "concurrency": 25, "queues": [QUEUE], "labels": [], "identity": id});
    out.push(cmd("SADD", ["processes".to_string(), id.clone()]));
    out.push(cmd(
        "HSET",
        [
            id.clone(),
            "info".into(),
            info.to_string(),
            "busy".into(),
            running.len().to_string(),
            "beat".into(),
            seconds(wall).to_string(),
            "quiet".into(),
            "false".into(),
        ],
    ));
    out.push(cmd("EXPIRE", [id, "60".to_string()]));
    out
}
