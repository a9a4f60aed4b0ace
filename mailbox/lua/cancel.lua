-- cancel: queued, scheduled, or sent but not yet on the wire → cancelled.
local K = cmdkeys(KEYS)
local body, reason = A[1], A[2]

local r, raw = load(K.rec)
if not r or r.status == 'void' then return {'notfound', {}, ''} end
local st = r.status
if st == 'queued' or st == 'scheduled' or (st == 'sent' and num(r.sending) == 0) then
  if not sane(r) then return {'corrupt', raw, ''} end
  local ob = finalize(K, r, 'cancelled', body, reason)
  return {'cancelled', redis.call('HGETALL', K.rec), '', ob}
end
return {'state', raw, ''}
