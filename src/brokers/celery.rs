//! Celery in the registry: its `serve` settings (`--celery-*`, TOML `[celery]`), how they
//! resolve, its detection rules and its adapter.

use super::{clean_list, BrokerModule, BrokerSpec, Given, ResolveContext};
use crate::config::{redis_db_of, UsageError};
use broker_adapters::celery::detect::CeleryKeys;
use broker_adapters::celery::{CeleryAdapter, CeleryConfig};
use broker_adapters::detect::{KeyRules, Setting};
use broker_adapters::{Adapter, Broker};
use clap::Args;

/// Celery's settings, as typed.
#[derive(Debug, Args)]
pub struct CeleryArgs {
    /// Broadcast Celery's `enable_events` control command periodically (as Flower does), so
    /// task events flow without restarting workers with `-E`.
    #[arg(long, env = "TASKSCOPE_CELERY_ENABLE_EVENTS")]
    pub celery_enable_events: bool,

    /// Celery queues to watch before any worker or producer declares them (comma list; queues
    /// declared in Redis are found on their own).
    /// With `--brokers auto`, setting it starts the Celery adapter without waiting for
    /// detection. Default: `celery`.
    #[arg(
        long,
        env = "TASKSCOPE_CELERY_QUEUES",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub celery_queues: Option<Vec<String>>,

    /// The Redis of Celery's result backend when it is not the broker's (e.g.
    /// `redis://127.0.0.1:6379/1`): result keys are scanned and read there.
    #[arg(long, env = "TASKSCOPE_CELERY_RESULT_URL", value_name = "URL")]
    pub celery_result_url: Option<String>,
}

/// Celery's settings, resolved.
#[derive(Debug, Clone)]
pub struct CelerySpec {
    given: bool,
    redis_db: u32,
    enable_events: bool,
    /// Watched from the start; queues detection finds are added.
    queues: Vec<String>,
    /// `None` (not given) when the results live in the watched Redis database itself.
    result_url: Given<Option<String>>,
}

impl BrokerModule for CeleryArgs {
    const BROKER: Broker = Broker::Celery;

    fn describe_setting(setting: &Setting) -> Option<String> {
        match setting {
            Setting::CeleryQueue(q) => Some(format!("celery queue {q}")),
            Setting::CeleryResultDb { db, .. } => Some(format!("celery results in database {db}")),
            _ => None,
        }
    }

    fn resolve(self, cx: &ResolveContext) -> Result<Box<dyn BrokerSpec>, UsageError> {
        let given = self.celery_queues.is_some()
            || self.celery_result_url.is_some()
            || self.celery_enable_events;
        let result_url = match self.celery_result_url {
            Some(url) if url.trim() != cx.redis_url.trim() => {
                redis_db_of(&url).map_err(|UsageError(e)| {
                    UsageError(e.replace("--redis", "--celery-result-url"))
                })?;
                Some(url)
            }
            _ => None,
        };
        Ok(Box::new(CelerySpec {
            given,
            redis_db: cx.redis_db,
            enable_events: self.celery_enable_events,
            queues: clean_list(
                self.celery_queues
                    .unwrap_or_else(|| vec!["celery".to_string()]),
            ),
            result_url: Given::new(result_url.clone(), result_url.is_some()),
        }))
    }
}

impl BrokerSpec for CelerySpec {
    fn broker(&self) -> Broker {
        Broker::Celery
    }

    fn given(&self) -> bool {
        self.given
    }

    fn key_rules(&self) -> Box<dyn KeyRules> {
        Box::new(CeleryKeys)
    }

    fn build_adapter(&self, detected: &[Setting]) -> Box<dyn Adapter> {
        let mut queues = self.queues.clone();
        for setting in detected {
            if let Setting::CeleryQueue(q) = setting {
                if !queues.contains(q) {
                    queues.push(q.clone());
                }
            }
        }
        let detected_url = detected.iter().find_map(|s| match s {
            Setting::CeleryResultDb { url, .. } => Some(Some(url.clone())),
            _ => None,
        });
        Box::new(CeleryAdapter::new(CeleryConfig {
            db: self.redis_db,
            queues,
            result_url: self.result_url.or_detected(detected_url),
            enable_events: self.enable_events,
        }))
    }
}
