//! taskiq's writes over taskiq-redis, as its brokers' `kick` makes them, pure: the taskiq
//! message JSON (`task_id`, `task_name`, `labels`, `labels_types`, `args`, `kwargs`) added to a
//! `RedisStreamBroker`'s stream (`XADD <q> * data <message>`) or pushed on a `ListQueueBroker`'s
//! list (`LPUSH <q> <message>`), whichever the queue key is (a stream when it does not exist
//! yet: taskiq-redis's recommended broker); delete and purge remove waiting messages only: on a
//! stream, the entries after the consumer groups' last delivered id (pending ones are running).
//! A delay needs taskiq's scheduler, which is not in Redis's queue: not offered.

use super::{RedisCommand, Write};
use serde_json::{json, Map, Value};

/// How a queue key holds its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Stream,
    List,
}

impl QueueKind {
    /// From `TYPE <queue>`: `stream` is a `RedisStreamBroker`; a list or no key at all (a
    /// drained list) a `ListQueueBroker`.
    pub fn of_type(redis_type: &str) -> QueueKind {
        if redis_type == "stream" {
            QueueKind::Stream
        } else {
            QueueKind::List
        }
    }
}

/// The taskiq message of a call.
pub fn message(task_id: &str, name: &str, args: &[Value], kwargs: &Map<String, Value>) -> String {
    json!({
        "task_id": task_id, "task_name": name, "labels": {}, "labels_types": {},
        "args": args, "kwargs": kwargs
    })
    .to_string()
}

pub fn enqueue(kind: QueueKind, queue: &str, message: String) -> Write {
    Write::Multi(vec![match kind {
        QueueKind::Stream => RedisCommand::new(
            "XADD",
            [queue.to_string(), "*".into(), "data".into(), message],
        ),
        QueueKind::List => RedisCommand::new("LPUSH", [queue.to_string(), message]),
    }])
}

/// The stream entries after the lowest last-delivered id of KEYS[1]'s consumer groups (all
/// of them without a group): the waiting ones. Prepended to the scripts below.
macro_rules! waiting_lua {
    () => {
        r#"
local function waiting(key)
    local from = '-'
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
    if ok then
        local lowest = nil
        for _, g in ipairs(groups) do
            for i = 1, #g, 2 do
                if g[i] == 'last-delivered-id' then
                    local id = g[i + 1]
                    local ms, n = string.match(id, '(%d+)-(%d+)')
                    ms, n = tonumber(ms), tonumber(n)
                    if lowest == nil or ms < lowest[1] or (ms == lowest[1] and n < lowest[2]) then
                        lowest = {ms, n, id}
                    end
                end
            end
        end
        if lowest ~= nil then from = '(' .. lowest[3] end
    end
    return redis.call('XRANGE', key, from, '+')
end
"#
    };
}

/// Removes task ARGV[1]'s waiting message from KEYS[1] (ARGV[2]: `stream` or `list`).
const DELETE_LUA: &str = concat!(
    waiting_lua!(),
    r#"
local function matches(body)
    if not string.find(body, ARGV[1], 1, true) then return false end
    local ok, decoded = pcall(cjson.decode, body)
    return ok and type(decoded) == 'table' and decoded.task_id == ARGV[1]
end
local removed = 0
if ARGV[2] == 'list' then
    for _, body in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
        if matches(body) then removed = removed + redis.call('LREM', KEYS[1], 1, body) end
    end
else
    for _, entry in ipairs(waiting(KEYS[1])) do
        local fields = entry[2]
        for i = 1, #fields, 2 do
            if fields[i] == 'data' and matches(fields[i + 1]) then
                removed = removed + redis.call('XDEL', KEYS[1], entry[1])
            end
        end
    end
end
return removed
"#
);

/// Removes every waiting message of KEYS[1]; replies the count.
const PURGE_LUA: &str = concat!(
    waiting_lua!(),
    r#"
local out = {0}
local function note(body)
    local ok, decoded = pcall(cjson.decode, body)
    if #out <= 10000 and ok and type(decoded) == 'table' and type(decoded.task_id) == 'string' then
        out[#out + 1] = decoded.task_id
    end
end
if ARGV[1] == 'list' then
    for _, body in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
        out[1] = out[1] + 1
        note(body)
    end
    redis.call('DEL', KEYS[1])
    return out
end
for _, entry in ipairs(waiting(KEYS[1])) do
    out[1] = out[1] + redis.call('XDEL', KEYS[1], entry[1])
    local fields = entry[2]
    for i = 1, #fields, 2 do
        if fields[i] == 'data' then note(fields[i + 1]) end
    end
end
return out
"#
);

/// Counts the waiting messages of KEYS[1] (read-only).
const COUNT_LUA: &str = concat!(
    waiting_lua!(),
    r#"
if ARGV[1] == 'list' then return redis.call('LLEN', KEYS[1]) end
return #waiting(KEYS[1])
"#
);

fn kind_arg(kind: QueueKind) -> Vec<u8> {
    match kind {
        QueueKind::Stream => b"stream".to_vec(),
        QueueKind::List => b"list".to_vec(),
    }
}

pub fn delete(kind: QueueKind, queue: &str, task_id: &str) -> Write {
    Write::Script {
        lua: DELETE_LUA,
        keys: vec![queue.to_string()],
        args: vec![task_id.as_bytes().to_vec(), kind_arg(kind)],
    }
}

pub fn purge(kind: QueueKind, queue: &str) -> Write {
    Write::Script {
        lua: PURGE_LUA,
        keys: vec![queue.to_string()],
        args: vec![kind_arg(kind)],
    }
}

/// The script counting waiting messages (run as a read).
pub fn count(kind: QueueKind, queue: &str) -> Write {
    Write::Script {
        lua: COUNT_LUA,
        keys: vec![queue.to_string()],
        args: vec![kind_arg(kind)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_goes_to_the_stream_or_the_list() {
        let m = message("t1", "taskiq_app:add", &[json!(1), json!(2)], &Map::new());
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["task_id"], "t1");
        assert_eq!(v["task_name"], "taskiq_app:add");
        assert_eq!(v["args"], json!([1, 2]));
        let Write::Multi(cmds) = enqueue(QueueKind::Stream, "taskiq", m.clone()) else {
            panic!()
        };
        assert_eq!(
            cmds[0],
            RedisCommand::new("XADD", ["taskiq", "*", "data", m.as_str()])
        );
        let Write::Multi(cmds) = enqueue(QueueKind::List, "taskiq", m.clone()) else {
            panic!()
        };
        assert_eq!(cmds[0], RedisCommand::new("LPUSH", ["taskiq", m.as_str()]));
        assert_eq!(QueueKind::of_type("list"), QueueKind::List);
        assert_eq!(QueueKind::of_type("none"), QueueKind::List);
        assert_eq!(QueueKind::of_type("stream"), QueueKind::Stream);
    }

    #[test]
    fn scripts_carry_the_waiting_function() {
        let Write::Script { lua, .. } = purge(QueueKind::Stream, "q") else {
            panic!()
        };
        assert!(lua.contains("local function waiting") && lua.contains("XDEL"));
        let Write::Script { lua, .. } = delete(QueueKind::List, "q", "t") else {
            panic!()
        };
        assert!(lua.contains("LREM"));
    }
}
