-- dispatch: a command delivery from a command queue. queued → sent: the
-- device request goes into the device's mailbox with expiry deliver-by,
-- and the deliver-by timer armed at reserve becomes the deadline of the
-- sent command. A record still pending is queued first (the message
-- proves the publish). Replies {outcome, detail, session node, outbox
-- entry or absent}.
local K = cmdkeys(KEYS)
local device, method, request, env_by, horizon = A[1], A[2], A[3], tonumber(A[4]), tonumber(A[5])
local expired_body, expired_reason, rejected_body, rejected_reason = A[6], A[7], A[8], A[9]
-- tp: the worker's dispatch span (W3C traceparent), kept in the record
-- and the device's mailbox entry so that the push server continues it.
local tp = A[10] or ''

local r = load(K.rec)
if not r then return {'noop', 'missing', ''} end
if r.device ~= device or r.method ~= method then return {'noop', 'mismatch', ''} end
local st = r.status
if st ~= 'pending' and st ~= 'queued' then return {'noop', st, ''} end
if not sane(r) then return {'corrupt', '', ''} end
-- The trace goes into the record with the step's other fields: send's
-- write of sent takes it (and clears r.tpw); any other way writes it here.
if tp ~= '' then r.tp, r.tpw = tp, true end
local function tpwrite()
  if r.tpw then redis.call('HSET', K.rec, 'tp', tp); r.tpw = nil end
end
if st == 'pending' then queue(K, r, horizon) end
local c, k = r.client, r.key
if num(r.nb) > NOW then
  -- Not before nb: it waits here (the message is acked: the record is
  -- durable), with the device request, for its timer.
  if r.tpw then
    redis.call('HSET', K.rec, 'status', 'scheduled', 'req', request, 'tp', tp)
    r.tpw = nil
  else
    redis.call('HSET', K.rec, 'status', 'scheduled', 'req', request)
  end
  unqueue(K, r)
  arm(K.timers, num(r.nb), tm('s', r))
  count(K.stats, 'scheduled')
  return {'scheduled', '', ''}
end
local by = num(r.deliver_by)
if by == 0 then by = env_by end
-- A command of an ordered lane waits (queued, its request kept) until it
-- is its lane's head.
if not lanegate(K, r, request) then
  tpwrite()
  return {'lane_wait', '', ''}
end
-- A command with retries keeps its device request for them.
if num(r.retries) > 0 then redis.call('HSET', K.rec, 'req', request) end
local res = send(K, r, device, request, by, expired_body, expired_reason, rejected_body, rejected_reason)
tpwrite()
return res
