-- session_set: registers the identity's live session on node (and its
-- connection token, '' for none). Replies the node registered before
-- ('' for none): the caller moves the identity between node sets.
local sk, ck, seen = KEYS[1], KEYS[2], KEYS[3]
local node, conn = A[1], A[2]
local old = session(sk)
redis.call('SET', sk, node)
redis.call('SET', seen, ms(NOW), 'PX', ms(RET))
if conn ~= '' then redis.call('SET', ck, conn) else redis.call('DEL', ck) end
return old
