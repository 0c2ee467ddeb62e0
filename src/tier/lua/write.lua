-- Replaces (or removes) one item and keeps its state set in step, atomically.
-- KEYS[1] item key
-- ARGV: id, state-set key prefix, mode ('hash'|'json'|'del'), ttl ms (0: none), state,
--       then for 'hash': payload, hash, version, type; for 'json': the document
local key, id, sets, mode = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TYPE', key)['ok']
local old = false
if t == 'hash' then
  old = redis.call('HGET', key, 'state')
elseif t == 'ReJSON-RL' then
  old = cjson.decode(redis.call('JSON.GET', key, '$.state'))[1]
elseif t ~= 'none' then
  return redis.error_reply('key ' .. key .. ' holds a ' .. t .. ', not an item')
end
if old then
  redis.call('SREM', sets .. old, id)
end
if t ~= 'none' then
  redis.call('DEL', key)
end
if mode == 'del' then
  return 0
end
if mode == 'hash' then
  redis.call('HSET', key, 'payload', ARGV[6], 'hash', ARGV[7], 'state', ARGV[5],
    'version', ARGV[8], 'type', ARGV[9])
else
  redis.call('JSON.SET', key, '$', ARGV[6])
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', key, ttl)
end
redis.call('SADD', sets .. ARGV[5], id)
return 1
