-- What verify needs of one key: {content hash, PTTL, Merkle membership}, false when the
-- key does not exist. A key of another type answers {false, pttl, false}.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  return false
end
local hash, membership = false, false
if t == 'hash' then
  local f = redis.call('HMGET', KEYS[1], 'hash', 'merkle')
  hash, membership = f[1], f[2]
elseif t == 'ReJSON-RL' then
  local f = cjson.decode(redis.call('JSON.GET', KEYS[1], '$.hash', '$.merkle'))
  hash, membership = f['$.hash'][1] or false, f['$.merkle'][1] or false
end
return {hash, redis.call('PTTL', KEYS[1]), membership}
