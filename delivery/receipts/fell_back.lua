
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local eid, acc = string.match(v, '^%a+|(%d+)|(%d+)|')
  redis.call('HSET', KEYS[1], ARGV[1], 'fellback|' .. eid .. '|' .. acc .. '|' .. ARGV[2])
end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'fell_back_ms', ARGV[2]) end
return 0
