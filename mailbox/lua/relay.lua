-- relay: a final result from a device partition's outbox, applied to the
-- client's partition (DESIGN §7a, "The claim is the client's ledger"). If
-- the claim is open (or void, or final for an older generation) it
-- becomes final with this status and response, and the result goes into
-- the client's results mailbox; the same final again changes nothing
-- ('dup'); a different final for a closed claim is not delivered
-- ('conflict'). The claim, once final, needs no watchdog (member of the
-- client partition's timers). Status 'lost' comes from the watchdog
-- itself, for a claim whose record is gone: it applies to an open claim
-- only. Replies {outcome, session node, dropped}.
local claim, mk, mboxes, sess, stats, timers = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local client, device, gen, status, resp, finished, expires, member =
  A[1], A[2], tonumber(A[3]), A[4], A[5], A[6], tonumber(A[7]), A[8]
-- tp: the relay's span (W3C traceparent), carried by the client's
-- mailbox entry to the push server that delivers it.
local tp = A[9] or ''
-- A child of a group command names the group's record (KEYS[7], in this
-- same partition), its abort timer member (A[10]) and what to say when
-- its failures reach the group's abort_after (A[11]).
local gk, gmember, greason = KEYS[7], A[10], A[11]
-- orphan (A[12] = '1'): an answer that found no record (orphan.lua). Like
-- 'lost', it applies to an open claim of its generation only.
local orphan = A[12] == '1'

local c = redis.call('HMGET', claim, 'device', 'state', 'gen', 'status', 'resp')
if c[1] and c[1] ~= device then return {'mismatch', '', ''} end
local cg = num(c[3])
if c[1] and cg > gen then return {'stale', '', ''} end
if (status == 'lost' or orphan) and (c[2] ~= 'open' or cg ~= gen) then return {'stale', '', ''} end
if c[2] == 'final' and cg == gen then
  if c[4] == status and c[5] == resp then return {'dup', '', ''} end
  redis.call('HSET', claim, 'conflict', status)
  return {'conflict', '', ''}
end
local dropped = '0'
if not append(mk, mboxes, client, 'clients/' .. client .. '/results/' .. device, resp, expires, nil, nil, tp) then
  dropped = '1'
  count(stats, 'result_dropped')
end
if gk and redis.call('EXISTS', gk) == 1 then
  -- The group's counters: done once per child, a count per final
  -- status (a newer generation's final replaces the older one's), and
  -- the failures that abort_after reads. Reaching it stops the group and
  -- arms its abort timer now: the partition's owner cancels the
  -- children not yet on the wire (mailbox/group.go).
  local function failure(st) return st ~= 'succeeded' and st ~= 'cancelled' end
  if c[2] == 'final' then
    redis.call('HINCRBY', gk, 'n:' .. c[4], -1)
    if failure(c[4]) then redis.call('HINCRBY', gk, 'failures', -1) end
  else
    redis.call('HINCRBY', gk, 'done', 1)
  end
  redis.call('HINCRBY', gk, 'n:' .. status, 1)
  if failure(status) then
    local f = redis.call('HINCRBY', gk, 'failures', 1)
    local at = num(redis.call('HGET', gk, 'abort_at'))
    if at > 0 and f >= at and redis.call('HSETNX', gk, 'stopped', 'aborted') == 1 then
      redis.call('HSET', gk, 'stop_reason', greason .. ': ' .. f .. ' failed', 'stopped_at', ms(NOW))
      arm(timers, NOW, gmember)
      count(stats, 'group_aborted')
    end
  end
end
redis.call('HSET', claim, 'device', device, 'state', 'final', 'gen', ms(gen), 'status', status,
  'resp', resp, 'finished', finished, 'dropped', dropped)
redis.call('PEXPIRE', claim, ms(RET))
redis.call('ZREM', timers, member)
if status == 'lost' then count(stats, 'lost') end
if orphan then count(stats, 'orphan_applied') end
return {'relayed', session(sess), dropped}
