//! BullMQ's workers, from `CLIENT LIST`: a `Worker` names its Redis connections
//! `<prefix>:<base64 of the queue name>:w:<worker name>` (`clientName`, bullmq 6; what
//! `Queue.getWorkers()` reads). Workers write no key of their own, so this is the only place
//! they show while idle. An unnamed worker (no `name` option) and `QueueEvents` connections
//! (`...:qe`) are not listed.

use super::layout::QueueName;
use base64::Engine as _;

/// A worker connection of a followed queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerClient {
    pub queue: QueueName,
    /// The `Worker`'s `name` option (also its jobs' `pb`).
    pub name: String,
    /// The client's address (`ip:port`).
    pub addr: Option<String>,
}

impl WorkerClient {
    /// How taskscope names the worker: `<prefix>:<queue>:<name>` (a name is only unique per
    /// queue); also each of its tasks' `worker`.
    pub fn id(&self) -> String {
        worker_id(&self.queue, &self.name)
    }
}

/// The worker id of `name` on `queue`.
pub fn worker_id(queue: &QueueName, name: &str) -> String {
    format!("{}:{name}", queue.qualified())
}

/// The client name prefix of a queue's named workers.
fn worker_name_prefix(queue: &QueueName) -> String {
    format!(
        "{}:{}:w:",
        queue.prefix,
        // Node's `Buffer.toString('base64')`: the standard alphabet, padded.
        base64::engine::general_purpose::STANDARD.encode(queue.name.as_bytes())
    )
}

/// The worker connections of `queues` in a `CLIENT LIST` reply (one client per line,
/// `key=value` fields separated by spaces).
pub fn parse<'q>(text: &str, queues: impl IntoIterator<Item = &'q QueueName>) -> Vec<WorkerClient> {
    let prefixes: Vec<(String, &QueueName)> = queues
        .into_iter()
        .map(|q| (worker_name_prefix(q), q))
        .collect();
    let mut out = Vec::new();
    for line in text.lines() {
        let field = |key: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .filter(|v| !v.is_empty())
        };
        let Some(name) = field("name") else {
            continue;
        };
        for (prefix, queue) in &prefixes {
            if let Some(worker) = name.strip_prefix(prefix.as_str()).filter(|w| !w.is_empty()) {
                out.push(WorkerClient {
                    queue: (*queue).clone(),
                    name: worker.to_string(),
                    addr: field("addr").map(str::to_string),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_worker_connections_of_followed_queues_are_workers() {
        // As observed with bullmq 6.7.6 (`WORKER_NAME=w1 node worker.js ... q1`).
        let text = "id=7 addr=127.0.0.1:40100 laddr=127.0.0.1:6379 fd=9 name=bull:cTE=:w:w1 db=0 cmd=bzpopmin\n\
                    id=8 addr=127.0.0.1:40102 fd=10 name=bull:cTE= db=0 cmd=evalsha\n\
                    id=9 addr=127.0.0.1:40104 fd=11 name= db=0 cmd=client|list\n\
                    id=10 addr=127.0.0.1:40106 fd=12 name=bull:b3RoZXI=:w:w2 db=0\n";
        let q1 = QueueName::new("bull", "q1");
        let found = parse(text, [&q1]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].id(), "bull:q1:w1");
        assert_eq!(found[0].addr.as_deref(), Some("127.0.0.1:40100"));
    }
}
