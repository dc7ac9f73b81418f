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

-- nowID is the event id now * 1000, which most events get, as a string,
-- and nowX its entry id: built once per script, not per event (a number
-- formatted or parsed costs Redis' Lua about a thousand instructions).
local nowID = fmt(now * 1000)
local nowX = fmt(now) .. '-0'

-- idField is the envelope's event_id field (9) for sid: length-delimited
-- (tag 9 * 8 + 2 = 74), and an id of at most 20 digits has a one-byte
-- length.
local function idField(sid) return string.char(74, #sid) .. sid end
local nowField = idField(nowID)

-- history is record's settings: the trim length maxlen, the window's
-- tenth, the stream's ttl and the last id's keep (strings, as Redis takes
-- them: a Lua number passed to redis.call costs a float format), and from,
-- the first event id of now's tenth.
local function history(maxlen, window, keep)
  local tenth = math.max(math.floor(window / 10), 1)
  return {maxlen = maxlen, tenth = tenth, ttl = fmt(window + 2 * tenth), keep = keep,
    from = fmt(math.floor(now / tenth) * tenth * 1000)}
end

-- add appends entry x to hist, with NOMKSTREAM unless mk: the XADD's reply
-- (a table with err on failure) and whether the stream may have been made.
local function add(hist, maxlen, x, payload, prev, mk)
  if not mk then
    local ok = redis.pcall('XADD', hist, 'NOMKSTREAM', 'MAXLEN', '~', maxlen, x, 'd', payload, 'p', prev)
    if ok then return ok, false end
  end
  return redis.pcall('XADD', hist, 'MAXLEN', '~', maxlen, x, 'd', payload, 'p', prev), true
end

-- record appends envelope to the history stream hist, whose last event id
-- is kept in lastk, trims it to about H.maxlen entries (H is history's),
-- and returns the event id and the envelope with its event_id field (9)
-- set.
--
-- Each entry holds the envelope (field d) and the id of the event before
-- it (field p; 0 for none known), so that a reader learns the newest event
-- no longer in the history, the floor, from the oldest entry it counts
-- alone: ids only grow, and trimming takes the oldest entries, so that
-- entry's predecessor is the newest trimmed or uncounted (or expired with
-- the key: a stream that expired starts again after the last id, which
-- lastk keeps keep ms).
--
-- The last id is read and written in one SET ... GET: the event id is
-- now * 1000 unless the last id is not below it (several events in one
-- millisecond, or a clock that went back), and then lastk is set again.
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
-- stream lost while lastk survived is made again with an expiry.
local function record(hist, lastk, envelope, H)
  local lastS = redis.call('SET', lastk, nowID, 'PX', H.keep, 'GET')
  local id, sid, x, payload = now * 1000, nowID, nowX, envelope .. nowField
  local prev, renew = lastS or '0', true
  if lastS and #lastS == #nowID and lastS < nowID then
    -- The usual case, a last event before now: decimal strings of one
    -- length order as their numbers do, and none is parsed.
    renew = lastS < H.from
  elseif lastS and tonumber(lastS) then
    local last = tonumber(lastS)
    if last >= id then
      id = last + 1
      if id % 1000 == 999 then id = id + 1 end
      sid = fmt(id)
      x, payload = xid(id, sid), envelope .. idField(sid)
    end
    renew = math.floor(last / 1000 / H.tenth) ~= math.floor(id / 1000 / H.tenth)
  end
  local ok
  ok, renew = add(hist, H.maxlen, x, payload, prev, renew)
  if type(ok) == 'table' and ok.err then
    -- The stream is ahead of lastk (which was evicted or lost): go on
    -- after its newest entry.
    local top = redis.call('XREVRANGE', hist, '+', '-', 'COUNT', 1)
    if top[1] ~= nil then
      local p = eventID(top[1][1])
      prev = fmt(p)
      id = math.max(id, p + 1)
      if id % 1000 == 999 then id = id + 1 end
      sid = fmt(id)
      x, payload = xid(id, sid), envelope .. idField(sid)
    end
    ok, renew = add(hist, H.maxlen, x, payload, prev, renew)
    if type(ok) == 'table' and ok.err then error(ok.err) end
  end
  if sid ~= nowID then redis.call('SET', lastk, sid, 'PX', H.keep) end
  if renew then redis.call('PEXPIRE', hist, H.ttl) end
  return sid, payload
end
