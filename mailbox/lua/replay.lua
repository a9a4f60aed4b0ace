-- replay: dead → queued (an operator action), with a fresh deliver-by
-- window and its timer, and the next generation of the command (the
-- client's claim takes the replay's final as a new result). The member
-- stays in the dead set until dispatch takes it out. A[2] lists the
-- statuses it takes, comma-separated (default dead): the client's retry
-- (POST /v1/commands/{id}/retry) takes failed, timeout, expired and
-- rejected the same way.
local K = cmdkeys(KEYS)
local horizon = tonumber(A[1])
local allowed = A[2] or 'dead'

local r, raw = load(K.rec)
local member = ''
if r then member = r.client .. '|' .. r.key end
if not r or r.status == 'void' then return {'notfound', {}} end
if r.status == 'queued' and redis.call('ZSCORE', K.dead, member) then
  return {'queued', raw}
end
if not string.find(',' .. allowed .. ',', ',' .. r.status .. ',', 1, true) then return {'state', raw} end
if not sane(r) then return {'corrupt', raw} end
local by = NOW + num(r.exp)
redis.call('PERSIST', K.rec)
redis.call('HDEL', K.rec, 'finished', 'resp', 'reason', 'dropped', 'sending', 'sent', 'delivered', 'entry', 'tries', 'rw', 'rerr')
redis.call('HSET', K.rec, 'status', 'queued', 'queued', ms(NOW), 'deliver_by', ms(by), 'replays', ms(num(r.replays) + 1))
redis.call('ZADD', K.queued, ms(NOW), r.client .. '|' .. r.key)
arm(K.timers, by, tm('d', r))
r.deliver_by = ms(by)
if r.lane and r.lane ~= '' then
  -- It left its lane when it died; it joins it again at the end.
  redis.call('HSET', K.rec, 'lseq', lanejoin(K, r.lane, r.client, r.key, by + num(r.tmo) + 2 * GRACE + RET))
end
index(K, r, horizon)
count(K.stats, 'queued')
return {'queued', redis.call('HGETALL', K.rec)}
