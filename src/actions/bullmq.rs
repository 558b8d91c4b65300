//! BullMQ's (6.x) pause and resume of a queue, as its `pause-7.lua` makes them, pure. A queue
//! is named as taskscope shows it, `<prefix>:<queue>` (`bull:jobs`), which is also the start of
//! its keys. Pause: `HSET <q>:meta paused 1`, `DEL <q>:marker` (workers stop being woken),
//! `XADD <q>:events * event paused`. Resume: `HDEL <q>:meta paused`, a legacy `paused` list
//! moved back to `wait`, the marker set again when jobs wait (or for the next delayed one),
//! `XADD <q>:events * event resumed`. One Lua script each.
//!
//! Running, retrying and deleting BullMQ jobs are not offered yet.

use super::Write;

/// `pause-7.lua`'s body (with its helpers inlined): ARGV[1] `paused` or `resumed`.
const PAUSE_LUA: &str = r#"
local rcall = redis.call
local wait, paused, meta, prioritized, events, delayed, marker =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
if ARGV[1] == 'paused' then
    rcall('HSET', meta, 'paused', 1)
    rcall('DEL', marker)
else
    rcall('HDEL', meta, 'paused')
    if rcall('EXISTS', paused) == 1 then
        if rcall('EXISTS', wait) == 0 then
            rcall('RENAME', paused, wait)
        else
            local jobs = rcall('LRANGE', paused, 0, 6999)
            rcall('RPUSH', wait, unpack(jobs))
            rcall('LTRIM', paused, #jobs, -1)
        end
    end
    if rcall('LLEN', wait) + rcall('ZCARD', prioritized) > 0 then
        rcall('ZADD', marker, 0, '0')
    else
        local next = rcall('ZRANGE', delayed, 0, 0, 'WITHSCORES')
        if #next > 0 and tonumber(next[2]) ~= nil then
            rcall('ZADD', marker, tonumber(next[2]) / 0x1000, '1')
        end
    end
end
rcall('XADD', events, '*', 'event', ARGV[1])
return 0
"#;

/// Pauses (`paused` true) or resumes the queue `queue` (`<prefix>:<name>`).
pub fn pause(queue: &str, paused: bool) -> Write {
    let key = |suffix: &str| format!("{queue}:{suffix}");
    Write::Script {
        lua: PAUSE_LUA,
        keys: vec![
            key("wait"),
            key("paused"),
            key("meta"),
            key("prioritized"),
            key("events"),
            key("delayed"),
            key("marker"),
        ],
        args: vec![if paused {
            b"paused".to_vec()
        } else {
            b"resumed".to_vec()
        }],
    }
}

/// Keys whose existence says the queue is in use.
pub fn known_keys(queue: &str) -> [String; 3] {
    [
        format!("{queue}:meta"),
        format!("{queue}:wait"),
        format!("{queue}:events"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_name_the_queues_keys() {
        let Write::Script { keys, args, lua } = pause("bull:jobs", true) else {
            panic!()
        };
        assert_eq!(keys[0], "bull:jobs:wait");
        assert_eq!(keys[2], "bull:jobs:meta");
        assert_eq!(keys[6], "bull:jobs:marker");
        assert_eq!(args, vec![b"paused".to_vec()]);
        assert!(lua.contains("'HSET', meta, 'paused', 1"));
        let Write::Script { args, .. } = pause("bull:jobs", false) else {
            panic!()
        };
        assert_eq!(args, vec![b"resumed".to_vec()]);
    }
}
