
-- A pending idempotency record still ours (ARGV[1]) becomes the refused
-- record ARGV[2] for ARGV[3] ms (idemrecord.go).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 0
