-- stamp: the push server read entries of a mailbox (XRANGE) and is about
-- to publish them. For each entry (id, index of its record key in KEYS or
-- 0) it drops what is dead weight (expired; a command entry whose record
-- is gone, final, or carried by another entry) and marks the command
-- entries it keeps as on the wire (sending, attempts, fetched). With a
-- visibility (ms, > 0: a device polling over HTTP), a command fetched
-- less than that long ago is hidden: neither kept nor dropped, it comes
-- back once its fetch is that old without a PUBACK or an answer. Replies
-- the kept IDs.
local mk = KEYS[1]
local vis = tonumber(A[1])
local out, gone = {}, {}
for i = 2, #A, 3 do
  local id, ri, x = A[i], tonumber(A[i + 1]), tonumber(A[i + 2])
  local drop, hide = x <= NOW, false
  if not drop and ri > 0 then
    local rk = KEYS[ri]
    local st = redis.call('HMGET', rk, 'status', 'entry', 'sending', 'fetched', 'attempts')
    if not st[1] or FINAL[st[1]] or st[1] == 'void' or st[2] ~= id then
      drop = true
    elseif st[1] == 'delivered' then
      -- Delivered and not answered: offered again to a new connection
      -- (vis 0); a device polling over HTTP acknowledged it already.
      if vis > 0 then
        hide = true
      else
        redis.call('HSET', rk, 'fetched', ms(NOW), 'attempts', ms(num(st[5]) + 1))
      end
    elseif st[1] == 'sent' then
      if vis > 0 and num(st[4]) > NOW - vis then
        hide = true
      else
        if not st[3] or st[3] == '' then
          redis.call('HSET', rk, 'sending', ms(NOW), 'fetched', ms(NOW), 'attempts', ms(num(st[5]) + 1))
        else
          redis.call('HSET', rk, 'fetched', ms(NOW), 'attempts', ms(num(st[5]) + 1))
        end
      end
    end
  end
  if drop then gone[#gone + 1] = id elseif not hide then out[#out + 1] = id end
end
if #gone > 0 then redis.call('XDEL', mk, unpack(gone)) end
return out
