-- Reads one item whatever its shape, with its remaining TTL in ms (-1: none):
-- {type, payload, hash, state, version, pttl}, {'rejson', document, pttl}, or false.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'hash' then
  local f = redis.call('HMGET', KEYS[1], 'payload', 'hash', 'state', 'version', 'type')
  return {f[5], f[1], f[2], f[3], f[4], redis.call('PTTL', KEYS[1])}
elseif t == 'ReJSON-RL' then
  local doc = redis.call('JSON.GET', KEYS[1], '$.raw', '$.hash', '$.state', '$.version')
  return {'rejson', doc, redis.call('PTTL', KEYS[1])}
end
return false
