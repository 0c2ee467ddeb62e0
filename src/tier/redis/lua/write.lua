-- Replaces (or removes) a chunk of items and keeps their state sets and the Merkle mirror in
-- step, atomically: one call per chunk, so the mirror is read and written once per touched
-- bucket instead of once per item.
-- KEYS: the item keys. ARGV[1] state-set key prefix, ARGV[2] mirror key prefix, ARGV[3] the
-- number A of mirror additions, then 4 per addition: partition, bucket (decimal), count,
-- XOR of the added leaves (64 hex digits) -- the memberships the chunk's items bring,
-- summed by the caller per (partition, bucket) so that new items cost no hex arithmetic
-- here. Then 9 per item: id, mode ('hash'|'json'|'del'), mirror membership ('' when not
-- mirrored), ttl ms (0: none), state, and for 'hash': payload, hash, version, type; for
-- 'json': the document.
-- Mirror membership = 2 hex digits of bucket, 64 hex digits of leaf, then the partition. An
-- item keeps it in its 'merkle' field, so whatever later replaces or deletes the item takes
-- exactly that leaf back out of `{mirror prefix}{partition}` (hash: bucket -> count:xor).
local sets, mirrors, additions = ARGV[1], ARGV[2], tonumber(ARGV[3])
local first = 3 + additions * 4

-- a key that holds something else than an item: a delete removes it, a put refuses (before
-- anything is written, so the chunk applies whole or not at all)
local types = {}
for n = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[n])['ok']
  if t ~= 'none' and t ~= 'hash' and t ~= 'ReJSON-RL' and ARGV[first + (n - 1) * 9 + 2] ~= 'del' then
    return redis.error_reply('key ' .. KEYS[n] .. ' holds a ' .. t .. ', not an item')
  end
  types[n] = t
end

-- per touched (mirror key, bucket): {count change, 8 x 32-bit XOR words}
local deltas = {}
local function delta(partition, bucket)
  local k = mirrors .. partition .. '\n' .. bucket
  local d = deltas[k]
  if not d then
    d = {0, 0, 0, 0, 0, 0, 0, 0, 0}
    deltas[k] = d
  end
  return d
end
local function xor_hex(d, hex, at)
  for i = 0, 7 do
    d[i + 2] = bit.bxor(d[i + 2], tonumber(string.sub(hex, at + i * 8, at + 7 + i * 8), 16))
  end
end
for a = 0, additions - 1 do
  local b = 4 + a * 4
  local d = delta(ARGV[b], tonumber(ARGV[b + 1]))
  d[1] = d[1] + tonumber(ARGV[b + 2])
  xor_hex(d, ARGV[b + 3], 1)
end

-- each written id's state, added with one SADD per state at the end (a map, so an id
-- written twice in one chunk ends in its last state only)
local joined = {}
for n = 1, #KEYS do
  local key, a = KEYS[n], first + (n - 1) * 9
  local id, mode, mirror, ttl, state = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    tonumber(ARGV[a + 4]), ARGV[a + 5]
  local t = types[n]
  local old, old_mirror = false, false
  if t == 'hash' then
    local f = redis.call('HMGET', key, 'state', 'merkle')
    old, old_mirror = f[1], f[2]
  elseif t == 'ReJSON-RL' then
    local f = cjson.decode(redis.call('JSON.GET', key, '$.state', '$.merkle'))
    old, old_mirror = f['$.state'][1], f['$.merkle'][1]
  end
  if old then
    redis.call('SREM', sets .. old, id)
  end
  if old_mirror then
    local d = delta(string.sub(old_mirror, 67), tonumber(string.sub(old_mirror, 1, 2), 16))
    d[1] = d[1] - 1
    xor_hex(d, old_mirror, 3)
  end
  if t ~= 'none' then
    redis.call('DEL', key)
  end
  if mode ~= 'del' then
    if mode == 'hash' then
      if mirror ~= '' then
        redis.call('HSET', key, 'payload', ARGV[a + 6], 'hash', ARGV[a + 7], 'state', state,
          'version', ARGV[a + 8], 'type', ARGV[a + 9], 'merkle', mirror)
      else
        redis.call('HSET', key, 'payload', ARGV[a + 6], 'hash', ARGV[a + 7], 'state', state,
          'version', ARGV[a + 8], 'type', ARGV[a + 9])
      end
    else
      redis.call('JSON.SET', key, '$', ARGV[a + 6])
      if mirror ~= '' then
        redis.call('JSON.SET', key, '$.merkle', cjson.encode(mirror))
      end
    end
    if ttl > 0 then
      redis.call('PEXPIRE', key, ttl)
    end
    joined[id] = state
  else
    joined[id] = nil
  end
end
local joining = {}
for id, state in pairs(joined) do
  local ids = joining[state]
  if not ids then
    ids = {}
    joining[state] = ids
  end
  ids[#ids + 1] = id
end
for state, ids in pairs(joining) do
  redis.call('SADD', sets .. state, unpack(ids))
end

for k, d in pairs(deltas) do
  local sep = string.find(k, '\n', 1, true)
  local mkey, field = string.sub(k, 1, sep - 1), string.sub(k, sep + 1)
  local cur = redis.call('HGET', mkey, field)
  local count = d[1]
  if cur then
    local c = string.find(cur, ':', 1, true)
    count = count + tonumber(string.sub(cur, 1, c - 1))
    xor_hex(d, cur, c + 1)
  end
  if count <= 0 then
    redis.call('HDEL', mkey, field)
  else
    local words = {}
    for i = 0, 7 do
      words[i + 1] = bit.tohex(d[i + 2], 8)
    end
    redis.call('HSET', mkey, field, count .. ':' .. table.concat(words))
  end
end
return #KEYS
