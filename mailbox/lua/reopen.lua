-- reopen: a replayed command's claim is open again for its new
-- generation, so that the replay's final reaches the client. A child of
-- a group command (KEYS[3], the group's record in this partition) is no
-- longer final there: its count goes until the new final is relayed.
local claim, timers, gk = KEYS[1], KEYS[2], KEYS[3]
local device, gen, lifetime, watch, member = A[1], tonumber(A[2]), tonumber(A[3]), tonumber(A[4]), A[5]
local c = redis.call('HMGET', claim, 'device', 'gen', 'state', 'status')
if c[1] and c[1] ~= device then return 'mismatch' end
if c[1] and num(c[2]) >= gen then return 'ok' end
if gk and c[3] == 'final' and c[4] and redis.call('EXISTS', gk) == 1 then
  redis.call('HINCRBY', gk, 'n:' .. c[4], -1)
  redis.call('HINCRBY', gk, 'done', -1)
  if c[4] ~= 'succeeded' and c[4] ~= 'cancelled' then redis.call('HINCRBY', gk, 'failures', -1) end
end
redis.call('HSET', claim, 'device', device, 'state', 'open', 'gen', ms(gen))
redis.call('HDEL', claim, 'status', 'resp', 'finished', 'dropped', 'conflict')
redis.call('PEXPIRE', claim, ms(lifetime))
arm(timers, NOW + watch, member)
return 'reopened'
