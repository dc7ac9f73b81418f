
local all = redis.call('HGETALL', KEYS[1])
local want = {}
local upto = nil
if ARGV[1] == 'upto' then upto = tonumber(ARGV[3]) else
  for i = 3, #ARGV do want[ARGV[i]] = true end
end
local acked, late = {}, {}
for i = 1, #all, 2 do
  local id, v = all[i], all[i + 1]
  local st, eid, acc = string.match(v, '^(%a+)|(%d+)|(%d+)|')
  if st and ((upto and tonumber(eid) <= upto) or want[eid]) then
    if st == 'pending' then
      redis.call('HDEL', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      table.insert(acked, id); table.insert(acked, acc)
    elseif st == 'fellback' then
      redis.call('HDEL', KEYS[1], id)
      table.insert(late, id)
    elseif st == 'claimed' then
      table.insert(late, id)
    end
  end
end
table.insert(acked, 'late')
for _, id in ipairs(late) do table.insert(acked, id) end
return acked
