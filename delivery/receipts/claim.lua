
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return {'gone'} end
local st, eid, acc, ms = string.match(v, '^(%a+)|(%d+)|(%d+)|(%d+)$')
if st == 'pending' or (st == 'claimed' and tonumber(ms) < tonumber(ARGV[2])) then
  local env = redis.call('HGET', KEYS[2], ARGV[1])
  if not env then redis.call('HDEL', KEYS[1], ARGV[1]); return {'gone'} end
  redis.call('HSET', KEYS[1], ARGV[1], 'claimed|' .. eid .. '|' .. acc .. '|' .. ARGV[3])
  return {'claimed', env}
end
if st == 'claimed' then return {'busy'} end
return {'gone'}
