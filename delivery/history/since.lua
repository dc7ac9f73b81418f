
local window, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[2]))
local start = fmt(now * 1000 - 1)
if ARGV[1] == '' then
  if last then return {'pos', fmt(last)} end
  epochOf(KEYS[3], true, keep)
  return {'pos', start}
end
local L = tonumber(ARGV[1])
if last == nil then
  -- Nothing was recorded within keep: nothing was missed by a client at a
  -- start position within keep, of this epoch.
  local epoch = epochOf(KEYS[3], true, keep)
  if L and isStart(L) and L >= epoch and L >= (now - keep) * 1000 then return {'ok', fmt(L)} end
  return {'reset', start}
end
if L == nil then return {'reset', fmt(last)} end
if L == last then return {'ok', fmt(last)} end
if L > last then return {'reset', fmt(last)} end
-- The floor, the newest event no longer in the history, is the oldest
-- entry's predecessor; with no entry, every event up to the last is gone.
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local floor = last
if oldest then floor = tonumber(oldest[2][4]) end
floor = math.max(floor, (now - window) * 1000)
if L < floor then return {'reset', fmt(last)} end
if L > floor and not placed(KEYS[1], KEYS[3], L, keep, oldest) then return {'reset', fmt(last)} end
local out = {'ok', fmt(last)}
-- A page: at most ARGV[4] events (0: all) and, past the first, ARGV[5]
-- bytes (0: any). A cut page is 'more', positioned at its last event.
local count, budget = tonumber(ARGV[4]) or 0, tonumber(ARGV[5]) or 0
local args = {'XRANGE', KEYS[1], '(' .. xid(L), '+'}
if count > 0 then
  args[#args + 1] = 'COUNT'; args[#args + 1] = count
end
local r, size, upto = redis.call(unpack(args)), 0, nil
for i = 1, #r do
  local env = r[i][2][2]
  size = size + #env
  if budget > 0 and i > 1 and size > budget then break end
  out[#out + 1] = env
  upto = eventID(r[i][1])
end
if upto and upto < last then out[1], out[2] = 'more', fmt(upto) end
return out
