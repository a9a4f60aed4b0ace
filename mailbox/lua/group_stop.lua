-- group_stop: a group command stops releasing children (how: 'aborted'
-- or 'cancelled'; the first stop wins) and arms its abort timer now, so
-- that the partition's owner cancels the children not yet on the wire.
-- Replies 'stopped', 'already' (stopped before) or 'notfound'.
local gk, timers = KEYS[1], KEYS[2]
local how, reason, member = A[1], A[2], A[3]

if redis.call('EXISTS', gk) == 0 then return 'notfound' end
if redis.call('HSETNX', gk, 'stopped', how) == 0 then return 'already' end
redis.call('HSET', gk, 'stop_reason', reason, 'stopped_at', ms(NOW))
arm(timers, NOW, member)
return 'stopped'
