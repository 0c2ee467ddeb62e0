-- The ids of a state set whose item key still exists; members whose key expired are
-- removed from the set on the way. With ARGV[2] = 'delete', also deletes the items and
-- the set. KEYS[1] state set; ARGV[1] item key prefix.
local live = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. id
  if redis.call('EXISTS', key) == 1 then
    table.insert(live, id)
    if ARGV[2] == 'delete' then
      redis.call('DEL', key)
    end
  else
    redis.call('SREM', KEYS[1], id)
  end
end
if ARGV[2] == 'delete' then
  redis.call('DEL', KEYS[1])
end
return live
