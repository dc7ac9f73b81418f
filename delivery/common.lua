local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(n) return string.format('%d', n) end

-- xid is event id n's entry id in a history stream: its milliseconds part
-- and the rest, so that entry ids order as event ids do.
local function xid(n)
  local ms = math.floor(n / 1000)
  return fmt(ms) .. '-' .. fmt(n - ms * 1000)
end

-- eventID is the event id of entry id x.
local function eventID(x)
  local ms, seq = string.match(x, '^(%d+)%-(%d+)$')
  return tonumber(ms) * 1000 + tonumber(seq)
end

-- record appends envelope to the history stream hist, whose last event id
-- is kept in lastk, trims it to maxlen entries, and returns the event id
-- and the envelope with its event_id field (9) set.
--
-- Each entry holds the envelope (field d) and the id of the event before
-- it (field p; 0 for none known), so that a reader learns the newest event
-- no longer in the history, the floor, from the oldest entry alone: ids
-- only grow, and trimming takes the oldest entries, so the oldest entry's
-- predecessor is the newest trimmed (or expired with the key: a stream
-- that expired starts again after the last id, which lastk keeps keep ms).
-- The stream expires window ms after its newest event; within that, it
-- holds at most maxlen entries, and readers apply the window themselves.
local function record(hist, lastk, envelope, maxlen, window, keep)
  local last = tonumber(redis.call('GET', lastk))
  local id = now * 1000
  if last ~= nil and last >= id then id = last + 1 end
  if id % 1000 == 999 then id = id + 1 end
  local prev = last or 0
  local function entry()
    local sid = fmt(id)
    -- event_id is field 9, length-delimited (tag 9 * 8 + 2 = 74); an id of
    -- at most 20 digits has a one-byte length.
    return sid, envelope .. string.char(74, #sid) .. sid
  end
  local sid, payload = entry()
  local ok = redis.pcall('XADD', hist, 'MAXLEN', maxlen, xid(id), 'd', payload, 'p', fmt(prev))
  if type(ok) == 'table' and ok.err then
    -- The stream is ahead of lastk (which was evicted or lost): go on
    -- after its newest entry.
    local top = redis.call('XREVRANGE', hist, '+', '-', 'COUNT', 1)
    if top[1] ~= nil then
      prev = eventID(top[1][1])
      id = math.max(id, prev + 1)
      if id % 1000 == 999 then id = id + 1 end
      sid, payload = entry()
    end
    redis.call('XADD', hist, 'MAXLEN', maxlen, xid(id), 'd', payload, 'p', fmt(prev))
  end
  redis.call('SET', lastk, sid, 'PX', keep)
  redis.call('PEXPIRE', hist, window)
  return sid, payload
end
