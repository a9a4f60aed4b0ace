-- mark_queued: pending → queued once the publish is confirmed. A record
-- already queued or beyond is left alone.
local K = cmdkeys(KEYS)
local horizon = tonumber(A[1])

-- The fields sane, queue and index read.
local r = loadf(K.rec, {'status', 'client', 'device', 'key', 'id', 'created', 'exp', 'tmo', 'deliver_by'})
if not r or r.status == 'void' then return 'notfound' end
if r.status ~= 'pending' then return 'ok' end
if not sane(r) then return 'corrupt' end
queue(K, r, horizon)
return 'queued'
