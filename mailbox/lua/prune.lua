-- prune: forgets an empty mailbox in the partition's mailbox set.
local mk, mboxes = KEYS[1], KEYS[2]
local identity = A[1]
if redis.call('XLEN', mk) == 0 then
  redis.call('SREM', mboxes, identity)
  return 1
end
return 0
