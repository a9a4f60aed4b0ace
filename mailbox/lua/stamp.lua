-- stamp: the push server read entries of a mailbox (XRANGE) and is about
-- to publish them. For each entry (id, index of its record key in KEYS or
-- 0) it drops what is dead weight (expired; a command entry whose record
-- is gone, final, or carried by another entry) and marks the command
-- entries it keeps as on the wire (sending, attempts). Replies the kept
-- IDs.
local mk = KEYS[1]
local out, gone = {}, {}
for i = 1, #A, 3 do
  local id, ri, x = A[i], tonumber(A[i + 1]), tonumber(A[i + 2])
  local drop = x <= NOW
  if not drop and ri > 0 then
    local rk = KEYS[ri]
    local st = redis.call('HMGET', rk, 'status', 'entry', 'sending')
    if not st[1] or FINAL[st[1]] or st[1] == 'void' or st[2] ~= id then
      drop = true
    elseif st[1] == 'sent' then
      if not st[3] or st[3] == '' then redis.call('HSET', rk, 'sending', ms(NOW)) end
      redis.call('HINCRBY', rk, 'attempts', 1)
    end
  end
  if drop then gone[#gone + 1] = id else out[#out + 1] = id end
end
if #gone > 0 then redis.call('XDEL', mk, unpack(gone)) end
return out
