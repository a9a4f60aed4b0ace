-- orphan: a device's answer that found no record of its command (the
-- complete step answered 'unknown': a Redis failover lost the record),
-- while the client's claim is open and names this device (DESIGN §7a,
-- "The claim is the client's ledger"). It writes the answer to the
-- partition's outbox as an orphan entry (field o = 1); the relay applies
-- it only to a claim still open, for this device and generation. A record
-- that exists after all wins: 'record', nothing written.
-- Replies {'orphan', outbox entry} or {'record'}.
local K = cmdkeys(KEYS)
local client, key, device, gen, status, resp, grp, tp = A[1], A[2], A[3], A[4], A[5], A[6], A[7], A[8]
if redis.call('EXISTS', K.rec) == 1 then return {'record'} end
count(K.stats, 'orphan')
local f = {'c', client, 'k', key, 'd', device, 'g', gen, 's', status, 'r', resp,
  'f', ms(NOW), 'x', ms(NOW + RET), 'tp', tp, 'o', '1'}
if grp ~= '' then f[#f + 1] = 'G'; f[#f + 1] = grp end
if redis.call('XLEN', K.outbox) == 0 then note_due(NOW + OBAGE) end
local ob = redis.call('XADD', K.outbox, '*', unpack(f))
return {'orphan', {ob, client, key, device, gen, status, resp, ms(NOW), ms(NOW + RET), '', grp, tp}}
