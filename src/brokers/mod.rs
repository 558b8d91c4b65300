//! The broker registry: every broker taskscope watches, each in a module of its own here that
//! owns everything the binary knows about it.
//!
//! A broker module (`celery.rs`, `dramatiq.rs`, `rq.rs`, `taskiq.rs`, `arq.rs`, `bullmq.rs`,
//! `sidekiq.rs`) holds:
//! - its settings: a clap [`Args`] struct flattened into `taskscope serve` (flags, their
//!   `TASKSCOPE_*` variables and TOML keys all come from it), implementing [`BrokerModule`];
//! - how they resolve ([`BrokerModule::resolve`]): defaults, validation, and whether the user
//!   gave any of them ([`BrokerSpec::given`]: `--brokers auto` then starts the adapter at once);
//!   each value that detection may also learn is a [`Given`];
//! - its detection rules ([`BrokerSpec::key_rules`], from its adapter crate's `detect` module);
//! - how its adapter is built from its settings and what detection learned
//!   ([`BrokerSpec::build_adapter`]);
//! - how a detected setting of it reads in `/healthz` ([`BrokerModule::describe_setting`]).
//!
//! The rest of the binary iterates the registry (the `registry!` call below) and names no broker,
//! log lines aside. Adding one: `docs/adding-a-broker.md`.

pub mod arq;
pub mod bullmq;
pub mod celery;
pub mod dramatiq;
mod given;
pub mod rq;
pub mod sidekiq;
pub mod taskiq;

use crate::config::UsageError;
use broker_adapters::detect::{KeyRuleSet, KeyRules, Setting};
use broker_adapters::{Adapter, Broker};
use clap::Args;
use std::sync::Arc;

pub use given::Given;

/// The static half of a broker module, implemented by its settings struct.
pub trait BrokerModule: Args {
    /// The broker this module is about.
    const BROKER: Broker;

    /// A setting detection learned about this broker, in the words of the flag that would set
    /// it (`/healthz` `detection.found[].setting`); `None` for another broker's setting.
    fn describe_setting(setting: &Setting) -> Option<String>;

    /// Validates and resolves what the user typed.
    fn resolve(self, cx: &ResolveContext) -> Result<Box<dyn BrokerSpec>, UsageError>;
}

/// What resolving a broker's settings may need from the rest of the configuration.
#[derive(Debug, Clone)]
pub struct ResolveContext {
    /// `--redis`.
    pub redis_url: String,
    /// The database number in it.
    pub redis_db: u32,
}

/// One broker's resolved settings, and what is built from them.
pub trait BrokerSpec: std::fmt::Debug + Send + Sync {
    fn broker(&self) -> Broker;

    /// Whether the user gave any of this broker's settings: `--brokers auto` starts its adapter
    /// at once instead of waiting for detection.
    fn given(&self) -> bool;

    /// Its detection rules for key names, configured by its settings.
    fn key_rules(&self) -> Box<dyn KeyRules>;

    /// Its adapter, configured by the settings and, where the user left a setting out, by what
    /// auto-detection learned (`detected`: settings of every broker, in the order found).
    fn build_adapter(&self, detected: &[Setting]) -> Box<dyn Adapter>;

    /// The key namespace the user gave for this broker (Sidekiq's `--sidekiq-namespace`), under
    /// which write actions put its keys; `None`: none given.
    fn namespace(&self) -> Option<String> {
        None
    }
}

/// Declares the registry: one line per broker, `field: module::Args`, in the order brokers
/// are started, probed and listed.
macro_rules! registry {
    ($($field:ident: $args:ty),+ $(,)?) => {
        /// Every broker's settings, flattened into `taskscope serve`.
        #[derive(Debug, Args)]
        pub struct BrokerArgs {
            $(
                #[command(flatten)]
                pub $field: $args,
            )+
        }

        impl BrokerArgs {
            /// Resolves every broker's settings, in the registry's order.
            pub fn resolve(self, cx: &ResolveContext) -> Result<Registry, UsageError> {
                let specs: Vec<Box<dyn BrokerSpec>> = vec![$(self.$field.resolve(cx)?),+];
                Ok(Registry(specs.into()))
            }
        }

        /// Every broker with an adapter in this build, in the registry's order.
        pub const ALL: &[Broker] = &[$(<$args as BrokerModule>::BROKER),+];

        /// Each broker's [`BrokerModule::describe_setting`].
        const DESCRIBERS: &[fn(&Setting) -> Option<String>] =
            &[$(<$args as BrokerModule>::describe_setting),+];
    };
}

registry! {
    celery: celery::CeleryArgs,
    dramatiq: dramatiq::DramatiqArgs,
    rq: rq::RqArgs,
    taskiq: taskiq::TaskiqArgs,
    arq: arq::ArqArgs,
    bullmq: bullmq::BullmqArgs,
    sidekiq: sidekiq::SidekiqArgs,
}

/// Every broker's resolved settings, in the registry's order.
#[derive(Debug, Clone)]
pub struct Registry(Arc<[Box<dyn BrokerSpec>]>);

impl Registry {
    fn spec(&self, broker: Broker) -> Option<&dyn BrokerSpec> {
        self.0
            .iter()
            .find(|s| s.broker() == broker)
            .map(|s| s.as_ref())
    }

    /// The brokers whose settings the user gave ([`BrokerSpec::given`]).
    pub fn given(&self) -> Vec<Broker> {
        self.0
            .iter()
            .filter(|s| s.given())
            .map(|s| s.broker())
            .collect()
    }

    /// The adapter of `broker` (see [`BrokerSpec::build_adapter`]); `None` when this build has
    /// no adapter for it.
    pub fn build_adapter(&self, broker: Broker, detected: &[Setting]) -> Option<Box<dyn Adapter>> {
        self.spec(broker).map(|s| s.build_adapter(detected))
    }

    /// The namespace given for `broker` ([`BrokerSpec::namespace`]).
    pub fn namespace(&self, broker: Broker) -> Option<String> {
        self.spec(broker).and_then(|s| s.namespace())
    }

    /// Every broker's key rules, for detection.
    pub fn key_rules(&self) -> KeyRuleSet {
        KeyRuleSet::new(self.0.iter().map(|s| s.key_rules()).collect())
    }
}

/// A detected setting in the words of the flag that would set it (its broker's
/// [`BrokerModule::describe_setting`]).
pub fn describe_setting(setting: &Setting) -> String {
    DESCRIBERS
        .iter()
        .find_map(|describe| describe(setting))
        .unwrap_or_else(|| format!("{setting:?}"))
}

/// The registered brokers' names for a message: `celery, dramatiq, rq or taskiq`.
pub fn names_for_humans() -> String {
    let names: Vec<&str> = ALL.iter().map(|b| b.as_str()).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Trims each item of a comma list and drops the empty ones.
fn clean_list(items: Vec<String>) -> Vec<String> {
    items
        .into_iter()
        .map(|item| item.trim().to_string())
        .filter(|item| !item.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_broker_is_a_known_broker_once() {
        let mut seen = ALL.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), ALL.len());
        assert_eq!(
            names_for_humans(),
            "celery, dramatiq, rq, taskiq, arq, bullmq or sidekiq"
        );
    }

    #[test]
    fn every_detected_setting_is_described_by_its_broker() {
        let cases = [
            (
                Setting::DramatiqNamespace("ns".into()),
                "dramatiq namespace ns",
            ),
            (Setting::RqPrefix("shop:".into()), "rq prefix shop:"),
            (Setting::CeleryQueue("emails".into()), "celery queue emails"),
            (
                Setting::CeleryResultDb {
                    db: 1,
                    url: "redis://h/1".into(),
                },
                "celery results in database 1",
            ),
            (
                Setting::TaskiqChannel("c".into()),
                "taskiq pub/sub channel c",
            ),
            (Setting::TaskiqStream("s".into()), "taskiq stream s"),
            (Setting::TaskiqList("l".into()), "taskiq list l"),
            (
                Setting::TaskiqResultPrefix(String::new()),
                "taskiq results (bare task ids)",
            ),
            (
                Setting::TaskiqResultPrefix("res".into()),
                "taskiq result prefix res",
            ),
            (Setting::ArqQueue("emails".into()), "arq queue emails"),
            (
                Setting::BullmqQueue("bull:emails".into()),
                "bullmq queue bull:emails",
            ),
            (
                Setting::SidekiqNamespace("app".into()),
                "sidekiq namespace app",
            ),
        ];
        for (setting, text) in cases {
            // Exhaustive on purpose: a new `Setting` gets a case above (and a describer).
            match &setting {
                Setting::DramatiqNamespace(_)
                | Setting::RqPrefix(_)
                | Setting::CeleryQueue(_)
                | Setting::CeleryResultDb { .. }
                | Setting::TaskiqChannel(_)
                | Setting::TaskiqStream(_)
                | Setting::TaskiqList(_)
                | Setting::TaskiqResultPrefix(_)
                | Setting::ArqQueue(_)
                | Setting::BullmqQueue(_)
                | Setting::SidekiqNamespace(_) => {}
            }
            assert_eq!(describe_setting(&setting), text);
            let owners = DESCRIBERS.iter().filter(|d| d(&setting).is_some()).count();
            assert_eq!(owners, 1, "{setting:?} has one owner");
        }
    }
}
