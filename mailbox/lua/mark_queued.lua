-- mark_queued: pending → queued once the publish is confirmed. A record
-- already queued or beyond is left alone.
local K = cmdkeys(KEYS)
local horizon = tonumber(A[1])

local r = load(K.rec)
if not r or r.status == 'void' then return 'notfound' end
if r.status ~= 'pending' then return 'ok' end
if not sane(r) then return 'corrupt' end
queue(K, r, horizon)
return 'queued'
