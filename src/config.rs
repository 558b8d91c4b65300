//! Command line, environment and TOML configuration, validated into [`ServeSettings`].
//!
//! Precedence: a flag beats its environment variable (`TASKSCOPE_<FLAG>`), which beats the TOML
//! file given by `--config`, which beats the default. The TOML file is applied by exporting its
//! keys as the environment variables clap already reads, for every variable not set already:
//! one code path, one set of names (`abandon_after` and `abandon-after` both work; a table
//! `[celery] queues = [...]` is `celery_queues`).

use anyhow::{bail, Context};
use broker_adapters::Broker;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "taskscope",
    version,
    about = "Watches Celery, Dramatiq, taskiq and RQ queues on Redis; history in DuckDB; a web UI and JSON API."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch a Redis and serve the UI and API (the main job).
    Serve(Box<ServeArgs>),
    /// Run housekeeping (roll-up, retention, compaction) once now and print what it did.
    /// `taskscope serve` runs it on its own schedule; this needs the file not in use.
    Housekeeping(Box<HousekeepingCmd>),
    /// A one-shot look at the brokers in Redis: queues, workers or tasks, as a table or JSON.
    /// Needs no history file and writes nothing to Redis.
    Inspect(Box<crate::inspect::InspectArgs>),
    /// Empty a queue (as the broker's library does) after showing how many messages wait in
    /// it; asks first unless `--yes`; journaled in `--db`'s audit journal when given.
    Purge(Box<crate::purge::PurgeArgs>),
    /// Write every task matching the task-list filters to a CSV or Parquet file.
    Export(Box<crate::export::ExportArgs>),
    /// A private redis-server, generated traffic of every broker and the UI: a live
    /// dashboard in one command (needs `redis-server` on PATH).
    Demo(Box<crate::demo::DemoArgs>),
}

/// `taskscope housekeeping`.
#[derive(Debug, Args)]
pub struct HousekeepingCmd {
    /// A TOML file with any of these settings (keys as the flag names).
    #[arg(long, env = "TASKSCOPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The DuckDB file that keeps the history.
    #[arg(
        long,
        env = "TASKSCOPE_DB",
        default_value = "./taskscope.duckdb",
        value_name = "PATH"
    )]
    pub db: PathBuf,

    /// Only say what would be done.
    #[arg(long)]
    pub dry_run: bool,

    /// After the jobs, rewrite the file with only its live rows (`COPY FROM DATABASE`), giving
    /// the space of deleted rows back to the file system; a checkpoint only makes it reusable.
    #[arg(long, conflicts_with = "dry_run")]
    pub rewrite: bool,

    /// Run only these jobs (comma list of rollup, retention, compaction); default all.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub jobs: Vec<String>,

    #[command(flatten)]
    pub housekeeping: HousekeepingArgs,
}

/// Housekeeping settings, shared by `serve` and `housekeeping`.
#[derive(Debug, Clone, Args)]
pub struct HousekeepingArgs {
    /// When housekeeping runs: cron with a seconds field (`sec min hour day month weekday`;
    /// weekday names like `Mon` are safer than numbers: this cron counts Sunday as 1).
    #[arg(
        long,
        env = "TASKSCOPE_HOUSEKEEPING",
        default_value = "0 0 * * * *",
        value_name = "CRON"
    )]
    pub housekeeping: String,

    /// Raw task history kept (tasks and transitions); older rows are rolled up, then deleted.
    #[arg(long, env = "TASKSCOPE_RETENTION", default_value = "30d", value_parser = parse_duration, value_name = "DUR")]
    pub retention: Duration,

    /// Queue samples kept at full resolution; older ones are down-sampled to 5 minutes.
    #[arg(long, env = "TASKSCOPE_SAMPLE_RETENTION", default_value = "7d", value_parser = parse_duration, value_name = "DUR")]
    pub sample_retention: Duration,

    /// Hourly and daily roll-ups and down-sampled queue samples kept.
    #[arg(long, env = "TASKSCOPE_AGGREGATE_RETENTION", default_value = "400d", value_parser = parse_duration, value_name = "DUR")]
    pub aggregate_retention: Duration,

    /// How long the audit journal of actions is kept (never deleted with the task history).
    #[arg(long, env = "TASKSCOPE_AUDIT_RETENTION", default_value = "400d", value_parser = parse_duration, value_name = "DUR")]
    pub audit_retention: Duration,

    /// A schedule of its own for the roll-up job (TOML: `[schedule] rollup = "..."`).
    #[arg(long, env = "TASKSCOPE_SCHEDULE_ROLLUP", value_name = "CRON")]
    pub schedule_rollup: Option<String>,

    /// A schedule of its own for the retention job.
    #[arg(long, env = "TASKSCOPE_SCHEDULE_RETENTION", value_name = "CRON")]
    pub schedule_retention: Option<String>,

    /// A schedule of its own for the compaction (checkpoint) job.
    #[arg(long, env = "TASKSCOPE_SCHEDULE_COMPACTION", value_name = "CRON")]
    pub schedule_compaction: Option<String>,
}

impl HousekeepingArgs {
    pub fn into_settings(self) -> Result<crate::housekeeping::Settings, UsageError> {
        use crate::housekeeping::{jobs::Job, jobs::Policy, schedule::Schedule};
        let parse = |flag: &str, text: &str| {
            Schedule::parse(text).map_err(|e| UsageError(format!("--{flag}: {e}")))
        };
        let default_schedule = parse("housekeeping", &self.housekeeping)?;
        let mut job_schedules = std::collections::BTreeMap::new();
        for (job, text) in [
            (Job::Rollup, &self.schedule_rollup),
            (Job::Retention, &self.schedule_retention),
            (Job::Compaction, &self.schedule_compaction),
        ] {
            if let Some(text) = text {
                job_schedules.insert(job, parse(&format!("schedule-{job}"), text)?);
            }
        }
        if self.aggregate_retention < self.retention {
            return Err(UsageError(format!(
                "--aggregate-retention ({}) must be at least --retention ({}): roll-ups summarise the raw history they replace",
                humantime::format_duration(self.aggregate_retention),
                humantime::format_duration(self.retention)
            )));
        }
        Ok(crate::housekeeping::Settings {
            default_schedule,
            job_schedules,
            policy: Policy {
                retention: self.retention,
                sample_retention: self.sample_retention,
                aggregate_retention: self.aggregate_retention,
                audit_retention: self.audit_retention,
            },
        })
    }
}

/// `taskscope serve`: what the user typed, validated only as far as clap does.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file with any of these settings (keys as the flag names).
    #[arg(long, env = "TASKSCOPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The Redis to watch (`redis://[:password@]host:port/db`, `rediss://` for TLS).
    #[arg(
        long,
        env = "TASKSCOPE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        value_name = "URL"
    )]
    pub redis: String,

    /// The DuckDB file that keeps the history.
    #[arg(
        long,
        env = "TASKSCOPE_DB",
        default_value = "./taskscope.duckdb",
        value_name = "PATH"
    )]
    pub db: PathBuf,

    /// The HTTP address to serve the UI and API on.
    #[arg(
        long,
        env = "TASKSCOPE_LISTEN",
        default_value = "127.0.0.1:7979",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// `auto`, or a comma list of brokers to watch (`celery,dramatiq,taskiq,rq`).
    #[arg(
        long,
        env = "TASKSCOPE_BROKERS",
        default_value = "auto",
        value_name = "LIST"
    )]
    pub brokers: String,

    /// Silence of a worker after which its running tasks are abandoned.
    #[arg(long, env = "TASKSCOPE_ABANDON_AFTER", default_value = "60s", value_parser = parse_duration, value_name = "DUR")]
    pub abandon_after: Duration,

    /// Queue length sampling period (backlog over time).
    #[arg(long, env = "TASKSCOPE_SAMPLE_EVERY", default_value = "5s", value_parser = parse_duration, value_name = "DUR")]
    pub sample_every: Duration,

    /// Never run `CONFIG SET` on Redis (managed Redis): poll instead of keyspace notifications
    /// unless they are already enabled.
    #[arg(long, env = "TASKSCOPE_NO_CONFIG_SET")]
    pub no_config_set: bool,

    /// When set, every page and API call but `/healthz` needs it (`Authorization: Bearer`,
    /// or `?token=`).
    #[arg(long, env = "TASKSCOPE_AUTH_TOKEN", value_name = "TOKEN")]
    pub auth_token: Option<String>,

    /// Allow a non-loopback `--listen` without `--auth-token` (something else guards the
    /// port: a proxy, a private network, a port published on the host's loopback only).
    #[arg(long, env = "TASKSCOPE_INSECURE_LISTEN")]
    pub insecure_listen: bool,

    /// Without `--auth-token`, host names (comma list, any port) a request's `Host` may name
    /// besides `localhost`, loopback addresses and the listen address; `*` allows any (DNS
    /// rebinding defence off).
    #[arg(
        long,
        env = "TASKSCOPE_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub allowed_hosts: Vec<String>,

    /// Longest time a request may take to start its response (then 503); streamed bodies
    /// (`/api/events`, `/export.csv`) are timed only to their start.
    #[arg(long, env = "TASKSCOPE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub request_timeout: Duration,

    /// Enable write actions (run, retry, delete, purge, revoke) from the UI and the API; needs
    /// `--auth-token` or `--trusted-user-header`. Every action is journaled (`/audit`).
    #[arg(long, env = "TASKSCOPE_ALLOW_ACTIONS")]
    pub allow_actions: bool,

    /// Task names that may be run from taskscope (comma list of globs: `*` any run of
    /// characters, `?` one).
    #[arg(
        long,
        env = "TASKSCOPE_ACTION_ALLOW_NAMES",
        default_value = "*",
        value_delimiter = ',',
        value_name = "GLOBS"
    )]
    pub action_allow_names: Vec<String>,

    /// The identity header an authenticating proxy sets (e.g. `X-Forwarded-User`): recorded in
    /// the audit journal, and required on every write. The proxy must strip it from clients.
    #[arg(long, env = "TASKSCOPE_TRUSTED_USER_HEADER", value_name = "NAME")]
    pub trusted_user_header: Option<String>,

    /// Serve every page, asset and API route under this URL prefix (e.g. `/taskscope` behind a
    /// reverse proxy); requests are answered with or without it, so a proxy may strip it or not.
    #[arg(long, env = "TASKSCOPE_BASE_PATH", default_value = "/", value_parser = crate::http::base_path::BasePath::parse, value_name = "PATH")]
    pub base_path: crate::http::base_path::BasePath,

    /// Open `/api/events` streams (live pages) at most; more get 503.
    #[arg(
        long,
        env = "TASKSCOPE_MAX_SSE_CLIENTS",
        default_value = "100",
        value_name = "N"
    )]
    pub max_sse_clients: usize,

    /// History queries of HTTP requests running at once (each holds a blocking thread and a
    /// DuckDB read); a request that waits 10 s for a turn gets 503.
    #[arg(
        long,
        env = "TASKSCOPE_MAX_HTTP_QUERIES",
        default_value = "8",
        value_name = "N"
    )]
    pub max_http_queries: usize,

    /// `/metrics` gives own label values to at most this many queues and this many task names
    /// (the busiest); the rest are counted under `other`.
    #[arg(
        long,
        env = "TASKSCOPE_METRICS_MAX_LABELS",
        default_value = "100",
        value_name = "N"
    )]
    pub metrics_max_labels: usize,

    /// Every broker's own settings (`--celery-*`, `--dramatiq-*`, `--rq-*`, `--taskiq-*`).
    #[command(flatten)]
    pub per_broker: crate::brokers::BrokerArgs,

    /// With `--brokers auto`: how often to look for brokers not watched yet (bounded SCANs;
    /// also done at start).
    #[arg(long, env = "TASKSCOPE_DETECT_EVERY", default_value = "60s", value_parser = parse_duration, value_name = "DUR")]
    pub detect_every: Duration,

    /// How often the reconciliation pass re-reads queues, in-flight messages and open tasks'
    /// results (catching what notifications cannot carry).
    #[arg(long, env = "TASKSCOPE_RECONCILE_EVERY", default_value = "5s", value_parser = parse_duration, value_name = "DUR")]
    pub reconcile_every: Duration,

    /// How often to poll when keyspace notifications are unavailable.
    #[arg(long, env = "TASKSCOPE_POLL_EVERY", default_value = "1s", value_parser = parse_duration, value_name = "DUR")]
    pub poll_every: Duration,

    /// How often to re-scan Redis for queues and result keys (also done at start and after
    /// every reconnect).
    #[arg(long, env = "TASKSCOPE_RESCAN_EVERY", default_value = "5m", value_parser = parse_duration, value_name = "DUR")]
    pub rescan_every: Duration,

    /// Arguments, keyword arguments, results and tracebacks larger than this (bytes of JSON
    /// text) are truncated before they are stored: nested containers emptied first, then
    /// strings cut, with a marker.
    #[arg(
        long,
        env = "TASKSCOPE_MAX_VALUE_BYTES",
        default_value = "65536",
        value_name = "BYTES"
    )]
    pub max_value_bytes: usize,

    /// A Redis value (a string, a hash field, a list element, a stream entry's field) larger
    /// than this is never read whole: Redis checks the size before replying, and the task it
    /// belongs to is shown with the error "payload too large (N bytes)".
    #[arg(
        long,
        env = "TASKSCOPE_MAX_PAYLOAD_BYTES",
        default_value = "4194304",
        value_name = "BYTES"
    )]
    pub max_payload_bytes: usize,

    /// Values under keys containing any of these words (case-insensitive) are stored as
    /// `"[redacted]"`, at any depth of kwargs, args and results.
    #[arg(
        long,
        env = "TASKSCOPE_REDACT_KEYS",
        value_delimiter = ',',
        default_value = "password,passwd,secret,token,api_key,apikey,authorization,credential,private_key,access_key",
        value_name = "LIST"
    )]
    pub redact_keys: Vec<String>,

    /// A zlib or gzip payload (RQ job data, compressed Celery messages and results) that
    /// decompresses to more than this many bytes is a decode error for its task, not decoded.
    #[arg(
        long,
        env = "TASKSCOPE_MAX_DECOMPRESSED_BYTES",
        default_value = "8388608",
        value_name = "BYTES"
    )]
    pub max_decompressed_bytes: usize,

    /// A payload (pickle, JSON, msgpack) that decodes to more than this many bytes of strings,
    /// shared references counted each time they appear, is a decode error for its task.
    #[arg(
        long,
        env = "TASKSCOPE_MAX_DECODED_BYTES",
        default_value = "16777216",
        value_name = "BYTES"
    )]
    pub max_decoded_bytes: usize,

    /// A payload that decodes to more than this many values (containers and scalars, shared
    /// references counted each time they appear) is a decode error for its task.
    #[arg(
        long,
        env = "TASKSCOPE_MAX_DECODED_ITEMS",
        default_value = "2000000",
        value_name = "N"
    )]
    pub max_decoded_items: usize,

    /// A payload whose containers nest deeper than this is a decode error for its task (at
    /// most 512).
    #[arg(
        long,
        env = "TASKSCOPE_MAX_DECODE_DEPTH",
        default_value = "128",
        value_name = "N"
    )]
    pub max_decode_depth: usize,

    /// How often the `[[alert]]` rules of the config file are evaluated.
    #[arg(long, env = "TASKSCOPE_ALERT_INTERVAL", default_value = "15s", value_parser = parse_duration, value_name = "DUR")]
    pub alert_interval: Duration,

    /// The address people open taskscope at, `--base-path` included, for the links in alert
    /// notifications (default `http://<--listen><--base-path>`).
    #[arg(long, env = "TASKSCOPE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    #[command(flatten)]
    pub housekeeping: HousekeepingArgs,
}

/// Parses the contract's durations: `500ms`, `6s`, `5m`, `2h`, `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (expected a duration like 500ms, 6s, 5m, 2h or 30d)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(d)
}

/// Everything `serve` needs, validated and resolved.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub redis_url: String,
    /// The database number in the URL: keyspace channels and Celery event channels name it.
    pub redis_db: u32,
    pub db_path: PathBuf,
    pub listen: SocketAddr,
    /// Adapters started at once: the `--brokers` list, or with `auto` those whose own settings
    /// were given.
    pub brokers: Vec<Broker>,
    /// `--brokers auto`: look for more every this often.
    pub detect_every: Option<Duration>,
    pub abandon_after: Duration,
    pub sample_every: Duration,
    pub config_set: bool,
    pub auth_token: Option<String>,
    /// Without a token: extra `Host` names answered (lower case).
    pub allowed_hosts: Vec<String>,
    pub request_timeout: Duration,
    pub max_sse_clients: usize,
    /// `--base-path`: the URL prefix pages and links are served under.
    pub base_path: crate::http::base_path::BasePath,
    /// `--allow-actions`, `--action-allow-names`, `--trusted-user-header`.
    pub actions: crate::actions::ActionSettings,
    pub max_http_queries: usize,
    pub metrics_max_labels: usize,
    /// Every broker's resolved settings (`src/brokers/`).
    pub registry: crate::brokers::Registry,
    pub reconcile_every: Duration,
    pub poll_every: Duration,
    pub rescan_every: Duration,
    pub max_value_bytes: usize,
    pub max_payload_bytes: usize,
    pub redact_keys: Vec<String>,
    /// The decode budget every decoder works within.
    pub decode_limits: broker_adapters::limits::Limits,
    pub housekeeping: crate::housekeeping::Settings,
    /// The `[[alert]]` rules of the config file, their interval and link base.
    pub alerts: crate::alerts::AlertSettings,
}

impl ServeArgs {
    /// Brokers given non-default key prefixes (the action writers use the defaults only).
    fn custom_broker_keys(&self) -> Vec<(Broker, String)> {
        let mut out = Vec::new();
        let b = &self.per_broker;
        if let Some(p) =
            b.rq.rq_prefix
                .as_deref()
                .filter(|p| !matches!(p.trim(), "rq" | "rq:"))
        {
            out.push((Broker::Rq, format!("--rq-prefix {p}")));
        }
        if let Some(ns) = b
            .dramatiq
            .dramatiq_namespace
            .as_deref()
            .filter(|n| n.trim() != "dramatiq")
        {
            out.push((Broker::Dramatiq, format!("--dramatiq-namespace {ns}")));
        }
        // `--sidekiq-namespace` is not one: the Sidekiq writer puts its keys under it.
        out
    }

    pub fn into_settings(self) -> Result<ServeSettings, UsageError> {
        let selection = parse_brokers(&self.brokers)?;
        let redis_db = redis_db_of(&self.redis)?;
        let alerts = self.alert_settings()?;
        if self
            .auth_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(UsageError("--auth-token must not be empty".into()));
        }
        if !self.listen.ip().is_loopback() && self.auth_token.is_none() && !self.insecure_listen {
            return Err(UsageError(format!(
                "--listen {} is reachable beyond this machine and no --auth-token is set: anyone \
                 who reaches it reads task arguments and results. Set --auth-token \
                 (TASKSCOPE_AUTH_TOKEN), or pass --insecure-listen (TASKSCOPE_INSECURE_LISTEN=true) \
                 when something else guards the port",
                self.listen
            )));
        }
        let actions = crate::actions::ActionSettings::new(
            self.allow_actions,
            &self.action_allow_names,
            self.trusted_user_header.as_deref(),
            self.auth_token.is_some(),
        )
        .map_err(UsageError)?
        .with_custom_keys(self.custom_broker_keys());
        let registry = self.per_broker.resolve(&crate::brokers::ResolveContext {
            redis_url: self.redis.clone(),
            redis_db,
        })?;
        let (brokers, detect_every) = match selection {
            BrokerSelection::Listed(brokers) => (brokers, None),
            BrokerSelection::Auto => (registry.given(), Some(self.detect_every)),
        };
        Ok(ServeSettings {
            redis_url: self.redis,
            redis_db,
            db_path: self.db,
            listen: self.listen,
            brokers,
            detect_every,
            abandon_after: self.abandon_after,
            sample_every: self.sample_every,
            config_set: !self.no_config_set,
            auth_token: self.auth_token,
            allowed_hosts: self
                .allowed_hosts
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            request_timeout: self.request_timeout,
            max_sse_clients: self.max_sse_clients,
            base_path: self.base_path,
            actions,
            max_http_queries: self.max_http_queries.max(1),
            metrics_max_labels: self.metrics_max_labels,
            registry,
            reconcile_every: self.reconcile_every,
            poll_every: self.poll_every,
            rescan_every: self.rescan_every,
            max_value_bytes: self.max_value_bytes.max(256),
            // Below a few KB ordinary messages would be refused.
            max_payload_bytes: self.max_payload_bytes.max(4096),
            decode_limits: broker_adapters::limits::Limits {
                max_depth: self.max_decode_depth.clamp(1, 512),
                max_items: self.max_decoded_items.max(1),
                max_decoded_bytes: self.max_decoded_bytes,
                max_decompressed_bytes: self.max_decompressed_bytes,
            },
            redact_keys: self
                .redact_keys
                .into_iter()
                .map(|k| k.trim().to_lowercase())
                .filter(|k| !k.is_empty())
                .collect(),
            housekeeping: self.housekeeping.into_settings()?,
            alerts,
        })
    }

    /// The `[[alert]]` rules of the `--config` file (none without one), checked against the
    /// raw history kept: a window longer than `--retention` would count deleted rows.
    fn alert_settings(&self) -> Result<crate::alerts::AlertSettings, UsageError> {
        let rules = match &self.config {
            None => Vec::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    UsageError(format!(
                        "cannot read the config file {}: {e}",
                        path.display()
                    ))
                })?;
                crate::alerts::rules::parse_rules(&text).map_err(|e| {
                    UsageError(format!("in the config file {}: {}", path.display(), e.0))
                })?
            }
        };
        if let Some(rule) = rules
            .iter()
            .find(|r| r.when.has_window() && r.over > self.housekeeping.retention)
        {
            return Err(UsageError(format!(
                "alert {:?}: over: {} is longer than --retention ({}), the raw history it counts",
                rule.name,
                humantime::format_duration(rule.over),
                humantime::format_duration(self.housekeeping.retention)
            )));
        }
        let public_url = match &self.public_url {
            Some(u) => {
                let parsed = url::Url::parse(u.trim())
                    .map_err(|e| UsageError(format!("--public-url {u:?}: not a URL ({e})")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(UsageError(format!(
                        "--public-url {u:?}: must start with http:// or https://"
                    )));
                }
                u.trim().trim_end_matches('/').to_string()
            }
            None => format!("http://{}{}", self.listen, self.base_path.as_str()),
        };
        Ok(crate::alerts::AlertSettings {
            rules,
            every: self.alert_interval,
            abandon_after: self.abandon_after,
            public_url,
        })
    }
}

/// A configuration mistake: exit code 2 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What `--brokers` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BrokerSelection {
    /// Detect brokers from their keys (and start those whose settings were given).
    Auto,
    /// Exactly these; no detection.
    Listed(Vec<Broker>),
}

fn parse_brokers(list: &str) -> Result<BrokerSelection, UsageError> {
    if list.trim() == "auto" {
        return Ok(BrokerSelection::Auto);
    }
    let mut brokers = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let broker: Broker = name
            .parse()
            .map_err(|e: broker_adapters::model::UnknownBroker| {
                UsageError(format!("--brokers: {e}"))
            })?;
        if !crate::brokers::ALL.contains(&broker) {
            return Err(UsageError(format!(
                "--brokers: the {broker} adapter is not in this version of taskscope yet; use --brokers auto, {}",
                crate::brokers::names_for_humans()
            )));
        }
        if !brokers.contains(&broker) {
            brokers.push(broker);
        }
    }
    if brokers.is_empty() {
        return Err(UsageError(
            "--brokers: give `auto` or at least one broker".into(),
        ));
    }
    Ok(BrokerSelection::Listed(brokers))
}

/// The database number of a `redis://host:port/N` URL (0 when absent).
pub(crate) fn redis_db_of(url: &str) -> Result<u32, UsageError> {
    let rest = url
        .split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "redis" | "rediss" | "valkey" | "valkeys"))
        .map(|(_, rest)| rest)
        .ok_or_else(|| {
            UsageError(format!(
                "--redis {:?}: expected a URL like redis://127.0.0.1:6379/0 (rediss:// for TLS)",
                crate::ingest::redact(url)
            ))
        })?;
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    let db = path.split(['?', '#']).next().unwrap_or("");
    if db.is_empty() {
        return Ok(0);
    }
    db.parse().map_err(|_| {
        UsageError(format!(
            "--redis {:?}: the database after '/' must be a number",
            crate::ingest::redact(url)
        ))
    })
}

/// Reads the `--config` / `TASKSCOPE_CONFIG` file (if any) before clap parses, and exports its
/// keys as `TASKSCOPE_*` environment variables that are not already set.
pub fn apply_config_file(args: &[String]) -> anyhow::Result<()> {
    let path = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            if a == "--config" {
                args.get(i + 1).cloned()
            } else {
                a.strip_prefix("--config=").map(str::to_string)
            }
        })
        .or_else(|| std::env::var("TASKSCOPE_CONFIG").ok());
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {path}"))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("the config file {path} is not valid TOML"))?;
    let mut vars = Vec::new();
    flatten("", &table, &mut vars).with_context(|| format!("in the config file {path}"))?;
    for (key, value) in vars {
        let var = format!("TASKSCOPE_{}", key.replace('-', "_").to_uppercase());
        let var = if var == "TASKSCOPE_REDIS" {
            "TASKSCOPE_REDIS_URL".to_string()
        } else {
            var
        };
        if !KNOWN_VARS.contains(&var.as_str()) {
            bail!("unknown setting {key:?} in the config file {path}");
        }
        if std::env::var_os(&var).is_none() {
            // Single-threaded: this runs before the runtime starts.
            std::env::set_var(var, value);
        }
    }
    Ok(())
}

/// The `TASKSCOPE_*` variables a TOML key may set: those of every `serve` flag (each broker's
/// included, from its own settings in `src/brokers/`), but `--config` itself.
static KNOWN_VARS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    SERVE_COMMAND
        .get_arguments()
        .filter_map(|arg| arg.get_env()?.to_str())
        .filter(|var| *var != "TASKSCOPE_CONFIG")
        .collect()
});

/// `taskscope serve`'s flags, as clap knows them.
static SERVE_COMMAND: LazyLock<clap::Command> =
    LazyLock::new(|| ServeArgs::augment_args(clap::Command::new("serve")));

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut Vec<(String, String)>,
) -> anyhow::Result<()> {
    for (key, value) in table {
        if prefix.is_empty() && key == "alert" {
            // `[[alert]]` rules are read by `ServeArgs::alert_settings`, not as a flag.
            continue;
        }
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}_{key}")
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    other => bail!("{name}: unsupported list item {other}"),
                })
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            toml::Value::Table(inner) => {
                flatten(&name, inner, out)?;
                continue;
            }
            toml::Value::Datetime(d) => d.to_string(),
        };
        out.push((name, text));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn redis_db_comes_from_the_url() {
        assert_eq!(redis_db_of("redis://127.0.0.1:6379/3").unwrap(), 3);
        assert_eq!(redis_db_of("redis://:pw@host:1/").unwrap(), 0);
        assert_eq!(redis_db_of("rediss://host").unwrap(), 0);
        assert!(redis_db_of("http://host").is_err());
        assert!(redis_db_of("redis://host/x").is_err());
    }

    #[test]
    fn rq_prefix_defaults_to_rq_and_has_a_flag() {
        use clap::Parser;
        let prefix = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Serve(serve)) => serve
                .per_broker
                .rq
                .rq_prefix
                .unwrap_or_else(|| "rq:".into()),
            other => panic!("{other:?}"),
        };
        if std::env::var_os("TASKSCOPE_RQ_PREFIX").is_none() {
            assert_eq!(prefix(&["taskscope", "serve"]), "rq:");
        }
        assert_eq!(
            prefix(&["taskscope", "serve", "--rq-prefix", "shop"]),
            "shop"
        );
        assert!(
            KNOWN_VARS.contains(&"TASKSCOPE_RQ_PREFIX"),
            "the TOML key [rq] prefix"
        );
    }

    #[test]
    fn taskiq_result_prefixes_are_a_list_and_one_value_still_works() {
        use clap::Parser;
        let prefixes = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Serve(serve)) => serve.per_broker.taskiq.taskiq_result_prefix,
            other => panic!("{other:?}"),
        };
        let owned = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            prefixes(&["taskscope", "serve", "--taskiq-result-prefix", "results"]),
            owned(&["results"])
        );
        assert_eq!(
            prefixes(&[
                "taskscope",
                "serve",
                "--taskiq-result-prefix",
                "results,app:res"
            ]),
            owned(&["results", "app:res"])
        );
        assert!(
            KNOWN_VARS.contains(&"TASKSCOPE_TASKIQ_RESULT_PREFIX"),
            "the TOML key [taskiq] result_prefix (an array)"
        );
        let mut flat = Vec::new();
        let table: toml::Table =
            toml::from_str("[taskiq]\nresult_prefix = [\"results\", \"res\"]").expect("valid TOML");
        flatten("", &table, &mut flat).expect("flattens");
        assert_eq!(
            flat,
            vec![(
                "taskiq_result_prefix".to_string(),
                "results,res".to_string()
            )]
        );
    }

    #[test]
    fn actions_are_refused_for_brokers_given_non_default_keys() {
        use clap::Parser;
        let Ok(Command::Serve(serve)) = Cli::try_parse_from([
            "taskscope",
            "serve",
            "--allow-actions",
            "--auth-token",
            "t",
            "--rq-prefix",
            "myapp:",
            "--dramatiq-namespace",
            "dramatiq",
        ])
        .map(|c| c.command) else {
            panic!("parses")
        };
        let Ok(settings) = serve.into_settings() else {
            panic!("valid")
        };
        assert_eq!(
            settings.actions.custom_keys_of(Broker::Rq),
            Some("--rq-prefix myapp:")
        );
        assert_eq!(
            settings.actions.custom_keys_of(Broker::Dramatiq),
            None,
            "the default"
        );
        assert_eq!(settings.actions.custom_keys_of(Broker::Celery), None);
    }

    #[test]
    fn a_listen_beyond_loopback_needs_a_token_or_insecure_listen() {
        use clap::Parser;
        let settings = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Serve(serve)) => serve.into_settings(),
            other => panic!("{other:?}"),
        };
        if std::env::var_os("TASKSCOPE_AUTH_TOKEN").is_some()
            || std::env::var_os("TASKSCOPE_INSECURE_LISTEN").is_some()
        {
            return;
        }
        let refused = settings(&["taskscope", "serve", "--listen", "0.0.0.0:7979"]);
        let Err(UsageError(msg)) = refused else {
            panic!("0.0.0.0 without a token must be refused")
        };
        assert!(
            msg.contains("--auth-token") && msg.contains("--insecure-listen"),
            "{msg}"
        );
        for ok in [
            &[
                "taskscope",
                "serve",
                "--listen",
                "0.0.0.0:7979",
                "--insecure-listen",
            ][..],
            &[
                "taskscope",
                "serve",
                "--listen",
                "[::]:7979",
                "--auth-token",
                "t",
            ],
            &["taskscope", "serve", "--listen", "127.0.0.1:7979"],
            &["taskscope", "serve", "--listen", "[::1]:7979"],
        ] {
            assert!(settings(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn bad_redis_urls_are_reported_without_their_password() {
        let err = redis_db_of("http://:hunter2@host/0").unwrap_err().0;
        assert!(!err.contains("hunter2"), "{err}");
        let err = redis_db_of("redis://:hunter2@host/x").unwrap_err().0;
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn decode_budget_flags_reach_the_limits() {
        use clap::Parser;
        let limits = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Serve(serve)) => serve.into_settings().map(|s| s.decode_limits),
            other => panic!("{other:?}"),
        };
        let budget_env = [
            "TASKSCOPE_MAX_DECOMPRESSED_BYTES",
            "TASKSCOPE_MAX_DECODED_BYTES",
            "TASKSCOPE_MAX_DECODED_ITEMS",
            "TASKSCOPE_MAX_DECODE_DEPTH",
        ];
        if budget_env.iter().all(|v| std::env::var_os(v).is_none()) {
            assert_eq!(
                limits(&["taskscope", "serve"]).unwrap(),
                broker_adapters::limits::Limits::DEFAULT
            );
        }
        let set = limits(&[
            "taskscope",
            "serve",
            "--max-decompressed-bytes",
            "1000",
            "--max-decoded-bytes",
            "2000",
            "--max-decoded-items",
            "30",
            "--max-decode-depth",
            "100000",
        ])
        .unwrap();
        assert_eq!(
            set,
            broker_adapters::limits::Limits {
                max_depth: 512,
                max_items: 30,
                max_decoded_bytes: 2000,
                max_decompressed_bytes: 1000,
            },
            "the depth is capped: deeper values would risk the stack of whatever serialises them"
        );
    }

    #[test]
    fn alert_rules_come_from_the_config_file_and_stay_within_retention() {
        use clap::Parser;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("taskscope.toml");
        let toml = "abandon_after = \"2m\"\n[[alert]]\nname = \"a\"\nwhen = \"failures\"\n\
                    above = 1\nover = \"1h\"\n";
        std::fs::write(&path, toml).expect("write");
        let path = path.to_str().expect("utf-8").to_string();
        let settings = |extra: &[&str]| {
            let mut args = vec!["taskscope", "serve", "--config", path.as_str()];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).map(|c| c.command) {
                Ok(Command::Serve(serve)) => serve.into_settings(),
                other => panic!("{other:?}"),
            }
        };
        let ok = settings(&["--public-url", "https://ts.example.com/"]).unwrap();
        assert_eq!(ok.alerts.rules.len(), 1);
        assert_eq!(ok.alerts.rules[0].over, Duration::from_secs(3600));
        assert_eq!(ok.alerts.public_url, "https://ts.example.com");
        let err = settings(&["--retention", "30m", "--aggregate-retention", "1d"])
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("alert \"a\": over: 1h is longer than --retention"),
            "{err}"
        );
        let behind = settings(&["--listen", "127.0.0.1:7000", "--base-path", "/ts/"]).unwrap();
        assert_eq!(
            behind.alerts.public_url, "http://127.0.0.1:7000/ts",
            "links carry the --base-path"
        );
        let err = settings(&["--public-url", "ftp://x"]).unwrap_err().0;
        assert!(err.starts_with("--public-url"), "{err}");
        // The other keys of the file still become settings; `[[alert]]` is not one.
        let mut flat = Vec::new();
        flatten("", &toml.parse().expect("TOML"), &mut flat).expect("flattens");
        assert_eq!(flat, vec![("abandon_after".to_string(), "2m".to_string())]);
    }

    #[test]
    fn brokers_list_is_checked() {
        assert_eq!(parse_brokers("auto").unwrap(), BrokerSelection::Auto);
        assert_eq!(
            parse_brokers("celery, celery").unwrap(),
            BrokerSelection::Listed(vec![Broker::Celery])
        );
        assert_eq!(
            parse_brokers("sidekiq").unwrap(),
            BrokerSelection::Listed(vec![Broker::Sidekiq])
        );
        assert!(parse_brokers("resque").is_err());
    }

    #[test]
    fn toml_keys_are_every_serve_flag_as_before_the_registry() {
        let before_the_registry = [
            "TASKSCOPE_REDIS_URL",
            "TASKSCOPE_DB",
            "TASKSCOPE_LISTEN",
            "TASKSCOPE_BROKERS",
            "TASKSCOPE_ABANDON_AFTER",
            "TASKSCOPE_SAMPLE_EVERY",
            "TASKSCOPE_NO_CONFIG_SET",
            "TASKSCOPE_AUTH_TOKEN",
            "TASKSCOPE_INSECURE_LISTEN",
            "TASKSCOPE_ALLOWED_HOSTS",
            "TASKSCOPE_REQUEST_TIMEOUT",
            "TASKSCOPE_MAX_SSE_CLIENTS",
            "TASKSCOPE_MAX_HTTP_QUERIES",
            "TASKSCOPE_METRICS_MAX_LABELS",
            "TASKSCOPE_CELERY_ENABLE_EVENTS",
            "TASKSCOPE_CELERY_QUEUES",
            "TASKSCOPE_CELERY_RESULT_URL",
            "TASKSCOPE_DRAMATIQ_NAMESPACE",
            "TASKSCOPE_DETECT_EVERY",
            "TASKSCOPE_HOUSEKEEPING",
            "TASKSCOPE_RETENTION",
            "TASKSCOPE_SAMPLE_RETENTION",
            "TASKSCOPE_AGGREGATE_RETENTION",
            "TASKSCOPE_SCHEDULE_ROLLUP",
            "TASKSCOPE_SCHEDULE_RETENTION",
            "TASKSCOPE_SCHEDULE_COMPACTION",
            "TASKSCOPE_MAX_VALUE_BYTES",
            "TASKSCOPE_MAX_PAYLOAD_BYTES",
            "TASKSCOPE_MAX_DECOMPRESSED_BYTES",
            "TASKSCOPE_MAX_DECODED_BYTES",
            "TASKSCOPE_MAX_DECODED_ITEMS",
            "TASKSCOPE_MAX_DECODE_DEPTH",
            "TASKSCOPE_REDACT_KEYS",
            "TASKSCOPE_RQ_PREFIX",
            "TASKSCOPE_TASKIQ_QUEUES",
            "TASKSCOPE_TASKIQ_RESULT_PREFIX",
            "TASKSCOPE_RECONCILE_EVERY",
            "TASKSCOPE_POLL_EVERY",
            "TASKSCOPE_RESCAN_EVERY",
            "TASKSCOPE_ALERT_INTERVAL",
            "TASKSCOPE_PUBLIC_URL",
        ];
        let mut known: Vec<&str> = KNOWN_VARS.clone();
        known.sort_unstable();
        // Brokers added through the registry since bring their own keys, and only those.
        let added_since = [
            "TASKSCOPE_ACTION_ALLOW_NAMES",
            "TASKSCOPE_ALLOW_ACTIONS",
            "TASKSCOPE_ARQ_QUEUES",
            "TASKSCOPE_AUDIT_RETENTION",
            "TASKSCOPE_TRUSTED_USER_HEADER",
            "TASKSCOPE_BASE_PATH",
            "TASKSCOPE_BULLMQ_QUEUES",
            "TASKSCOPE_SIDEKIQ_NAMESPACE",
        ];
        let mut expected = before_the_registry.to_vec();
        expected.extend(added_since);
        expected.sort_unstable();
        assert_eq!(known, expected);
    }
}
