-- oneway: a one-way command (answer timeout 0) whose PUBACK the ack step
-- just recorded succeeds: the PUBACK is its success (ONEWAY is its
-- result). Anything else changes nothing. Replies {outcome, '', '',
-- outbox entry or absent}.
local K = cmdkeys(KEYS)
local device = A[1]

local r = load(K.rec)
if not r or r.device ~= device then return {'noop', ''} end
if r.status ~= 'delivered' or num(r.tmo) ~= 0 then return {'noop', ''} end
if not sane(r) then return {'corrupt', ''} end
return {'succeeded', '', '', finalize(K, r, 'succeeded', ONEWAY, '')}
