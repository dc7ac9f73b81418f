
-- epochOf returns the epoch of the slot of key k: the start position of the
-- first reader that found none. If started, a start position is being given
-- out, and the epoch is kept at least keep ms from now: it is kept 2 × keep
-- and renewed when less than keep is left, so that it is written once per
-- keep at most, not on every reconnect.
local function epochOf(k, started, keep)
  local e = tonumber(redis.call('GET', k))
  if e == nil then
    e = now * 1000 - 1
    redis.call('SET', k, fmt(e), 'PX', 2 * keep)
  elseif started and redis.call('PTTL', k) < keep then
    redis.call('PEXPIRE', k, 2 * keep)
  end
  return e
end

-- isStart reports whether position L is a start position.
local function isStart(L) return L % 1000 == 999 end

-- placed reports whether position L, above the floor and below the last id
-- of the stream with history hist and epoch key epochk, is one the history
-- accounts for: an event in it, or a start position of this epoch before
-- its oldest event (oldest, the oldest entry, or nil).
local function placed(hist, epochk, L, keep, oldest)
  if not isStart(L) then
    return redis.call('XRANGE', hist, xid(L), xid(L), 'COUNT', 1)[1] ~= nil
  end
  if L < epochOf(epochk, false, keep) then return false end
  return oldest ~= nil and L < eventID(oldest[1])
end
