
-- ARGV[1] notifications follow, each with the 14 ARGV of notify and its
-- KEYS (3, then one for an idempotency key, one for a trace, two for
-- receipts), in order. The reply is each one's, or {'err', message} for
-- one that failed: the others still run.
local out, ki, ai = {}, 1, 2
for i = 1, tonumber(ARGV[1]) do
  local A = {unpack(ARGV, ai, ai + 13)}
  local nk = 3
  if A[9] == '1' then nk = nk + 1 end
  if tonumber(A[10]) > 0 then nk = nk + 1 end
  if tonumber(A[13]) > 0 then nk = nk + 2 end
  local K = {unpack(KEYS, ki, ki + nk - 1)}
  ki, ai = ki + nk, ai + 14
  local ok, r = pcall(notify, K, A)
  if not ok then
    if type(r) == 'table' and r.err then r = r.err end
    r = {'err', tostring(r)}
  end
  out[i] = r
end
return out
