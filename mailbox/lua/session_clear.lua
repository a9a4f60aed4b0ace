-- session_clear: ends the registration if it names node (and, when conn
-- is not '', that very connection: a newer connection of the identity on
-- the same node keeps it). forget: any connection. Replies 1 when it
-- cleared, 0 otherwise.
local sk, ck, seen = KEYS[1], KEYS[2], KEYS[3]
local node, conn = A[1], A[2]
if redis.call('GET', sk) ~= node then return 0 end
if conn ~= '' and redis.call('GET', ck) ~= conn then return 0 end
redis.call('DEL', sk, ck)
redis.call('SET', seen, ms(NOW), 'PX', ms(RET))
return 1
