//! BullMQ's key names (`QueueKeys` of bullmq 6): every key of a queue is
//! `<prefix>:<queue>:<suffix>` (prefix `bull` unless the app sets `prefix`), a job's hash is
//! `<prefix>:<queue>:<job id>` and its lock `<prefix>:<queue>:<job id>:lock`. BullMQ refuses a
//! `:` in a queue name and in a custom job id, so the segment before a queue key's suffix is
//! the queue; a prefix may hold colons, and so do the ids of a job scheduler's jobs
//! (`repeat:<scheduler id>:<ms>`), so a job key is resolved against the queues followed.

/// BullMQ's default key prefix.
pub const DEFAULT_PREFIX: &str = "bull";
/// The suffix of a queue's events stream.
pub const EVENTS_SUFFIX: &str = ":events";
/// The suffix of a queue's metadata hash (`opts.maxLenEvents`, `version`, `paused`).
pub const META_SUFFIX: &str = ":meta";
/// The suffix of a job's lock.
pub const LOCK_SUFFIX: &str = ":lock";

/// A queue as BullMQ names it: its prefix and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName {
    pub prefix: String,
    pub name: String,
}

impl QueueName {
    pub fn new(prefix: &str, name: &str) -> QueueName {
        QueueName {
            prefix: prefix.to_string(),
            name: name.to_string(),
        }
    }

    /// `<prefix>:<queue>` (`bull:emails`): how taskscope names the queue, unique in a Redis.
    pub fn qualified(&self) -> String {
        format!("{}:{}", self.prefix, self.name)
    }

    /// Parses a qualified name: the queue is the part after the last `:`.
    pub fn parse_qualified(s: &str) -> Option<QueueName> {
        let (prefix, name) = s.trim().rsplit_once(':')?;
        (!prefix.is_empty() && !name.is_empty()).then(|| QueueName::new(prefix, name))
    }

    /// `<prefix>:<queue>:<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{}:{}", self.prefix, self.name, suffix)
    }

    pub fn events(&self) -> String {
        self.key("events")
    }

    /// A job's hash; also the job's task id in taskscope (BullMQ's own `parentKey` form).
    pub fn job(&self, id: &str) -> String {
        self.key(id)
    }

    /// The queue whose events stream `key` is.
    pub fn from_events_key(key: &str) -> Option<QueueName> {
        QueueName::parse_qualified(key.strip_suffix(EVENTS_SUFFIX)?)
    }

    /// The queue whose metadata hash `key` is.
    pub fn from_meta_key(key: &str) -> Option<QueueName> {
        QueueName::parse_qualified(key.strip_suffix(META_SUFFIX)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_queue_and_job() {
        let q = QueueName::from_events_key("bull:emails:events").unwrap();
        assert_eq!(q, QueueName::new("bull", "emails"));
        assert_eq!(q.job("7"), "bull:emails:7");
        let custom = QueueName::from_events_key("app:v2:jobs:events").unwrap();
        assert_eq!(custom.prefix, "app:v2");
        assert_eq!(custom.name, "jobs");
        assert_eq!(QueueName::from_events_key("events"), None);
        assert_eq!(QueueName::from_events_key(":q:events"), None);
    }
}
