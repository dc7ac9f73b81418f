
-- A pending idempotency record still ours (it ends with ARGV[1], "|" and
-- the notification's record) becomes the refused record ARGV[2] for ARGV[3]
-- ms (idemrecord.go).
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 8) == 'pending|' and string.sub(v, -#ARGV[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 0
