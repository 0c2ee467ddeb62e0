-- Moves a cached item to another state (item field and set membership); keeps its TTL.
-- KEYS[1] item key; ARGV: id, state-set key prefix, new state, version. Returns 1 if cached.
local key, id, sets, state = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TYPE', key)['ok']
local old
if t == 'hash' then
  old = redis.call('HGET', key, 'state')
  redis.call('HSET', key, 'state', state, 'version', ARGV[4])
elseif t == 'ReJSON-RL' then
  old = cjson.decode(redis.call('JSON.GET', key, '$.state'))[1]
  redis.call('JSON.SET', key, '$.state', cjson.encode(state))
  redis.call('JSON.SET', key, '$.version', ARGV[4])
else
  return 0
end
if old then
  redis.call('SREM', sets .. old, id)
end
redis.call('SADD', sets .. state, id)
return 1
