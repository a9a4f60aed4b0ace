-- put: a message for an identity's mailbox. Replies {'ok', entry ID,
-- session node} or {'full', '', ''}.
local mk, mboxes, sess = KEYS[1], KEYS[2], KEYS[3]
local identity, topic, payload, expires = A[1], A[2], A[3], tonumber(A[4])
local id = append(mk, mboxes, identity, topic, payload, expires)
if not id then return {'full', '', ''} end
return {'ok', id, session(sess)}
