-- refuse: the device refused a command entry of its mailbox (an MQTT 5
-- PUBACK with a reason code of 0x80 or more: it will never take it). A
-- command sent through that very entry to this device ends rejected,
-- with body (the client's -32005, carrying the reason code) and reason;
-- for any other state the entry only leaves the mailbox, as with ack. An
-- entry that carries another command than (client, key) stays, and is
-- reported 'mismatch'. A command whose retry policy retries rejected
-- takes its next attempt instead (again, lib.lua: its reply).
-- Replies {outcome, '', '', outbox entry or absent}.
local K = cmdkeys(KEYS)
local device, id, client, key, body, reason = A[1], A[2], A[3], A[4], A[5], A[6]
local expired_body, expired_reason, rejected_body, rejected_reason = A[7], A[8], A[9], A[10]

local es = redis.call('XRANGE', K.mbox, id, id)
if #es == 0 then return {'gone', ''} end
local ef = fields(es[1][2])
if ef.c ~= client or ef.k ~= key then return {'mismatch', ''} end
local r = load(K.rec)
local out = {'deleted', ''}
if r and r.status == 'sent' and r.entry == id and r.device == device and r.client == client and r.key == key then
  if not sane(r) then return {'corrupt', ''} end
  if retrying(r, 'rejected') and r.req then
    return again(K, r, 'rejected', r.req, expired_body, expired_reason, rejected_body, rejected_reason)
  end
  out = {'rejected', '', '', finalize(K, r, 'rejected', body, reason)}
else
  redis.call('XDEL', K.mbox, id)
end
if redis.call('XLEN', K.mbox) == 0 then redis.call('SREM', K.mboxes, device) end
return out
