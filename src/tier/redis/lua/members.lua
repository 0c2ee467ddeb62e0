-- The ids of a state set whose item key still exists; members whose key expired are
-- removed from the set on the way. KEYS[1] state set; ARGV[1] item key prefix.
local live = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    table.insert(live, id)
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return live
