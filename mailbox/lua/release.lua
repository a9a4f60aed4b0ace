-- release: the publish of a pending reservation held with token
-- definitely failed. The record becomes a void tombstone (never deleted,
-- DESIGN §7a) that expires at deliver-by + grace; a later reserve with
-- the same body reserves afresh. A retaken lease (an earlier holder's
-- publish may still be confirmed) only ends.
local K = cmdkeys(KEYS)
local token = A[1]

local r = load(K.rec)
if not r or r.status ~= 'pending' or r.lease ~= token then return 'noop' end
if num(r.retakes) > 0 then
  redis.call('HSET', K.rec, 'lease', '', 'lease_until', ms(NOW))
  return 'ended'
end
redis.call('HSET', K.rec, 'status', 'void', 'lease', '', 'lease_until', '', 'finished', ms(NOW))
local ttl = num(r.deliver_by) + GRACE - NOW
if ttl < 1000 then ttl = 1000 end
redis.call('PEXPIRE', K.rec, ms(ttl))
redis.call('ZREM', K.timers, tm('d', r))
-- A void command leaves its lane; the next one's lane timer is the reply.
return {'void', laneleave(K, r)}
