//! taskiq in the registry: its `serve` settings (`--taskiq-*`, TOML `[taskiq]`), how they
//! resolve, its detection rules and its adapter.

use super::{clean_list, BrokerModule, BrokerSpec, Given, ResolveContext};
use crate::config::UsageError;
use broker_adapters::detect::{KeyRules, Setting};
use broker_adapters::taskiq::detect::TaskiqKeys;
use broker_adapters::taskiq::{TaskiqAdapter, TaskiqConfig};
use broker_adapters::{Adapter, Broker};
use clap::Args;

/// taskiq's settings, as typed.
#[derive(Debug, Args)]
pub struct TaskiqArgs {
    /// taskiq queue names (the broker's `queue_name`): streams (`RedisStreamBroker`), lists
    /// (`ListQueueBroker`) or pub/sub channels (`PubSubBroker`); which one is found in Redis.
    /// Default: `taskiq`, plus the streams and lists `--brokers auto` finds holding taskiq
    /// messages; setting it (or `--taskiq-result-prefix`) starts the taskiq adapter at once.
    #[arg(
        long,
        env = "TASKSCOPE_TASKIQ_QUEUES",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub taskiq_queues: Option<Vec<String>>,

    /// The `prefix_str`s of taskiq's `RedisAsyncResultBackend`s (result keys
    /// `<prefix>:<task_id>`), a comma list: one per result backend of the app. Bare task ids
    /// are always read too. Unset: the prefixes `--brokers auto` finds; set, only these.
    #[arg(
        long,
        alias = "taskiq-result-prefixes",
        env = "TASKSCOPE_TASKIQ_RESULT_PREFIX",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub taskiq_result_prefix: Option<Vec<String>>,
}

/// taskiq's settings, resolved.
#[derive(Debug, Clone)]
pub struct TaskiqSpec {
    given: bool,
    redis_db: u32,
    /// Watched from the start; queues detection finds are added.
    queues: Vec<String>,
    /// Given when the list holds a prefix; empty: the ones detection finds.
    result_prefixes: Given<Vec<String>>,
}

impl BrokerModule for TaskiqArgs {
    const BROKER: Broker = Broker::Taskiq;

    fn describe_setting(setting: &Setting) -> Option<String> {
        match setting {
            Setting::TaskiqChannel(c) => Some(format!("taskiq pub/sub channel {c}")),
            Setting::TaskiqStream(s) => Some(format!("taskiq stream {s}")),
            Setting::TaskiqList(l) => Some(format!("taskiq list {l}")),
            Setting::TaskiqResultPrefix(p) if p.is_empty() => {
                Some("taskiq results (bare task ids)".to_string())
            }
            Setting::TaskiqResultPrefix(p) => Some(format!("taskiq result prefix {p}")),
            _ => None,
        }
    }

    fn resolve(self, cx: &ResolveContext) -> Result<Box<dyn BrokerSpec>, UsageError> {
        let given = self.taskiq_queues.is_some() || self.taskiq_result_prefix.is_some();
        let prefixes = clean_list(self.taskiq_result_prefix.unwrap_or_default());
        let prefixes_given = !prefixes.is_empty();
        Ok(Box::new(TaskiqSpec {
            given,
            redis_db: cx.redis_db,
            queues: clean_list(
                self.taskiq_queues
                    .unwrap_or_else(|| vec!["taskiq".to_string()]),
            ),
            result_prefixes: Given::new(prefixes, prefixes_given),
        }))
    }
}

impl BrokerSpec for TaskiqSpec {
    fn broker(&self) -> Broker {
        Broker::Taskiq
    }

    fn given(&self) -> bool {
        self.given
    }

    fn key_rules(&self) -> Box<dyn KeyRules> {
        Box::new(TaskiqKeys)
    }

    fn build_adapter(&self, detected: &[Setting]) -> Box<dyn Adapter> {
        let mut queues = self.queues.clone();
        for setting in detected {
            if let Setting::TaskiqStream(q) | Setting::TaskiqList(q) | Setting::TaskiqChannel(q) =
                setting
            {
                if !queues.contains(q) {
                    queues.push(q.clone());
                }
            }
        }
        // Prefixes detection found so far (more are handed over at runtime through
        // `on_detected`); bare ids are always read.
        let detected_prefixes = detected
            .iter()
            .filter_map(|s| match s {
                Setting::TaskiqResultPrefix(p) if !p.is_empty() => Some(p.clone()),
                _ => None,
            })
            .collect();
        Box::new(TaskiqAdapter::new(TaskiqConfig {
            queues,
            result_prefixes: self.result_prefixes.or_detected(Some(detected_prefixes)),
            db: self.redis_db,
        }))
    }
}
