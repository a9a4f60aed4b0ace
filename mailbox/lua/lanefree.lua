-- lanefree: a command of a lane in PUBACK mode (lane_mode=puback) that
-- the ack step just made delivered leaves its lane, so that the lane's
-- next command may go on the wire before this one is final. Anything
-- else changes nothing (a final command left its lane already). Replies
-- {outcome, lane timer of the next command or ''}.
local K = cmdkeys(KEYS)
local device = A[1]

local r = load(K.rec)
if not r or r.device ~= device or r.lm ~= 'puback' or r.status ~= 'delivered' then return {'noop', ''} end
return {'freed', laneleave(K, r)}
