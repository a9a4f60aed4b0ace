-- claim: the first step of intake, in the client's partition. It claims
-- the client's message ID for one device and body (fingerprint), or
-- reports the claim that is there. The claim is the client's ledger of
-- the command (DESIGN §7a): GET finds the device through it, and the
-- relay records the final status and response in it. A new claim arms
-- its watchdog (member watch of the client partition's timers) at now +
-- watch: the last moment the command can still be open; the relay that
-- makes the claim final takes the watchdog away.
local claim, timers = KEYS[1], KEYS[2]
local device, fp, lifetime, id, watch, member = A[1], A[2], tonumber(A[3]), A[4], tonumber(A[5]), A[6]
-- grp: the key of the group command this is a child of ('' or absent: none).
local grp = A[7] or ''

local c = redis.call('HMGET', claim, 'device', 'fp', 'state')
if not c[1] then
  if grp ~= '' then
    redis.call('HSET', claim, 'device', device, 'fp', fp, 'state', 'open', 'gen', '0', 'claimed', ms(NOW), 'id', id, 'grp', grp)
  else
    redis.call('HSET', claim, 'device', device, 'fp', fp, 'state', 'open', 'gen', '0', 'claimed', ms(NOW), 'id', id)
  end
  redis.call('PEXPIRE', claim, ms(lifetime))
  arm(timers, NOW + watch, member)
  return {'new', device}
end
if c[1] ~= device or c[2] ~= fp then return {'conflict', c[1]} end
if c[3] == 'open' then extend(claim, NOW + lifetime) end
return {'same', c[3]}
