
-- notify is one notification's work, with its own KEYS and ARGV (see
-- notifyLua in scripts.go); it returns the reply.
local function notify(KEYS, ARGV)
  local idem, trace
  local k = 4
  if ARGV[9] == '1' then idem = KEYS[k]; k = k + 1 end
  if tonumber(ARGV[10]) > 0 then trace = KEYS[k]; k = k + 1 end
  local receipts, envs
  if tonumber(ARGV[13]) > 0 then receipts = KEYS[k]; envs = KEYS[k + 1] end
  if idem then
    local prev = redis.call('GET', idem)
    if prev then return {'dup', prev} end
  end
  local eid, payload = record(KEYS[2], KEYS[3], ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
  local live = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
  local route = 'offline'
  local subs = 0
  if live > 0 then
    subs = redis.call('$PUBLISH', ARGV[1], payload)
    if subs > 0 then route = 'online' else route = 'stale' end
  end
  if idem then
    if route ~= 'online' and tonumber(ARGV[8]) > 0 then
      redis.call('SET', idem, 'pending|' .. ARGV[3], 'PX', ARGV[8])
    else
      redis.call('SET', idem, route .. '|' .. subs .. '|' .. eid .. '|' .. ARGV[3], 'PX', ARGV[4])
    end
  end
  if receipts and route == 'online' then
    local rid, racc = string.match(ARGV[3], '^(.*)|(%d+)|%d+$')
    redis.call('HSET', receipts, rid, 'pending|' .. eid .. '|' .. racc .. '|' .. ARGV[13])
    redis.call('HSET', envs, rid, payload)
    local keep = tonumber(ARGV[13]) - now + 3600000
    redis.call('PEXPIRE', receipts, keep)
    redis.call('PEXPIRE', envs, keep)
  end
  if trace then
    if ARGV[12] ~= '' then
      redis.call('HSET', trace, 'user', ARGV[11], 'accepted_ms', now, 'route', route, 'subscribers', subs, 'event_id', eid,
        'correlation_id', ARGV[12])
    else
      redis.call('HSET', trace, 'user', ARGV[11], 'accepted_ms', now, 'route', route, 'subscribers', subs, 'event_id', eid)
    end
    if ARGV[14] ~= '' then redis.call('HSET', trace, 'trace_id', ARGV[14]) end
    redis.call('PEXPIRE', trace, ARGV[10])
  end
  return {route, tostring(subs), eid}
end
