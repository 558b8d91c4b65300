//! Failure fingerprints on the real errors and tracebacks of each broker (the captures under
//! `tests/fixtures/<broker>/`, decoded by the adapters' own decoders), and on garbage: any text
//! gives a bounded answer in bounded time.

use broker_adapters::fingerprint::{fingerprint, Fingerprint, FRAMES, MAX_MESSAGE_CHARS};
use broker_adapters::{celery, codec, dramatiq, rq, taskiq, Reply};
use proptest::prelude::*;
use serde_json::Value;

fn fixture(broker: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/{broker}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fp(error: Option<&str>, traceback: Option<&str>) -> Fingerprint {
    fingerprint(error, traceback).expect("a fingerprint")
}

/// A Celery result record's (error line, traceback).
fn celery_failure(name: &str) -> (String, String) {
    let meta = celery::result::decode(&fixture("celery", name), None).expect("decodes");
    let tb = meta.traceback.expect("traceback");
    let line = celery::result::error_line(&meta.result, Some(&tb)).expect("error line");
    (line, tb)
}

/// The traceback of RQ's captured `rq:results:<id>` failure entry.
fn rq_traceback() -> String {
    let v: Value = serde_json::from_slice(&fixture("rq", "results_failure.json")).unwrap();
    let mut fields = Vec::new();
    for (k, val) in v["fields"].as_object().unwrap() {
        fields.push(Reply::Bytes(k.as_bytes().to_vec()));
        let bytes = codec::base64_decode(val.as_str().unwrap()).unwrap();
        fields.push(Reply::Bytes(bytes));
    }
    let id = v["id"].as_str().unwrap().as_bytes().to_vec();
    let entry =
        rq::result::decode_entry(Reply::Array(vec![Reply::Bytes(id), Reply::Array(fields)]))
            .expect("decodes");
    entry.traceback.expect("traceback")
}

#[test]
fn celery_failures_group_by_type_message_shape_and_innermost_frames() {
    let (line, tb) = celery_failure("result_failure_plain.bin");
    let f = fp(Some(&line), Some(&tb));
    assert_eq!(f.exception.as_deref(), Some("ValueError"));
    assert_eq!(f.message, "card declined <n>");
    assert_eq!(
        f.frames,
        [
            "app.trace:trace_task",
            "app.trace:__protected_call__",
            "python.capture_celery:fail"
        ]
    );
    assert_eq!(f.id.len(), 16);
    assert!(f.id.bytes().all(|b| b.is_ascii_hexdigit()));
    // The extended result of the same failure, and the same failure with another card number
    // (and a line moved by an edit) on another host: one group.
    let (line_x, tb_x) = celery_failure("result_failure_extended.bin");
    assert_eq!(fp(Some(&line_x), Some(&tb_x)).id, f.id);
    let other_host = tb
        .replace("/tmp/capvenv/lib/python3.11", "/opt/venv/lib/python3.12")
        .replace("/work/main/tests/python", "/srv/app/tests/python")
        .replace("line 62", "line 70")
        .replace("card declined 3", "card declined 41");
    assert_eq!(
        fp(Some("ValueError: card declined 41"), Some(&other_host)).id,
        f.id
    );
    // The retry of another task raises from other frames: another group.
    let (retry_line, retry_tb) = celery_failure("result_retry_plain.bin");
    assert_eq!(retry_line, "ValueError: card declined 3");
    let retry = fp(Some(&retry_line), Some(&retry_tb));
    assert_ne!(retry.id, f.id);
    assert_eq!(retry.frames.last().unwrap(), "app.task:retry");
    // Another message is another group.
    assert_ne!(fp(Some("ValueError: card expired 3"), Some(&tb)).id, f.id);
}

#[test]
fn rq_traceback_from_another_checkout_groups_with_the_first() {
    let tb = rq_traceback();
    let f = fp(codec::error_line_from_traceback(&tb).as_deref(), Some(&tb));
    assert_eq!(f.exception.as_deref(), Some("ValueError"));
    assert_eq!(f.message, "card declined <n>");
    assert_eq!(
        f.frames,
        ["rq.job:perform", "rq.job:_execute", "python.rq_app:fail"]
    );
    let moved = tb
        .replace(
            "/work/wt-rq/.venv/lib/python3.11",
            "/home/u/env/lib/python3.13",
        )
        .replace("/work/wt-rq/", "/deploy/")
        .replace("card declined 3", "card declined 12");
    assert_eq!(
        fp(None, Some(&moved)).id,
        f.id,
        "the error line from the traceback"
    );
    // The same exception raised by Celery's wrapper frames is another group.
    let (line, celery_tb) = celery_failure("result_failure_plain.bin");
    assert_ne!(fp(Some(&line), Some(&celery_tb)).id, f.id);
}

#[test]
fn dramatiq_retries_of_one_actor_group_across_attempt_numbers() {
    let first = dramatiq::message::decode(&fixture("dramatiq", "retry_copy_dq_1.bin")).unwrap();
    let tb = first.traceback.expect("options.traceback");
    let f = fp(first.error.as_deref(), Some(&tb));
    assert_eq!(f.exception.as_deref(), Some("RuntimeError"));
    assert_eq!(f.message, "flaky k<n>: attempt <n> of <n> failed");
    assert_eq!(f.frames.last().unwrap(), "python.dramatiq_app:flaky");
    let later = tb.replace("attempt 1 of 3", "attempt 2 of 3");
    assert_eq!(
        fp(
            codec::error_line_from_traceback(&later).as_deref(),
            Some(&later)
        )
        .id,
        f.id
    );
    // Another key (letters, not digits) is another message.
    let dead =
        dramatiq::message::decode(&fixture("dramatiq", "dead_letter_after_retries.bin")).unwrap();
    let dead = fp(dead.error.as_deref(), dead.traceback.as_deref());
    assert_eq!(dead.message, "flaky kx: attempt <n> of <n> failed");
    assert_ne!(dead.id, f.id);
    // A Results record has the error line only: a fingerprint without frames.
    let Err(line) =
        dramatiq::message::decode_result(&fixture("dramatiq", "result_failure.bin")).unwrap()
    else {
        panic!("a failure result")
    };
    let from_result = fp(Some(&line), None);
    assert_eq!(from_result.message, "card declined <n>");
    assert!(from_result.frames.is_empty());
}

#[test]
fn taskiq_module_qualified_and_bare_exception_types_are_one_type() {
    for prefix in [
        "stream_json_pickle",
        "stream_msgpack_json",
        "list_json_pickle",
    ] {
        let r = taskiq::result::decode(&fixture("taskiq", &format!("{prefix}_result_fail.bin")))
            .unwrap();
        let f = fp(r.error.as_deref(), r.traceback.as_deref());
        assert_eq!(f.exception.as_deref(), Some("CardDeclined"), "{prefix}");
        assert_eq!(f.message, "card declined <n>");
        assert_eq!(
            fp(None, Some("taskiq_app.CardDeclined: card declined 9")).id,
            f.id,
            "{prefix}: the traceback's qualified type"
        );
    }
}

#[test]
fn chained_exceptions_take_the_frames_of_the_last_one_raised() {
    let tb = "Traceback (most recent call last):\n  File \"/a/app/db.py\", line 3, in get\n    raise KeyError(7)\nKeyError: 7\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"/a/app/tasks.py\", line 9, in run\n    get()\n  File \"/a/app/tasks.py\", line 12, in handle\n    raise LookupError('user 7')\nLookupError: user 7\n";
    let f = fp(None, Some(tb));
    assert_eq!(f.exception.as_deref(), Some("LookupError"));
    assert_eq!(f.message, "user <n>");
    assert_eq!(
        f.frames,
        ["app.db:get", "app.tasks:run", "app.tasks:handle"],
        "the innermost {FRAMES}, in order"
    );
}

#[test]
fn a_huge_traceback_is_read_from_its_end_only() {
    let frame = "  File \"/srv/app/tasks.py\", line 1, in recurse\n    recurse()\n";
    let mut tb = String::from("Traceback (most recent call last):\n");
    for _ in 0..200_000 {
        tb.push_str(frame);
    }
    tb.push_str("RecursionError: maximum recursion depth exceeded\n");
    let started = std::time::Instant::now();
    let f = fp(None, Some(&tb));
    assert!(started.elapsed() < std::time::Duration::from_millis(200));
    assert_eq!(f.exception.as_deref(), Some("RecursionError"));
    assert_eq!(f.frames, ["app.tasks:recurse"; 3]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_gives_a_bounded_answer(
        error in proptest::option::of(".{0,3000}"),
        traceback in proptest::option::of("(.|\n|  File \"[a-z/\\\\.]{0,20}\", line [0-9]{1,3}, in [a-z_]{0,10}){0,400}"),
    ) {
        if let Some(f) = fingerprint(error.as_deref(), traceback.as_deref()) {
            prop_assert_eq!(f.id.len(), 16);
            prop_assert!(f.message.chars().count() <= MAX_MESSAGE_CHARS);
            prop_assert!(f.frames.len() <= FRAMES);
            prop_assert!(f.frames.iter().all(|fr| fr.chars().count() <= 401));
            // Deterministic.
            let again = fingerprint(error.as_deref(), traceback.as_deref());
            prop_assert_eq!(Some(f), again);
        }
    }

    #[test]
    fn normalising_twice_changes_nothing(text in "[ -~]{0,200}") {
        use broker_adapters::fingerprint::normalise_message;
        let once = normalise_message(&text);
        prop_assert_eq!(normalise_message(&once), once.clone());
    }

    #[test]
    fn quotes_and_digits_cost_linear_time(unit in "['\" 0-9a-f_-]{1,8}", n in 1_000usize..60_000) {
        let text = unit.repeat(n);
        let started = std::time::Instant::now();
        let _ = fingerprint(Some(&text), Some(&text));
        prop_assert!(started.elapsed() < std::time::Duration::from_millis(250));
    }
}
