//! RQ in the registry: its `serve` setting (`--rq-prefix`, TOML `[rq]`), how it resolves, its
//! detection rules and its adapter.

use super::{BrokerModule, BrokerSpec, Given, ResolveContext};
use crate::config::UsageError;
use broker_adapters::detect::{KeyRules, Setting};
use broker_adapters::rq::detect::{RqKeys, DEFAULT_PREFIX};
use broker_adapters::rq::{RqAdapter, RqConfig};
use broker_adapters::{Adapter, Broker};
use clap::Args;

/// RQ's settings, as typed.
#[derive(Debug, Args)]
pub struct RqArgs {
    /// RQ's key prefix: `rq:`, or what the application's `RQ_KEY_PREFIX` says (a missing `:`
    /// is added). Setting it starts the RQ adapter at once under `--brokers auto`.
    #[arg(long, env = "TASKSCOPE_RQ_PREFIX", value_name = "PREFIX")]
    pub rq_prefix: Option<String>,
}

/// RQ's settings, resolved.
#[derive(Debug, Clone)]
pub struct RqSpec {
    prefix: Given<String>,
}

impl BrokerModule for RqArgs {
    const BROKER: Broker = Broker::Rq;

    fn describe_setting(setting: &Setting) -> Option<String> {
        match setting {
            Setting::RqPrefix(p) => Some(format!("rq prefix {p}")),
            _ => None,
        }
    }

    fn resolve(self, _cx: &ResolveContext) -> Result<Box<dyn BrokerSpec>, UsageError> {
        Ok(Box::new(RqSpec {
            prefix: Given::or_default(self.rq_prefix, DEFAULT_PREFIX.to_string()),
        }))
    }
}

impl BrokerSpec for RqSpec {
    fn broker(&self) -> Broker {
        Broker::Rq
    }

    fn given(&self) -> bool {
        self.prefix.is_given()
    }

    fn key_rules(&self) -> Box<dyn KeyRules> {
        Box::new(RqKeys::new(self.prefix.value()))
    }

    fn build_adapter(&self, detected: &[Setting]) -> Box<dyn Adapter> {
        // RQ_KEY_PREFIX as detection found it, unless the user gave one.
        let detected = detected.iter().find_map(|s| match s {
            Setting::RqPrefix(p) => Some(p.clone()),
            _ => None,
        });
        Box::new(RqAdapter::new(RqConfig {
            prefix: self.prefix.or_detected(detected),
        }))
    }
}
