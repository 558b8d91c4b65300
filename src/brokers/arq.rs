//! arq in the registry: its `serve` setting (`--arq-queues`, TOML `[arq]`), how it resolves,
//! its detection rules and its adapter.

use super::{clean_list, BrokerModule, BrokerSpec, Given, ResolveContext};
use crate::config::UsageError;
use broker_adapters::arq::detect::ArqKeys;
use broker_adapters::arq::layout::DEFAULT_QUEUE;
use broker_adapters::arq::{ArqAdapter, ArqConfig};
use broker_adapters::detect::{KeyRules, Setting};
use broker_adapters::{Adapter, Broker};
use clap::Args;

/// arq's settings, as typed.
#[derive(Debug, Args)]
pub struct ArqArgs {
    /// arq queue names (the `queue_name` of the app's workers, sorted sets in Redis), a comma
    /// list. Default: `arq:queue`, plus the queues `--brokers auto` finds from their
    /// `<queue>:health-check` keys and the queues results name; setting it starts the arq
    /// adapter at once.
    #[arg(
        long,
        env = "TASKSCOPE_ARQ_QUEUES",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub arq_queues: Option<Vec<String>>,
}

/// arq's settings, resolved.
#[derive(Debug, Clone)]
pub struct ArqSpec {
    queues: Given<Vec<String>>,
}

impl BrokerModule for ArqArgs {
    const BROKER: Broker = Broker::Arq;

    fn describe_setting(setting: &Setting) -> Option<String> {
        match setting {
            Setting::ArqQueue(q) => Some(format!("arq queue {q}")),
            _ => None,
        }
    }

    fn resolve(self, _cx: &ResolveContext) -> Result<Box<dyn BrokerSpec>, UsageError> {
        let given = self.arq_queues.map(clean_list);
        if given.as_ref().is_some_and(Vec::is_empty) {
            return Err(UsageError(
                "--arq-queues is empty: give the queue names of your arq workers (queue_name), \
                 e.g. --arq-queues arq:queue,emails, or leave it out for arq:queue"
                    .to_string(),
            ));
        }
        Ok(Box::new(ArqSpec {
            queues: Given::or_default(given, vec![DEFAULT_QUEUE.to_string()]),
        }))
    }
}

impl BrokerSpec for ArqSpec {
    fn broker(&self) -> Broker {
        Broker::Arq
    }

    fn given(&self) -> bool {
        self.queues.is_given()
    }

    fn key_rules(&self) -> Box<dyn KeyRules> {
        Box::new(ArqKeys::new(self.queues.value()))
    }

    fn build_adapter(&self, detected: &[Setting]) -> Box<dyn Adapter> {
        // Queues found add to the given or default ones: any name may be a queue.
        let mut queues = self.queues.value().clone();
        for setting in detected {
            if let Setting::ArqQueue(q) = setting {
                if !queues.contains(q) {
                    queues.push(q.clone());
                }
            }
        }
        Box::new(ArqAdapter::new(ArqConfig { queues }))
    }
}
