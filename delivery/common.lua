
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(n) return string.format('%d', n) end

-- record adds envelope to the history in keys hist, last, floor, trims it
-- to window ms and maxlen entries, and returns the event id and the envelope
-- with its event_id field (9) set.
--
-- The floor is the newest id no longer in the history (trimmed, or expired
-- with the key). Ids only grow, and trimming takes the oldest, so it only
-- ever rises: it is set without being read. It is kept keep ms (plus a
-- minute for ids ahead of the clock) after it was set, not refreshed on
-- every event: by the time it expires it is below the window's own bound,
-- which readers apply anyway (see sinceScript).
local function record(hist, lastk, floork, envelope, maxlen, window, keep)
  local last = tonumber(redis.call('GET', lastk))
  local id = now * 1000
  if last ~= nil and last >= id then id = last + 1 end
  if id % 1000 == 999 then id = id + 1 end
  local sid = fmt(id)
  redis.call('SET', lastk, sid, 'PX', keep)
  -- event_id is field 9, length-delimited (tag 9 * 8 + 2 = 74); an id of
  -- at most 20 digits has a one-byte length.
  local payload = envelope .. string.char(74, #sid) .. sid
  redis.call('ZADD', hist, sid, payload)
  local floor
  local cutoff = (now - window) * 1000
  if redis.call('ZREMRANGEBYSCORE', hist, '-inf', fmt(cutoff)) > 0 then
    floor = cutoff
  end
  local n = redis.call('ZCARD', hist)
  if n == 1 and last ~= nil then
    -- Every earlier event is gone: trimmed, or expired with the key.
    floor = last
  end
  local extra = n - maxlen
  if extra > 0 then
    -- The oldest extra events go; the last one popped is the newest of
    -- them.
    local gone = redis.call('ZPOPMIN', hist, extra)
    floor = tonumber(gone[#gone])
  end
  if floor then redis.call('SET', floork, fmt(floor), 'PX', keep + 60000) end
  redis.call('PEXPIRE', hist, window)
  return sid, payload
end
