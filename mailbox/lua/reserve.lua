-- reserve: the second step of intake, in the device's partition. It
-- creates the record as pending with a lease, or reports what is there.
-- The partition's clock sets accepted-at (created) and deliver-by; the
-- reply carries them for the envelope. A new record gets its deliver-by
-- timer at once, the watchdog of pending and queued commands, at
-- deliver-by but not before the lease ends. A void record (a released
-- reservation) is reserved afresh.
local K = cmdkeys(KEYS)
local c, device, id, key, method, params, fp = A[1], A[2], A[3], A[4], A[5], A[6], A[7]
local tmo, exp, token, lease, delay, retries = tonumber(A[8]), tonumber(A[9]), A[10], tonumber(A[11]), tonumber(A[12]), tonumber(A[13])
-- lane: the ordered lane of the command ('' for none); a new record joins
-- it at the end (acceptance order). "{lane}|{mode}" gives its lane mode
-- too ("puback"; a lane name has no '|').
local lane, lanemode = string.match(A[14] or '', '^([^|]*)|?(.*)$')
-- grp: the key of the group command this is a child of ('' or absent: none).
local grp = A[15] or ''
-- The backoff of the retries: initial wait (ms, 0: none), multiplier,
-- longest wait (ms).
local rb_i, rb_m, rb_x = tonumber(A[16]) or 0, A[17] or '', tonumber(A[18]) or 0
-- ron: the outcomes its retries take ("retry_on", canonical; '': timeout).
local ron = A[19] or ''
-- A scheduled command (delay > 0) waits until nb = now + delay; its
-- deliver-by counts expires_in from nb.

local r, raw = load(K.rec)
if not r or r.status == 'void' then
  if r and r.fp ~= fp then return {'conflict', raw} end
  if r then redis.call('DEL', K.rec) end -- the void record's fields go
  local rec = {'client', c, 'device', device, 'id', id, 'key', key,
    'method', method, 'params', params, 'fp', fp, 'status', 'pending',
    'tmo', ms(tmo), 'exp', ms(exp), 'created', ms(NOW), 'deliver_by', ms(NOW + delay + exp),
    'attempts', '0', 'lease', token, 'lease_until', ms(NOW + lease)}
  if delay > 0 then rec[#rec + 1] = 'nb'; rec[#rec + 1] = ms(NOW + delay) end
  if retries > 0 then rec[#rec + 1] = 'retries'; rec[#rec + 1] = ms(retries) end
  if retries > 0 and ron ~= '' then rec[#rec + 1] = 'ron'; rec[#rec + 1] = ron end
  local life = (retries + 1) * (delay + exp + tmo) + retries * rb_x + lease + 2 * GRACE + RET
  if lane ~= '' then
    rec[#rec + 1] = 'lane'; rec[#rec + 1] = lane
    rec[#rec + 1] = 'lseq'; rec[#rec + 1] = lanejoin(K, lane, c, key, NOW + life)
    if lanemode ~= '' then rec[#rec + 1] = 'lm'; rec[#rec + 1] = lanemode end
  end
  if grp ~= '' then rec[#rec + 1] = 'grp'; rec[#rec + 1] = grp end
  if retries > 0 and rb_i > 0 then
    rec[#rec + 1] = 'rb_i'; rec[#rec + 1] = ms(rb_i)
    rec[#rec + 1] = 'rb_m'; rec[#rec + 1] = rb_m
    rec[#rec + 1] = 'rb_x'; rec[#rec + 1] = ms(rb_x)
  end
  redis.call('HSET', K.rec, unpack(rec))
  redis.call('PEXPIRE', K.rec, ms(life))
  arm(K.timers, math.max(NOW + delay + exp, NOW + lease), tm('d', {device = device, client = c, key = key}))
  count(K.stats, 'pending')
  return {'reserved', rec}
end
if r.fp ~= fp then return {'conflict', raw} end
if r.status == 'pending' and num(r.lease_until) <= NOW then
  if not sane(r) then return {'corrupt', raw} end
  local by = math.max(NOW, num(r.nb)) + num(r.exp)
  r.lease, r.lease_until, r.created, r.deliver_by = token, ms(NOW + lease), ms(NOW), ms(by)
  r.retakes = ms(num(r.retakes) + 1)
  redis.call('HSET', K.rec, 'lease', r.lease, 'lease_until', r.lease_until,
    'created', r.created, 'deliver_by', r.deliver_by, 'retakes', r.retakes)
  redis.call('PEXPIRE', K.rec, ms(by - NOW + num(r.tmo) + lease + 2 * GRACE + RET))
  arm(K.timers, math.max(by, NOW + lease), tm('d', r))
  return {'retake', flat(r)}
end
return {'exists', raw}
