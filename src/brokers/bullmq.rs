//! BullMQ in the registry: its `serve` setting (`--bullmq-queues`, TOML `[bullmq]`), how it
//! resolves, its detection rules and its adapter.

use super::{clean_list, BrokerModule, BrokerSpec, Given, ResolveContext};
use crate::config::UsageError;
use broker_adapters::bullmq::detect::BullmqKeys;
use broker_adapters::bullmq::layout::QueueName;
use broker_adapters::bullmq::{BullmqAdapter, BullmqConfig};
use broker_adapters::detect::{KeyRules, Setting};
use broker_adapters::{Adapter, Broker};
use clap::Args;

/// BullMQ's settings, as typed.
#[derive(Debug, Args)]
pub struct BullmqArgs {
    /// BullMQ queues, each as `<prefix>:<queue>` (`bull:emails`; `bull` is BullMQ's default
    /// `prefix`), a comma list. Default: none; every queue whose `<prefix>:<queue>:events`
    /// stream holds BullMQ events is found and followed, under any prefix. Setting it starts
    /// the BullMQ adapter at once.
    #[arg(
        long,
        env = "TASKSCOPE_BULLMQ_QUEUES",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub bullmq_queues: Option<Vec<String>>,
}

/// BullMQ's settings, resolved.
#[derive(Debug, Clone)]
pub struct BullmqSpec {
    queues: Given<Vec<QueueName>>,
}

impl BrokerModule for BullmqArgs {
    const BROKER: Broker = Broker::Bullmq;

    fn describe_setting(setting: &Setting) -> Option<String> {
        match setting {
            Setting::BullmqQueue(q) => Some(format!("bullmq queue {q}")),
            _ => None,
        }
    }

    fn resolve(self, _cx: &ResolveContext) -> Result<Box<dyn BrokerSpec>, UsageError> {
        let given = self.bullmq_queues.map(clean_list);
        let queues = match given {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(UsageError(
                    "--bullmq-queues is empty: give your BullMQ queues as <prefix>:<queue>, \
                     e.g. --bullmq-queues bull:emails, or leave it out to find them all"
                        .to_string(),
                ))
            }
            Some(list) => Some(
                list.iter()
                    .map(|q| {
                        QueueName::parse_qualified(q).ok_or_else(|| {
                            UsageError(format!(
                                "--bullmq-queues: {q:?} is not <prefix>:<queue>; BullMQ's \
                                 default prefix is bull, e.g. bull:{q}"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Box::new(BullmqSpec {
            queues: Given::or_default(queues, Vec::new()),
        }))
    }
}

impl BrokerSpec for BullmqSpec {
    fn broker(&self) -> Broker {
        Broker::Bullmq
    }

    fn given(&self) -> bool {
        self.queues.is_given()
    }

    fn key_rules(&self) -> Box<dyn KeyRules> {
        Box::new(BullmqKeys::new(self.queues.value()))
    }

    fn build_adapter(&self, detected: &[Setting]) -> Box<dyn Adapter> {
        // Queues found add to the given ones: the adapter finds more on its own anyway.
        let mut queues = self.queues.value().clone();
        for setting in detected {
            if let Setting::BullmqQueue(q) = setting {
                if let Some(q) = QueueName::parse_qualified(q) {
                    if !queues.contains(&q) {
                        queues.push(q);
                    }
                }
            }
        }
        Box::new(BullmqAdapter::new(BullmqConfig { queues }))
    }
}
