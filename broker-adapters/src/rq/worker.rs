//! RQ worker hashes (`<p>worker:<name>`) and how alive a worker is.
//!
//! RQ's heartbeat cadence (rq 3.0 `worker/base.py`): every heartbeat writes `last_heartbeat` and
//! sets the key's TTL to the time within which the *next* heartbeat must come plus 60 s:
//! - idle, waiting on the queues: a heartbeat before each blocking dequeue of `worker_ttl - 15`
//!   s (405 s by default), TTL `worker_ttl + 60` (480 s);
//! - busy with the default forking `Worker`: the parent heartbeats every
//!   `job_monitoring_interval` (30 s), TTL `min(job timeout left, interval) + 60`;
//! - busy `SimpleWorker`: one heartbeat at the start, TTL `job timeout + 60`.
//!
//! So a heartbeat is due at `expire_at - 60 s`, whatever the worker class or settings: until
//! then the worker is on schedule and counts as heard from *now*; after that its last sign of
//! life is that due time, and `--abandon-after` counts from there. A slow job of a live worker is
//! therefore never abandoned however long the cadence, and a killed worker is noticed one
//! cadence plus `--abandon-after` after its last heartbeat.

use crate::adapter::Reply;
use crate::codec;
use chrono::{DateTime, Duration, Utc};

/// Fields read with every HMGET of a worker hash, in this order.
pub const WORKER_FIELDS: [&str; 6] = [
    "birth",
    "last_heartbeat",
    "death",
    "state",
    "hostname",
    "pid",
];

/// What RQ adds to the heartbeat interval when it sets a worker key's TTL.
pub const TTL_MARGIN: Duration = Duration::seconds(60);

/// When no TTL was read: the busy cadence of RQ's defaults (`job_monitoring_interval`).
const DEFAULT_BUSY_CADENCE: Duration = Duration::seconds(30);
/// When no TTL was read: the idle cadence of RQ's defaults (`worker_ttl - 15`).
const DEFAULT_IDLE_CADENCE: Duration = Duration::seconds(405);

/// One worker hash as read.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    pub birth: Option<DateTime<Utc>>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Set by a worker that stopped cleanly (`register_death`).
    pub death: Option<DateTime<Utc>>,
    /// `started`, `idle`, `busy`, `suspended`...
    pub state: Option<String>,
    pub hostname: Option<String>,
    pub pid: Option<u32>,
}

fn text(reply: Option<&Reply>) -> Option<String> {
    let b = reply?.as_bytes()?;
    let s = String::from_utf8_lossy(b).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Decodes an HMGET of [`WORKER_FIELDS`]; `None` when the hash is gone (expired or deleted).
pub fn decode(values: &[Reply]) -> Option<WorkerRecord> {
    if values.iter().all(|v| matches!(v, Reply::Nil)) {
        return None;
    }
    let time = |i: usize| text(values.get(i)).and_then(|s| codec::parse_time_str(&s));
    Some(WorkerRecord {
        birth: time(0),
        last_heartbeat: time(1),
        death: time(2),
        state: text(values.get(3)),
        hostname: text(values.get(4)),
        pid: text(values.get(5)).and_then(|p| p.parse().ok()),
    })
}

impl WorkerRecord {
    /// The latest moment the worker is known to be alive, read at `now`, given when its key
    /// expires (from `PTTL`, when it has a TTL).
    pub fn alive_at(
        &self,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let last = self.last_heartbeat.or(self.birth)?;
        // Times come from Redis: checked arithmetic, a year-9999 heartbeat must not panic.
        let due = match expires_at {
            Some(expires_at) => expires_at.checked_sub_signed(TTL_MARGIN),
            None if self.state.as_deref() == Some("busy") => {
                last.checked_add_signed(DEFAULT_BUSY_CADENCE)
            }
            None => last.checked_add_signed(DEFAULT_IDLE_CADENCE),
        }
        .unwrap_or(last);
        Some(due.min(now).max(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record(state: &str, hb: DateTime<Utc>) -> WorkerRecord {
        WorkerRecord {
            birth: Some(hb),
            last_heartbeat: Some(hb),
            death: None,
            state: Some(state.into()),
            hostname: None,
            pid: None,
        }
    }

    #[test]
    fn a_worker_on_schedule_is_alive_now_and_a_late_one_at_its_due_time() {
        let hb = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let busy = record("busy", hb);
        // Heartbeat 20 s ago, TTL 70 s left: next one due in 10 s.
        let now = hb + Duration::seconds(20);
        assert_eq!(
            busy.alive_at(now, Some(now + Duration::seconds(70))),
            Some(now)
        );
        // 85 s after: due 30 s after the heartbeat, the key is still there for 5 s.
        let late = hb + Duration::seconds(85);
        assert_eq!(
            busy.alive_at(late, Some(late + Duration::seconds(5))),
            Some(hb + Duration::seconds(30))
        );
        // Without a TTL, RQ's default cadences.
        assert_eq!(
            record("idle", hb).alive_at(hb + Duration::seconds(500), None),
            Some(hb + Duration::seconds(405))
        );
    }
}
