-- complete: a device's answer, run by the push server that read it
-- (DESIGN §5). sent or delivered → succeeded or failed. received = now −
-- held (the time the answer reached the edge): an answer received after
-- the answer deadline (delivered + timeout) ends the command as timeout
-- with the answer kept as late; one received in time wins while the
-- record is not final. First final wins; nothing overrides a final.
--
-- Under a retry policy (lib.lua): an error answer whose command retries
-- device_error (or an answer past the deadline, timeout) takes the next
-- attempt instead of ending it. att is the attempt the answer's id names
-- ("{client}:{id}#{n}"; 0: no suffix, the current attempt): an earlier
-- attempt's result still counts (the device did the work), its error
-- does not (that attempt already ended), and neither does any answer
-- while the next attempt waits out its backoff, or one naming an attempt
-- not made yet: those are kept as late and change nothing.
-- Replies {outcome, '', '', outbox entry or absent}, or again's reply.
local K = cmdkeys(KEYS)
local device, body, status, raw, held = A[1], A[2], A[3], A[4], tonumber(A[5])
local timeout_body, timeout_reason = A[6], A[7]
-- tp: the span of the answer's completion (W3C traceparent), which the
-- relay of the result continues; kept only when it continues the
-- command's trace (the same trace ID, characters 4 to 35), so that an
-- answer sent without the command's trace leaves the record's.
local tp = A[8] or ''
local att = tonumber(A[9]) or 0
local expired_body, expired_reason, rejected_body, rejected_reason = A[10], A[11], A[12], A[13]
local received = NOW - held

-- keeplate records raw as the command's late answer, changing nothing else.
local function keeplate(r)
  if r.late ~= raw then
    redis.call('HSET', K.rec, 'late', raw)
    count(K.stats, 'late')
  end
  return {'late', ''}
end

local r = load(K.rec)
if not r then return {'unknown', ''} end
if r.device ~= device then return {'other_device', ''} end
local st = r.status
if FINAL[st] then
  if (st == 'succeeded' or st == 'failed') and r.id and r.resp == response(r, body, false) then
    return {'duplicate', ''}
  end
  return keeplate(r)
end
local current = num(r.tries) + 1
if st == 'scheduled' and num(r.tries) > 0 then return keeplate(r) end
if st ~= 'sent' and st ~= 'delivered' then return {'not_sent', ''} end
if not sane(r) then return {'corrupt', ''} end
if att > current or (att > 0 and att < current and status ~= 'succeeded') then return keeplate(r) end
-- Every way on from here writes extra (finalize, or the HSET before
-- again), so the trace goes in with it rather than in a write of its own.
local extra = {}
if tp ~= '' and (not r.tp or r.tp == '' or string.sub(r.tp, 4, 35) == string.sub(tp, 4, 35)) then
  extra = {'tp', tp}
  r.tp = tp
end
if num(r.tmo) == 0 then
  -- A one-way command awaits no answer: the device got it, so it has
  -- succeeded; the answer it sent anyway is kept as late.
  count(K.stats, 'late')
  extra[#extra + 1] = 'late'; extra[#extra + 1] = raw
  if num(r.delivered) == 0 then extra[#extra + 1] = 'delivered'; extra[#extra + 1] = ms(math.min(NOW, received)) end
  return {'succeeded', '', '', finalize(K, r, 'succeeded', ONEWAY, '', extra)}
end
if num(r.delivered) == 0 then
  extra[#extra + 1] = 'delivered'; extra[#extra + 1] = ms(math.min(NOW, received))
  r.delivered = ms(math.min(NOW, received))
end
local deadline = num(r.delivered) + num(r.tmo)
if received > deadline then
  extra[#extra + 1] = 'late'; extra[#extra + 1] = raw
  count(K.stats, 'late')
  if retrying(r, 'timeout') and r.req then
    redis.call('HSET', K.rec, unpack(extra))
    return again(K, r, 'timeout', r.req, expired_body, expired_reason, rejected_body, rejected_reason)
  end
  return {'timeout', '', '', finalize(K, r, 'timeout', timeout_body, timeout_reason, extra)}
end
if status == 'failed' and retrying(r, 'device_error') and r.req then
  -- The device's error ends this attempt only; it is kept as rerr.
  extra[#extra + 1] = 'rerr'; extra[#extra + 1] = raw
  redis.call('HSET', K.rec, unpack(extra))
  return again(K, r, 'device_error', r.req, expired_body, expired_reason, rejected_body, rejected_reason)
end
return {status, '', '', finalize(K, r, status, body, '', extra)}
