-- Replaces (or removes) a chunk of items and keeps their state sets and the Merkle mirror in
-- step, atomically: one call per chunk, so the mirror is read and written once per touched
-- bucket instead of once per item.
-- KEYS: the item keys. ARGV[1] state-set key prefix, ARGV[2] mirror key prefix, then 9 per
-- item: id, mode ('hash'|'json'|'del'), mirror membership ('' when not mirrored), ttl ms
-- (0: none), state, and for 'hash': payload, hash, version, type; for 'json': the document.
-- Mirror membership = 2 hex digits of bucket, 64 hex digits of leaf, then the partition. An
-- item keeps it in its 'merkle' field, so whatever later replaces or deletes the item takes
-- exactly that leaf back out of `{mirror prefix}{partition}` (hash: bucket -> count:xor).
local sets, mirrors = ARGV[1], ARGV[2]

-- a key that holds something else than an item: a delete removes it, a put refuses (before
-- anything is written, so the chunk applies whole or not at all)
for n = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[n])['ok']
  if t ~= 'none' and t ~= 'hash' and t ~= 'ReJSON-RL' and ARGV[2 + (n - 1) * 9 + 2] ~= 'del' then
    return redis.error_reply('key ' .. KEYS[n] .. ' holds a ' .. t .. ', not an item')
  end
end

-- per touched (mirror key, bucket): {count change, 8 x 32-bit XOR words}
local deltas = {}
local function toggle(m, change)
  local k = mirrors .. string.sub(m, 67) .. '\n' .. tonumber(string.sub(m, 1, 2), 16)
  local d = deltas[k]
  if not d then
    d = {0, 0, 0, 0, 0, 0, 0, 0, 0}
    deltas[k] = d
  end
  d[1] = d[1] + change
  for i = 0, 7 do
    d[i + 2] = bit.bxor(d[i + 2], tonumber(string.sub(m, 3 + i * 8, 10 + i * 8), 16))
  end
end

for n = 1, #KEYS do
  local key, a = KEYS[n], 2 + (n - 1) * 9
  local id, mode, mirror, ttl, state = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    tonumber(ARGV[a + 4]), ARGV[a + 5]
  local t = redis.call('TYPE', key)['ok']
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
    toggle(old_mirror, -1)
  end
  if t ~= 'none' then
    redis.call('DEL', key)
  end
  if mode ~= 'del' then
    if mode == 'hash' then
      redis.call('HSET', key, 'payload', ARGV[a + 6], 'hash', ARGV[a + 7], 'state', state,
        'version', ARGV[a + 8], 'type', ARGV[a + 9])
      if mirror ~= '' then
        redis.call('HSET', key, 'merkle', mirror)
      end
    else
      redis.call('JSON.SET', key, '$', ARGV[a + 6])
      if mirror ~= '' then
        redis.call('JSON.SET', key, '$.merkle', cjson.encode(mirror))
      end
    end
    if mirror ~= '' then
      toggle(mirror, 1)
    end
    if ttl > 0 then
      redis.call('PEXPIRE', key, ttl)
    end
    redis.call('SADD', sets .. state, id)
  end
end

for k, d in pairs(deltas) do
  local sep = string.find(k, '\n', 1, true)
  local mkey, field = string.sub(k, 1, sep - 1), string.sub(k, sep + 1)
  local cur = redis.call('HGET', mkey, field)
  local count = d[1]
  if cur then
    local c = string.find(cur, ':', 1, true)
    count = count + tonumber(string.sub(cur, 1, c - 1))
    for i = 0, 7 do
      d[i + 2] = bit.bxor(d[i + 2], tonumber(string.sub(cur, c + 1 + i * 8, c + 8 + i * 8), 16))
    end
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
