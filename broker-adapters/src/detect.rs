//! Broker auto-detection: which task queues live in a Redis, judged from what each broker
//! leaves there.
//!
//! Two kinds of evidence, cheapest first:
//! - **key names** ([`classify_key`]): kombu's `_kombu.binding.*` sets and Celery's
//!   `celery-task-meta-*` results, Dramatiq's `<ns>:__heartbeats__` and `<ns>:<queue>.msgs`,
//!   RQ's `rq:queues`, `rq:job:*` and registries;
//! - **one message** ([`classify_message`]): for a stream or a list whose name says nothing
//!   (taskiq queues have any name, `taskiq` by default), whether an entry is a `TaskiqMessage`
//!   or a kombu envelope; for a key named like a taskiq result key (a task id, bare or after a
//!   `prefix_str`: [`taskiq_result_prefix_of`]), whether its value is a taskiq result
//!   ([`is_taskiq_result`]);
//! - **timing** ([`ListCorrelator`]): a `ListQueueBroker` list an idle worker empties inside
//!   the `LPUSH` never holds a message to sample; its pushes followed by new taskiq result keys
//!   give it away.
//!
//! Pure: the ingest layer scans and reads (bounded SCANs, one sample read per unknown key) and
//! hands names and bytes here.
//!
//! Key-name rules belong to their broker: each broker module has a `detect` module with its
//! [`KeyRules`] (`celery::detect::CeleryKeys`, `dramatiq::detect::DramatiqKeys`,
//! `rq::detect::RqKeys`, `taskiq::detect::TaskiqKeys`), and the binary's broker registry hands
//! them, configured, to a [`KeyRuleSet`]. This module keeps what spans brokers: the verdicts,
//! the sampled-message and channel rules, and key shapes.

mod correlate;

use crate::celery::detect::{CELERY_GROUP_RESULT, CELERY_RESULT};
use crate::codec;
use crate::model::Broker;
use serde_json::Value;

pub use crate::taskiq::detect::taskiq_result_prefix_of;
pub use correlate::ListCorrelator;

/// A setting detection learned along with the broker, so its adapter watches the right keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setting {
    /// Dramatiq's `RedisBroker(namespace=...)`, from `<ns>:__heartbeats__` or `<ns>:q.msgs`.
    DramatiqNamespace(String),
    /// RQ's key prefix (`rq:`).
    RqPrefix(String),
    /// A Celery queue (list) found without a kombu binding.
    CeleryQueue(String),
    /// Celery's result backend writes `celery-task-meta-*` keys in another database of the same
    /// Redis (`result_backend = redis://.../1`): its number, and the broker's URL with that
    /// database, for the adapter's side connection.
    CeleryResultDb { db: u32, url: String },
    /// A pub/sub channel carrying taskiq messages (`PubSubBroker`).
    TaskiqChannel(String),
    /// A stream holding taskiq messages (`RedisStreamBroker`).
    TaskiqStream(String),
    /// A list holding taskiq messages (`ListQueueBroker`).
    TaskiqList(String),
    /// A taskiq result key was found (`RedisAsyncResultBackend`): its `prefix_str`, empty for
    /// bare task ids ([`taskiq_result_prefix_of`] of the key).
    TaskiqResultPrefix(String),
    /// An arq queue (`queue_name`) other than `arq:queue`, from its `<queue>:health-check`.
    ArqQueue(String),
    /// A BullMQ queue, qualified by its prefix (`bull:emails`), from its `:meta` hash or its
    /// `:events` stream.
    BullmqQueue(String),
    /// Sidekiq's `redis-namespace` namespace, from `<ns>:processes` or `<ns>:stat:processed`.
    SidekiqNamespace(String),
}

/// One piece of evidence that a broker is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub broker: Broker,
    /// The key that showed it, for logs and `/healthz`.
    pub key: String,
    pub setting: Option<Setting>,
}

impl Finding {
    /// Evidence of `broker` shown by `key`, with the setting it teaches.
    pub fn new(broker: Broker, key: &str, setting: Option<Setting>) -> Finding {
        Finding {
            broker,
            key: key.to_string(),
            setting,
        }
    }
}

/// What a key name alone says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// The name belongs to a broker.
    Broker(Finding),
    /// The name says nothing; a sample of its value may ([`classify_message`]).
    SampleIfStreamOrList,
    /// Named like a taskiq result key (a task id, bare or as `<prefix>:<task id>`): its value
    /// may be a taskiq result; [`taskiq_result_prefix_of`] says under which prefix.
    MaybeTaskiqResult,
    /// Nothing to learn here.
    Unknown,
}

/// Where a broker's rules look in a key name. A name that rules of both kinds would claim
/// belongs to the prefix rule: a name recognised by how it starts (RQ's `rq:job:<id>`) is
/// judged more surely than one recognised by how it ends (Dramatiq's `<ns>:<queue>.msgs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Anchor {
    /// The name's start says it (a fixed prefix).
    Prefix,
    /// The name's end or middle says it (a suffix, a task id).
    Suffix,
}

/// One broker's detection rules for key names, configured by its settings (RQ's prefix,
/// Dramatiq's namespace). Implemented in each broker's own `detect` module.
pub trait KeyRules: Send + Sync + std::fmt::Debug {
    /// The broker these rules find.
    fn broker(&self) -> Broker;
    /// Which part of a name the rules read (the order rules are asked in, see [`Anchor`]).
    fn anchor(&self) -> Anchor;
    /// This broker's verdict on a name; `None` when the name is not one of its keys.
    fn classify(&self, key: &str) -> Option<KeyVerdict>;
    /// Keys whose existence alone shows the broker in its default (or configured) layout,
    /// checked at every pass before any scan.
    fn well_known_keys(&self) -> Vec<String> {
        Vec::new()
    }
    /// Streams or lists with the broker's default queue names, sampled before any scan.
    fn well_known_queues(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Every broker's key rules, asked in [`Anchor`] order (prefix rules first), then in the order
/// given (the registry's).
#[derive(Debug, Default)]
pub struct KeyRuleSet {
    /// In the registry's order: well-known keys are probed in this order.
    rules: Vec<Box<dyn KeyRules>>,
    /// Indices into `rules`, in the order names are judged.
    judging_order: Vec<usize>,
}

impl KeyRuleSet {
    pub fn new(rules: Vec<Box<dyn KeyRules>>) -> KeyRuleSet {
        let mut judging_order: Vec<usize> = (0..rules.len()).collect();
        judging_order.sort_by_key(|&i| rules[i].anchor());
        KeyRuleSet {
            rules,
            judging_order,
        }
    }

    /// Classifies a key by its name: the first rule (prefix rules first) that claims it, else
    /// [`KeyVerdict::SampleIfStreamOrList`].
    pub fn classify_key(&self, key: &str) -> KeyVerdict {
        self.judging_order
            .iter()
            .find_map(|&i| self.rules[i].classify(key))
            .unwrap_or(KeyVerdict::SampleIfStreamOrList)
    }

    /// Every broker's well-known keys (see [`KeyRules::well_known_keys`]), with the rules
    /// they belong to.
    pub fn well_known_keys(&self) -> Vec<(String, &dyn KeyRules)> {
        self.rules
            .iter()
            .flat_map(|r| {
                r.well_known_keys()
                    .into_iter()
                    .map(move |k| (k, r.as_ref() as &dyn KeyRules))
            })
            .collect()
    }

    /// Every broker's default queue names (see [`KeyRules::well_known_queues`]).
    pub fn well_known_queues(&self) -> Vec<String> {
        self.rules
            .iter()
            .flat_map(|r| r.well_known_queues())
            .collect()
    }

    /// The brokers these rules find.
    pub fn brokers(&self) -> Vec<Broker> {
        self.rules.iter().map(|r| r.broker()).collect()
    }
}

/// Whether one entry of a stream or list (`key`) shows a broker: a BullMQ event, a
/// `TaskiqMessage` (the taskiq adapter's own [`crate::taskiq::looks_like_message`]), a kombu
/// envelope (`body`, `headers`, `properties.delivery_tag`) or a Sidekiq job in a
/// `queue:<name>` list. `stream` says which kind of key the entry came from.
pub fn classify_message(key: &str, entry: &[u8], stream: bool) -> Option<Finding> {
    if stream {
        if let Some(queue) = crate::bullmq::layout::QueueName::from_events_key(key) {
            // BullMQ's event names are not JSON: judged before any decoding.
            if crate::bullmq::event::EventKind::known(entry).is_some() {
                return Some(crate::bullmq::detect::finding(key, &queue));
            }
        }
    }
    let value = decode_small(entry)?;
    let object = value.as_object()?;
    if crate::taskiq::looks_like_message(entry) {
        let setting = if stream {
            Setting::TaskiqStream(key.to_string())
        } else {
            Setting::TaskiqList(key.to_string())
        };
        return Some(Finding::new(Broker::Taskiq, key, Some(setting)));
    }
    let kombu = object.contains_key("body")
        && object.get("headers").is_some_and(Value::is_object)
        && object
            .get("properties")
            .and_then(|p| p.get("delivery_tag"))
            .is_some();
    if kombu && !stream {
        let setting = Setting::CeleryQueue(key.to_string());
        return Some(Finding::new(Broker::Celery, key, Some(setting)));
    }
    if !stream {
        return crate::sidekiq::detect::finding_for_list_entry(key, object);
    }
    None
}

/// Whether (the start of) a string value is a taskiq result: its field names `is_err` and
/// `return_value` appear as plain bytes in every serialisation taskiq-redis uses (JSON, msgpack,
/// pickle), and a prefix read is enough, even when the value itself would not decode.
pub fn is_taskiq_result(value: &[u8]) -> bool {
    contains(value, b"is_err") && contains(value, b"return_value")
}

/// Decodes a sampled value as JSON or msgpack; detection never needs more than 1 MiB of one.
fn decode_small(bytes: &[u8]) -> Option<Value> {
    if bytes.len() > 1 << 20 || bytes.first() == Some(&0x80) {
        return None;
    }
    codec::sniff_decode(bytes).ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The pub/sub channels worth listening to before any broker is found: events are not
/// replayable, and a subscription costs Redis nothing while nobody publishes. Celery's result
/// channels (published by every worker with the Redis result backend, whatever its database),
/// its event fanout (`worker-heartbeat` every 2 s even without `-E`), and taskiq's default
/// `PubSubBroker` channel. [`classify_channel`] judges what arrives on them.
pub fn early_channels(db: u32) -> Vec<String> {
    vec![
        format!("{CELERY_RESULT}*"),
        format!("/{db}.celeryev*"),
        "celeryev*".to_string(),
        TASKIQ_DEFAULT_CHANNEL.to_string(),
    ]
}

/// taskiq's default queue name, also the `PubSubBroker`'s channel.
const TASKIQ_DEFAULT_CHANNEL: &str = "taskiq";

/// Whether a pub/sub message shows a broker still `wanted` (not watched yet): a Celery result
/// record or event on Celery's channels, a taskiq message on a channel. `payload` is only
/// decoded for taskiq (a bounded sniff), and only while taskiq is wanted: the messages of a
/// watched broker cost nothing here.
pub fn classify_channel(
    channel: &str,
    payload: &[u8],
    wanted: impl Fn(Broker) -> bool,
) -> Option<Finding> {
    if channel.starts_with(CELERY_RESULT) || channel.contains("celeryev") {
        return wanted(Broker::Celery).then(|| Finding::new(Broker::Celery, channel, None));
    }
    if wanted(Broker::Taskiq)
        && payload.len() <= 1 << 20
        && crate::taskiq::looks_like_message(payload)
    {
        let setting = Setting::TaskiqChannel(channel.to_string());
        return Some(Finding::new(Broker::Taskiq, channel, Some(setting)));
    }
    None
}

/// Whether a key of *another* database than the watched one shows where Celery keeps its
/// results (`celery-task-meta-<id>`).
pub fn is_celery_result_key(key: &str) -> bool {
    key.starts_with(CELERY_RESULT) || key.starts_with(CELERY_GROUP_RESULT)
}

/// What a key name looks like with its variable parts cut off: the text up to its last `:`,
/// `.` or `-` (`cache:user:` for `cache:user:42`), or the whole name when it has none. Keys of
/// one shape are one family: once several of them turned out not to be queues, the detector
/// stops reading their kind (a cache writing a million keys costs one `TYPE` per family).
pub fn key_shape(key: &str) -> &str {
    match key.rfind([':', '.', '-']) {
        Some(i) => &key[..=i],
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every broker's rules in their default layouts, in the registry's order.
    fn rules() -> KeyRuleSet {
        KeyRuleSet::new(vec![
            Box::new(crate::celery::detect::CeleryKeys),
            Box::new(crate::dramatiq::detect::DramatiqKeys {
                namespace: "dramatiq".into(),
            }),
            Box::new(crate::rq::detect::RqKeys::new("rq:")),
            Box::new(crate::taskiq::detect::TaskiqKeys),
        ])
    }

    fn classify_key(key: &str) -> KeyVerdict {
        rules().classify_key(key)
    }

    fn broker_of(key: &str) -> Option<(Broker, Option<Setting>)> {
        match classify_key(key) {
            KeyVerdict::Broker(f) => Some((f.broker, f.setting)),
            _ => None,
        }
    }

    #[test]
    fn key_names_of_each_broker_are_recognised() {
        assert_eq!(
            broker_of("_kombu.binding.celery"),
            Some((Broker::Celery, None))
        );
        assert_eq!(
            broker_of("celery-task-meta-7c9d4875-a02c-4dcb-b08a-c82e543624e9"),
            Some((Broker::Celery, None))
        );
        let ns = |s: &str| Some(Setting::DramatiqNamespace(s.to_string()));
        assert_eq!(
            broker_of("dramatiq:__heartbeats__"),
            Some((Broker::Dramatiq, ns("dramatiq")))
        );
        assert_eq!(
            broker_of("shop:emails.DQ.msgs"),
            Some((Broker::Dramatiq, ns("shop")))
        );
        assert_eq!(
            broker_of("dramatiq:__acks__.0b8a.default"),
            Some((Broker::Dramatiq, ns("dramatiq")))
        );
        let rq = Some(Setting::RqPrefix("rq:".into()));
        assert_eq!(broker_of("rq:queues"), Some((Broker::Rq, rq.clone())));
        assert_eq!(broker_of("rq:job:1234"), Some((Broker::Rq, rq.clone())));
        assert_eq!(broker_of("rq:wip:default"), Some((Broker::Rq, rq)));
    }

    #[test]
    fn a_name_both_rq_and_dramatiq_rules_claim_is_rqs_prefix_rules_first() {
        let rq = Some(Setting::RqPrefix("rq:".into()));
        assert_eq!(broker_of("rq:job:report.msgs"), Some((Broker::Rq, rq)));
        let wk: Vec<String> = rules()
            .well_known_keys()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            wk,
            [
                "_kombu.binding.celery",
                "_kombu.binding.celeryev",
                "_kombu.binding.celery.pidbox",
                "dramatiq:__heartbeats__",
                "dramatiq:default.msgs",
                "rq:queues",
                "rq:workers",
            ],
            "probed in the registry's order"
        );
        assert_eq!(rules().well_known_queues(), ["celery", "taskiq"]);
    }

    #[test]
    fn ordinary_keys_are_not_brokers() {
        for key in [
            "session:42",
            "rq:cache",
            ".msgs",
            ":x.msgs",
            "cache:user:1",
            "celery",
            "taskiq",
        ] {
            assert!(broker_of(key).is_none(), "{key}");
        }
        assert_eq!(
            classify_key("0123456789abcdef0123456789abcdef"),
            KeyVerdict::MaybeTaskiqResult
        );
    }

    #[test]
    fn taskiq_result_keys_are_recognised_bare_and_under_any_prefix() {
        let id = "0123456789abcdef0123456789abcdef";
        let dashed = "7c9d4875-a02c-4dcb-b08a-c82e543624e9";
        for (key, prefix) in [
            (id.to_string(), ""),
            (format!("results:{id}"), "results"),
            (format!("app:results:{id}"), "app:results"),
            (format!("res:{dashed}"), "res"),
            (dashed.to_string(), ""),
        ] {
            assert_eq!(
                taskiq_result_prefix_of(&key).as_deref(),
                Some(prefix),
                "{key}"
            );
            assert_eq!(classify_key(&key), KeyVerdict::MaybeTaskiqResult, "{key}");
        }
    }

    #[test]
    fn keys_that_cannot_be_taskiq_results_are_not_taken_for_them() {
        let id = "0123456789abcdef0123456789abcdef";
        for key in [
            format!("{id}__progress"),
            format!("results:{id}__progress"),
            format!(":{id}"),
            format!("results:{}", id.to_uppercase()),
            "results:42".to_string(),
            "session:abc".to_string(),
            format!("{id}0"),
            "7c9d4875a02c-4dcb-b08a-c82e543624e9x".to_string(),
        ] {
            assert_eq!(taskiq_result_prefix_of(&key), None, "{key}");
        }
        // Other brokers' keys that end in an id keep their own verdict.
        assert!(matches!(
            classify_key(&format!("rq:job:{id}")),
            KeyVerdict::Broker(_)
        ));
        assert!(matches!(
            classify_key("celery-task-meta-7c9d4875-a02c-4dcb-b08a-c82e543624e9"),
            KeyVerdict::Broker(_)
        ));
    }

    #[test]
    fn taskiq_messages_are_told_from_kombu_envelopes_and_noise() {
        let taskiq = json!({"task_id": "a1", "task_name": "app:add", "labels": {},
            "labels_types": null, "args": [1, 2], "kwargs": {}});
        let bytes = serde_json::to_vec(&taskiq).unwrap();
        assert_eq!(
            classify_message("jobs", &bytes, true).map(|f| f.setting),
            Some(Some(Setting::TaskiqStream("jobs".into())))
        );
        let packed = rmp_serde::to_vec_named(&taskiq).unwrap();
        assert_eq!(
            classify_message("jobs", &packed, false).map(|f| f.setting),
            Some(Some(Setting::TaskiqList("jobs".into())))
        );
        let kombu = json!({"body": "W10=", "headers": {"task": "x"}, "content-type": "application/json",
            "properties": {"delivery_tag": "t1", "body_encoding": "base64"}});
        let bytes = serde_json::to_vec(&kombu).unwrap();
        assert_eq!(
            classify_message("emails", &bytes, false).map(|f| f.broker),
            Some(Broker::Celery)
        );
        for noise in [&b"plain text"[..], b"{}", b"[1,2]", b"\x80\x04K\x01.", b""] {
            assert!(classify_message("k", noise, true).is_none());
        }
    }

    #[test]
    fn taskiq_results_are_recognised_in_each_serialisation() {
        let result = json!({"is_err": false, "log": null, "return_value": 3,
            "execution_time": 0.01, "labels": {}, "error": null});
        assert!(is_taskiq_result(&serde_json::to_vec(&result).unwrap()));
        assert!(is_taskiq_result(&rmp_serde::to_vec_named(&result).unwrap()));
        let pickled = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x06is_err\x94\x89\x8c\x0creturn_value\x94K\x03u.";
        assert!(is_taskiq_result(pickled));
        assert!(!is_taskiq_result(b"{\"value\": 1}"));
        assert!(!is_taskiq_result(b"\x80\x04K\x01."));
    }

    #[test]
    fn channels_show_celery_and_taskiq() {
        assert!(early_channels(0).contains(&"/0.celeryev*".to_string()));
        let celery = |c: &str| classify_channel(c, b"{}", |_| true).map(|f| f.broker);
        assert_eq!(celery("celery-task-meta-7c9d"), Some(Broker::Celery));
        assert_eq!(celery("/0.celeryev/worker.heartbeat"), Some(Broker::Celery));
        assert_eq!(celery("taskiq"), None);
        let msg = json!({"task_id": "a1", "task_name": "app:add", "labels": {},
            "labels_types": null, "args": [1, 2], "kwargs": {}});
        let bytes = serde_json::to_vec(&msg).unwrap();
        let watched = |b| b != Broker::Taskiq;
        assert!(classify_channel("taskiq", &bytes, watched).is_none());
        assert!(classify_channel("/0.celeryev/x", b"{}", |b| b != Broker::Celery).is_none());
        let found = classify_channel("taskiq", &bytes, |_| true);
        assert_eq!(
            found.and_then(|f| f.setting),
            Some(Setting::TaskiqChannel("taskiq".into()))
        );
    }

    #[test]
    fn key_shapes_group_families() {
        assert_eq!(key_shape("cache:user:42"), "cache:user:");
        assert_eq!(key_shape("orders"), "orders");
        assert_eq!(key_shape("a.b"), "a.");
        assert!(is_celery_result_key("celery-task-meta-1"));
        assert!(!is_celery_result_key("celery"));
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(key in ".{0,64}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = classify_key(&key);
            let _ = taskiq_result_prefix_of(&key);
            let _ = classify_message(&key, &bytes, true);
            let _ = classify_message(&key, &bytes, false);
            let _ = is_taskiq_result(&bytes);
            let _ = classify_channel(&key, &bytes, |_| true);
            let _ = key_shape(&key);
        }
    }
}
