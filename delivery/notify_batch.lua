
-- ARGV[1] notifications follow the publisher's settings (ARGV[2] to
-- ARGV[6]), each with its ARGV (3, or 10 when the third is 1) and its KEYS
-- (3, then one for an idempotency key, one for a trace, two for receipts),
-- in order. The reply is flat, three values each: each one's, or 'err',
-- the message and '' for one that failed (the others still run); a
-- duplicate's third is ''. A table per notification cost Redis about 5,000
-- instructions to convert.
local C = config(2)
local out, n, k, a = {}, 0, 0, 6
for i = 1, tonumber(ARGV[1]) do
  local ok, x, y, z = pcall(notify, k, a, C)
  if not ok then
    if type(x) == 'table' and x.err then x = x.err end
    x, y, z = 'err', tostring(x), ''
  end
  out[n + 1], out[n + 2], out[n + 3] = x, y, z or ''
  n = n + 3
  k = k + 3
  if ARGV[a + 3] == '1' then
    if ARGV[a + 5] == '1' then k = k + 1 end
    if ARGV[a + 6] ~= '0' then k = k + 1 end
    if ARGV[a + 9] ~= '0' then k = k + 2 end
    a = a + 10
  else
    a = a + 3
  end
end
return out
