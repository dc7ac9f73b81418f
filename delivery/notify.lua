
-- liveAfter is ZCOUNT's bound for the leases live now.
local liveAfter = '(' .. fmt(now)

-- config parses the publisher's settings, which start at ARGV[i]: the
-- same for every notification of a script, so parsed once (see notifyLua
-- in scripts.go). Numbers go to Redis as the strings they came as: a Lua
-- number costs a float format per command.
local function config(i)
  return {idemWindow = ARGV[i], history = history(ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]),
    pending = ARGV[i + 4], queues = ARGV[i + 4] ~= '0'}
end

-- notify is one notification's work: its KEYS start after KEYS[k], its
-- ARGV after ARGV[a] (see notifyLua in scripts.go); C is config's. It
-- returns the reply's values: route, subscribers and event id, or 'dup' and
-- the stored record.
local function notify(k, a, C)
  local presence, hist, lastk = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local channel, envelope = ARGV[a + 1], ARGV[a + 2]
  local rec, hasKey, traceTTL, ackBy = '', '0', '0', '0'
  if ARGV[a + 3] == '1' then
    rec, hasKey, traceTTL, ackBy = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 9]
  end
  k = k + 3
  local idem, trace, receipts, envs
  if hasKey == '1' then idem = KEYS[k + 1]; k = k + 1 end
  if traceTTL ~= '0' then trace = KEYS[k + 1]; k = k + 1 end
  if ackBy ~= '0' then receipts = KEYS[k + 1]; envs = KEYS[k + 2] end
  if idem then
    local prev = redis.call('GET', idem)
    if prev then
      -- Recorded already, but refused by the offline queue, or left
      -- pending past the pending timeout (its router died, or never
      -- learnt that the script ran): the retry claims it again and queues
      -- the same event, recording nothing (idemrecord.go).
      if C.queues then
        local r = string.match(prev, '^refused|(.*)$')
        if not r then
          local ms, rest = string.match(prev, '^pending|(%d+)|(.*)$')
          if ms and now - tonumber(ms) >= tonumber(C.pending) then r = rest end
        end
        if r then
          redis.call('SET', idem, 'pending|' .. fmt(now) .. '|' .. r, 'PX', C.idemWindow)
          return 'dup', 'refused|' .. r
        end
      end
      return 'dup', prev
    end
  end
  local eid, payload = record(hist, lastk, envelope, C.history)
  local live = redis.call('ZCOUNT', presence, liveAfter, '+inf')
  local route = 'offline'
  local subs = 0
  if live > 0 then
    subs = redis.call('$PUBLISH', channel, payload)
    if subs > 0 then route = 'online' else route = 'stale' end
  end
  if idem then
    if route ~= 'online' and C.queues then
      redis.call('SET', idem, 'pending|' .. fmt(now) .. '|' .. route .. '|' .. fmt(subs) .. '|' .. eid .. '|' .. rec,
        'PX', C.idemWindow)
    else
      redis.call('SET', idem, route .. '|' .. fmt(subs) .. '|' .. eid .. '|' .. rec, 'PX', C.idemWindow)
    end
  end
  if receipts and route == 'online' then
    local rid, racc = string.match(rec, '^(.*)|(%d+)|%d+$')
    redis.call('HSET', receipts, rid, 'pending|' .. eid .. '|' .. racc .. '|' .. ackBy)
    redis.call('HSET', envs, rid, payload)
    local keep = tonumber(ackBy) - now + 3600000
    redis.call('PEXPIRE', receipts, keep)
    redis.call('PEXPIRE', envs, keep)
  end
  if trace then
    local user, corr, traceID = ARGV[a + 7], ARGV[a + 8], ARGV[a + 10]
    if corr ~= '' then
      redis.call('HSET', trace, 'user', user, 'accepted_ms', now, 'route', route, 'subscribers', subs, 'event_id', eid,
        'correlation_id', corr)
    else
      redis.call('HSET', trace, 'user', user, 'accepted_ms', now, 'route', route, 'subscribers', subs, 'event_id', eid)
    end
    if traceID ~= '' then redis.call('HSET', trace, 'trace_id', traceID) end
    redis.call('PEXPIRE', trace, traceTTL)
  end
  return route, subs, eid
end
