
-- ARGV[1] notifications follow the publisher's settings (ARGV[2] to
-- ARGV[6]), each with its 9 ARGV and its KEYS (3, then one for an
-- idempotency key, one for a trace, two for receipts), in order. The reply
-- is each one's, or {'err', message} for one that failed: the others still
-- run.
local C = config(2)
local out, k, a = {}, 0, 6
for i = 1, tonumber(ARGV[1]) do
  local ok, r = pcall(notify, k, a, C)
  if not ok then
    if type(r) == 'table' and r.err then r = r.err end
    r = {'err', tostring(r)}
  end
  out[i] = r
  k = k + 3
  if ARGV[a + 4] == '1' then k = k + 1 end
  if ARGV[a + 5] ~= '0' then k = k + 1 end
  if ARGV[a + 8] ~= '0' then k = k + 2 end
  a = a + 9
end
return out
