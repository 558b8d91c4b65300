//! Dramatiq in the registry: its `serve` setting (`--dramatiq-namespace`, TOML `[dramatiq]`),
//! how it resolves, its detection rules and its adapter.

use super::{BrokerModule, BrokerSpec, Given, ResolveContext};
use crate::config::UsageError;
use broker_adapters::detect::{KeyRules, Setting};
use broker_adapters::dramatiq::detect::DramatiqKeys;
use broker_adapters::dramatiq::{DramatiqAdapter, DramatiqConfig};
use broker_adapters::{Adapter, Broker};
use clap::Args;

/// Dramatiq's settings, as typed.
#[derive(Debug, Args)]
pub struct DramatiqArgs {
    /// Dramatiq's Redis namespace (`RedisBroker(namespace=...)`). Default: the one
    /// `--brokers auto` finds, else `dramatiq`; setting it starts the Dramatiq adapter at once.
    #[arg(long, env = "TASKSCOPE_DRAMATIQ_NAMESPACE", value_name = "NS")]
    pub dramatiq_namespace: Option<String>,
}

/// Dramatiq's settings, resolved.
#[derive(Debug, Clone)]
pub struct DramatiqSpec {
    namespace: Given<String>,
}

impl BrokerModule for DramatiqArgs {
    const BROKER: Broker = Broker::Dramatiq;

    fn describe_setting(setting: &Setting) -> Option<String> {
        match setting {
            Setting::DramatiqNamespace(ns) => Some(format!("dramatiq namespace {ns}")),
            _ => None,
        }
    }

    fn resolve(self, _cx: &ResolveContext) -> Result<Box<dyn BrokerSpec>, UsageError> {
        if self
            .dramatiq_namespace
            .as_deref()
            .is_some_and(|ns| ns.trim().is_empty())
        {
            return Err(UsageError("--dramatiq-namespace must not be empty".into()));
        }
        Ok(Box::new(DramatiqSpec {
            namespace: Given::or_default(self.dramatiq_namespace, "dramatiq".to_string()),
        }))
    }
}

impl BrokerSpec for DramatiqSpec {
    fn broker(&self) -> Broker {
        Broker::Dramatiq
    }

    fn given(&self) -> bool {
        self.namespace.is_given()
    }

    fn key_rules(&self) -> Box<dyn KeyRules> {
        Box::new(DramatiqKeys {
            namespace: self.namespace.value().clone(),
        })
    }

    fn build_adapter(&self, detected: &[Setting]) -> Box<dyn Adapter> {
        let detected = detected.iter().find_map(|s| match s {
            Setting::DramatiqNamespace(ns) => Some(ns.clone()),
            _ => None,
        });
        Box::new(DramatiqAdapter::new(DramatiqConfig {
            namespace: self.namespace.or_detected(detected),
        }))
    }
}
