
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local st, eid, acc, ms = string.match(v, '^(%a+)|(%d+)|(%d+)|(%d+)$')
if st == 'claimed' and ms == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], 'pending|' .. eid .. '|' .. acc .. '|' .. ms)
  return 1
end
return 0
