-- Replaces (or removes) one item and keeps its state set and the Merkle mirror in step,
-- atomically.
-- KEYS[1] item key
-- ARGV: id, state-set key prefix, mirror key prefix, mode ('hash'|'json'|'del'),
--       mirror membership ('' when the item is not mirrored: see below), ttl ms (0: none),
--       state, then for 'hash': payload, hash, version, type; for 'json': the document.
-- Mirror membership = 2 hex digits of bucket, 64 hex digits of leaf, then the partition. The
-- item keeps it in its 'merkle' field, so whatever later replaces or deletes the item takes
-- exactly that leaf back out of `{mirror prefix}{partition}` (hash: bucket -> count:xor).
local key, id, sets, mirrors, mode, mirror = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local function toggle(m, delta)
  local mkey, field, leaf = mirrors .. string.sub(m, 67), tonumber(string.sub(m, 1, 2), 16),
    string.sub(m, 3, 66)
  local cur = redis.call('HGET', mkey, field)
  local count, acc = 0, string.rep('0', 64)
  if cur then
    local sep = string.find(cur, ':', 1, true)
    count, acc = tonumber(string.sub(cur, 1, sep - 1)), string.sub(cur, sep + 1)
  end
  local out = {}
  for i = 0, 7 do
    local a = tonumber(string.sub(acc, i * 8 + 1, i * 8 + 8), 16)
    local b = tonumber(string.sub(leaf, i * 8 + 1, i * 8 + 8), 16)
    out[i + 1] = bit.tohex(bit.bxor(a, b), 8)
  end
  count = count + delta
  if count <= 0 then
    redis.call('HDEL', mkey, field)
  else
    redis.call('HSET', mkey, field, count .. ':' .. table.concat(out))
  end
end

local t = redis.call('TYPE', key)['ok']
local old, old_mirror = false, false
if t == 'hash' then
  local f = redis.call('HMGET', key, 'state', 'merkle')
  old, old_mirror = f[1], f[2]
elseif t == 'ReJSON-RL' then
  local f = cjson.decode(redis.call('JSON.GET', key, '$.state', '$.merkle'))
  old, old_mirror = f['$.state'][1], f['$.merkle'][1]
elseif t ~= 'none' then
  -- not an item: a delete removes it (verify --repair deletes such strays), a put refuses
  if mode == 'del' then
    redis.call('DEL', key)
    return 0
  end
  return redis.error_reply('key ' .. key .. ' holds a ' .. t .. ', not an item')
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
if mode == 'del' then
  return 0
end
if mode == 'hash' then
  redis.call('HSET', key, 'payload', ARGV[8], 'hash', ARGV[9], 'state', ARGV[7],
    'version', ARGV[10], 'type', ARGV[11])
  if mirror ~= '' then
    redis.call('HSET', key, 'merkle', mirror)
  end
else
  redis.call('JSON.SET', key, '$', ARGV[8])
  if mirror ~= '' then
    redis.call('JSON.SET', key, '$.merkle', cjson.encode(mirror))
  end
end
if mirror ~= '' then
  toggle(mirror, 1)
end
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  redis.call('PEXPIRE', key, ttl)
end
redis.call('SADD', sets .. ARGV[7], id)
return 1
