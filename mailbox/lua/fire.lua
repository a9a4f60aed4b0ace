-- fire: one due timer of the partition (the owner read the due members
-- first and declared each one's keys). It re-checks that the member is
-- still due, takes it, and applies it:
--   - deliver-by on a queued command, or a sent one not on the wire:
--     expired. On the wire (sending set, no PUBACK yet): re-armed as an
--     answer timer one timeout + grace later. Pending within its lease:
--     re-armed to the lease's end; past it, expired (through queued).
--   - scheduled (not before): a scheduled command goes into the
--     device's mailbox as dispatch would put it (or expires, or is
--     rejected by a full mailbox).
--   - lane ('l', armed by the step that ended the lane's head): a
--     command waiting for its lane goes into the device's mailbox if it
--     is the lane's head now (or expires, or is rejected, as dispatch).
--   - answer: sent or delivered → timeout once delivered + timeout +
--     grace has passed (an answer read in time may still be recorded
--     until then); a sent command no longer on the wire (handed back)
--     expires at its deliver-by instead.
-- A command whose retry policy retries the timeout or the expiry takes
-- its next attempt instead (again, lib.lua).
-- Replies {outcome, '', '', outbox entry or absent}.
local K = cmdkeys(KEYS)
local member, horizon = A[1], tonumber(A[2])
local expired_body, expired_reason, timeout_body, timeout_reason = A[3], A[4], A[5], A[6]
local rejected_body, rejected_reason = A[7], A[8]

local due = redis.call('ZSCORE', K.timers, member)
if not due or tonumber(due) > NOW then return {'notdue', ''} end
redis.call('ZREM', K.timers, member)
local kind = string.sub(member, 1, 1)
local r = load(K.rec)

-- expire ends r expired, or starts its next attempt when its policy
-- retries an expiry (request: its device request, nil while its AMQP
-- message or its lane's turn is still to come).
local function expire(request)
  if retrying(r, 'expired') then
    return again(K, r, 'expired', request, expired_body, expired_reason, rejected_body, rejected_reason)
  end
  return {'expired', '', '', finalize(K, r, 'expired', expired_body, expired_reason)}
end

if not r then
  -- The record is gone: whatever lane it held lets the next one go.
  local _, d, c, k = string.match(member, '^(%a)|([^|]*)|([^|]*)|(.*)$')
  if d then laneorphan(K, d, c, k) end
  return {'noop', ''}
end
if not sane(r) then return {'corrupt', ''} end
local st = r.status
if kind == 's' then
  if st ~= 'scheduled' then return {'noop', ''} end
  local nb = num(r.nb)
  if nb > NOW then
    redis.call('ZADD', K.timers, ms(nb), member)
    return {'rearmed', ''}
  end
  local request = r.req
  if not lanegate(K, r, request) then return {'lane_wait', ''} end
  -- A command with retries keeps its request for the next one.
  if num(r.retries) == 0 then redis.call('HDEL', K.rec, 'req') end
  return send(K, r, r.device, request, num(r.deliver_by), expired_body, expired_reason, rejected_body, rejected_reason)
end
if kind == 'l' then
  -- The lane's head left: this command may go on the wire if it waits
  -- for its lane (it is queued with its request) and is the head now.
  if st ~= 'queued' or num(r.lw) == 0 or not r.req then return {'noop', ''} end
  if lanehead(K, r.lane) ~= lanemember(r) then return {'noop', ''} end
  local request = r.req
  if num(r.retries) == 0 then redis.call('HDEL', K.rec, 'lw', 'req') else redis.call('HDEL', K.rec, 'lw') end
  r.lw = nil
  return send(K, r, r.device, request, num(r.deliver_by), expired_body, expired_reason, rejected_body, rejected_reason)
end
if kind == 'd' then
  if st ~= 'pending' and st ~= 'queued' and st ~= 'sent' then return {'noop', ''} end
  local by = num(r.deliver_by)
  if by > NOW then
    redis.call('ZADD', K.timers, ms(by), member)
    return {'rearmed', ''}
  end
  if st == 'pending' then
    local lu = num(r.lease_until)
    if lu > NOW then
      redis.call('ZADD', K.timers, ms(lu), member)
      return {'rearmed', ''}
    end
    queue(K, r, horizon)
    return expire(nil)
  end
  if st == 'queued' then return expire(nil) end
  if num(r.sending) > 0 then
    redis.call('ZADD', K.timers, ms(NOW + num(r.tmo) + GRACE), tm('a', r))
    return {'rearmed', ''}
  end
  return expire(r.req)
end
if st == 'sent' and num(r.sending) == 0 then
  local by = num(r.deliver_by)
  if by > NOW then
    redis.call('ZADD', K.timers, ms(by), tm('d', r))
    return {'rearmed', ''}
  end
  return expire(r.req)
end
if st == 'delivered' and num(r.tmo) == 0 then
  -- One-way, PUBACKed, and the step after the PUBACK never ran.
  return {'succeeded', '', '', finalize(K, r, 'succeeded', ONEWAY, '')}
end
if (st == 'sent' or st == 'delivered') and retrying(r, 'timeout') and r.req then
  -- No answer within the timeout, and the policy retries it: the next
  -- attempt (its own device-facing id) with a fresh expires_in window.
  return again(K, r, 'timeout', r.req, expired_body, expired_reason, rejected_body, rejected_reason)
end
if st == 'sent' or st == 'delivered' then
  return {'timeout', '', '', finalize(K, r, 'timeout', timeout_body, timeout_reason)}
end
return {'noop', ''}
