-- ack: PUBACKs of entries of one mailbox. Each entry (id, index of its
-- command's record key in KEYS, 0 or -1) leaves the mailbox, but one whose
-- command is sent through that very entry to this device: the command
-- becomes delivered, its deliver-by timer becomes the answer timer at
-- delivered + timeout + grace, and the entry stays until the command is
-- final, so that a new connection of the device is offered it again
-- (DESIGN §7a "Re-offer"; the PUBACK of such a re-offer changes nothing).
-- An entry whose stored command (fields c, k)
-- is not the record named for it stays, and is reported 'mismatch', so
-- the caller can name the right record and ack again. Index -1 names an
-- entry the caller read (Fetch) and found to carry no command: an entry
-- ID is never reused in its stream, so it is deleted without a read
-- ('deleted', whether or not it was still there).
local mk, mboxes, timers, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local identity = A[1]
local out, gone = {}, {}
for i = 2, #A, 2 do
  local id, ri = A[i], tonumber(A[i + 1])
  local r = {}
  if ri > 0 then
    r = redis.call('HMGET', KEYS[ri], 'status', 'entry', 'device', 'tmo', 'sending', 'client', 'key', 'lm', 'deliver_by')
  end
  -- The entry is read only when the record does not vouch for it. A
  -- record sent or delivered through this very entry to this identity,
  -- before its deliver-by, proves it: send wrote the entry (c, k: the
  -- record's client and key) with expiry deliver-by, so neither
  -- makeroom nor the mailbox's expiry can have taken it yet, and every
  -- step that deletes it otherwise clears the record's entry (finalize,
  -- again, refuse) or leaves a record not sent through it (stamp's drop).
  local es, ef
  if ri < 0 then
    es, ef = true, {}
  elseif ri > 0 and (r[1] == 'sent' or r[1] == 'delivered') and r[2] == id and r[3] == identity
      and num(r[9]) > NOW and r[6] and r[7] then
    es, ef = true, {c = r[6], k = r[7]}
  else
    es = redis.call('XRANGE', mk, id, id)
    if #es > 0 then ef = fields(es[1][2]) else es = false end
  end
  local what = 'gone'
  if es then
    if (ef.c or '') ~= '' and (ri == 0 or ef.c ~= r[6] or ef.k ~= r[7]) then
      what = 'mismatch'
    elseif ri > 0 and r[1] == 'delivered' and r[2] == id and r[3] == identity then
      what = 'redelivered' -- the PUBACK of a re-offer: the entry stays
    else
      gone[#gone + 1] = id
      what = 'deleted'
    end
    if what == 'deleted' and ri > 0 then
      local rk = KEYS[ri]
      if r[1] == 'sent' and r[2] == id and r[3] == identity then
        gone[#gone] = nil -- it stays, until the command is final
        local set = {'status', 'delivered', 'delivered', ms(NOW)}
        if not r[5] or r[5] == '' then set[#set + 1] = 'sending'; set[#set + 1] = ms(NOW) end
        redis.call('HSET', rk, unpack(set))
        local rr = {device = r[3], client = r[6], key = r[7]}
        redis.call('ZREM', timers, tm('d', rr))
        arm(timers, NOW + num(r[4]) + GRACE, tm('a', rr))
        count(stats, 'delivered')
        what = 'delivered'
        -- A one-way command (timeout 0) succeeds by this PUBACK: the
        -- caller runs the one-way step; its answer timer, due one grace
        -- later, is the backstop if that step never runs.
        if num(r[4]) == 0 then
          what = 'oneway'
        elseif r[8] == 'puback' then
          -- Its lane's next command may go now (lane_mode=puback): the
          -- caller runs the lanefree step.
          what = 'lanefree'
        end
      end
    end
  end
  out[#out + 1] = what
end
if #gone > 0 then
  redis.call('XDEL', mk, unpack(gone))
  if redis.call('XLEN', mk) == 0 then redis.call('SREM', mboxes, identity) end
end
return out
