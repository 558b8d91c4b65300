-- taskscope's bounded read: runs one read command and replies as that command would, except
-- that every bulk string longer than ARGV[1] bytes is replaced by the pair
-- {'taskscope:too-large', <its length>}, so a huge value never crosses the wire.
-- KEYS: the keys read. ARGV[1]: the limit in bytes; ARGV[2]: the command (GET, MGET, HMGET,
-- HGETALL, LRANGE, XRANGE, XREVRANGE); ARGV[3..]: its arguments after the key.
-- Strings and hash fields are measured (STRLEN, HSTRLEN) before they are read, so Redis never
-- copies a huge one into Lua; list elements and stream fields have no length command and are
-- measured after the read (a transient copy inside Redis, never sent).
local max = tonumber(ARGV[1])
local cmd = ARGV[2]
local MARK = 'taskscope:too-large'
-- Lua's unpack() takes at most ~8000 values: multi-key reads go in chunks.
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

-- Reads `names` (keys for MGET, fields of `key` for HMGET) whose lengths `lengths` are known:
-- the small ones with `read` in chunks, the others as markers. Returns values in order.
local function read_measured(read, key, names, lengths)
  local out, small, at = {}, {}, {}
  for i = 1, #names do
    if lengths[i] > max then
      out[i] = too_large(lengths[i])
    else
      small[#small + 1] = names[i]
      at[#at + 1] = i
    end
  end
  local first = 1
  while first <= #small do
    local last = math.min(first + CHUNK - 1, #small)
    local vals
    if key then
      vals = redis.call(read, key, unpack(small, first, last))
    else
      vals = redis.call(read, unpack(small, first, last))
    end
    for j = first, last do
      out[at[j]] = vals[j - first + 1]
    end
    first = last + 1
  end
  return out
end

if cmd == 'GET' then
  local n = redis.call('STRLEN', KEYS[1])
  if n > max then
    return too_large(n)
  end
  return redis.call('GET', KEYS[1])
elseif cmd == 'MGET' then
  -- MGET answers nil for a key of another type; STRLEN would fail: measure it as empty.
  local lengths = {}
  for i = 1, #KEYS do
    local n = redis.pcall('STRLEN', KEYS[i])
    if type(n) ~= 'number' then
      n = 0
    end
    lengths[i] = n
  end
  return read_measured('MGET', nil, KEYS, lengths)
elseif cmd == 'HMGET' then
  local fields, lengths = {}, {}
  for i = 3, #ARGV do
    fields[#fields + 1] = ARGV[i]
    lengths[#lengths + 1] = redis.call('HSTRLEN', KEYS[1], ARGV[i])
  end
  return read_measured('HMGET', KEYS[1], fields, lengths)
elseif cmd == 'HGETALL' then
  -- Usually small (Celery's unacked, Dramatiq's delay queues): one exact MEMORY USAGE says
  -- whether every value fits, else each field is measured.
  local usage = redis.call('MEMORY', 'USAGE', KEYS[1], 'SAMPLES', '0')
  if not usage or usage <= max then
    return redis.call('HGETALL', KEYS[1])
  end
  local fields = redis.call('HKEYS', KEYS[1])
  local lengths = {}
  for i = 1, #fields do
    lengths[i] = redis.call('HSTRLEN', KEYS[1], fields[i])
  end
  local values = read_measured('HMGET', KEYS[1], fields, lengths)
  local out = {}
  for i = 1, #fields do
    out[#out + 1] = bound(fields[i])
    out[#out + 1] = values[i]
  end
  return out
elseif cmd == 'LRANGE' or cmd == 'XRANGE' or cmd == 'XREVRANGE' then
  return bound(redis.call(cmd, KEYS[1], unpack(ARGV, 3)))
end
return redis.error_reply('taskscope bounded read: unsupported command ' .. tostring(cmd))
