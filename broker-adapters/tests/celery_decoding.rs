//! Celery decoding against real captures (Celery 5.7 / kombu 5.7, `tests/fixtures/celery/`),
//! through the public decoders and through the `Adapter` trait, plus garbage: nothing panics and
//! a bad queue entry never takes its neighbours down with it.
//!
//! Task ids, delivery tags and times come from `manifest.json` (or from a fixture that names the
//! same task), never from guesses.

mod support;

use broker_adapters::adapter::{Adapter, DecodeError, Output, ReadRequest, Reply};
use broker_adapters::celery::{
    control, events, message, result, CeleryAdapter, CeleryConfig, PRIORITY_STEPS, SEP,
};
use broker_adapters::codec;
use broker_adapters::model::{
    Broker, Observation, TaskEvent, TaskObservation, WorkerEvent, WorkerObservation,
};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use support::tagged::Answer;

// ---------------------------------------------------------------------------------------------
// Fixture helpers
// ---------------------------------------------------------------------------------------------

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/celery/");

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

struct ManifestEntry {
    file: String,
    source: String,
    description: String,
}

fn manifest() -> Vec<ManifestEntry> {
    let m = fixture_json("manifest.json");
    m["files"]
        .as_array()
        .expect("manifest.files is a list")
        .iter()
        .map(|f| ManifestEntry {
            file: f["file"].as_str().unwrap().to_string(),
            source: f["source"].as_str().unwrap().to_string(),
            description: f["description"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn entry(file: &str) -> ManifestEntry {
    manifest()
        .into_iter()
        .find(|e| e.file == file)
        .unwrap_or_else(|| panic!("{file} is not in manifest.json"))
}

/// The first uuid-like token in `text` (`task id 6e48...`, `GET celery-task-meta-<id>`,
/// `HGET unacked <tag>`).
fn first_uuid(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(35))
        .map(|i| &text[i..i + 36])
        .find(|s| is_uuid_like(s))
        .map(str::to_string)
}

fn is_uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The task id the manifest names for a fixture (description for queue messages, the key for
/// results).
fn manifest_task_id(file: &str) -> String {
    let e = entry(file);
    let text = if file.starts_with("result_") {
        &e.source
    } else {
        &e.description
    };
    first_uuid(text).unwrap_or_else(|| panic!("manifest names no task id for {file}"))
}

/// The `unacked` hash field (delivery tag) the manifest names for an unacked fixture.
fn manifest_unacked_tag(file: &str) -> String {
    let e = entry(file);
    assert!(e.source.starts_with("HGET unacked "), "{}", e.source);
    first_uuid(&e.source).unwrap()
}

fn t(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

/// A moment during the capture run, before every captured ETA.
fn during_capture() -> DateTime<Utc> {
    t("2026-11-23T13:41:00Z")
}

fn adapter() -> CeleryAdapter {
    CeleryAdapter::new(CeleryConfig::default())
}

fn lrange(key: &str) -> ReadRequest {
    ReadRequest::LRange {
        key: key.to_string(),
        start: 0,
        stop: 199,
    }
}

fn bulk_array(items: &[Vec<u8>]) -> Reply {
    Reply::Array(items.iter().cloned().map(Reply::Bytes).collect())
}

fn tasks(out: &Output) -> Vec<&TaskObservation> {
    out.observations
        .iter()
        .filter_map(|o| match o {
            Observation::Task(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn the_task(out: &Output) -> &TaskObservation {
    let ts = tasks(out);
    assert_eq!(ts.len(), 1, "expected one task observation: {out:#?}");
    assert!(out.decode_errors.is_empty(), "{:#?}", out.decode_errors);
    ts[0]
}

fn the_worker(obs: Option<Observation>) -> WorkerObservation {
    match obs {
        Some(Observation::Worker(w)) => w,
        other => panic!("expected a worker observation, got {other:#?}"),
    }
}

fn task_obs(obs: Option<Observation>) -> TaskObservation {
    match obs {
        Some(Observation::Task(t)) => t,
        other => panic!("expected a task observation, got {other:#?}"),
    }
}

/// Decodes one event fixture and observes its single event.
fn observe_single(file: &str) -> Option<Observation> {
    let evs = events::decode(&fixture(file)).unwrap();
    assert_eq!(evs.len(), 1, "{file}: {evs:#?}");
    events::observe(&evs[0], during_capture())
}

/// The decoded body of a kombu envelope (base64 JSON).
fn envelope_body(envelope: &Value) -> Value {
    assert_eq!(envelope["properties"]["body_encoding"], "base64");
    assert_eq!(envelope["content-type"], "application/json");
    let raw = codec::base64_decode(envelope["body"].as_str().unwrap()).unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn unix(secs: f64) -> DateTime<Utc> {
    codec::unix_seconds(secs).unwrap()
}

/// The captured protocol-2 JSON message with a fresh id and delivery tag, so the adapter does
/// not take it for the original.
fn json_message_variant(n: usize, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = fixture_json("queue_message_json.bin");
    let id = format!("00000000-0000-4000-8000-{n:012}");
    v["headers"]["id"] = json!(id);
    v["headers"]["root_id"] = json!(id);
    v["properties"]["correlation_id"] = json!(id);
    v["properties"]["delivery_tag"] = json!(format!("ffffffff-0000-4000-8000-{n:012}"));
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

/// The captured protocol-1 message with a fresh id and delivery tag, edited.
fn protocol1_variant(n: usize, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = fixture_json("queue_message_protocol1.bin");
    v["properties"]["delivery_tag"] = json!(format!("eeeeeeee-0000-4000-8000-{n:012}"));
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

const QUEUE_MESSAGES: [&str; 8] = [
    "queue_message_json.bin",
    "queue_message_msgpack.bin",
    "queue_message_countdown.bin",
    "queue_message_expires.bin",
    "queue_message_kwargs_unicode.bin",
    "queue_message_protocol1.bin",
    "queue_message_priority5_default_steps.bin",
    "queue_message_priority9_steps0to9.bin",
];

// ---------------------------------------------------------------------------------------------
// 1. Every captured payload, through the public decoders
// ---------------------------------------------------------------------------------------------

#[test]
fn every_manifest_payload_fixture_decodes_with_its_decoder() {
    let mut checked = 0;
    for e in manifest() {
        let f = e.file.as_str();
        let bytes = fixture(f);
        if f.starts_with("queue_message_") {
            let msg = message::decode(&bytes).unwrap_or_else(|err| panic!("{f}: {err}"));
            assert_eq!(msg.task_id, manifest_task_id(f), "{f}");
            assert!(msg.name.as_deref().unwrap().starts_with("cap."), "{f}");
            assert!(msg.args.as_ref().unwrap().is_array(), "{f}");
            assert!(msg.kwargs.as_ref().unwrap().is_object(), "{f}");
            assert_eq!(msg.body_error, None, "{f}");
            assert!(is_uuid_like(msg.delivery_tag.as_deref().unwrap()), "{f}");
            assert_eq!(msg.routing_key.as_deref(), Some("celery"), "{f}");
        } else if f.starts_with("unacked_") && f.ends_with(".bin") {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let parts = v.as_array().expect("[envelope, exchange, routing_key]");
            assert_eq!(parts.len(), 3, "{f}");
            assert_eq!(parts[1], "", "{f}: default exchange");
            assert_eq!(parts[2], "celery", "{f}: routing key");
            let msg =
                message::decode_envelope(&parts[0]).unwrap_or_else(|err| panic!("{f}: {err}"));
            assert!(is_uuid_like(&msg.task_id), "{f}");
            assert!(msg.name.as_deref().unwrap().starts_with("cap."), "{f}");
            assert_eq!(msg.body_error, None, "{f}");
            if e.source.starts_with("HGET unacked ") {
                assert_eq!(msg.delivery_tag, Some(manifest_unacked_tag(f)), "{f}");
            }
        } else if f.starts_with("result_") {
            let id = manifest_task_id(f);
            let meta = result::decode(&bytes, Some(&id)).unwrap_or_else(|err| panic!("{f}: {err}"));
            assert_eq!(meta.task_id, id, "{f}");
            let want = [
                ("_started_", "STARTED"),
                ("_success_", "SUCCESS"),
                ("_failure_", "FAILURE"),
                ("_retry_", "RETRY"),
                ("_revoked_", "REVOKED"),
            ]
            .into_iter()
            .find(|(part, _)| f.contains(part))
            .map(|(_, status)| status)
            .unwrap_or_else(|| panic!("{f}: unknown result kind"));
            assert_eq!(meta.status, want, "{f}");
            // A task revoked before its message arrived never ran: no extended fields.
            let extended = f.contains("_extended") && want != "REVOKED";
            assert_eq!(meta.name.is_some(), extended, "{f}: name");
        } else if f.starts_with("event_") {
            let routing_key = e.source.rsplit('/').next().unwrap();
            let envelope: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                envelope["properties"]["delivery_info"]["routing_key"], routing_key,
                "{f}"
            );
            let evs = events::decode(&bytes).unwrap_or_else(|err| panic!("{f}: {err}"));
            if routing_key == "task.multi" {
                // "body = JSON list of N events: [...]" / "largest task.multi batch seen (N events"
                let words: Vec<&str> = e.description.split_whitespace().collect();
                let n: usize = words
                    .windows(2)
                    .find(|w| w[1].starts_with("events"))
                    .and_then(|w| w[0].trim_start_matches('(').parse().ok())
                    .unwrap_or_else(|| panic!("{f}: no event count in {}", e.description));
                assert_eq!(evs.len(), n, "{f}");
            } else {
                assert_eq!(evs.len(), 1, "{f}");
            }
            for ev in &evs {
                let kind = ev["type"].as_str().unwrap();
                match events::observe(ev, during_capture()) {
                    Some(Observation::Worker(w)) => {
                        assert!(kind.starts_with("worker-"), "{f}");
                        assert_eq!(Some(w.id.as_str()), ev["hostname"].as_str(), "{f}");
                        assert_eq!(w.heartbeat_every_s, Some(2.0), "{f}");
                        assert!(w.pid.is_some(), "{f}");
                    }
                    Some(Observation::Task(obs)) => {
                        assert!(kind.starts_with("task-"), "{f}");
                        assert!(is_uuid_like(&obs.task_id), "{f}");
                        assert_eq!(Some(obs.task_id.as_str()), ev["uuid"].as_str(), "{f}");
                        assert_eq!(obs.source, "event", "{f}");
                    }
                    None => panic!("{f}: event {kind} gave no observation"),
                }
            }
        } else if f.starts_with("control_") {
            let envelope: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(envelope_body(&envelope)["method"], "enable_events");
        } else {
            continue;
        }
        checked += 1;
    }
    // 8 queue messages, 5 unacked values, 16 result records, 18 events, 1 control message.
    assert_eq!(
        checked, 48,
        "a fixture was added or removed: extend the tests"
    );
}

#[test]
fn queue_message_protocol2_json_gives_name_args_kwargs() {
    let f = "queue_message_json.bin";
    let msg = message::decode(&fixture(f)).unwrap();
    assert_eq!(msg.task_id, manifest_task_id(f));
    assert_eq!(msg.name.as_deref(), Some("cap.add"));
    assert_eq!(msg.args, Some(json!([2, 3])));
    assert_eq!(msg.kwargs, Some(json!({})));
    assert_eq!(msg.retries, 0);
    assert_eq!(msg.eta, None);
    assert_eq!(
        msg.delivery_tag.as_deref(),
        Some("3dbedbcc-12b5-48eb-a14a-49a75698161a")
    );
    assert_eq!(msg.routing_key.as_deref(), Some("celery"));
    assert_eq!(msg.body_error, None);
}

#[test]
fn queue_message_countdown_sets_eta_from_headers() {
    let f = "queue_message_countdown.bin";
    let msg = message::decode(&fixture(f)).unwrap();
    assert_eq!(msg.task_id, manifest_task_id(f));
    assert_eq!(msg.eta, Some(t("2026-11-23T13:42:01.771219Z")));
    assert_eq!(msg.args, Some(json!([2, 3])));
}

#[test]
fn queue_message_expires_alone_sets_no_eta() {
    let f = "queue_message_expires.bin";
    let msg = message::decode(&fixture(f)).unwrap();
    assert_eq!(msg.task_id, manifest_task_id(f));
    assert_eq!(msg.eta, None);
    assert_eq!(msg.name.as_deref(), Some("cap.add"));
}

#[test]
fn queue_message_msgpack_body_decodes() {
    let f = "queue_message_msgpack.bin";
    let envelope = fixture_json(f);
    assert_eq!(envelope["content-type"], "application/x-msgpack");
    let msg = message::decode(&fixture(f)).unwrap();
    assert_eq!(msg.task_id, manifest_task_id(f));
    assert_eq!(msg.body_error, None);
    assert_eq!(msg.name.as_deref(), Some("cap.add"));
    assert_eq!(msg.args, Some(json!([2, 3])));
    assert_eq!(msg.kwargs, Some(json!({})));
}

#[test]
fn queue_message_non_ascii_args_and_kwargs_stay_intact() {
    let f = "queue_message_kwargs_unicode.bin";
    let msg = message::decode(&fixture(f)).unwrap();
    assert_eq!(msg.task_id, manifest_task_id(f));
    assert_eq!(msg.name.as_deref(), Some("cap.greet"));
    assert_eq!(msg.args, Some(json!(["Zoë 日本"])));
    assert_eq!(
        msg.kwargs,
        Some(json!({"greeting": "Grüß Gott", "note": "naïve ✓ ☃ \"q\""}))
    );
    // The Python reprs in the headers say the same thing as the body.
    let envelope = fixture_json(f);
    let headers = &envelope["headers"];
    assert_eq!(
        codec::python_literal(headers["argsrepr"].as_str().unwrap()),
        msg.args
    );
    assert_eq!(
        codec::python_literal(headers["kwargsrepr"].as_str().unwrap()),
        msg.kwargs
    );
}

#[test]
fn queue_message_protocol1_keeps_everything_in_the_body() {
    let f = "queue_message_protocol1.bin";
    assert_eq!(fixture_json(f)["headers"], json!({}));
    let msg = message::decode(&fixture(f)).unwrap();
    assert_eq!(msg.task_id, manifest_task_id(f));
    assert_eq!(msg.name.as_deref(), Some("cap.greet"));
    assert_eq!(msg.args, Some(json!(["Zoë"])));
    assert_eq!(msg.kwargs, Some(json!({"note": "naïve"})));
    assert_eq!(msg.retries, 0);
    // countdown=30
    assert_eq!(msg.eta, Some(t("2026-11-23T13:41:32.404146Z")));
    assert_eq!(
        msg.delivery_tag.as_deref(),
        Some("349250b5-4e3f-4a83-a531-1e9c903842fe")
    );
    assert_eq!(msg.body_error, None);
}

#[test]
fn queue_message_with_priority_decodes_like_any_other() {
    for f in [
        "queue_message_priority5_default_steps.bin",
        "queue_message_priority9_steps0to9.bin",
    ] {
        let msg = message::decode(&fixture(f)).unwrap();
        assert_eq!(msg.task_id, manifest_task_id(f), "{f}");
        assert_eq!(msg.name.as_deref(), Some("cap.add"), "{f}");
        assert_eq!(msg.args, Some(json!([4, 5])), "{f}");
        assert_eq!(msg.routing_key.as_deref(), Some("celery"), "{f}");
    }
}

#[test]
fn unacked_values_decode_and_name_the_same_tasks_as_results_and_events() {
    // acks_late, running: the same task as the STARTED / SUCCESS result records.
    for (f, result_file) in [
        (
            "unacked_acks_late_running_plain.bin",
            "result_started_plain.bin",
        ),
        (
            "unacked_acks_late_running_extended.bin",
            "result_success_extended.bin",
        ),
    ] {
        let v = fixture_json(f);
        let msg = message::decode_envelope(&v[0]).unwrap();
        assert_eq!(msg.task_id, manifest_task_id(result_file), "{f}");
        assert_eq!(msg.delivery_tag, Some(manifest_unacked_tag(f)), "{f}");
        assert_eq!(msg.name.as_deref(), Some("cap.slow"), "{f}");
        assert_eq!(msg.args, Some(json!([3])), "{f}");
        assert_eq!(msg.eta, None, "{f}");
    }
    // ETA tasks held by the worker.
    let plain = message::decode_envelope(&fixture_json("unacked_eta_plain.bin")[0]).unwrap();
    assert_eq!(
        plain.delivery_tag,
        Some(manifest_unacked_tag("unacked_eta_plain.bin"))
    );
    assert_eq!(plain.eta, Some(t("2026-11-23T13:41:29.653123Z")));
    assert_eq!(plain.args, Some(json!([1, 2])));
    let ext = message::decode_envelope(&fixture_json("unacked_eta_extended.bin")[0]).unwrap();
    assert_eq!(
        ext.delivery_tag,
        Some(manifest_unacked_tag("unacked_eta_extended.bin"))
    );
    // The worker's task-received event names the same task and ETA.
    let received = events::decode(&fixture(
        "event_task_multi_containing_task_received_with_E.bin",
    ))
    .unwrap();
    assert_eq!(received[0]["uuid"].as_str(), Some(ext.task_id.as_str()));
    assert_eq!(
        ext.eta,
        codec::parse_time(&received[0]["eta"]),
        "message and event ETA"
    );
    // Default early ack, grabbed on the hset notification.
    let early =
        message::decode_envelope(&fixture_json("unacked_early_ack_snapshot.bin")[0]).unwrap();
    assert_eq!(early.name.as_deref(), Some("cap.add"));
    assert_eq!(early.args, Some(json!([0, 0])));
    assert!(is_uuid_like(&early.task_id));
}

// ---- results ----

#[test]
fn result_success_plain_gives_status_result_and_date() {
    let f = "result_success_plain.bin";
    let id = manifest_task_id(f);
    let meta = result::decode(&fixture(f), None).unwrap();
    assert_eq!(meta.task_id, id);
    assert_eq!(meta.status, "SUCCESS");
    assert_eq!(meta.result, json!("slept 3"));
    assert_eq!(meta.traceback, None);
    assert_eq!(meta.date_done, Some(t("2026-11-23T13:41:07.672587Z")));
    assert_eq!(
        (
            &meta.name,
            &meta.args,
            &meta.kwargs,
            &meta.worker,
            meta.retries,
            &meta.queue
        ),
        (&None, &None, &None, &None, None, &None),
        "plain results know nothing of the task"
    );
    // The PUBLISH payload is byte-identical to the stored value.
    assert_eq!(fixture("result_publish_success_plain.bin"), fixture(f));
    assert_eq!(
        fixture("result_publish_success_extended.bin"),
        fixture("result_success_extended.bin")
    );
}

#[test]
fn result_started_gives_worker_pid_and_no_date() {
    for (f, host) in [
        ("result_started_plain.bin", "cap_plain@caphost"),
        ("result_started_extended.bin", "cap_extended@caphost"),
    ] {
        let meta = result::decode(&fixture(f), None).unwrap();
        assert_eq!(meta.task_id, manifest_task_id(f), "{f}");
        assert_eq!(meta.status, "STARTED", "{f}");
        assert_eq!(meta.result["hostname"], host, "{f}");
        assert!(meta.result["pid"].as_u64().is_some(), "{f}");
        assert_eq!(meta.date_done, None, "{f}");
    }
}

#[test]
fn result_failure_error_line_is_exception_type_and_message() {
    for f in ["result_failure_plain.bin", "result_failure_extended.bin"] {
        let meta = result::decode(&fixture(f), None).unwrap();
        assert_eq!(meta.task_id, manifest_task_id(f), "{f}");
        assert_eq!(meta.status, "FAILURE", "{f}");
        let tb = meta.traceback.as_deref().unwrap();
        assert!(tb.starts_with("Traceback (most recent call last):"), "{f}");
        assert_eq!(
            result::error_line(&meta.result, Some(tb)).as_deref(),
            Some("ValueError: card declined 3"),
            "{f}"
        );
        // The traceback alone says the same.
        assert_eq!(
            codec::error_line_from_traceback(tb).as_deref(),
            Some("ValueError: card declined 3")
        );
    }
}

#[test]
fn result_retry_error_line_is_the_original_exception_not_the_retry() {
    for f in ["result_retry_plain.bin", "result_retry_extended.bin"] {
        let meta = result::decode(&fixture(f), None).unwrap();
        assert_eq!(meta.task_id, manifest_task_id(f), "{f}");
        assert_eq!(meta.status, "RETRY", "{f}");
        assert_eq!(meta.date_done, None, "{f}");
        let tb = meta.traceback.as_deref().unwrap();
        assert!(tb.contains("celery.exceptions.Retry: Retry in 1s"), "{f}");
        assert_eq!(
            result::error_line(&meta.result, Some(tb)).as_deref(),
            Some("ValueError: card declined 3"),
            "{f}"
        );
    }
}

#[test]
fn result_revoked_error_line_is_task_revoked_error() {
    for f in ["result_revoked_plain.bin", "result_revoked_extended.bin"] {
        let meta = result::decode(&fixture(f), None).unwrap();
        assert_eq!(meta.task_id, manifest_task_id(f), "{f}");
        assert_eq!(meta.status, "REVOKED", "{f}");
        assert_eq!(meta.traceback, None, "{f}");
        assert_eq!(
            result::error_line(&meta.result, None).as_deref(),
            Some("TaskRevokedError: revoked"),
            "{f}"
        );
    }
}

#[test]
fn result_extended_gives_name_args_worker_retries_queue() {
    let meta = result::decode(&fixture("result_success_extended.bin"), None).unwrap();
    assert_eq!(meta.name.as_deref(), Some("cap.slow"));
    assert_eq!(meta.args, Some(json!([3])));
    assert_eq!(meta.kwargs, Some(json!({})));
    assert_eq!(meta.worker.as_deref(), Some("cap_extended@caphost"));
    assert_eq!(meta.retries, Some(0));
    assert_eq!(meta.queue.as_deref(), Some("celery"));

    let after = result::decode(&fixture("result_success_after_retry_extended.bin"), None).unwrap();
    assert_eq!(after.status, "SUCCESS");
    assert_eq!(after.name.as_deref(), Some("cap.retry_once"));
    assert_eq!(after.retries, Some(1));
    assert_eq!(after.result, json!("charged 3 after 1 retries"));
    let retry = result::decode(&fixture("result_retry_extended.bin"), None).unwrap();
    assert_eq!(retry.task_id, after.task_id, "one task, two records");
    assert_eq!(retry.retries, Some(0));

    let plain_after =
        result::decode(&fixture("result_success_after_retry_plain.bin"), None).unwrap();
    assert_eq!(plain_after.retries, None);
    assert_eq!(plain_after.result, json!("charged 3 after 1 retries"));
}

#[test]
fn result_unicode_survives_intact() {
    let text = "Grüß Gott, Zoë 日本! naïve ✓";
    let plain = result::decode(&fixture("result_success_unicode_plain.bin"), None).unwrap();
    assert_eq!(plain.result, json!(text));
    let ext = result::decode(&fixture("result_success_unicode_extended.bin"), None).unwrap();
    assert_eq!(ext.result, json!(text));
    assert_eq!(ext.name.as_deref(), Some("cap.greet"));
    assert_eq!(ext.args, Some(json!(["Zoë 日本"])));
    assert_eq!(ext.kwargs, Some(json!({"note": "naïve ✓"})));
}

#[test]
fn result_without_task_id_takes_the_key_id() {
    let mut v = fixture_json("result_success_plain.bin");
    v.as_object_mut().unwrap().remove("task_id");
    let bytes = serde_json::to_vec(&v).unwrap();
    let meta = result::decode(&bytes, Some("from-the-key")).unwrap();
    assert_eq!(meta.task_id, "from-the-key");
    assert!(result::decode(&bytes, None).is_err());
}

// ---- events ----

#[test]
fn event_task_received_gives_running_with_attempt_name_args_worker() {
    let obs = task_obs(observe_single(
        "event_task_multi_containing_task_received_after_enable_events.bin",
    ));
    assert_eq!(obs.event, TaskEvent::Running);
    assert_eq!(obs.task_id, "e170da0e-a2ee-4b9f-816f-7cf65b3b6c46");
    assert_eq!(obs.attempt, Some(0));
    assert_eq!(obs.at, unix(1795441276.7917895));
    assert_eq!(obs.fields.name.as_deref(), Some("cap.add"));
    assert_eq!(obs.fields.args, Some(json!([7, 8])));
    assert_eq!(obs.fields.kwargs, Some(json!({})));
    assert_eq!(obs.fields.worker.as_deref(), Some("cap_plain@caphost"));
    assert_eq!(obs.fields.eta, None);
    assert_eq!(obs.source, "event");
}

#[test]
fn event_task_received_with_future_eta_stays_queued() {
    let obs = task_obs(observe_single(
        "event_task_multi_containing_task_received_with_E.bin",
    ));
    assert_eq!(obs.event, TaskEvent::Queued);
    assert_eq!(obs.task_id, "859536b5-da08-480e-87a8-db7f16d15f9d");
    assert_eq!(obs.attempt, Some(0));
    assert_eq!(obs.fields.eta, Some(t("2026-11-23T13:41:49.856878Z")));
    assert_eq!(obs.fields.args, Some(json!([1, 2])));
    assert_eq!(obs.fields.worker.as_deref(), Some("cap_extended@caphost"));
}

#[test]
fn event_task_started_gives_running_with_started_at() {
    for (f, id, host) in [
        (
            "event_task_multi_containing_task_started_after_enable_events.bin",
            "e170da0e-a2ee-4b9f-816f-7cf65b3b6c46",
            "cap_plain@caphost",
        ),
        (
            "event_task_multi_containing_task_started_with_E.bin",
            "c494c314-b708-484d-83b0-b058191b1b52",
            "cap_extended@caphost",
        ),
    ] {
        let obs = task_obs(observe_single(f));
        assert_eq!(obs.event, TaskEvent::Running, "{f}");
        assert_eq!(obs.task_id, id, "{f}");
        assert_eq!(obs.fields.worker.as_deref(), Some(host), "{f}");
        assert_eq!(obs.fields.started_at, Some(obs.at), "{f}");
        assert_eq!(
            obs.attempt, None,
            "{f}: task-started does not name its attempt"
        );
    }
}

#[test]
fn event_task_succeeded_gives_runtime_ms_and_result() {
    let obs = task_obs(observe_single(
        "event_task_multi_containing_task_succeeded_after_enable_events.bin",
    ));
    assert_eq!(obs.event, TaskEvent::Succeeded);
    assert_eq!(obs.task_id, "e170da0e-a2ee-4b9f-816f-7cf65b3b6c46");
    assert_eq!(obs.fields.worker.as_deref(), Some("cap_plain@caphost"));
    assert_eq!(obs.fields.result, Some(json!(15)));
    let ms = obs.fields.runtime_ms.unwrap();
    assert!((ms - 4.199590999974134).abs() < 1e-6, "{ms}");

    let obs = task_obs(observe_single(
        "event_task_multi_containing_task_succeeded_with_E.bin",
    ));
    assert_eq!(obs.task_id, manifest_task_id("result_success_extended.bin"));
    assert_eq!(obs.fields.result, Some(json!("slept 3")));
    let ms = obs.fields.runtime_ms.unwrap();
    assert!((ms - 3016.816575000007).abs() < 1e-6, "{ms}");
}

#[test]
fn event_task_failed_gives_error_line_and_traceback() {
    let obs = task_obs(observe_single(
        "event_task_multi_containing_task_failed_with_E.bin",
    ));
    assert_eq!(obs.event, TaskEvent::Failed);
    assert_eq!(obs.task_id, manifest_task_id("result_failure_extended.bin"));
    assert_eq!(obs.fields.worker.as_deref(), Some("cap_extended@caphost"));
    assert_eq!(
        obs.fields.error.as_deref(),
        Some("ValueError: card declined 3")
    );
    let tb = obs.fields.traceback.as_deref().unwrap();
    assert!(tb.starts_with("Traceback (most recent call last):"));
    assert!(tb.trim_end().ends_with("ValueError: card declined 3"));
    assert_eq!(obs.at, unix(1795441288.4070413));
}

#[test]
fn event_task_retried_gives_error_line_and_traceback() {
    let obs = task_obs(observe_single(
        "event_task_multi_containing_task_retried_with_E.bin",
    ));
    assert_eq!(obs.event, TaskEvent::Retried);
    assert_eq!(obs.task_id, manifest_task_id("result_retry_extended.bin"));
    assert_eq!(obs.fields.worker.as_deref(), Some("cap_extended@caphost"));
    assert_eq!(
        obs.fields.error.as_deref(),
        Some("ValueError: card declined 3")
    );
    assert!(obs
        .fields
        .traceback
        .as_deref()
        .unwrap()
        .contains("celery.exceptions.Retry"));
}

#[test]
fn event_task_revoked_gives_failed_with_revoked_error() {
    let obs = task_obs(observe_single(
        "event_task_multi_containing_task_revoked_with_E.bin",
    ));
    assert_eq!(obs.event, TaskEvent::Failed);
    assert_eq!(obs.task_id, manifest_task_id("result_revoked_extended.bin"));
    assert_eq!(
        obs.fields.error.as_deref(),
        Some("TaskRevokedError: revoked")
    );
}

#[test]
fn event_worker_heartbeat_gives_worker_with_pid_and_interval() {
    for (f, id, pid, active) in [
        (
            "event_worker_heartbeat_without_E.bin",
            "cap_plain@caphost",
            21416,
            1,
        ),
        (
            "event_worker_heartbeat_after_enable_events.bin",
            "cap_plain@caphost",
            21416,
            0,
        ),
        (
            "event_worker_heartbeat_with_E.bin",
            "cap_extended@caphost",
            21463,
            1,
        ),
    ] {
        let w = the_worker(observe_single(f));
        assert_eq!(w.broker, Broker::Celery, "{f}");
        assert_eq!(w.event, WorkerEvent::Heartbeat, "{f}");
        assert_eq!(w.id, id, "{f}");
        assert_eq!(w.hostname.as_deref(), Some("caphost"), "{f}");
        assert_eq!(w.pid, Some(pid), "{f}");
        assert_eq!(w.heartbeat_every_s, Some(2.0), "{f}");
        assert_eq!(w.active, Some(active), "{f}");
    }
    let w = the_worker(observe_single("event_worker_heartbeat_without_E.bin"));
    assert_eq!(w.at, unix(1795441266.5420039));
}

#[test]
fn event_worker_online_and_offline_give_worker_events() {
    for (f, event, id, pid) in [
        (
            "event_worker_online_without_E.bin",
            WorkerEvent::Online,
            "cap_plain@caphost",
            21416,
        ),
        (
            "event_worker_online_with_E.bin",
            WorkerEvent::Online,
            "cap_extended@caphost",
            21463,
        ),
        (
            "event_worker_offline_without_E.bin",
            WorkerEvent::Offline,
            "cap_early@caphost",
            21722,
        ),
        (
            "event_worker_offline_with_E.bin",
            WorkerEvent::Offline,
            "cap_extended@caphost",
            21463,
        ),
        (
            "event_worker_offline_after_enable_events.bin",
            WorkerEvent::Offline,
            "cap_plain@caphost",
            21416,
        ),
    ] {
        let w = the_worker(observe_single(f));
        assert_eq!(w.event, event, "{f}");
        assert_eq!(w.id, id, "{f}");
        assert_eq!(w.pid, Some(pid), "{f}");
        assert_eq!(w.heartbeat_every_s, Some(2.0), "{f}");
    }
}

/// The captures hold one event per `task.multi` publish; a batch of several (what a busy worker
/// flushes) is the same envelope with a longer list. Built from the captured events themselves.
fn multi_batch() -> (Vec<u8>, Vec<Value>) {
    let files = [
        "event_task_multi_containing_task_received_with_E.bin",
        "event_task_multi_containing_task_started_with_E.bin",
        "event_task_multi_containing_task_succeeded_with_E.bin",
        "event_task_multi_containing_task_failed_with_E.bin",
        "event_task_multi_containing_task_retried_with_E.bin",
        "event_task_multi_containing_task_revoked_with_E.bin",
    ];
    let evs: Vec<Value> = files
        .iter()
        .flat_map(|f| events::decode(&fixture(f)).unwrap())
        .collect();
    let mut envelope = fixture_json(files[0]);
    let body = serde_json::to_vec(&evs).unwrap();
    use base64::Engine as _;
    envelope["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
    (serde_json::to_vec(&envelope).unwrap(), evs)
}

#[test]
fn event_task_multi_list_yields_one_observation_per_event_in_order() {
    let (bytes, originals) = multi_batch();
    let evs = events::decode(&bytes).unwrap();
    assert_eq!(evs, originals);
    let obs: Vec<TaskObservation> = evs
        .iter()
        .map(|e| task_obs(events::observe(e, during_capture())))
        .collect();
    let kinds: Vec<TaskEvent> = obs.iter().map(|o| o.event).collect();
    assert_eq!(
        kinds,
        [
            TaskEvent::Queued, // received, ETA in the future
            TaskEvent::Running,
            TaskEvent::Succeeded,
            TaskEvent::Failed,
            TaskEvent::Retried,
            TaskEvent::Failed, // revoked
        ]
    );
    for (o, e) in obs.iter().zip(&evs) {
        assert_eq!(Some(o.task_id.as_str()), e["uuid"].as_str());
    }
}

#[test]
fn event_task_multi_largest_capture_decodes() {
    let f = "event_task_multi_largest.bin";
    let evs = events::decode(&fixture(f)).unwrap();
    assert!(!evs.is_empty());
    for e in &evs {
        let obs = task_obs(events::observe(e, during_capture()));
        assert!(is_uuid_like(&obs.task_id));
        assert_eq!(obs.fields.worker.as_deref(), Some("cap_plain@caphost"));
    }
}

// ---- control ----

#[test]
fn control_enable_events_matches_the_captured_pidbox_broadcast() {
    let captured_entry = entry("control_enable_events.bin");
    let captured_channel = captured_entry
        .source
        .strip_prefix("PUBLISH channel ")
        .unwrap();
    let captured = fixture_json("control_enable_events.bin");

    let now = t("2026-11-23T13:41:15Z");
    let tag = "6f1c1d6e-0000-4000-8000-000000000001";
    let (channel, bytes) = control::enable_events(0, tag, now);
    assert_eq!(channel, captured_channel);
    assert_eq!(channel, "/0.celery.pidbox");
    let ours: Value = serde_json::from_slice(&bytes).unwrap();

    // Envelope shape.
    assert_eq!(keys(&ours), keys(&captured));
    assert_eq!(keys(&ours["headers"]), keys(&captured["headers"]));
    assert_eq!(keys(&ours["properties"]), keys(&captured["properties"]));
    for field in ["content-type", "content-encoding"] {
        assert_eq!(ours[field], captured[field], "{field}");
    }
    for field in [
        "delivery_info",
        "delivery_mode",
        "priority",
        "body_encoding",
    ] {
        assert_eq!(
            ours["properties"][field], captured["properties"][field],
            "{field}"
        );
    }
    assert_eq!(ours["properties"]["delivery_tag"], tag);
    // Expires soon after `now`, in Unix seconds like celery's.
    let expires = ours["headers"]["expires"].as_f64().unwrap();
    assert!(captured["headers"]["expires"].is_f64());
    let now_s = now.timestamp() as f64;
    assert!(expires > now_s && expires <= now_s + 60.0, "{expires}");

    // Body.
    let our_body = envelope_body(&ours);
    let captured_body = envelope_body(&captured);
    for field in ["method", "arguments", "destination", "pattern", "matcher"] {
        assert_eq!(our_body[field], captured_body[field], "{field}");
    }
    assert_eq!(keys(&our_body), keys(&captured_body));
    assert_eq!(our_body["method"], "enable_events");

    // Another database, another channel.
    assert_eq!(control::enable_events(3, tag, now).0, "/3.celery.pidbox");
}

// ---------------------------------------------------------------------------------------------
// 2. Through the Adapter trait
// ---------------------------------------------------------------------------------------------

#[test]
fn adapter_lrange_of_captured_messages_yields_queued_with_attempt() {
    let mut a = adapter();
    let files = &QUEUE_MESSAGES[..6];
    let items: Vec<Vec<u8>> = files.iter().map(|f| fixture(f)).collect();
    let now = during_capture();
    let out = a.answer(&lrange("celery"), bulk_array(&items), now);
    assert!(out.decode_errors.is_empty(), "{:#?}", out.decode_errors);
    assert!(out.follow_up.is_empty(), "a short page needs no next page");
    let obs = tasks(&out);
    assert_eq!(obs.len(), files.len());
    for (o, f) in obs.iter().zip(files) {
        let msg = message::decode(&fixture(f)).unwrap();
        assert_eq!(o.task_id, manifest_task_id(f), "{f}");
        assert_eq!(o.event, TaskEvent::Queued, "{f}");
        assert_eq!(o.source, "queue", "{f}");
        assert_eq!(o.broker, Broker::Celery, "{f}");
        assert_eq!(o.at, now, "{f}");
        assert_eq!(o.attempt, Some(msg.retries), "{f}");
        assert_eq!(o.fields.queue.as_deref(), Some("celery"), "{f}");
        assert_eq!(o.fields.name, msg.name, "{f}");
        assert_eq!(o.fields.args, msg.args, "{f}");
        assert_eq!(o.fields.kwargs, msg.kwargs, "{f}");
        assert_eq!(o.fields.eta, msg.eta, "{f}");
    }
    let countdown = obs
        .iter()
        .find(|o| o.task_id == manifest_task_id("queue_message_countdown.bin"))
        .unwrap();
    assert_eq!(countdown.fields.eta, Some(t("2026-11-23T13:42:01.771219Z")));

    // The same entries read again are not news.
    let again = a.answer(&lrange("celery"), bulk_array(&items), now);
    assert!(again.observations.is_empty(), "{again:#?}");
}

/// A countdown message that leaves its queue before its ETA is held by the worker that took it
/// (kombu keeps it in `unacked` until due): still `queued`, never `running` for the whole
/// countdown. One that leaves when due, and a message without an ETA, started.
#[test]
fn adapter_message_leaving_its_queue_before_its_eta_is_held_not_running() {
    let plain = "queue_message_json.bin";
    let countdown = "queue_message_countdown.bin";
    let items = [fixture(plain), fixture(countdown)];
    let eta = t("2026-11-23T13:42:01.771219Z");
    for (left_at, countdown_started) in [
        (during_capture(), false),
        (eta + chrono::Duration::seconds(1), true),
    ] {
        let mut a = adapter();
        let listed = a.answer(&lrange("celery"), bulk_array(&items), during_capture());
        assert_eq!(tasks(&listed).len(), 2, "{listed:#?}");
        let out = a.answer(&lrange("celery"), bulk_array(&[]), left_at);
        // A set: departures come in no particular order.
        let started: std::collections::BTreeSet<String> = tasks(&out)
            .iter()
            .filter(|o| o.event == TaskEvent::Running)
            .map(|o| o.task_id.clone())
            .collect();
        let mut expected = std::collections::BTreeSet::from([manifest_task_id(plain)]);
        if countdown_started {
            expected.insert(manifest_task_id(countdown));
        }
        assert_eq!(started, expected, "left at {left_at}: {out:#?}");
    }
}

#[test]
fn adapter_lrange_of_priority_sub_list_reports_the_base_queue() {
    let mut a = adapter();
    let key = format!("celery{SEP}3");
    let f = "queue_message_priority5_default_steps.bin";
    let out = a.answer(&lrange(&key), bulk_array(&[fixture(f)]), during_capture());
    let o = the_task(&out);
    assert_eq!(o.task_id, manifest_task_id(f));
    assert_eq!(o.fields.queue.as_deref(), Some("celery"));
    assert_eq!(o.event, TaskEvent::Queued);
}

#[test]
fn adapter_full_lrange_page_of_new_messages_asks_for_the_next_page() {
    let mut a = adapter();
    let items: Vec<Vec<u8>> = (0..200).map(|n| json_message_variant(n, |_| {})).collect();
    let out = a.answer(&lrange("celery"), bulk_array(&items), during_capture());
    assert_eq!(tasks(&out).len(), 200);
    assert_eq!(
        out.follow_up,
        vec![ReadRequest::LRange {
            key: "celery".into(),
            start: 200,
            stop: 399
        }]
    );
    // Nothing new on a full page: stop paging.
    let out = a.answer(&lrange("celery"), bulk_array(&items), during_capture());
    assert!(out.follow_up.is_empty());
}

fn unacked_reply(entries: &[&str]) -> Reply {
    let mut items = Vec::new();
    for f in entries {
        items.push(Reply::Bytes(manifest_unacked_tag(f).into_bytes()));
        items.push(Reply::Bytes(fixture(f)));
    }
    Reply::Array(items)
}

fn hgetall_unacked() -> ReadRequest {
    ReadRequest::HGetAll("unacked".into())
}

#[test]
fn adapter_hgetall_unacked_yields_running_or_queued_for_future_eta_then_acknowledged() {
    let mut a = adapter();
    let running_f = "unacked_acks_late_running_plain.bin";
    let eta_f = "unacked_eta_plain.bin";
    let running_id = manifest_task_id("result_started_plain.bin");
    let eta_msg = message::decode_envelope(&fixture_json(eta_f)[0]).unwrap();
    let now = during_capture();
    assert!(eta_msg.eta.unwrap() > now);

    let out = a.answer(&hgetall_unacked(), unacked_reply(&[running_f, eta_f]), now);
    assert!(out.decode_errors.is_empty(), "{:#?}", out.decode_errors);
    assert!(
        out.queue_samples.is_empty(),
        "no sampling round was started"
    );
    let obs = tasks(&out);
    assert_eq!(obs.len(), 2);
    let running = obs.iter().find(|o| o.task_id == running_id).unwrap();
    assert_eq!(running.event, TaskEvent::Running);
    assert_eq!(running.source, "unacked");
    assert_eq!(running.attempt, Some(0));
    assert_eq!(running.fields.queue.as_deref(), Some("celery"));
    assert_eq!(running.fields.name.as_deref(), Some("cap.slow"));
    assert_eq!(running.fields.args, Some(json!([3])));
    let held = obs.iter().find(|o| o.task_id == eta_msg.task_id).unwrap();
    assert_eq!(held.event, TaskEvent::Queued, "ETA still in the future");
    assert_eq!(held.fields.eta, eta_msg.eta);

    // The same hash again: nothing new.
    let out = a.answer(&hgetall_unacked(), unacked_reply(&[running_f, eta_f]), now);
    assert!(out.observations.is_empty(), "{out:#?}");

    // Both entries vanished: the running one was acknowledged; the held one, whose ETA is
    // still ahead, was given back to its queue (a worker acks an ETA message only once it
    // starts it), so it is not running.
    let later = now + chrono::Duration::seconds(1);
    assert!(eta_msg.eta.unwrap() > later + chrono::Duration::seconds(2));
    let out = a.answer(&hgetall_unacked(), Reply::Array(vec![]), later);
    let obs = tasks(&out);
    assert_eq!(obs.len(), 1, "{out:#?}");
    let o = &obs[0];
    assert_eq!(o.task_id, running_id);
    assert_eq!(o.event, TaskEvent::Running);
    assert_eq!(o.source, "unacked: acknowledged");
    assert_eq!(o.attempt, Some(0));
    assert_eq!(o.fields.queue.as_deref(), Some("celery"));
    assert_eq!(o.at, later);

    // And a missing key (nil) reads as empty: nothing left to acknowledge.
    let out = a.answer(&hgetall_unacked(), Reply::Nil, later);
    assert!(out.observations.is_empty());
}

#[test]
fn adapter_hgetall_unacked_past_eta_is_running() {
    let mut a = adapter();
    let f = "unacked_eta_extended.bin";
    let msg = message::decode_envelope(&fixture_json(f)[0]).unwrap();
    let after_eta = msg.eta.unwrap() + chrono::Duration::seconds(1);
    let out = a.answer(&hgetall_unacked(), unacked_reply(&[f]), after_eta);
    let o = the_task(&out);
    assert_eq!(o.task_id, msg.task_id);
    assert_eq!(o.event, TaskEvent::Running);
}

#[test]
fn adapter_hgetall_unacked_early_ack_snapshot_is_running_then_acknowledged() {
    let mut a = adapter();
    let f = "unacked_early_ack_snapshot.bin";
    let msg = message::decode_envelope(&fixture_json(f)[0]).unwrap();
    let tag = msg.delivery_tag.clone().unwrap();
    let reply = Reply::Array(vec![
        Reply::Bytes(tag.into_bytes()),
        Reply::Bytes(fixture(f)),
    ]);
    let out = a.answer(&hgetall_unacked(), reply, during_capture());
    assert_eq!(the_task(&out).event, TaskEvent::Running);
    let out = a.answer(&hgetall_unacked(), Reply::Array(vec![]), during_capture());
    let o = the_task(&out);
    assert_eq!(o.task_id, msg.task_id);
    assert_eq!(o.source, "unacked: acknowledged");
}

/// With `task_acks_late`, a held ETA task stays in `unacked` with the same delivery tag while it
/// runs (it is acknowledged when it finishes). The first read saw it before its ETA (queued);
/// a read after the ETA still finds it, so it is running now.
#[test]
fn adapter_unacked_eta_task_still_held_after_its_eta_becomes_running() {
    let mut a = adapter();
    let f = "unacked_eta_plain.bin";
    let msg = message::decode_envelope(&fixture_json(f)[0]).unwrap();
    let eta = msg.eta.unwrap();
    let before = eta - chrono::Duration::seconds(5);
    let out = a.answer(&hgetall_unacked(), unacked_reply(&[f]), before);
    assert_eq!(the_task(&out).event, TaskEvent::Queued);
    let after = eta + chrono::Duration::seconds(1);
    let out = a.answer(&hgetall_unacked(), unacked_reply(&[f]), after);
    let o = the_task(&out);
    assert_eq!(o.task_id, msg.task_id);
    assert_eq!(o.event, TaskEvent::Running);
}

#[test]
fn adapter_result_channel_message_yields_observation_per_status() {
    let now = t("2026-11-23T13:45:00Z");
    let cases: [(&str, TaskEvent); 7] = [
        ("result_publish_success_plain.bin", TaskEvent::Succeeded),
        ("result_started_plain.bin", TaskEvent::Running),
        ("result_failure_plain.bin", TaskEvent::Failed),
        ("result_retry_plain.bin", TaskEvent::Retried),
        ("result_revoked_plain.bin", TaskEvent::Failed),
        ("result_publish_success_extended.bin", TaskEvent::Succeeded),
        ("result_success_unicode_extended.bin", TaskEvent::Succeeded),
    ];
    for (f, event) in cases {
        let mut a = adapter();
        let id = manifest_task_id(f);
        let channel = format!("celery-task-meta-{id}");
        let out = a.on_message(&channel, &fixture(f), now);
        let o = the_task(&out);
        assert_eq!(o.task_id, id, "{f}");
        assert_eq!(o.event, event, "{f}");
        assert_eq!(o.source, "result", "{f}");
        let meta = result::decode(&fixture(f), None).unwrap();
        assert_eq!(o.at, meta.date_done.unwrap_or(now), "{f}");
        match event {
            TaskEvent::Succeeded => assert_eq!(o.fields.result, Some(meta.result.clone()), "{f}"),
            TaskEvent::Running => {
                assert_eq!(o.fields.worker.as_deref(), Some("cap_plain@caphost"), "{f}")
            }
            _ => assert!(o.fields.error.is_some(), "{f}"),
        }
    }

    let mut a = adapter();
    let f = "result_failure_plain.bin";
    let out = a.on_message(
        &format!("celery-task-meta-{}", manifest_task_id(f)),
        &fixture(f),
        now,
    );
    let o = the_task(&out);
    assert_eq!(
        o.fields.error.as_deref(),
        Some("ValueError: card declined 3")
    );
    assert!(o
        .fields
        .traceback
        .as_deref()
        .unwrap()
        .contains("card declined"));

    let f = "result_revoked_plain.bin";
    let out = a.on_message(
        &format!("celery-task-meta-{}", manifest_task_id(f)),
        &fixture(f),
        now,
    );
    assert_eq!(
        the_task(&out).fields.error.as_deref(),
        Some("TaskRevokedError: revoked")
    );

    let f = "result_success_extended.bin";
    let out = a.on_message(
        &format!("celery-task-meta-{}", manifest_task_id(f)),
        &fixture(f),
        now,
    );
    let o = the_task(&out);
    assert_eq!(o.attempt, Some(0));
    assert_eq!(o.fields.name.as_deref(), Some("cap.slow"));
    assert_eq!(o.fields.args, Some(json!([3])));
    assert_eq!(o.fields.worker.as_deref(), Some("cap_extended@caphost"));
    assert_eq!(o.fields.queue.as_deref(), Some("celery"));
}

#[test]
fn adapter_plain_retry_record_is_numbered_after_the_message_that_ran() {
    // The queue message names attempt 0; the plain RETRY record that follows is about it.
    let mut a = adapter();
    let id = manifest_task_id("result_retry_plain.bin");
    let msg = json_message_variant(1, |v| {
        v["headers"]["id"] = json!(id);
    });
    let now = during_capture();
    a.answer(&lrange("celery"), bulk_array(&[msg]), now);
    let out = a.on_message(
        &format!("celery-task-meta-{id}"),
        &fixture("result_retry_plain.bin"),
        now,
    );
    let o = the_task(&out);
    assert_eq!(o.event, TaskEvent::Retried);
    assert_eq!(o.attempt, Some(0));
    assert_eq!(
        o.fields.error.as_deref(),
        Some("ValueError: card declined 3")
    );

    // Without any earlier sign of the task, a published RETRY record is taken for attempt 0's
    // (pub/sub delivers each record once; see `attempts`).
    let mut b = adapter();
    let out = b.on_message(
        &format!("celery-task-meta-{id}"),
        &fixture("result_retry_plain.bin"),
        now,
    );
    assert_eq!(the_task(&out).attempt, Some(0));
    // Of a task the store holds (open at a reconciliation: taskscope restarted while it was
    // retrying), the record may be of any attempt: unknown.
    let mut d = adapter();
    let open = broker_adapters::adapter::OpenTask {
        id: id.clone(),
        queue: None,
        name: None,
    };
    d.reconcile(&[open], now);
    let out = d.on_message(
        &format!("celery-task-meta-{id}"),
        &fixture("result_retry_plain.bin"),
        now,
    );
    assert_eq!(the_task(&out).attempt, None);
    // Read from its key (a re-read may repeat a record), it stays unknown.
    let mut c = adapter();
    let out = c.answer(
        &ReadRequest::Get(format!("celery-task-meta-{id}")),
        Reply::Bytes(fixture("result_retry_plain.bin")),
        now,
    );
    assert_eq!(the_task(&out).attempt, None);
}

/// A `task.multi` event message (a bare kombu envelope whose body is the list of events).
fn task_multi(events: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "body": events })).unwrap()
}

fn task_event(id: &str, kind: &str, at: f64, extra: Value) -> Value {
    let mut e = json!({"hostname": "celery@w1", "pid": 7, "clock": 1, "uuid": id,
                       "timestamp": at, "type": kind});
    if let (Some(map), Value::Object(more)) = (e.as_object_mut(), extra) {
        map.extend(more);
    }
    e
}

fn plain_record(id: &str, status: &str, date_done: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"status": status, "result": 1, "traceback": null,
                               "children": [], "date_done": date_done, "task_id": id}))
    .unwrap()
}

#[test]
fn adapter_requeued_message_read_before_attempt_zero_events_counts_one_retry() {
    // Under load a queue read runs late and sees Redis as it is now: the re-queued message of
    // attempt 1 (pushed and popped in one pipeline) is the first sign of the task, while the
    // pub/sub messages of attempt 0 still wait in taskscope's queue. They must not make the
    // RETRY of attempt 0 a second retry.
    use broker_adapters::state;
    let mut a = adapter();
    let id = "00000000-0000-4000-8000-000000000042";
    let (w1, w2, w3) = (1_795_000_000.100_f64, 1_795_000_000.140, 1_795_000_000.180);
    let requeued = json_message_variant(42, |v| {
        v["headers"]["retries"] = json!(1);
        v["properties"]["delivery_tag"] = json!("ffffffff-0000-4000-8000-000000000043");
    });
    let read_at = unix(w2 + 0.05);
    let meta = format!("celery-task-meta-{id}");
    let mut outputs = vec![a.answer(&lrange("celery"), bulk_array(&[requeued]), read_at)];
    let mut publish = |channel: &str, payload: Vec<u8>| {
        outputs.push(a.on_message(channel, &payload, read_at));
    };
    let ev = "/0.celeryev/task.multi";
    publish(
        ev,
        task_multi(json!([
            task_event(
                id,
                "task-received",
                w1,
                json!({"name": "cap.add", "retries": 0})
            ),
            task_event(id, "task-started", w1, json!({})),
        ])),
    );
    publish(&meta, plain_record(id, "RETRY", "2026-11-18T11:06:40.140Z"));
    publish(
        ev,
        task_multi(json!([task_event(id, "task-retried", w2, json!({}))])),
    );
    publish(
        ev,
        task_multi(json!([
            task_event(
                id,
                "task-received",
                w2,
                json!({"name": "cap.add", "retries": 1})
            ),
            task_event(id, "task-started", w2, json!({})),
        ])),
    );
    publish(
        &meta,
        plain_record(id, "SUCCESS", "2026-11-18T11:06:40.180Z"),
    );
    publish(
        ev,
        task_multi(json!([task_event(
            id,
            "task-succeeded",
            w3,
            json!({"runtime": 0.04})
        )])),
    );
    let mut task = None;
    for out in &outputs {
        assert!(out.decode_errors.is_empty(), "{:#?}", out.decode_errors);
        for obs in tasks(out) {
            task = Some(state::apply(task, obs).task);
        }
    }
    let task = task.expect("observations of the task");
    assert_eq!(task.state, broker_adapters::model::TaskState::Success);
    assert_eq!(task.retries, 1, "{task:#?}");
}

/// An `unacked` entry (`[envelope, exchange, routing_key]`) of attempt `retries` of task `id`
/// (the captured message, edited), due at `eta`.
fn unacked_attempt(id: &str, retries: u32, eta: Option<&str>) -> Vec<u8> {
    let envelope = json_message_variant(50 + retries as usize, |v| {
        v["headers"]["id"] = json!(id);
        v["headers"]["retries"] = json!(retries);
        v["headers"]["eta"] = json!(eta);
    });
    let envelope: Value = serde_json::from_slice(&envelope).unwrap();
    serde_json::to_vec(&json!([envelope, "", "celery"])).unwrap()
}

#[test]
fn adapter_retried_message_due_before_the_retry_record_still_counts_as_retried() {
    // Issue #13: passive mode, `self.retry()` with `default_retry_delay=0.3`, a loaded machine.
    // Order seen end to end (tests/celery_load.rs, taskscope stalled as a CPU-starved process
    // is): the re-sent message of attempt 1 is first read in `unacked` already due, and the
    // worker stores the RETRY record of attempt 0 only after that (the message is published
    // first, the record ~0.3 s later under load). The record is then behind attempt 1's start;
    // each retry must still leave a `retried` in the timeline.
    use broker_adapters::model::{TaskState, Transition};
    use broker_adapters::state;
    let mut a = adapter();
    let id = "00000000-0000-4000-8000-000000000077";
    let meta = format!("celery-task-meta-{id}");
    let tag = |n: u32| format!("ffffffff-0000-4000-8000-0000000001{n:02}");
    let unacked = |entries: &[(u32, Vec<u8>)]| {
        let mut items = Vec::new();
        for (n, value) in entries {
            items.push(Reply::Bytes(tag(*n).into_bytes()));
            items.push(Reply::Bytes(value.clone()));
        }
        Reply::Array(items)
    };
    let at = |s: &str| t(&format!("2026-12-06T01:08:{s}Z"));
    let mut outputs = Vec::new();
    // Attempt 0: taken, acknowledged (it runs), fails.
    let m0 = unacked_attempt(id, 0, None);
    outputs.push(a.answer(&hgetall_unacked(), unacked(&[(0, m0)]), at("48.441")));
    outputs.push(a.answer(&hgetall_unacked(), unacked(&[]), at("48.497")));
    // Attempt 1's message (due 48.730) is first read when due; then acknowledged.
    let m1 = unacked_attempt(id, 1, Some("2026-12-06T01:08:48.730000+00:00"));
    outputs.push(a.answer(&hgetall_unacked(), unacked(&[(1, m1)]), at("48.732")));
    outputs.push(a.answer(&hgetall_unacked(), unacked(&[]), at("48.819")));
    // The RETRY record of attempt 0 only now.
    let retry0 = plain_record(id, "RETRY", "2026-12-06T01:08:48.730Z");
    outputs.push(a.on_message(&meta, &retry0, at("48.840")));
    // Attempt 2's message waits for its ETA; the RETRY of attempt 1; attempt 2 runs, succeeds.
    let m2 = unacked_attempt(id, 2, Some("2026-12-06T01:08:49.290000+00:00"));
    outputs.push(a.answer(&hgetall_unacked(), unacked(&[(2, m2)]), at("48.981")));
    let retry1 = plain_record(id, "RETRY", "2026-12-06T01:08:49.041Z");
    outputs.push(a.on_message(&meta, &retry1, at("49.045")));
    outputs.push(a.answer(&hgetall_unacked(), unacked(&[]), at("49.300")));
    let success = plain_record(id, "SUCCESS", "2026-12-06T01:08:49.350Z");
    outputs.push(a.on_message(&meta, &success, at("49.352")));

    let mut task = None;
    let mut transitions: Vec<Transition> = Vec::new();
    for out in &outputs {
        assert!(out.decode_errors.is_empty(), "{:#?}", out.decode_errors);
        for obs in tasks(out) {
            let applied = state::apply(task, obs);
            transitions.extend(applied.transition);
            task = Some(applied.task);
        }
    }
    let task = task.expect("observations of the task");
    let states: Vec<TaskState> = transitions.iter().map(|t| t.state).collect();
    assert_eq!(task.state, TaskState::Success, "{states:?}");
    assert_eq!(task.retries, 2, "{task:#?}");
    assert_eq!(
        states,
        [
            TaskState::Running,
            TaskState::Retried,
            TaskState::Running,
            TaskState::Retried,
            TaskState::Running,
            TaskState::Success
        ],
        "{transitions:#?}"
    );
}

#[test]
fn adapter_retry_records_published_before_any_other_sign_count_every_retry() {
    // Issue #13, reproduced end to end by stalling taskscope (tests/celery_load.rs,
    // TASKSCOPE_LOAD_STALL_MS) as a CPU-starved process is: attempt 0's message came and went
    // unseen, and the task's first sign is its RETRY record (no date_done: taskscope's time).
    // Then the re-sent message held in `unacked`, the RETRY record of attempt 1, the SUCCESS,
    // and a late `unacked` read. The task retried twice; it counted one, the second RETRY
    // record taken for a copy of the first.
    use broker_adapters::model::{TaskState, Transition};
    use broker_adapters::state;
    let mut a = adapter();
    let id = "00000000-0000-4000-8000-000000000078";
    let meta = format!("celery-task-meta-{id}");
    let at = |s: &str| t(&format!("2026-12-06T01:13:{s}Z"));
    let retry = serde_json::to_vec(
        &json!({"status": "RETRY", "result": {"exc_type": "RuntimeError",
        "exc_message": ["flaky"], "exc_module": "builtins"}, "traceback": "Traceback ...",
        "children": [], "date_done": null, "task_id": id}),
    )
    .unwrap();
    let mut outputs = vec![a.on_message(&meta, &retry, at("08.982"))];
    let m1 = unacked_attempt(id, 1, Some("2026-12-06T01:13:09.280000+00:00"));
    let tag = b"ffffffff-0000-4000-8000-000000000201".to_vec();
    let held = Reply::Array(vec![Reply::Bytes(tag), Reply::Bytes(m1)]);
    outputs.push(a.answer(&hgetall_unacked(), held, at("08.981")));
    outputs.push(a.on_message(&meta, &retry, at("13.081")));
    let success = plain_record(id, "SUCCESS", "2026-12-06T01:13:09.545Z");
    outputs.push(a.on_message(&meta, &success, at("13.082")));
    outputs.push(a.answer(&hgetall_unacked(), Reply::Array(vec![]), at("13.109")));

    let mut task = None;
    let mut transitions: Vec<Transition> = Vec::new();
    for out in &outputs {
        assert!(out.decode_errors.is_empty(), "{:#?}", out.decode_errors);
        for obs in tasks(out) {
            let applied = state::apply(task, obs);
            transitions.extend(applied.transition);
            task = Some(applied.task);
        }
    }
    let task = task.expect("observations of the task");
    let states: Vec<TaskState> = transitions.iter().map(|t| t.state).collect();
    assert_eq!(task.state, TaskState::Success, "{states:?}");
    assert_eq!(task.retries, 2, "{task:#?}");
    assert_eq!(
        states,
        [TaskState::Retried, TaskState::Retried, TaskState::Success],
        "{transitions:#?}"
    );
}

#[test]
fn adapter_mget_and_get_of_result_keys_yield_observations() {
    let mut a = adapter();
    let files = ["result_success_plain.bin", "result_failure_extended.bin"];
    let keys: Vec<String> = files
        .iter()
        .map(|f| format!("celery-task-meta-{}", manifest_task_id(f)))
        .collect();
    let reply = Reply::Array(vec![
        Reply::Bytes(fixture(files[0])),
        Reply::Bytes(fixture(files[1])),
    ]);
    let out = a.answer(&ReadRequest::MGet(keys.clone()), reply, during_capture());
    let obs = tasks(&out);
    assert_eq!(obs.len(), 2);
    assert_eq!(obs[0].event, TaskEvent::Succeeded);
    assert_eq!(obs[1].event, TaskEvent::Failed);
    assert_eq!(obs[1].task_id, manifest_task_id(files[1]));

    // A missing key is nil: nothing, no error.
    let out = a.answer(
        &ReadRequest::MGet(keys.clone()),
        Reply::Array(vec![Reply::Nil, Reply::Bytes(fixture(files[1]))]),
        during_capture(),
    );
    assert_eq!(tasks(&out).len(), 1);
    assert!(out.decode_errors.is_empty());

    let out = a.answer(
        &ReadRequest::Get(keys[0].clone()),
        Reply::Bytes(fixture(files[0])),
        during_capture(),
    );
    assert_eq!(the_task(&out).event, TaskEvent::Succeeded);
}

#[test]
fn adapter_celeryev_task_multi_message_yields_observations() {
    let mut a = adapter();
    let now = during_capture();
    let received = a.on_message(
        "/0.celeryev/task.multi",
        &fixture("event_task_multi_containing_task_received_after_enable_events.bin"),
        now,
    );
    let o = the_task(&received);
    assert_eq!(o.event, TaskEvent::Running);
    assert_eq!(o.attempt, Some(0));
    let started = a.on_message(
        "/0.celeryev/task.multi",
        &fixture("event_task_multi_containing_task_started_after_enable_events.bin"),
        now,
    );
    let o = the_task(&started);
    assert_eq!(o.event, TaskEvent::Running);
    assert_eq!(o.fields.started_at, Some(o.at));
    assert_eq!(
        o.attempt,
        Some(0),
        "numbered after the task-received of attempt 0"
    );
    let succeeded = a.on_message(
        "/0.celeryev/task.multi",
        &fixture("event_task_multi_containing_task_succeeded_after_enable_events.bin"),
        now,
    );
    let o = the_task(&succeeded);
    assert_eq!(o.event, TaskEvent::Succeeded);
    assert!(o.fields.runtime_ms.unwrap() > 0.0);

    let (batch, evs) = multi_batch();
    let out = a.on_message("/0.celeryev/task.multi", &batch, now);
    assert!(out.decode_errors.is_empty());
    assert_eq!(tasks(&out).len(), evs.len());

    let out = a.on_message(
        "/0.celeryev/worker.heartbeat",
        &fixture("event_worker_heartbeat_without_E.bin"),
        now,
    );
    assert_eq!(out.observations.len(), 1);
    match &out.observations[0] {
        Observation::Worker(w) => {
            assert_eq!(w.pid, Some(21416));
            assert_eq!(w.heartbeat_every_s, Some(2.0));
            assert_eq!(w.event, WorkerEvent::Heartbeat);
        }
        other => panic!("{other:#?}"),
    }

    // The pidbox channel is not an event channel.
    let out = a.on_message(
        "/0.celery.pidbox",
        &fixture("control_enable_events.bin"),
        now,
    );
    assert_eq!(out, Output::default());
}

fn binding_members(file: &str) -> Reply {
    let bytes = fixture(file);
    Reply::Array(
        bytes
            .split(|b| *b == b'\n')
            .filter(|m| !m.is_empty())
            .map(|m| Reply::Bytes(m.to_vec()))
            .collect(),
    )
}

#[test]
fn adapter_smembers_binding_adds_the_queue_and_reads_its_lists() {
    let mut a = CeleryAdapter::new(CeleryConfig {
        db: 0,
        queues: vec![],
        result_url: None,
        ..CeleryConfig::default()
    });
    assert_eq!(a.queues().count(), 0);
    let req = ReadRequest::SMembers("_kombu.binding.celery".into());
    let out = a.answer(
        &req,
        binding_members("kombu_binding_celery.bin"),
        during_capture(),
    );
    assert!(out.observations.is_empty() && out.decode_errors.is_empty());
    assert_eq!(a.queues().collect::<Vec<_>>(), ["celery"]);
    let mut want = vec![lrange("celery")];
    want.extend(
        PRIORITY_STEPS
            .iter()
            .map(|p| lrange(&format!("celery{SEP}{p}"))),
    );
    assert_eq!(out.follow_up, want);
    // Known now: no second round of reads.
    let out = a.answer(
        &req,
        binding_members("kombu_binding_celery.bin"),
        during_capture(),
    );
    assert!(out.follow_up.is_empty());

    // The producer-written set and a new queue with the default config.
    let mut d = adapter();
    let out = d.answer(
        &req,
        binding_members("kombu_binding_celery_after_publish.bin"),
        during_capture(),
    );
    assert!(out.follow_up.is_empty(), "celery is configured already");
    let billing = format!("billing{SEP}{SEP}billing");
    let out = d.answer(
        &ReadRequest::SMembers("_kombu.binding.billing".into()),
        Reply::Array(vec![Reply::Bytes(billing.into_bytes())]),
        during_capture(),
    );
    assert_eq!(out.follow_up.len(), 1 + PRIORITY_STEPS.len());
    assert_eq!(out.follow_up[0], lrange("billing"));
    assert!(d.queues().any(|q| q == "billing"));
    assert!(d.interest().key_patterns.contains(&"billing".to_string()));
}

/// A producer that names a queue per tenant (or a hostile one) cannot grow the queues watched
/// (and their reads, samples and state) without bound: past `MAX_QUEUES` new ones are refused,
/// the ones watched stay.
#[test]
fn adapter_watches_at_most_max_queues() {
    let mut a = adapter();
    let extra = 5;
    for i in 0..broker_adapters::bounded::MAX_QUEUES + extra {
        let entry = format!("tenant-{i}{SEP}{SEP}tenant-{i}");
        a.answer(
            &ReadRequest::SMembers(format!("_kombu.binding.tenant-{i}")),
            Reply::Array(vec![Reply::Bytes(entry.into_bytes())]),
            during_capture(),
        );
    }
    assert_eq!(a.queues().count(), broker_adapters::bounded::MAX_QUEUES);
    assert!(
        a.queues().any(|q| q == "celery"),
        "the configured queue stays"
    );
    let late = format!("late{SEP}{SEP}late");
    let out = a.answer(
        &ReadRequest::SMembers("_kombu.binding.late".into()),
        Reply::Array(vec![Reply::Bytes(late.into_bytes())]),
        during_capture(),
    );
    assert!(out.follow_up.is_empty(), "a refused queue is not read");
}

#[test]
fn adapter_smembers_pidbox_and_celeryev_bindings_add_no_queue() {
    let mut a = CeleryAdapter::new(CeleryConfig {
        db: 0,
        queues: vec![],
        result_url: None,
        ..CeleryConfig::default()
    });
    for (key, file) in [
        (
            "_kombu.binding.celery.pidbox",
            "kombu_binding_celery.pidbox.bin",
        ),
        ("_kombu.binding.celeryev", "kombu_binding_celeryev.bin"),
    ] {
        let out = a.answer(
            &ReadRequest::SMembers(key.into()),
            binding_members(file),
            during_capture(),
        );
        assert!(out.follow_up.is_empty(), "{key}: {out:#?}");
    }
    assert_eq!(a.queues().count(), 0);
}

/// Redis glob with `*` only, enough for the adapter's channel patterns.
fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

#[test]
fn adapter_interest_covers_celeryev_and_result_channels() {
    let a = adapter();
    let interest = a.interest();
    let patterns = &interest.channel_patterns;
    assert!(
        patterns.contains(&"celery-task-meta-*".to_string()),
        "{patterns:?}"
    );
    assert!(
        patterns.contains(&"/0.celeryev*".to_string()),
        "{patterns:?}"
    );
    // Every captured event channel, and a result channel, is matched.
    let channels = String::from_utf8(fixture("channel_names.txt")).unwrap();
    let mut event_channels = 0;
    for line in channels.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split('\t').next().unwrap().trim_matches('\'');
        if name.contains("celeryev") {
            event_channels += 1;
            assert!(patterns.iter().any(|p| glob_match(p, name)), "{name}");
        }
    }
    assert_eq!(event_channels, 4);
    let result_channel = format!(
        "celery-task-meta-{}",
        manifest_task_id("result_success_plain.bin")
    );
    assert!(patterns.iter().any(|p| glob_match(p, &result_channel)));

    assert!(interest.key_patterns.contains(&"unacked".to_string()));
    assert!(interest.key_patterns.contains(&"celery".to_string()));
    assert!(interest.key_patterns.contains(&format!("celery{SEP}*")));
    assert!(interest.prefetch.iter().any(|p| p.key == "unacked"
        && p.reads.len() == 1
        && matches!(&p.reads[0], broker_adapters::PrefetchRead::Read(r) if *r == hgetall_unacked())));

    let other_db = CeleryAdapter::new(CeleryConfig {
        db: 5,
        queues: vec!["celery".into()],
        result_url: None,
        ..CeleryConfig::default()
    });
    assert!(other_db
        .interest()
        .channel_patterns
        .contains(&"/5.celeryev*".to_string()));
}

#[test]
fn adapter_sampling_round_yields_queue_samples_with_length_running_delayed() {
    let mut a = adapter();
    let now = during_capture();
    let reads = a.sample_queues(now);
    let mut want: Vec<ReadRequest> = vec![ReadRequest::LLen("celery".into())];
    want.extend(
        PRIORITY_STEPS
            .iter()
            .map(|p| ReadRequest::LLen(format!("celery{SEP}{p}"))),
    );
    want.push(hgetall_unacked());
    assert_eq!(reads, want);

    let lengths = [3i64, 1, 0, 2];
    let mut samples = Vec::new();
    for (req, len) in reads.iter().zip(lengths) {
        let out = a.answer(req, Reply::Int(len), now);
        assert_eq!(out, Output::default(), "{req:?}");
    }
    let last = reads.last().unwrap();
    let out = a.answer(
        last,
        unacked_reply(&[
            "unacked_acks_late_running_plain.bin",
            "unacked_eta_plain.bin",
        ]),
        now,
    );
    samples.extend(out.queue_samples);
    assert_eq!(samples.len(), 1, "{samples:#?}");
    let s = &samples[0];
    assert_eq!(s.broker, Broker::Celery);
    assert_eq!(s.name, "celery");
    assert_eq!(s.length, 6);
    assert_eq!(s.running, 1);
    assert_eq!(s.delayed, 1);
    assert_eq!(s.dead, 0);
    assert_eq!(s.sampled_at, now);

    // A later HGETALL outside a round emits no sample.
    let out = a.answer(last, Reply::Array(vec![]), now);
    assert!(out.queue_samples.is_empty());

    // LLEN replies as bulk strings, nil and errors count as what they hold (or 0).
    let reads = a.sample_queues(now);
    let replies = [
        Reply::Bytes(b"4".to_vec()),
        Reply::Nil,
        Reply::Error("WRONGTYPE".into()),
        Reply::Int(-1),
    ];
    for (req, reply) in reads.iter().zip(replies) {
        a.answer(req, reply, now);
    }
    let out = a.answer(reads.last().unwrap(), Reply::Array(vec![]), now);
    assert_eq!(out.queue_samples.len(), 1);
    assert_eq!(out.queue_samples[0].length, 4);
    assert_eq!(out.queue_samples[0].running, 0);
}

#[test]
fn adapter_redis_error_reply_is_a_decode_error_with_the_key() {
    let mut a = adapter();
    let out = a.answer(
        &lrange("celery"),
        Reply::Error("WRONGTYPE Operation against a key".into()),
        during_capture(),
    );
    assert!(out.observations.is_empty());
    assert_eq!(out.decode_errors.len(), 1);
    assert_eq!(out.decode_errors[0].key, "celery");
    assert_eq!(out.decode_errors[0].kind, "redis-reply");
}

// ---------------------------------------------------------------------------------------------
// 3. Garbage
// ---------------------------------------------------------------------------------------------

/// A queue page mixing every captured message with every kind of broken entry: each valid
/// message (and each protocol-2 message whose body alone is broken) is reported, each entry
/// that cannot name its task is one decode error carrying the key.
#[test]
fn garbage_entries_in_a_queue_page_lose_no_neighbour() {
    let real = fixture("queue_message_json.bin");
    let valid: Vec<Vec<u8>> = QUEUE_MESSAGES[..6].iter().map(|f| fixture(f)).collect();

    // Protocol 2: the task is in the headers, so it survives a broken body (args from argsrepr).
    let broken_body_p2 = vec![
        json_message_variant(1, |v| v["body"] = json!("!!!not base64!!!")),
        json_message_variant(2, |v| v["content-type"] = json!("application/x-yaml")),
        json_message_variant(3, |v| {
            use base64::Engine as _;
            v["body"] = json!(base64::engine::general_purpose::STANDARD.encode([0xff, 0x00, 0x13]))
        }),
    ];
    // Entries that name no task at all.
    let garbage: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xff, 0xfe, 0x00, 0x42, 0x13], "envelope-json"),
        (real[..real.len() / 2].to_vec(), "envelope-json"),
        (b"[1, 2, 3]".to_vec(), "envelope-shape"),
        (b"{}".to_vec(), "envelope-no-id"),
        (
            protocol1_variant(1, |v| v["body"] = json!("!!!not base64!!!")),
            "body-decode",
        ),
        (
            protocol1_variant(2, |v| v["content-type"] = json!("application/x-yaml")),
            "body-decode",
        ),
        (
            protocol1_variant(3, |v| {
                use base64::Engine as _;
                v["body"] = json!(base64::engine::general_purpose::STANDARD.encode(b"{\"id\": "))
            }),
            "body-decode",
        ),
    ];

    // Interleave: garbage, valid, broken body, ...
    let mut items = Vec::new();
    let mut expected_ids = Vec::new();
    let mut g = garbage.iter();
    for (i, v) in valid.iter().enumerate() {
        if let Some((bytes, _)) = g.next() {
            items.push(bytes.clone());
        }
        items.push(v.clone());
        expected_ids.push(manifest_task_id(QUEUE_MESSAGES[i]));
        if let Some(b) = broken_body_p2.get(i) {
            items.push(b.clone());
            expected_ids.push(message::decode(b).unwrap().task_id);
        }
    }
    items.extend(g.map(|(b, _)| b.clone()));

    let key = "celery";
    let mut a = adapter();
    let out = a.answer(&lrange(key), bulk_array(&items), during_capture());

    let obs = tasks(&out);
    let ids: Vec<String> = obs.iter().map(|o| o.task_id.clone()).collect();
    assert_eq!(
        ids, expected_ids,
        "one Queued observation per task, in order"
    );
    assert!(obs.iter().all(|o| o.event == TaskEvent::Queued));

    // Garbage is a decode error; a message whose body does not decode is one too (its task is
    // listed all the same, below).
    let listed_with_error = |e: &&DecodeError| e.message.starts_with("task ");
    let kinds: Vec<&str> = out
        .decode_errors
        .iter()
        .filter(|e| !listed_with_error(e))
        .map(|e| e.kind)
        .collect();
    let want_kinds: Vec<&str> = garbage.iter().map(|(_, k)| *k).collect();
    assert_eq!(kinds, want_kinds, "{:#?}", out.decode_errors);
    let body_errors = out.decode_errors.iter().filter(listed_with_error).count();
    assert_eq!(
        body_errors,
        broken_body_p2.len(),
        "{:#?}",
        out.decode_errors
    );
    for e in &out.decode_errors {
        assert_eq!(e.key, key);
        assert_eq!(e.broker, Broker::Celery);
        assert!(!e.message.is_empty());
    }

    // The broken-body tasks keep what the headers say.
    for b in &broken_body_p2 {
        let msg = message::decode(b).unwrap();
        assert!(msg.body_error.is_some(), "{msg:#?}");
        assert_eq!(msg.name.as_deref(), Some("cap.add"));
        assert_eq!(msg.args, Some(json!([2, 3])), "from argsrepr");
        assert_eq!(msg.kwargs, Some(json!({})), "from kwargsrepr");
        let o = obs.iter().find(|o| o.task_id == msg.task_id).unwrap();
        assert_eq!(o.fields.args, Some(json!([2, 3])));
        let error = o.fields.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("message body does not decode: "),
            "{error}"
        );
    }
    let errors: Vec<String> = broken_body_p2
        .iter()
        .map(|b| message::decode(b).unwrap().body_error.unwrap())
        .collect();
    assert!(errors[0].contains("base64"), "{}", errors[0]);
    assert!(
        errors[1].contains("unsupported content type"),
        "{}",
        errors[1]
    );
    assert!(errors[2].contains("JSON"), "{}", errors[2]);
}

#[test]
fn garbage_unacked_entries_lose_no_neighbour() {
    let mut a = adapter();
    let good = "unacked_acks_late_running_plain.bin";
    let reply = Reply::Array(vec![
        Reply::Bytes(b"tag-garbage".to_vec()),
        Reply::Bytes(b"\x00\x01 not json".to_vec()),
        Reply::Bytes(manifest_unacked_tag(good).into_bytes()),
        Reply::Bytes(fixture(good)),
        Reply::Bytes(b"tag-empty".to_vec()),
        Reply::Bytes(b"[{}, \"\", \"celery\"]".to_vec()),
    ]);
    let out = a.answer(&hgetall_unacked(), reply, during_capture());
    assert_eq!(tasks(&out).len(), 1);
    assert_eq!(
        tasks(&out)[0].task_id,
        manifest_task_id("result_started_plain.bin")
    );
    assert_eq!(out.decode_errors.len(), 2, "{:#?}", out.decode_errors);
    assert!(out.decode_errors.iter().all(|e| e.key == "unacked"));
}

#[test]
fn garbage_on_result_and_event_channels_is_one_decode_error_with_the_channel() {
    let mut a = adapter();
    let now = during_capture();
    for channel in ["celery-task-meta-x", "/0.celeryev/task.multi"] {
        for payload in [&b"\xff\xfe garbage"[..], b"{\"truncated\": ", b"", b"42"] {
            let out = a.on_message(channel, payload, now);
            assert!(out.observations.is_empty(), "{channel} {payload:?}");
            let errs: &[DecodeError] = &out.decode_errors;
            if channel.contains("celeryev") && payload == b"42" {
                // A bare JSON number is an envelope without a body.
                assert_eq!(errs.len(), 1);
                assert_eq!(errs[0].kind, "event-shape");
            } else {
                assert_eq!(errs.len(), 1, "{channel} {payload:?}: {errs:#?}");
            }
            assert_eq!(errs[0].key, channel);
        }
    }
}

#[test]
fn python_literal_deep_nesting_does_not_overflow() {
    for open in ["(", "[", "{", "{'a': ", "{1, "] {
        let text = open.repeat(100_000);
        assert_eq!(codec::python_literal(&text), None, "{open}");
    }
    let balanced = format!("{}{}", "(".repeat(100_000), ")".repeat(100_000));
    assert_eq!(codec::python_literal(&balanced), None);
    let shallow = format!("{}1{}", "[".repeat(32), "]".repeat(32));
    assert!(codec::python_literal(&shallow).is_some());
    // Through the callers too.
    let repr = format!("ValueError{}", "(".repeat(100_000));
    let _ = codec::error_line_from_repr(&repr);
    let repr = format!("ValueError{})", "(".repeat(100_000));
    let _ = codec::error_line_from_repr(&repr);
}

#[test]
fn deeply_nested_json_payloads_are_errors_not_crashes() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(message::decode(deep.as_bytes()).is_err());
    assert!(result::decode(deep.as_bytes(), None).is_err());
    assert!(events::decode(deep.as_bytes()).is_err());
}

/// `n` nested one-element msgpack arrays around nil: n + 1 bytes.
fn nested_msgpack(n: usize) -> Vec<u8> {
    let mut mp = vec![0x91u8; n];
    mp.push(0xc0);
    mp
}

#[test]
fn moderately_nested_msgpack_decodes() {
    let v = codec::msgpack_to_json(&nested_msgpack(3)).unwrap();
    assert_eq!(v, json!([[[null]]]));
}

#[test]
fn deeply_nested_msgpack_result_does_not_overflow() {
    for n in [500, 100_000] {
        let mp = nested_msgpack(n);
        let _ = codec::msgpack_to_json(&mp);
        let _ = result::decode(&mp, Some("x"));
    }
}

/// Pickle `\x80\x02` + `]` * n + `a` * (n - 1) + `.`: n nested lists in 2n bytes. A result
/// record like this (any value whose first byte is 0x80) reaches the pickle decoder.
fn nested_pickle(n: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x02];
    p.extend(std::iter::repeat_n(b']', n));
    p.extend(std::iter::repeat_n(b'a', n - 1));
    p.push(b'.');
    p
}

#[test]
fn shallow_nested_pickle_decodes() {
    let v = codec::pickle_to_json(&nested_pickle(3)).unwrap();
    assert_eq!(v, json!([[[]]]));
}

#[test]
fn deeply_nested_pickle_result_does_not_overflow() {
    let p = nested_pickle(1000);
    let _ = codec::pickle_to_json(&p);
    let _ = result::decode(&p, Some("x"));
}

fn no_persistence(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// All captured payloads, for mutation.
fn all_payload_fixtures() -> Vec<Vec<u8>> {
    manifest()
        .into_iter()
        .filter(|e| {
            e.file.ends_with(".bin")
                && ["queue_", "unacked_", "result_", "event_", "control_"]
                    .iter()
                    .any(|p| e.file.starts_with(p))
        })
        .map(|e| fixture(&e.file))
        .collect()
}

/// A captured payload, truncated and with a few bytes overwritten.
fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
    let fixtures = all_payload_fixtures();
    (
        0..fixtures.len(),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    )
        .prop_map(move |(i, cut, edits)| {
            let mut b = fixtures[i].clone();
            for (at, byte) in edits {
                let at = at.index(b.len());
                b[at] = byte;
            }
            let cut = cut.index(b.len() + 1);
            b.truncate(cut.max(b.len() / 2));
            b
        })
}

/// Bytes that are sometimes random and sometimes nearly valid.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        mutated_fixture(),
        envelope_like(),
    ]
}

/// A JSON kombu envelope with arbitrary field types and body contents.
fn envelope_like() -> impl Strategy<Value = Vec<u8>> {
    let json_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::from),
        Just(json!("2026-11-23T13:42:01.771219+00:00")),
        Just(json!("6e48e318-7e8f-4754-98a7-404b32d7c3b6")),
    ];
    let json_value = json_leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let content_type = prop_oneof![
        Just("application/json"),
        Just("application/x-msgpack"),
        Just("application/x-python-serialize"),
        Just("text/plain"),
        Just(""),
    ];
    (
        content_type,
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..64),
        json_value.clone(),
        json_value.clone(),
        json_value,
        any::<bool>(),
    )
        .prop_map(|(ct, b64, body, id, retries, eta, body_is_json)| {
            use base64::Engine as _;
            let body = if body_is_json {
                json!([[1, 2], {"k": "v"}, {}]).to_string().into_bytes()
            } else {
                body
            };
            let body_text = if b64 {
                base64::engine::general_purpose::STANDARD.encode(&body)
            } else {
                String::from_utf8_lossy(&body).into_owned()
            };
            let v = json!({
                "body": body_text,
                "content-type": ct,
                "headers": {"id": id, "task": "cap.add", "retries": retries, "eta": eta,
                            "argsrepr": "(1, 2)", "kwargsrepr": "{'a': None}"},
                "properties": {"body_encoding": if b64 { "base64" } else { "utf-8" },
                               "delivery_tag": "t", "delivery_info": {"routing_key": "celery"}},
                "type": "task-received", "uuid": "u", "timestamp": 1795441276.79,
            });
            serde_json::to_vec(&v).unwrap()
        })
}

proptest! {
    #![proptest_config(no_persistence(256))]

    #[test]
    fn garbage_into_every_public_decoder_never_panics(bytes in payload()) {
        let now = during_capture();
        let _ = message::decode(&bytes);
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            let _ = message::decode_envelope(&v);
            if let Some(first) = v.get(0) {
                let _ = message::decode_envelope(first);
            }
            let _ = events::observe(&v, now);
            let _ = codec::parse_time(&v);
            let _ = result::error_line(&v, None);
        }
        let _ = result::decode(&bytes, None);
        let _ = result::decode(&bytes, Some("k"));
        if let Ok(evs) = events::decode(&bytes) {
            for e in &evs {
                let _ = events::observe(e, now);
            }
        }
        let _ = codec::sniff_decode(&bytes);
        let _ = codec::msgpack_to_json(&bytes);
        let _ = codec::pickle_to_json(&bytes);
        for ct in ["application/json", "application/x-msgpack", "application/x-python-serialize", "x"] {
            let _ = codec::decode_by_content_type(ct, &bytes);
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = codec::base64_decode(&text);
        let _ = codec::parse_time_str(&text);
        let _ = codec::python_literal(&text);
        let _ = codec::error_line_from_repr(&text);
        let _ = codec::error_line_from_traceback(&text);
        let _ = result::error_line(&json!(text), Some(&text));
    }

    #[test]
    fn garbage_into_the_adapter_never_panics(
        channel in prop_oneof![
            Just("celery-task-meta-x".to_string()),
            Just("/0.celeryev/task.multi".to_string()),
            Just("/0.celeryev/worker.heartbeat".to_string()),
            Just("celeryev".to_string()),
            ".{0,30}",
        ],
        message_payload in payload(),
        items in prop::collection::vec(payload(), 0..8),
        key in prop_oneof![Just("celery".to_string()), Just(format!("celery{SEP}9")), ".{0,12}"],
    ) {
        let mut a = adapter();
        let now = during_capture();
        let _ = a.on_message(&channel, &message_payload, now);
        let reply = Reply::Array(items.iter().cloned().map(Reply::Bytes).collect());
        let lr = ReadRequest::LRange { key: key.clone(), start: 0, stop: 199 };
        let out = a.answer(&lr, reply.clone(), now);
        // Every bulk item is accounted for: an observation, a decode error, both (a message
        // whose body does not decode is listed and counted), or a duplicate.
        prop_assert!(out.observations.len() <= items.len());
        prop_assert!(out.decode_errors.len() <= items.len());
        // The same items as an unacked hash, as binding members, as result values.
        let _ = a.answer(&ReadRequest::HGetAll("unacked".into()), reply.clone(), now);
        let _ = a.answer(&ReadRequest::HGetAll("unacked".into()), Reply::Array(vec![]), now);
        let _ = a.answer(&ReadRequest::SMembers(format!("_kombu.binding.{key}")), reply.clone(), now);
        let keys: Vec<String> = (0..items.len()).map(|i| format!("celery-task-meta-{i}")).collect();
        let _ = a.answer(&ReadRequest::MGet(keys), reply.clone(), now);
        for r in a.sample_queues(now) {
            let _ = a.answer(&r, reply.clone(), now);
        }
        let _ = a.on_key_event(&key, "lpush", now);
        let _ = a.on_scan("_kombu.binding.*", vec![key.clone()], now);
        let _ = a.reconcile(&[], now);
    }

    #[test]
    fn lrange_with_valid_messages_and_random_items_reports_every_valid_one(
        // Distinct: an undecodable entry is counted once however often it appears (it stays
        // in Redis and is read again), so two equal garbage items make one decode error.
        garbage in prop::collection::btree_set(prop::collection::vec(any::<u8>(), 0..128), 0..6),
        valid_mask in prop::collection::vec(any::<bool>(), QUEUE_MESSAGES.len()),
    ) {
        let mut items = Vec::new();
        let mut want = BTreeMap::new();
        for ((f, keep), g) in QUEUE_MESSAGES.iter().zip(&valid_mask).zip(
            garbage.iter().map(Some).chain(std::iter::repeat(None)),
        ) {
            if let Some(g) = g {
                items.push(g.clone());
            }
            if *keep {
                items.push(fixture(f));
                want.insert(manifest_task_id(f), ());
            }
        }
        let mut a = adapter();
        let out = a.answer(&lrange("celery"), bulk_array(&items), during_capture());
        let got: BTreeMap<String, ()> =
            tasks(&out).iter().map(|o| (o.task_id.clone(), ())).collect();
        // Random bytes almost never form a JSON object with an id; when one does it is a task.
        for id in want.keys() {
            prop_assert!(got.contains_key(id), "lost {id}");
        }
        prop_assert_eq!(
            out.observations.len() + out.decode_errors.len(),
            items.len()
        );
        for e in &out.decode_errors {
            prop_assert_eq!(e.key.as_str(), "celery");
        }
    }

    #[test]
    fn python_literal_never_panics(text in ".{0,200}") {
        let _ = codec::python_literal(&text);
        let _ = codec::error_line_from_repr(&text);
    }

    #[test]
    fn python_literal_never_panics_on_literal_like_text(
        text in r#"[()\[\]{}'",:\\xuUbn0-9a-fA-F .TrueFalsNoé日+-]{0,120}"#
    ) {
        let _ = codec::python_literal(&text);
        let _ = codec::error_line_from_repr(&format!("E({text})"));
    }
}

/// With the result backend elsewhere (`result_url`), result keys are scanned and read on the
/// side connection, and the replies still decode.
#[test]
fn adapter_result_reads_go_to_the_side_connection_when_results_live_elsewhere() {
    let mut a = CeleryAdapter::new(CeleryConfig {
        db: 0,
        queues: vec!["celery".into()],
        result_url: Some("redis://127.0.0.1:6390/1".into()),
        ..CeleryConfig::default()
    });
    assert_eq!(a.side_url().as_deref(), Some("redis://127.0.0.1:6390/1"));
    let interest = a.interest();
    assert!(!interest
        .scan_patterns
        .iter()
        .any(|p| p.starts_with("celery-task-meta-")));
    assert_eq!(
        interest.side_scan_patterns,
        vec!["celery-task-meta-*".to_string()]
    );
    let key = "celery-task-meta-abc".to_string();
    let reads = a.on_scan("celery-task-meta-*", vec![key.clone()], Utc::now());
    assert_eq!(
        reads,
        vec![ReadRequest::Side(Box::new(ReadRequest::MGet(vec![key])))]
    );
    let reply = Reply::Array(vec![Reply::Bytes(fixture("result_success_plain.bin"))]);
    let out = a.answer(&reads[0], reply, Utc::now());
    assert_eq!(out.observations.len(), 1, "{out:?}");
    let open = [broker_adapters::OpenTask {
        id: "t1".into(),
        queue: None,
        name: None,
    }];
    assert!(a
        .reconcile(&open, Utc::now())
        .iter()
        .any(|r| matches!(&r.request, ReadRequest::Side(inner) if matches!(**inner, ReadRequest::MGet(_)))));
}

// ---------------------------------------------------------------------------------------------
// Events decoded straight into observations (`events::observe_message`, the adapter's path)
// ---------------------------------------------------------------------------------------------

/// What `decode` then `observe` on each event gives: the reference `observe_message` must match.
fn observed_the_long_way(bytes: &[u8]) -> Result<Vec<Observation>, String> {
    events::decode(bytes)
        .map(|evs| {
            evs.iter()
                .filter_map(|e| events::observe(e, during_capture()))
                .collect()
        })
        .map_err(|e| e.to_string())
}

#[test]
fn every_captured_event_message_gives_the_same_observations_straight() {
    let files: Vec<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("event_"))
        .collect();
    assert!(files.len() >= 15, "event captures: {files:?}");
    for f in files {
        let bytes = fixture(&f);
        let straight = events::observe_message(&bytes, during_capture())
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!straight.is_empty(), "{f}");
        assert_eq!(Ok(straight), observed_the_long_way(&bytes), "{f}");
    }
}

/// A kombu envelope around one event or a list of them, each with a known type and members of
/// any JSON type (the ones `observe` reads, and others it skips).
fn event_message() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        (0.0f64..2e9).prop_map(|f| json!(f)),
        ".{0,16}".prop_map(Value::from),
        Just(json!("(1, 'a')")),
        Just(json!("{'ok': True, 'n': 3}")),
        Just(json!("ValueError('bad')")),
        Just(json!("2026-11-23T13:42:01.771219+00:00")),
    ];
    let value = leaf.prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let kind = prop_oneof![
        Just("task-sent"),
        Just("task-received"),
        Just("task-started"),
        Just("task-succeeded"),
        Just("task-failed"),
        Just("task-retried"),
        Just("task-revoked"),
        Just("task-rejected"),
        Just("worker-heartbeat"),
        Just("worker-online"),
        Just("task-unknown"),
    ];
    let member = prop_oneof![
        Just("timestamp"),
        Just("hostname"),
        Just("pid"),
        Just("active"),
        Just("freq"),
        Just("uuid"),
        Just("eta"),
        Just("name"),
        Just("args"),
        Just("kwargs"),
        Just("queue"),
        Just("routing_key"),
        Just("retries"),
        Just("result"),
        Just("runtime"),
        Just("traceback"),
        Just("exception"),
        Just("expired"),
        Just("terminated"),
        Just("requeue"),
        Just("clock"),
        Just("utcoffset"),
        Just("sw_ident"),
        Just("loadavg"),
        Just("type"),
    ];
    let event = (
        kind,
        prop::collection::vec((member, value), 0..12),
        any::<bool>(),
    )
        .prop_map(|(kind, members, with_id)| {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), json!(kind));
            if with_id {
                m.insert("uuid".into(), json!("6e48e318-7e8f-4754-98a7-404b32d7c3b6"));
                m.insert("hostname".into(), json!("w1@host"));
            }
            // Later members win, as in a JSON object with a name twice.
            for (k, v) in members {
                m.insert(k.to_string(), v);
            }
            Value::Object(m)
        });
    (
        prop::collection::vec(event, 1..4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mut evs, many, b64, with_content_type)| {
            use base64::Engine as _;
            let body = if many {
                Value::from(evs)
            } else {
                evs.swap_remove(0)
            };
            let text = body.to_string();
            let body_text = if b64 {
                base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
            } else {
                text
            };
            let mut envelope = json!({
                "body": body_text,
                "headers": {"hostname": "w1@host"},
                "properties": {"body_encoding": if b64 { "base64" } else { "utf-8" },
                               "delivery_info": {"routing_key": "task.multi"}},
            });
            if with_content_type {
                envelope["content-type"] = json!("application/json");
            }
            serde_json::to_vec(&envelope).unwrap()
        })
}

proptest! {
    #![proptest_config(no_persistence(512))]

    #[test]
    fn event_messages_give_the_same_observations_straight_as_the_long_way(
        bytes in prop_oneof![event_message(), payload()],
    ) {
        let straight = events::observe_message(&bytes, during_capture()).map_err(|e| e.to_string());
        prop_assert_eq!(straight, observed_the_long_way(&bytes));
    }
}
