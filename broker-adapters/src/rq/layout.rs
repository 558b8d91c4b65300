//! RQ's key layout under its prefix (`rq:` unless the application sets `RQ_KEY_PREFIX`).
//!
//! Owns key names in both directions: building the keys taskscope reads, and classifying a key
//! named by a notification or a SCAN. Knows nothing about their content.

/// Which of RQ's keys a name is, with the part that identifies the job, queue or worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RqKey<'k> {
    /// `<p>queues`: the set of queue keys.
    Queues,
    /// `<p>queue:<name>`: the list of waiting job ids.
    Queue(&'k str),
    /// `<p>queue:<name>:intermediate` (RQ >= 1.16): the ids a worker of that one queue popped
    /// (`BLMOVE` from the queue) and has not started yet.
    Intermediate(&'k str),
    /// `<p>job:<id>`: a job hash.
    Job(&'k str),
    /// `<p>results:<id>`: a job's results stream (RQ >= 1.12).
    Results(&'k str),
    /// `<p><registry>:<queue>`: one of the per-queue sorted sets.
    Registry(Registry, &'k str),
    /// `<p>workers`: the set of worker keys.
    Workers,
    /// `<p>worker:<name>`: a worker hash.
    Worker(&'k str),
    /// `<p>execution:<job id>:<execution id>`: one attempt of a job (RQ >= 2.0), created as the
    /// attempt starts, deleted as it ends. Only its name is used: each attempt has its own id.
    Execution(&'k str, &'k str),
    /// `<p>executions:<job id>`: the job's running attempts (RQ >= 2.0): a `zadd` as an attempt
    /// starts, a `zrem` as it ends. Only the notification is used (no read).
    Executions(&'k str),
}

/// RQ's per-queue registries (sorted sets of job ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Registry {
    /// `wip` (StartedJobRegistry): `<job_id>:<execution_id>`, score = heartbeat expiry.
    Started,
    /// `finished`: score = result expiry.
    Finished,
    /// `failed`: score = failure expiry.
    Failed,
    /// `deferred`: waiting for dependencies; score = when deferred.
    Deferred,
    /// `scheduled`: score = when the job is due (Unix seconds).
    Scheduled,
    /// `canceled`.
    Canceled,
}

impl Registry {
    pub const ALL: [Registry; 6] = [
        Registry::Started,
        Registry::Finished,
        Registry::Failed,
        Registry::Deferred,
        Registry::Scheduled,
        Registry::Canceled,
    ];

    /// The key segment RQ uses for the registry.
    pub fn segment(self) -> &'static str {
        match self {
            Registry::Started => "wip",
            Registry::Finished => "finished",
            Registry::Failed => "failed",
            Registry::Deferred => "deferred",
            Registry::Scheduled => "scheduled",
            Registry::Canceled => "canceled",
        }
    }
}

/// Key names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Ends with `:` (`rq:`), as every key starts with it.
    prefix: String,
}

impl Layout {
    /// `prefix` as the user gave it: `rq:`, or `rq` as in RQ's `RQ_KEY_PREFIX` (a `:` is added).
    pub fn new(prefix: &str) -> Layout {
        let prefix = prefix.trim();
        let prefix = if prefix.is_empty() { "rq" } else { prefix };
        let prefix = if prefix.ends_with(':') {
            prefix.to_string()
        } else {
            format!("{prefix}:")
        };
        Layout { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn queues(&self) -> String {
        format!("{}queues", self.prefix)
    }

    pub fn queue(&self, name: &str) -> String {
        format!("{}queue:{name}", self.prefix)
    }

    pub fn intermediate(&self, queue: &str) -> String {
        format!("{}queue:{queue}:intermediate", self.prefix)
    }

    pub fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }

    pub fn results(&self, id: &str) -> String {
        format!("{}results:{id}", self.prefix)
    }

    pub fn registry(&self, registry: Registry, queue: &str) -> String {
        format!("{}{}:{queue}", self.prefix, registry.segment())
    }

    pub fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }

    pub fn worker(&self, name: &str) -> String {
        format!("{}worker:{name}", self.prefix)
    }

    /// What `key` is, or `None` for keys taskscope does not read (locks, execution registries,
    /// dependents sets, keys of other applications).
    pub fn classify<'k>(&self, key: &'k str) -> Option<RqKey<'k>> {
        let rest = key.strip_prefix(&self.prefix)?;
        if rest == "queues" {
            return Some(RqKey::Queues);
        }
        if rest == "workers" {
            return Some(RqKey::Workers);
        }
        let (segment, name) = rest.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        // Job ids never hold a `:` (RQ checks them against `[A-Za-z0-9_-]+`); the keys that
        // extend them do (`job:<id>:dependents`, `job::<id>:dependencies`). Worker names
        // (`--name host:1`) and queue names (`app:high`) may: only `worker:<name>:executions`
        // and `queue:<q>:intermediate` are set apart.
        let plain = !name.contains(':');
        match segment {
            "job" if plain => Some(RqKey::Job(name)),
            "results" if plain => Some(RqKey::Results(name)),
            "executions" if plain => Some(RqKey::Executions(name)),
            "worker" if !name.ends_with(":executions") => Some(RqKey::Worker(name)),
            "queue" => match name.strip_suffix(":intermediate") {
                Some(queue) if !queue.is_empty() => Some(RqKey::Intermediate(queue)),
                Some(_) => None,
                None => Some(RqKey::Queue(name)),
            },
            "execution" => match name.split_once(':') {
                Some((job, execution))
                    if !job.is_empty() && !execution.is_empty() && !execution.contains(':') =>
                {
                    Some(RqKey::Execution(job, execution))
                }
                _ => None,
            },
            _ => Registry::ALL
                .into_iter()
                .find(|r| r.segment() == segment)
                .map(|r| RqKey::Registry(r, name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_under_the_prefix() {
        let l = Layout::new("rq");
        assert_eq!(l.prefix(), "rq:");
        assert_eq!(l.classify("rq:queues"), Some(RqKey::Queues));
        assert_eq!(l.classify("rq:job:abc"), Some(RqKey::Job("abc")));
        assert_eq!(l.classify("rq:job:abc:dependents"), None);
        assert_eq!(l.classify("rq:job::abc:dependencies"), None);
        assert_eq!(
            l.classify("rq:queue:default"),
            Some(RqKey::Queue("default"))
        );
        assert_eq!(
            l.classify("rq:queue:default:intermediate"),
            Some(RqKey::Intermediate("default"))
        );
        assert_eq!(l.classify("rq:queue::intermediate"), None);
        assert_eq!(
            l.classify("rq:wip:default"),
            Some(RqKey::Registry(Registry::Started, "default"))
        );
        assert_eq!(l.classify("rq:worker:w1"), Some(RqKey::Worker("w1")));
        assert_eq!(l.classify("rq:worker:w1:executions"), None);
        assert_eq!(
            l.classify("rq:worker:host:1"),
            Some(RqKey::Worker("host:1"))
        );
        assert_eq!(
            l.classify("rq:execution:a:b"),
            Some(RqKey::Execution("a", "b"))
        );
        assert_eq!(l.classify("rq:execution:a"), None);
        assert_eq!(l.classify("rq:executions:a"), Some(RqKey::Executions("a")));
        assert_eq!(l.classify("rq:executions:a:b"), None);
        assert_eq!(
            l.classify("rq:queue:app:high"),
            Some(RqKey::Queue("app:high"))
        );
        assert_eq!(
            l.classify("rq:scheduled:app:high"),
            Some(RqKey::Registry(Registry::Scheduled, "app:high"))
        );
        assert_eq!(l.classify("other:job:abc"), None);
        assert_eq!(
            Layout::new("myapp:").classify("myapp:results:x"),
            Some(RqKey::Results("x"))
        );
    }
}
