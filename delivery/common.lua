local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(n) return string.format('%d', n) end

-- xid is event id n's entry id in a history stream: its milliseconds part
-- and the rest, so that entry ids order as event ids do. sid, if given, is
-- fmt(n).
local function xid(n, sid)
  local ms = math.floor(n / 1000)
  local seq = n - ms * 1000
  if sid and seq == 0 then return string.sub(sid, 1, -4) .. '-0' end
  return fmt(ms) .. '-' .. fmt(seq)
end

-- eventID is the event id of entry id x.
local function eventID(x)
  local ms, seq = string.match(x, '^(%d+)%-(%d+)$')
  return tonumber(ms) * 1000 + tonumber(seq)
end

-- record appends envelope to the history stream hist, whose last event id
-- is kept in lastk, trims it to about maxlen entries, and returns the event
-- id and the envelope with its event_id field (9) set.
--
-- Each entry holds the envelope (field d) and the id of the event before
-- it (field p; 0 for none known), so that a reader learns the newest event
-- no longer in the history, the floor, from the oldest entry it counts
-- alone: ids only grow, and trimming takes the oldest entries, so that
-- entry's predecessor is the newest trimmed or uncounted (or expired with
-- the key: a stream that expired starts again after the last id, which
-- lastk keeps keep ms).
--
-- Trimming is approximate (MAXLEN ~): Redis drops only whole nodes of the
-- stream, so it holds at least maxlen entries and at most a node more (a
-- node holds up to stream-node-max-entries entries or
-- stream-node-max-bytes bytes; 100 and 4 KiB by default), and readers serve
-- every entry. Exact trimming cost a ninth of the script's instructions.
--
-- The stream expires between ttl - tenth and ttl after its newest event
-- (the publisher's window plus one and two tenths of it), and readers apply
-- the window themselves. Its expiry is set by the first event of each tenth
-- (by event id), not by every event; an event in the same tenth as the one
-- before adds to the stream only if it exists (NOMKSTREAM), so that a
-- stream lost while lastk survived is made again with an expiry. maxlen,
-- ttl and keep are strings: a number passed to redis.call costs a float
-- format.
local function record(hist, lastk, envelope, maxlen, tenth, ttl, keep)
  local lastS = redis.call('GET', lastk)
  local last = tonumber(lastS)
  local id = now * 1000
  if last ~= nil and last >= id then id = last + 1 end
  if id % 1000 == 999 then id = id + 1 end
  local prev = lastS or '0'
  local renew = last == nil or math.floor(last / 1000 / tenth) ~= math.floor(id / 1000 / tenth)
  local function entry()
    local sid = fmt(id)
    -- event_id is field 9, length-delimited (tag 9 * 8 + 2 = 74); an id of
    -- at most 20 digits has a one-byte length.
    return sid, envelope .. string.char(74, #sid) .. sid
  end
  local sid, payload = entry()
  -- add appends the entry: a table with err on failure.
  local function add()
    local x = xid(id, sid)
    if not renew then
      local ok = redis.pcall('XADD', hist, 'NOMKSTREAM', 'MAXLEN', '~', maxlen, x, 'd', payload, 'p', prev)
      if ok then return ok end
      renew = true
    end
    return redis.pcall('XADD', hist, 'MAXLEN', '~', maxlen, x, 'd', payload, 'p', prev)
  end
  local ok = add()
  if type(ok) == 'table' and ok.err then
    -- The stream is ahead of lastk (which was evicted or lost): go on
    -- after its newest entry.
    local top = redis.call('XREVRANGE', hist, '+', '-', 'COUNT', 1)
    if top[1] ~= nil then
      local p = eventID(top[1][1])
      prev = fmt(p)
      id = math.max(id, p + 1)
      if id % 1000 == 999 then id = id + 1 end
      sid, payload = entry()
    end
    ok = add()
    if type(ok) == 'table' and ok.err then error(ok.err) end
  end
  redis.call('SET', lastk, sid, 'PX', keep)
  if renew then redis.call('PEXPIRE', hist, ttl) end
  return sid, payload
end
