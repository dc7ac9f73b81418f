
local eid, payload = record(KEYS[1], KEYS[2], ARGV[2], history(ARGV[3], tonumber(ARGV[4]), ARGV[5]))
local subs = redis.call('$PUBLISH', ARGV[1], payload)
return {'online', tostring(subs), eid}
