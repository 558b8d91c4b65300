//! Sidekiq in the registry: its `serve` setting (`--sidekiq-namespace`, TOML `[sidekiq]`), how
//! it resolves, its detection rules and its adapter.

use super::{BrokerModule, BrokerSpec, Given, ResolveContext};
use crate::config::UsageError;
use broker_adapters::detect::{KeyRules, Setting};
use broker_adapters::sidekiq::detect::SidekiqKeys;
use broker_adapters::sidekiq::{SidekiqAdapter, SidekiqConfig};
use broker_adapters::{Adapter, Broker};
use clap::Args;

/// Sidekiq's settings, as typed.
#[derive(Debug, Args)]
pub struct SidekiqArgs {
    /// The `redis-namespace` namespace of a Sidekiq application (`namespace: "app"` in its
    /// Redis options: keys `app:queues`, `app:queue:default`...). Default: none, or the one
    /// `--brokers auto` finds from `<namespace>:processes`; setting it starts the Sidekiq
    /// adapter at once.
    #[arg(long, env = "TASKSCOPE_SIDEKIQ_NAMESPACE", value_name = "NS")]
    pub sidekiq_namespace: Option<String>,
}

/// Sidekiq's settings, resolved.
#[derive(Debug, Clone)]
pub struct SidekiqSpec {
    /// Empty: no namespace.
    namespace: Given<String>,
}

impl BrokerModule for SidekiqArgs {
    const BROKER: Broker = Broker::Sidekiq;

    fn describe_setting(setting: &Setting) -> Option<String> {
        match setting {
            Setting::SidekiqNamespace(ns) => Some(format!("sidekiq namespace {ns}")),
            _ => None,
        }
    }

    fn resolve(self, _cx: &ResolveContext) -> Result<Box<dyn BrokerSpec>, UsageError> {
        let given = self
            .sidekiq_namespace
            .map(|ns| ns.trim().trim_end_matches(':').to_string());
        if given.as_deref() == Some("") {
            return Err(UsageError(
                "--sidekiq-namespace is empty: give the namespace of your Sidekiq application \
                 (its redis-namespace, e.g. --sidekiq-namespace app), or leave it out for none"
                    .to_string(),
            ));
        }
        Ok(Box::new(SidekiqSpec {
            namespace: Given::or_default(given, String::new()),
        }))
    }
}

impl BrokerSpec for SidekiqSpec {
    fn broker(&self) -> Broker {
        Broker::Sidekiq
    }

    fn given(&self) -> bool {
        self.namespace.is_given()
    }

    fn key_rules(&self) -> Box<dyn KeyRules> {
        let ns = self.namespace.value();
        Box::new(SidekiqKeys::new((!ns.is_empty()).then_some(ns.as_str())))
    }

    fn namespace(&self) -> Option<String> {
        let ns = self.namespace.value();
        (self.namespace.is_given() && !ns.is_empty()).then(|| ns.clone())
    }

    fn build_adapter(&self, detected: &[Setting]) -> Box<dyn Adapter> {
        let found = detected.iter().find_map(|s| match s {
            Setting::SidekiqNamespace(ns) => Some(ns.clone()),
            _ => None,
        });
        let ns = self.namespace.or_detected(found);
        Box::new(SidekiqAdapter::new(SidekiqConfig {
            namespace: (!ns.is_empty()).then_some(ns),
        }))
    }
}
