-- unsend: undoes what stamp did for an entry that was not published: one
-- attempt less, and sending cleared when no other fetch counted.
local mk, rk = KEYS[1], KEYS[2]
local identity, id = A[1], A[2]
local es = redis.call('XRANGE', mk, id, id)
if #es == 0 then return 'gone' end
local r = redis.call('HMGET', rk, 'status', 'entry', 'device', 'attempts', 'sending')
if r[1] ~= 'sent' or r[2] ~= id or r[3] ~= identity then return 'noop' end
local a = num(r[4])
if a > 0 then a = redis.call('HINCRBY', rk, 'attempts', -1) end
if a > 0 then return 'kept' end
if r[5] and r[5] ~= '' then redis.call('HDEL', rk, 'sending') end
return 'unsent'
