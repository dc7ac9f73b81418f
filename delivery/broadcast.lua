
local window = tonumber(ARGV[4])
local tenth = math.max(math.floor(window / 10), 1)
local eid, payload = record(KEYS[1], KEYS[2], ARGV[2], ARGV[3], tenth, fmt(window + 2 * tenth), ARGV[5])
local subs = redis.call('$PUBLISH', ARGV[1], payload)
return {'online', tostring(subs), eid}
