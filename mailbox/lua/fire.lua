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
    return {'expired', '', '', finalize(K, r, 'expired', expired_body, expired_reason)}
  end
  if st == 'queued' then return {'expired', '', '', finalize(K, r, 'expired', expired_body, expired_reason)} end
  if num(r.sending) > 0 then
    redis.call('ZADD', K.timers, ms(NOW + num(r.tmo) + GRACE), tm('a', r))
    return {'rearmed', ''}
  end
  return {'expired', '', '', finalize(K, r, 'expired', expired_body, expired_reason)}
end
if st == 'sent' and num(r.sending) == 0 then
  local by = num(r.deliver_by)
  if by > NOW then
    redis.call('ZADD', K.timers, ms(by), tm('d', r))
    return {'rearmed', ''}
  end
  return {'expired', '', '', finalize(K, r, 'expired', expired_body, expired_reason)}
end
if st == 'delivered' and num(r.tmo) == 0 then
  -- One-way, PUBACKed, and the step after the PUBACK never ran.
  return {'succeeded', '', '', finalize(K, r, 'succeeded', ONEWAY, '')}
end
if (st == 'sent' or st == 'delivered') and num(r.retries) > num(r.tries) and r.req then
  -- No answer within the timeout, and tries are left: the same request
  -- (same id: the device answers a repeat again, it does not run it
  -- twice) goes into the mailbox again, with a fresh expires_in window.
  if r.entry and r.entry ~= '' then redis.call('XDEL', K.mbox, r.entry) end
  redis.call('HDEL', K.rec, 'delivered', 'sending', 'fetched')
  local try = num(r.tries) + 1
  local rb_i = num(r.rb_i)
  if rb_i > 0 then
    -- A backoff: it waits as scheduled (cancellable) until then, and its
    -- expires_in window starts then; the scheduled timer sends it.
    local wait = rb_i
    local mult = tonumber(r.rb_m) or 1
    local cap = num(r.rb_x)
    for _ = 2, try do
      if wait >= cap then break end
      wait = wait * mult
    end
    if wait > cap then wait = cap end
    wait = math.floor(wait)
    local nb = NOW + wait
    if r.entry and r.entry ~= '' then
      if redis.call('XLEN', K.mbox) == 0 then redis.call('SREM', K.mboxes, r.device) end
    end
    redis.call('HSET', K.rec, 'status', 'scheduled', 'tries', ms(try), 'nb', ms(nb), 'deliver_by', ms(nb + num(r.exp)), 'entry', '')
    redis.call('ZADD', K.timers, ms(nb), tm('s', r))
    count(K.stats, 'retried')
    return {'retry_scheduled', ''}
  end
  redis.call('HSET', K.rec, 'status', 'sent', 'tries', ms(try))
  local res = send(K, r, r.device, r.req, NOW + num(r.exp), expired_body, expired_reason, rejected_body, rejected_reason)
  if res[1] == 'sent' then
    res[1] = 'retried'
    count(K.stats, 'retried')
  end
  return res
end
if st == 'sent' or st == 'delivered' then
  return {'timeout', '', '', finalize(K, r, 'timeout', timeout_body, timeout_reason)}
end
return {'noop', ''}
