-- put: a message for an identity's mailbox. Replies {'ok', entry ID,
-- session node, ID of the mailbox's last entry before it ('' when it was
-- empty): its wake-up carries the entry, wake.go} or {'full', '', ''}.
local mk, mboxes, sess = KEYS[1], KEYS[2], KEYS[3]
local identity, topic, payload, expires = A[1], A[2], A[3], tonumber(A[4])
local last = redis.call('XREVRANGE', mk, '+', '-', 'COUNT', 1)
local id = append(mk, mboxes, identity, topic, payload, expires)
if not id then return {'full', '', ''} end
return {'ok', id, session(sess), last[1] and last[1][1] or ''}
