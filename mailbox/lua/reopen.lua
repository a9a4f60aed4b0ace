-- reopen: a replayed command's claim is open again for its new
-- generation, so that the replay's final reaches the client.
local claim = KEYS[1]
local device, gen, lifetime = A[1], tonumber(A[2]), tonumber(A[3])
local c = redis.call('HMGET', claim, 'device', 'gen')
if c[1] and c[1] ~= device then return 'mismatch' end
if c[1] and num(c[2]) >= gen then return 'ok' end
redis.call('HSET', claim, 'device', device, 'state', 'open', 'gen', ms(gen))
redis.call('HDEL', claim, 'status', 'resp', 'finished', 'dropped', 'conflict')
redis.call('PEXPIRE', claim, ms(lifetime))
return 'reopened'
