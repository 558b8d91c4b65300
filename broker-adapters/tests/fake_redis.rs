//! The in-memory Redis of the adapter tests (`support/fake_redis.rs`) answers as Redis does:
//! the reads the adapters rely on, and the keyspace events each write causes.

mod support;

use broker_adapters::{ReadRequest, Reply};
use support::fake_redis::{glob_match, FakeRedis, KeyEvent};

fn strings(reply: Reply) -> Vec<String> {
    reply.into_strings()
}

fn events(r: &mut FakeRedis) -> Vec<(String, String)> {
    r.take_events()
        .into_iter()
        .map(|KeyEvent { key, op }| (key, op))
        .collect()
}

#[test]
fn lrange_counts_negative_indices_from_the_end_and_clamps() {
    let mut r = FakeRedis::new();
    for x in ["a", "b", "c", "d"] {
        r.rpush("l", x.as_bytes());
    }
    let lrange = |start, stop| ReadRequest::LRange {
        key: "l".into(),
        start,
        stop,
    };
    assert_eq!(strings(r.read(&lrange(-2, -1))), ["c", "d"]);
    assert_eq!(strings(r.read(&lrange(-200, -1))), ["a", "b", "c", "d"]);
    assert_eq!(strings(r.read(&lrange(-400, -201))), Vec::<String>::new());
    assert_eq!(strings(r.read(&lrange(1, 1))), ["b"]);
    assert_eq!(strings(r.read(&lrange(0, 0))).len(), 1);
}

#[test]
fn a_write_that_empties_a_key_deletes_it_with_a_del_event() {
    let mut r = FakeRedis::new();
    r.sadd("s", "x");
    r.hset("h", "f", b"v");
    r.rpush("l", b"1");
    assert!(!r.sadd("s", "x"), "already a member");
    r.srem("s", "x");
    r.hdel("h", "f");
    r.lpop("l");
    assert!(!r.srem("s", "x"), "nothing left to remove");
    let ops: Vec<(String, String)> = events(&mut r);
    let expected = [
        ("s", "sadd"),
        ("h", "hset"),
        ("l", "rpush"),
        ("s", "srem"),
        ("s", "del"),
        ("h", "hdel"),
        ("h", "del"),
        ("l", "lpop"),
        ("l", "del"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, o)| (k.to_string(), o.to_string()))
        .collect();
    assert_eq!(ops, expected);
    assert!(!r.exists("s") && !r.exists("h") && !r.exists("l"));
}

#[test]
fn missing_keys_read_empty_and_wrong_types_are_errors() {
    let mut r = FakeRedis::new();
    assert_eq!(r.read(&ReadRequest::Get("nope".into())), Reply::Nil);
    assert_eq!(
        r.read(&ReadRequest::SMembers("nope".into())),
        Reply::Array(vec![])
    );
    assert_eq!(r.read(&ReadRequest::PTtl("nope".into())), Reply::Int(-2));
    r.rpush("l", b"1");
    assert!(matches!(
        r.read(&ReadRequest::HKeys("l".into())),
        Reply::Error(e) if e.starts_with("WRONGTYPE")
    ));
    assert_eq!(
        r.read(&ReadRequest::Type("l".into())),
        Reply::Bytes(b"list".to_vec())
    );
    assert_eq!(
        r.read(&ReadRequest::Side(Box::new(ReadRequest::LLen("l".into())))),
        Reply::Int(1),
        "a side read goes to the same fake"
    );
}

#[test]
fn hmget_answers_nil_for_absent_fields_in_order() {
    let mut r = FakeRedis::new();
    r.hset("h", "a", b"1");
    let reply = r.read(&ReadRequest::HMGet {
        key: "h".into(),
        fields: vec!["x".into(), "a".into()],
    });
    assert_eq!(
        reply,
        Reply::Array(vec![Reply::Nil, Reply::Bytes(b"1".to_vec())])
    );
}

#[test]
fn sorted_sets_read_by_score_with_their_scores() {
    let mut r = FakeRedis::new();
    r.zadd("z", 2.0, "b");
    r.zadd("z", 1.0, "c");
    r.zadd("z", 2.0, "a");
    let reply = r.read(&ReadRequest::ZRangeWithScores {
        key: "z".into(),
        start: 0,
        stop: -1,
    });
    let pairs: Vec<(String, f64)> = reply
        .into_pairs()
        .into_iter()
        .map(|(m, s)| {
            (
                String::from_utf8(m.as_bytes().unwrap().to_vec()).unwrap(),
                s.as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [("c".to_string(), 1.0), ("a".into(), 2.0), ("b".into(), 2.0)]
    );
}

#[test]
fn key_patterns_match_as_redis_globs() {
    assert!(glob_match("dramatiq:*.msgs", "dramatiq:default.DQ.msgs"));
    assert!(glob_match(
        "dramatiq:__acks__.*",
        "dramatiq:__acks__.w.default"
    ));
    assert!(!glob_match("dramatiq:*.XQ", "dramatiq:default.XQ.msgs"));
    assert!(glob_match(r"a\*b", "a*b") && !glob_match(r"a\*b", "axb"));
    assert!(glob_match("rq:job:[0-9a-f]?", "rq:job:3x"));
    assert!(!glob_match("rq:job:[^0-9]", "rq:job:3"));
}
