-- claim: the first step of intake, in the client's partition. It claims
-- the client's message ID for one device and body (fingerprint), or
-- reports the claim that is there. The claim is the client's ledger of
-- the command (DESIGN §7a): GET finds the device through it, and the
-- relay records the final status and response in it.
local claim = KEYS[1]
local device, fp, lifetime = A[1], A[2], tonumber(A[3])

local c = redis.call('HMGET', claim, 'device', 'fp', 'state')
if not c[1] then
  redis.call('HSET', claim, 'device', device, 'fp', fp, 'state', 'open', 'gen', '0', 'claimed', ms(NOW))
  redis.call('PEXPIRE', claim, ms(lifetime))
  return {'new', device}
end
if c[1] ~= device or c[2] ~= fp then return {'conflict', c[1]} end
if c[3] == 'open' then extend(claim, NOW + lifetime) end
return {'same', c[3]}
