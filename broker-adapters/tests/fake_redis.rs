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

fn xrange(key: &str, start: &str, end: &str, count: u64) -> ReadRequest {
    ReadRequest::XRange {
        key: key.into(),
        start: start.into(),
        end: end.into(),
        count,
    }
}

/// The ids of an `XRANGE` reply.
fn ids(reply: Reply) -> Vec<String> {
    reply
        .into_items()
        .into_iter()
        .filter_map(|e| e.into_items().first().cloned())
        .map(|id| String::from_utf8(id.as_bytes().unwrap().to_vec()).unwrap())
        .collect()
}

#[test]
fn xadd_ids_follow_the_clock_then_the_sequence() {
    let mut r = FakeRedis::new();
    let now = r.now_ms();
    let a = r.xadd("s", "*", &[("data", b"1")]);
    let b = r.xadd("s", "*", &[("data", b"2")]);
    assert_eq!(a, format!("{now}-0"));
    assert_eq!(b, format!("{now}-1"));
    r.advance_to(now + 7);
    assert_eq!(
        r.xadd("s", "*", &[("data", b"3")]),
        format!("{}-0", now + 7)
    );
    assert_eq!(
        r.xadd("s", "9999999999999-5", &[("data", b"4")]),
        "9999999999999-5"
    );
    assert_eq!(r.xlen("s"), 4);
    let entry = |id: &str, v: &str| {
        Reply::Array(vec![
            Reply::Bytes(id.as_bytes().to_vec()),
            Reply::Array(vec![
                Reply::Bytes(b"data".to_vec()),
                Reply::Bytes(v.as_bytes().to_vec()),
            ]),
        ])
    };
    assert_eq!(
        r.read(&xrange("s", "-", "+", 2)),
        Reply::Array(vec![entry(&a, "1"), entry(&b, "2")]),
        "entries are [id, [field, value]]"
    );
    let ops: Vec<String> = events(&mut r).into_iter().map(|(_, op)| op).collect();
    assert_eq!(ops, ["xadd"; 4]);
}

#[test]
fn xrange_takes_exclusive_starts_and_counts_and_xrevrange_reads_newest_first() {
    let mut r = FakeRedis::new();
    let all: Vec<String> = (0..5)
        .map(|i| r.xadd("s", "*", &[("n", i.to_string().as_bytes())]))
        .collect();
    assert_eq!(
        ids(r.read(&xrange("s", &format!("({}", all[1]), "+", 2))),
        all[2..4]
    );
    assert_eq!(
        ids(r.read(&xrange("s", &all[1], &format!("({}", all[3]), 10))),
        all[1..3]
    );
    assert_eq!(
        ids(r.read(&xrange("s", &format!("({}", all[4]), "+", 10))),
        Vec::<String>::new()
    );
    let rev = r.read(&ReadRequest::XRevRange {
        key: "s".into(),
        end: "+".into(),
        start: "-".into(),
        count: 2,
    });
    assert_eq!(ids(rev), [all[4].clone(), all[3].clone()]);
    assert_eq!(
        ids(r.read(&xrange("nope", "-", "+", 10))),
        Vec::<String>::new()
    );
    assert_eq!(r.read(&ReadRequest::XLen("nope".into())), Reply::Int(0));
}

#[test]
fn xtrim_and_xdel_drop_entries_with_their_events_and_keep_the_stream() {
    let mut r = FakeRedis::new();
    let a = r.xadd("s", "*", &[("n", b"0")]);
    r.xadd_maxlen("s", 2, "*", &[("n", b"1")]);
    r.xadd_maxlen("s", 2, "*", &[("n", b"2")]);
    assert_eq!(r.xlen("s"), 2);
    assert!(!r.xdel("s", &a), "trimmed already");
    let left = ids(r.read(&xrange("s", "-", "+", 10)));
    assert!(r.xdel("s", &left[0]) && r.xdel("s", &left[1]));
    assert_eq!(r.xtrim("s", 0), 0);
    assert!(r.exists("s"), "an empty stream stays");
    let ops: Vec<String> = events(&mut r).into_iter().map(|(_, op)| op).collect();
    assert_eq!(ops, ["xadd", "xadd", "xadd", "xtrim", "xdel", "xdel"]);
    assert_eq!(
        r.read(&ReadRequest::Type("s".into())),
        Reply::Bytes(b"stream".to_vec())
    );
}

/// The rows of an `XINFO` reply as `name -> value` maps.
fn rows(reply: Reply) -> Vec<std::collections::HashMap<String, Reply>> {
    reply
        .into_items()
        .into_iter()
        .map(|row| {
            row.into_pairs()
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8(k.as_bytes().unwrap().to_vec()).unwrap(),
                        v,
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn consumer_groups_deliver_track_pending_entries_and_acknowledge() {
    let mut r = FakeRedis::new();
    assert!(r.xgroup_create("s", "g", "$", true));
    assert!(!r.xgroup_create("s", "g", "$", true), "BUSYGROUP");
    let a = r.xadd("s", "*", &[("data", b"a")]);
    let b = r.xadd("s", "*", &[("data", b"b")]);
    let got = r.xreadgroup("s", "g", "c1", 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, a);
    r.advance_to(r.now_ms() + 250);
    let pending = r.read(&ReadRequest::XPending {
        key: "s".into(),
        group: "g".into(),
        count: 10,
    });
    assert_eq!(
        pending,
        Reply::Array(vec![Reply::Array(vec![
            Reply::Bytes(a.as_bytes().to_vec()),
            Reply::Bytes(b"c1".to_vec()),
            Reply::Int(250),
            Reply::Int(1),
        ])])
    );
    let groups = rows(r.read(&ReadRequest::XInfoGroups("s".into())));
    assert_eq!(groups[0]["name"], Reply::Bytes(b"g".to_vec()));
    assert_eq!(groups[0]["pending"], Reply::Int(1));
    assert_eq!(
        groups[0]["last-delivered-id"],
        Reply::Bytes(a.as_bytes().to_vec())
    );
    assert_eq!(groups[0]["lag"], Reply::Int(1));
    let consumers = rows(r.read(&ReadRequest::XInfoConsumers {
        key: "s".into(),
        group: "g".into(),
    }));
    assert_eq!(consumers[0]["name"], Reply::Bytes(b"c1".to_vec()));
    assert_eq!(consumers[0]["pending"], Reply::Int(1));
    assert_eq!(consumers[0]["idle"], Reply::Int(250));
    assert_eq!(r.xack("s", "g", &[&a, &b]), 1, "b was never delivered");
    assert_eq!(r.xpending("s", "g"), vec![]);
    assert!(matches!(
        r.read(&ReadRequest::XPending { key: "s".into(), group: "other".into(), count: 10 }),
        Reply::Error(e) if e.starts_with("NOGROUP")
    ));
    assert!(matches!(
        r.read(&ReadRequest::XInfoGroups("nope".into())),
        Reply::Error(_)
    ));
    let ops: Vec<String> = events(&mut r).into_iter().map(|(_, op)| op).collect();
    assert_eq!(
        ops,
        ["xgroup-create", "xadd", "xadd", "xgroup-createconsumer"]
    );
}

#[test]
fn claims_move_idle_pending_entries_to_another_consumer_and_count_deliveries() {
    let mut r = FakeRedis::new();
    r.xgroup_create("s", "g", "0", true);
    let a = r.xadd("s", "*", &[("data", b"a")]);
    r.xreadgroup("s", "g", "c1", 10);
    r.advance_to(r.now_ms() + 100);
    assert!(
        r.xclaim("s", "g", "c2", 1_000, &[&a]).is_empty(),
        "not idle enough"
    );
    let (next, claimed) = r.xautoclaim("s", "g", "c2", 50, "0-0", 10);
    assert_eq!((next.as_str(), claimed.len()), ("0-0", 1));
    assert_eq!(r.xpending("s", "g"), vec![(a.clone(), "c2".to_string(), 2)]);
    r.advance_to(r.now_ms() + 10);
    let claimed = r.xclaim("s", "g", "c1", 0, &[&a]);
    assert_eq!(claimed[0].0, a);
    assert_eq!(r.xpending("s", "g"), vec![(a.clone(), "c1".to_string(), 3)]);
    r.xdel("s", &a);
    assert!(r.xclaim("s", "g", "c2", 0, &[&a]).is_empty());
    assert_eq!(
        r.xpending("s", "g"),
        vec![],
        "a deleted entry leaves the PEL when claimed"
    );
}

#[test]
fn ttls_count_down_on_the_clock_and_expire_with_an_event() {
    let mut r = FakeRedis::new();
    let t0 = r.now_ms();
    r.setex("a", 10, b"1");
    r.set_px("b", b"2", 500);
    r.hset("h", "f", b"v");
    assert!(r.expire("h", 1));
    assert!(!r.expire("nope", 1));
    assert_eq!(r.read(&ReadRequest::PTtl("a".into())), Reply::Int(10_000));
    assert_eq!(r.read(&ReadRequest::PTtl("h".into())), Reply::Int(1_000));
    r.hset("h", "g", b"w");
    assert_eq!(r.pttl("h"), 1_000, "a write keeps the TTL");
    r.advance_to(t0 + 499);
    assert_eq!(r.pttl("b"), 1);
    r.advance_to(t0 + 1_000);
    assert!(!r.exists("b") && !r.exists("h") && r.exists("a"));
    assert_eq!(r.read(&ReadRequest::Get("b".into())), Reply::Nil);
    r.set("a", b"3");
    assert_eq!(r.pttl("a"), -1, "SET clears the TTL");
    assert_eq!(r.pttl("gone"), -2);
    let ops: Vec<(String, String)> = events(&mut r);
    let expected = [
        ("a", "set"),
        ("a", "expire"),
        ("b", "set"),
        ("b", "expire"),
        ("h", "hset"),
        ("h", "expire"),
        ("h", "hset"),
        ("b", "expired"),
        ("h", "expired"),
        ("a", "set"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, o)| (k.to_string(), o.to_string()))
        .collect();
    assert_eq!(ops, expected);
}

#[test]
fn counters_list_removal_and_publish_behave_as_redis() {
    let mut r = FakeRedis::new();
    r.setex("n", 10, b"4");
    assert_eq!(r.incr("n"), 5);
    assert_eq!(r.pttl("n"), 10_000, "INCR keeps the TTL");
    assert_eq!(r.incr("fresh"), 1);
    assert_eq!(r.hincrby("h", "ats", 1), 1);
    assert_eq!(r.hincrby("h", "ats", 2), 3);
    assert_eq!(r.zincrby("z", 1.5, "m"), 1.5);
    assert_eq!(r.zincrby("z", 1.0, "m"), 2.5);
    r.rpush("l", b"a");
    r.rpush("l", b"b");
    r.rpush("l", b"a");
    assert!(r.lrem("l", b"a"));
    assert_eq!(r.list("l"), [b"b".to_vec(), b"a".to_vec()]);
    assert_eq!(r.rpop("l"), Some(b"a".to_vec()));
    assert!(r.lrem("l", b"b") && !r.exists("l"));
    r.hset_many("m", &[("a", b"1"), ("b", b"2")]);
    r.publish("chan", b"hello");
    assert_eq!(
        r.take_published(),
        [("chan".to_string(), b"hello".to_vec())]
    );
    let ops: Vec<String> = events(&mut r).into_iter().map(|(_, op)| op).collect();
    assert_eq!(
        ops,
        [
            "set", "expire", "incrby", "incrby", "hincrby", "hincrby", "zincr", "zincr", "rpush",
            "rpush", "rpush", "lrem", "rpop", "lrem", "del", "hset"
        ]
    );
}
