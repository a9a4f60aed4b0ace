-- reopen: a replayed command's claim is open again for its new
-- generation, so that the replay's final reaches the client.
local claim, timers = KEYS[1], KEYS[2]
local device, gen, lifetime, watch, member = A[1], tonumber(A[2]), tonumber(A[3]), tonumber(A[4]), A[5]
local c = redis.call('HMGET', claim, 'device', 'gen')
if c[1] and c[1] ~= device then return 'mismatch' end
if c[1] and num(c[2]) >= gen then return 'ok' end
redis.call('HSET', claim, 'device', device, 'state', 'open', 'gen', ms(gen))
redis.call('HDEL', claim, 'status', 'resp', 'finished', 'dropped', 'conflict')
redis.call('PEXPIRE', claim, ms(lifetime))
redis.call('ZADD', timers, ms(NOW + watch), member)
return 'reopened'
