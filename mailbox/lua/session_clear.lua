-- session_clear: ends the registration if it names node (and, when conn
-- is not '', that very connection: a newer connection of the identity on
-- the same node keeps it). forget: any connection. Replies 1 when it
-- cleared, 0 otherwise.
local sk, ck = KEYS[1], KEYS[2]
local node, conn = A[1], A[2]
if redis.call('GET', sk) ~= node then return 0 end
if conn ~= '' and redis.call('GET', ck) ~= conn then return 0 end
redis.call('DEL', sk, ck)
return 1
