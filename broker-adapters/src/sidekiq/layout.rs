//! Sidekiq's key names (`lib/sidekiq/{client,fetch,launcher,api}.rb`), both ways: building the
//! keys taskscope reads, and classifying a key named by a notification. Knows nothing about
//! their content.
//!
//! Every key may carry a namespace (`redis-namespace`, `namespace: "app"` in Sidekiq 6's Redis
//! options): `app:queues`, `app:queue:default`... A process hash is named by the process's
//! identity (`<hostname>:<pid>:<12 hex>`), its running jobs by `<identity>:workers` in Sidekiq
//! 6 and `<identity>:work` in Sidekiq 7 and 8.

/// The set of queue names (`SADD` at every push).
pub const QUEUES: &str = "queues";
/// A queue's list is `queue:<name>` (`LPUSH` by clients, `BRPOP` by fetchers).
pub const QUEUE_PREFIX: &str = "queue:";
/// Jobs waiting for their time (`perform_in`), score = when (float seconds).
pub const SCHEDULE: &str = "schedule";
/// Failed jobs waiting for their next try, score = when (float seconds).
pub const RETRY: &str = "retry";
/// Jobs out of retries (or `retry: 0`), score = when they died.
pub const DEAD: &str = "dead";
/// The set of live process identities (`SADD` at every heartbeat, `SREM` on a clean stop).
pub const PROCESSES: &str = "processes";
/// Sidekiq 6's running-jobs hash suffix, on a process identity.
pub const WORKERS_SUFFIX: &str = ":workers";
/// Sidekiq 7 and 8's.
pub const WORK_SUFFIX: &str = ":work";

/// Which of Sidekiq's keys a name is, without the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidekiqKey<'k> {
    Queues,
    /// `queue:<name>`: the queue's name.
    Queue(&'k str),
    Schedule,
    Retry,
    Dead,
    Processes,
    /// `<identity>:workers` or `<identity>:work`: the identity.
    Work(&'k str),
}

/// Key names under one namespace (empty for none).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// `""` or `"<namespace>:"`.
    prefix: String,
}

impl Layout {
    /// The layout of `namespace` (`None` or empty: no namespace).
    pub fn new(namespace: Option<&str>) -> Layout {
        let prefix = match namespace.map(str::trim) {
            Some(ns) if !ns.is_empty() => format!("{}:", ns.trim_end_matches(':')),
            _ => String::new(),
        };
        Layout { prefix }
    }

    /// `""` or `"<namespace>:"`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A key of Sidekiq's under the namespace.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn queue(&self, queue: &str) -> String {
        format!("{}{QUEUE_PREFIX}{queue}", self.prefix)
    }

    /// A process's hash (`info`, `busy`, `beat`, `quiet`...).
    pub fn process(&self, identity: &str) -> String {
        self.key(identity)
    }

    /// A process's running jobs, as Sidekiq 6 names them.
    pub fn workers(&self, identity: &str) -> String {
        format!("{}{identity}{WORKERS_SUFFIX}", self.prefix)
    }

    /// The same, as Sidekiq 7 and 8 name them.
    pub fn work(&self, identity: &str) -> String {
        format!("{}{identity}{WORK_SUFFIX}", self.prefix)
    }

    /// Classifies `key`; `None` for keys outside the namespace or not Sidekiq's.
    pub fn classify<'k>(&self, key: &'k str) -> Option<SidekiqKey<'k>> {
        let name = key.strip_prefix(self.prefix.as_str())?;
        match name {
            QUEUES => return Some(SidekiqKey::Queues),
            SCHEDULE => return Some(SidekiqKey::Schedule),
            RETRY => return Some(SidekiqKey::Retry),
            DEAD => return Some(SidekiqKey::Dead),
            PROCESSES => return Some(SidekiqKey::Processes),
            _ => {}
        }
        if let Some(q) = name.strip_prefix(QUEUE_PREFIX).filter(|q| !q.is_empty()) {
            return Some(SidekiqKey::Queue(q));
        }
        name.strip_suffix(WORKERS_SUFFIX)
            .or_else(|| name.strip_suffix(WORK_SUFFIX))
            .filter(|id| !id.is_empty())
            .map(SidekiqKey::Work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_classify_back_to_what_built_them() {
        for ns in [None, Some("app")] {
            let l = Layout::new(ns);
            assert_eq!(l.classify(&l.key(QUEUES)), Some(SidekiqKey::Queues));
            assert_eq!(
                l.classify(&l.queue("critical")),
                Some(SidekiqKey::Queue("critical"))
            );
            assert_eq!(l.classify(&l.key(RETRY)), Some(SidekiqKey::Retry));
            assert_eq!(l.classify(&l.key(DEAD)), Some(SidekiqKey::Dead));
            assert_eq!(l.classify(&l.key(SCHEDULE)), Some(SidekiqKey::Schedule));
            assert_eq!(l.classify(&l.key(PROCESSES)), Some(SidekiqKey::Processes));
            assert_eq!(
                l.classify(&l.workers("vm:9067:21509dab12f0")),
                Some(SidekiqKey::Work("vm:9067:21509dab12f0"))
            );
            assert_eq!(
                l.classify(&l.work("vm:9067:21509dab12f0")),
                Some(SidekiqKey::Work("vm:9067:21509dab12f0"))
            );
            assert_eq!(l.classify(&l.key("queue:")), None);
        }
        assert_eq!(Layout::new(Some("app")).classify("queues"), None);
        assert_eq!(Layout::new(Some("app:")).queue("q"), "app:queue:q");
    }
}
