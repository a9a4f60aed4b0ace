-- dead: the command's message was dead-lettered. Only a command never
-- handed to a device (pending or queued) dies; for a sent or delivered
-- one the timers decide.
local K = cmdkeys(KEYS)
local body, reason, horizon = A[1], A[2], tonumber(A[3])

local r = load(K.rec)
if not r then return {'noop', ''} end
if r.status ~= 'pending' and r.status ~= 'queued' then return {'noop', ''} end
if not sane(r) then return {'corrupt', ''} end
if r.status == 'pending' then queue(K, r, horizon) end
local ob = finalize(K, r, 'dead', body, reason)
redis.call('ZADD', K.dead, ms(NOW), r.client .. '|' .. r.key)
return {'dead', '', '', ob}
