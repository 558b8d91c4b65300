-- taskscope's bounded read: runs one read command and replies as that command would, except
-- that every bulk string longer than ARGV[1] bytes is replaced by the pair
-- {'taskscope:too-large', <its length>}, so a huge value never crosses the wire.
-- KEYS: the keys read. ARGV[1]: the limit in bytes; ARGV[2]: the command (GET, MGET, HMGET,
-- HGETALL, HSCAN, LRANGE, XRANGE, XREVRANGE, XREAD, SORT_RO); ARGV[3..]: its arguments after
-- the key (XREAD: ARGV[3] is its COUNT, KEYS the streams, each read from its start; SORT_RO's
-- GET patterns read hashes not in KEYS, which a Redis that is not a cluster allows).
-- One command inside the script per read (the project counts Redis commands per lifecycle):
-- values are measured after the read, so a huge one is copied into Lua for the time of the
-- script (inside Redis, never sent), except a lone GET's, measured first with STRLEN (a
-- result key read at every reconciliation must not be copied each time).
local max = tonumber(ARGV[1])
local cmd = ARGV[2]
local MARK = 'taskscope:too-large'
-- Lua's unpack() takes at most ~8000 values: MGET and HMGET go in chunks.
local CHUNK = 1000

local function too_large(n)
  return {MARK, n}
end

-- Replaces oversize bulk strings anywhere in a reply.
local function bound(v)
  local t = type(v)
  if t == 'string' then
    if #v > max then
      return too_large(#v)
    end
  elseif t == 'table' then
    for i = 1, #v do
      v[i] = bound(v[i])
    end
  end
  return v
end

if cmd == 'GET' then
  local n = redis.call('STRLEN', KEYS[1])
  if n > max then
    return too_large(n)
  end
  return redis.call('GET', KEYS[1])
elseif cmd == 'MGET' then
  local out = {}
  local first = 1
  while first <= #KEYS do
    local last = math.min(first + CHUNK - 1, #KEYS)
    local vals = redis.call('MGET', unpack(KEYS, first, last))
    for i = 1, #vals do
      out[first + i - 1] = bound(vals[i])
    end
    first = last + 1
  end
  return out
elseif cmd == 'HMGET' then
  local out = {}
  local first = 3
  while first <= #ARGV do
    local last = math.min(first + CHUNK - 1, #ARGV)
    local vals = redis.call('HMGET', KEYS[1], unpack(ARGV, first, last))
    for i = 1, #vals do
      out[first - 3 + i] = bound(vals[i])
    end
    first = last + 1
  end
  return out
elseif cmd == 'XREAD' then
  -- ARGV[3]: the count; KEYS: the streams, each read from its first entry.
  local args = {'COUNT', ARGV[3], 'STREAMS'}
  for i = 1, #KEYS do
    args[#args + 1] = KEYS[i]
  end
  for i = 1, #KEYS do
    args[#args + 1] = '0'
  end
  return bound(redis.call('XREAD', unpack(args)))
elseif cmd == 'HGETALL' or cmd == 'HSCAN' or cmd == 'LRANGE' or cmd == 'XRANGE' or cmd == 'XREVRANGE'
    or cmd == 'SORT_RO' then
  return bound(redis.call(cmd, KEYS[1], unpack(ARGV, 3)))
end
return redis.error_reply('taskscope bounded read: unsupported command ' .. tostring(cmd))
