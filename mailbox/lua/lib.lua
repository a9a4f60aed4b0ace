-- The mailbox function library: helpers shared by every step. Each step
-- (one file beside this one) runs as the body of a function
-- "function(KEYS, A)" where KEYS are the keys it declared, all of one
-- partition, and A its own arguments (begin consumed the common ones).
--
-- Rules every step follows:
--   - every key it touches is in KEYS (no key name is built here);
--   - now is the partition's clock (Redis TIME), or the test clock;
--   - numbers passed to redis.call go through ms() (an integer string:
--     a bare Lua number may be sent in exponent notation);
--   - a record is loaded and checked (sane) before the first write, so a
--     corrupt record is never half-changed;
--   - expiries are relative (PEXPIRE).

local NOW, RET, CAP, GRACE
-- Of the step (see arm): the timer set's earliest due (false: empty;
-- nil: not read yet) and the due time it reports.
local EARLIEST, DUEAT

-- begin reads the common arguments: clock (ms; 0: read Redis TIME),
-- retention (ms), mailbox cap, answer grace (ms); it returns the step's
-- own arguments.
local function begin(ARGV)
  EARLIEST, DUEAT = nil, nil
  NOW = tonumber(ARGV[1])
  if NOW == 0 then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  RET = tonumber(ARGV[2])
  CAP = tonumber(ARGV[3])
  GRACE = tonumber(ARGV[4])
  local A = {}
  for i = 5, #ARGV do A[#A + 1] = ARGV[i] end
  return A
end

local function ms(n) return string.format('%d', n) end

-- The next-due report (due.go, DESIGN §7a "Costs that do not grow with
-- P"). A step that makes its partition's work due earlier than anything
-- the partition held, and sooner than HORIZON, reports that time: arm
-- notes a timer earlier than the timer set's earliest (one ZRANGE per
-- step, read at its first arm that may report), and a final step notes
-- its outbox entry, due OBAGE later (finalize: the outbox is nearly
-- always empty, since the relay follows at once, so it reports without
-- an XLEN; a report of a partition that had earlier work is harmless,
-- the due set keeps the earliest). The wrapper of a plain call then replies
-- {DUE, due_ms, reply}, which the Go side unwraps before any caller sees
-- it; in a batch each item's row carries its due ('' when none). The
-- fire step re-arms its own timer without arm: only a partition's owner
-- and the Store of an ordered lane's fast path fire, after the owner knew
-- of an earlier timer, so the owner polls the partition again anyway; a
-- retry's next attempt (again, send) arms through arm like any step, and
-- its report goes to the item's partition.
local DUE, OBAGE, HORIZON = '@DUE@', --@OUTBOXAGE@--, --@HORIZON@--
-- note_due notes work due at t; beyond HORIZON from now it needs no
-- report: an owner's full sweep comes first (due.go).
local function note_due(t)
  if t < NOW + HORIZON and (not DUEAT or t < DUEAT) then DUEAT = t end
end

-- arm adds member (or moves it) to the timer set timers, due at the
-- instant at (unix ms, a number). A timer at or beyond HORIZON needs no
-- report (note_due), so it needs no read of the earliest either: a later
-- arm of the step that may report reads it then, this one included (the
-- set's earliest is the same either way for any time before HORIZON).
-- Most arms are that far (a deliver-by, a claim's watchdog).
local function arm(timers, at, member)
  if at >= NOW + HORIZON then
    redis.call('ZADD', timers, ms(at), member)
    return
  end
  if EARLIEST == nil then
    EARLIEST = tonumber(redis.call('ZRANGE', timers, 0, 0, 'WITHSCORES')[2]) or false
  end
  redis.call('ZADD', timers, ms(at), member)
  if EARLIEST == false or at < EARLIEST then
    note_due(at)
    EARLIEST = at
  end
end

-- report wraps a plain call's reply v with the step's due, if any.
local function report(v)
  if not DUEAT then return v end
  if v == nil then v = false end
  return {DUE, ms(DUEAT), v}
end

local function num(v)
  if v == nil or v == false or v == '' then return 0 end
  return tonumber(v) or 0
end

local FINAL = {--@FINAL@--}

-- ONEWAY is the result member of a one-way command that succeeded by its
-- PUBACK (protocol.OneWayResult).
local ONEWAY = '"result":{"one_way":true,"delivered":true}'

local function fields(a)
  local t = {}
  for i = 1, #a, 2 do t[a[i]] = a[i + 1] end
  return t
end

local function flat(t)
  local a = {}
  for f, v in pairs(t) do a[#a + 1] = f; a[#a + 1] = v end
  return a
end

-- load returns the record at key as a table and as the flat HGETALL
-- reply, or nil.
local function load(key)
  local a = redis.call('HGETALL', key)
  if #a == 0 then return nil end
  return fields(a), a
end

-- loadf is load of only the fields names (a list): HMGET of what a step
-- reads instead of HGETALL of the whole record (its request, params and
-- response included) and a table of every field. Absent fields are nil;
-- nil when none of them is there (no record).
local function loadf(key, names)
  local a = redis.call('HMGET', key, unpack(names))
  local t, found = {}, false
  for i = 1, #names do
    if a[i] then t[names[i]] = a[i]; found = true end
  end
  if not found then return nil end
  return t
end

-- sane reports whether a record has every field a transition reads.
local function sane(r)
  local function set(v) return v ~= nil and v ~= false and v ~= '' end
  if not (set(r.client) and set(r.device) and set(r.key) and set(r.status) and set(r.id)) then return false end
  if not tonumber(r.created) then return false end
  -- The id is spliced into the client's result: a JSON string as the
  -- client wrote it (escapes included) or an integer.
  return string.match(r.id, '^".+"$') ~= nil or string.match(r.id, '^%-?%d+$') ~= nil
end

-- count records a transition into a status (or an event) in the
-- partition's counters of the current minute (the key the caller named).
local function count(statsKey, what)
  if redis.call('HINCRBY', statsKey, what, 1) == 1 then redis.call('PEXPIRE', statsKey, '3900000') end
end

-- extend makes key live at least until the time at (unix ms).
local function extend(key, at)
  local ttl = at - NOW
  if ttl < 1000 then ttl = 1000 end
  if redis.call('PEXPIRE', key, ms(ttl), 'GT') == 0 then redis.call('PEXPIRE', key, ms(ttl), 'NX') end
end

-- makeroom frees the expired entries at the head of a full mailbox (at
-- most 100, one XTRIM MINID). Entries of commands that ended are removed
-- by the step that ended them, so expiry is what is left to look at.
local function makeroom(mk)
  local es = redis.call('XRANGE', mk, '-', '+', 'COUNT', 100)
  if #es == 0 or num(fields(es[1][2]).x) > NOW then return end
  local cut
  for i = 2, #es do
    if num(fields(es[i][2]).x) > NOW then cut = es[i][1]; break end
  end
  if not cut then
    local t, seq = string.match(es[#es][1], '^(%d+)%-(%d+)$')
    cut = t .. '-' .. ms(tonumber(seq) + 1)
  end
  redis.call('XTRIM', mk, 'MINID', cut)
end

-- append adds a message to a mailbox (the stream mk of identity, listed
-- in the partition's set mboxes); false when the mailbox is full after
-- freeing expired head entries. c and k name the command of a device
-- request; tp, when not empty, is the W3C traceparent the reader
-- continues (field 'tp').
local function append(mk, mboxes, identity, topic, payload, expires, c, k, tp)
  local n = redis.call('XLEN', mk)
  if n >= CAP then
    makeroom(mk)
    n = redis.call('XLEN', mk)
    if n >= CAP then return false end
  end
  local f = {'t', topic, 'p', payload, 'x', ms(expires)}
  if c then f[#f + 1] = 'c'; f[#f + 1] = c; f[#f + 1] = 'k'; f[#f + 1] = k end
  if tp and tp ~= '' then f[#f + 1] = 'tp'; f[#f + 1] = tp end
  local id = redis.call('XADD', mk, '*', unpack(f))
  local ttl = expires - NOW
  if ttl < 1000 then ttl = 1000 end
  if n == 0 then
    redis.call('PEXPIRE', mk, ms(ttl))
    redis.call('SADD', mboxes, identity)
  else
    redis.call('PEXPIRE', mk, ms(ttl), 'GT')
  end
  return id
end

-- session returns the node named by a session registration key, or ''.
local function session(sk)
  local node = redis.call('GET', sk)
  if not node then return '' end
  return node
end

-- tm is the timer member of a command: kind ('d' deliver-by, 'a' answer)
-- then device, client and key, so that the owner that fires it can name
-- every key of the command's step.
local function tm(kind, r)
  return kind .. '|' .. r.device .. '|' .. r.client .. '|' .. r.key
end

-- The keys of one command's step, in the order the Go side declares them
-- (cmdKeys in keys.go): the record, the device's mailbox, the
-- partition's mailbox set, timers, dead set, outbox and counters of the
-- minute, the device's session registration, the (client, device)
-- listing, the device's lanes and the partition's set of queued
-- commands.
local function cmdkeys(KEYS)
  return {rec = KEYS[1], mbox = KEYS[2], mboxes = KEYS[3], timers = KEYS[4], dead = KEYS[5],
    outbox = KEYS[6], stats = KEYS[7], sess = KEYS[8], cmds = KEYS[9], lanes = KEYS[10],
    queued = KEYS[11]}
end

-- unqueue takes a command out of the partition's queued set (commands
-- in a command queue, not yet taken by a worker): every step that moves
-- a command on from there calls it (a no-op for others).
local function unqueue(K, r)
  redis.call('ZREM', K.queued, r.client .. '|' .. r.key)
end

-- Ordered lanes (issue 15). K.lanes is a sorted set, every score 0, with
-- one member "{lane}|{seq}|{client}|{key}" per command of a lane that is
-- not final; seq is zero-padded and assigned at reserve, so the first
-- member of a lane is its oldest command: the only one that may go on
-- the wire. A lane name has no '|' and seq only digits, so the members
-- of lane L are exactly those in ['L|', 'L|:').

local function lanemember(r)
  return r.lane .. '|' .. r.lseq .. '|' .. r.client .. '|' .. r.key
end

-- lanehead returns the first member of lane, or nil.
local function lanehead(K, lane)
  local m = redis.call('ZRANGEBYLEX', K.lanes, '[' .. lane .. '|', '(' .. lane .. '|:', 'LIMIT', '0', '1')
  return m[1]
end

-- lanejoin puts the command (client c, key k) at the end of lane and
-- returns its seq; keep is until when (unix ms) the member may be needed.
local function lanejoin(K, lane, c, k, keep)
  local last = redis.call('ZREVRANGEBYLEX', K.lanes, '(' .. lane .. '|:', '[' .. lane .. '|', 'LIMIT', '0', '1')
  local seq = 1
  if last[1] then seq = num(string.match(last[1], '^[^|]*|(%d+)|')) + 1 end
  local lseq = string.format('%020d', seq)
  redis.call('ZADD', K.lanes, '0', lane .. '|' .. lseq .. '|' .. c .. '|' .. k)
  extend(K.lanes, keep)
  return lseq
end

-- laneleave takes the command out of its lane (if it is in one). When it
-- was the lane's head and another command waits, that one's lane timer
-- ('l', due now) is armed: its step sends it if it waits for the lane.
-- Returns that timer member, or ''.
local function laneleave(K, r)
  if not r.lane or r.lane == '' or not r.lseq or r.lseq == '' then return '' end
  local m = lanemember(r)
  local head = lanehead(K, r.lane)
  redis.call('ZREM', K.lanes, m)
  if head ~= m then return '' end
  local nh = lanehead(K, r.lane)
  if not nh then return '' end
  local c, k = string.match(nh, '^[^|]*|%d+|([^|]*)|(.*)$')
  if not c then return '' end
  local member = tm('l', {device = r.device, client = c, key = k})
  arm(K.timers, NOW, member)
  return member
end

-- laneorphan takes a command whose record is gone (Redis lost it) out
-- of its lane, found by its client and key (a scan of the device's lanes,
-- only on this rare path), so that the lane does not wait for it forever;
-- when it was the head, the next one's lane timer is armed.
local function laneorphan(K, device, c, k)
  local suffix = '|' .. c .. '|' .. k
  for _, m in ipairs(redis.call('ZRANGE', K.lanes, '0', '-1')) do
    if string.sub(m, -#suffix) == suffix then
      local lane, lseq = string.match(m, '^([^|]*)|(%d+)|')
      if lane then
        laneleave(K, {lane = lane, lseq = lseq, client = c, key = k, device = device})
      end
      return
    end
  end
end

-- lanegate reports whether a command may go on the wire now: it is in no
-- lane, or it is its lane's head. Otherwise it waits (status queued, the
-- device request kept in req, lw = 1) until laneleave arms its timer.
local function lanegate(K, r, request)
  if not r.lane or r.lane == '' then return true end
  if lanehead(K, r.lane) == lanemember(r) then
    if num(r.lw) > 0 then
      redis.call('HDEL', K.rec, 'lw')
      if num(r.retries) == 0 then redis.call('HDEL', K.rec, 'req') end
      r.lw = nil
    end
    return true
  end
  redis.call('HSET', K.rec, 'status', 'queued', 'lw', '1', 'req', request)
  r.status = 'queued'
  unqueue(K, r) -- taken from its command queue: it waits in Redis now
  count(K.stats, 'lane_wait')
  return false
end

-- index puts the command into its (client, device) listing, scored by
-- creation, after dropping members older than any record can live, and
-- keeps the listing as long as the record can live.
local function index(K, r, horizon)
  local h = RET + num(r.exp) + num(r.tmo) + GRACE
  if h < horizon then h = horizon end
  redis.call('ZREMRANGEBYSCORE', K.cmds, '-inf', '(' .. ms(NOW - h))
  redis.call('ZADD', K.cmds, r.created, r.key)
  extend(K.cmds, num(r.deliver_by) + num(r.tmo) + 2 * GRACE + RET)
end

-- queue is pending → queued: the command is durable in RabbitMQ. Its
-- deliver-by timer (the watchdog) is armed since reserve. It enters the
-- queued set, scored by its creation (when the client's request came).
local function queue(K, r, horizon)
  redis.call('HSET', K.rec, 'status', 'queued', 'queued', ms(NOW), 'lease', '', 'lease_until', '')
  redis.call('PERSIST', K.rec)
  redis.call('ZADD', K.queued, r.created, r.client .. '|' .. r.key)
  index(K, r, horizon)
  count(K.stats, 'queued')
  r.status = 'queued'
end

-- response is the client's JSON-RPC response of r: body is '"result":…'
-- or '"error":…' (without jsonrpc and id). A command with a retry policy
-- (retries) carries the number of its attempts as the member "attempts"
-- and, when the gateway made the error (gw), in the error's data as well
-- (a gateway error always has data; "attempts" sorts first in it).
local function response(r, body, gw)
  if num(r.retries) == 0 then return '{"jsonrpc":"2.0",' .. body .. ',"id":' .. r.id .. '}' end
  local n = ms(num(r.tries) + 1)
  if gw then
    body = string.gsub(body, '^("error":{.-"data":{)', '%1"attempts":' .. n .. ',', 1)
  end
  return '{"jsonrpc":"2.0",' .. body .. ',"id":' .. r.id .. ',"attempts":' .. n .. '}'
end

-- Retry policies (issue 14). A command with retries = N > 0 is tried at
-- most N + 1 times; tries counts the retries done, so its current attempt
-- is tries + 1. ron ("retry_on", absent: timeout) names the outcomes that
-- end an attempt without ending the command: timeout, expired,
-- device_error (an answer with an error) and rejected (refused by the
-- device, or its mailbox full). An attempt starts when the command goes
-- into the device's mailbox (or would), with a fresh expires_in window.

-- retrying reports whether r's policy retries an attempt that ended with
-- outcome what: it names what, and tries are left.
local function retrying(r, what)
  if num(r.retries) <= num(r.tries) or num(r.tmo) == 0 then return false end
  local on = r.ron
  if not on or on == '' then on = 'timeout' end
  return string.find(',' .. on .. ',', ',' .. what .. ',', 1, true) ~= nil
end

-- backoff is the wait (ms) before retry n of r (1 for the first):
-- min(rb_i × rb_m^(n−1), rb_x), 0 without a backoff.
local function backoff(r, n)
  local wait = num(r.rb_i)
  if wait <= 0 then return 0 end
  local mult = tonumber(r.rb_m) or 1
  local cap = num(r.rb_x)
  for _ = 2, n do
    if wait >= cap then break end
    wait = wait * mult
  end
  if wait > cap then wait = cap end
  return math.floor(wait)
end

-- attemptreq is the device request of r's current attempt: request (as
-- dispatch made it, with the id "{client}:{id}" last) for the first, and
-- with the id "{client}:{id}#{n}" for attempt n ≥ 2
-- (protocol.DeviceAttemptID).
local function attemptreq(r, request)
  local n = num(r.tries) + 1
  if n < 2 then return request end
  local tail = '"id":"' .. r.client .. ':' .. r.key .. '"}'
  if string.sub(request, -#tail) ~= tail then return request end
  return string.sub(request, 1, -3) .. '#' .. ms(n) .. '"}'
end

-- finalize sets a final status: body is the JSON-RPC response without
-- jsonrpc and id ('"result":…' or '"error":…'). It removes the device
-- mailbox entry, cancels the timers, appends the client's result to the
-- partition's outbox (the relay takes it to the client's partition) and
-- sets the record's expiry: max(finished + retention, deliver_by +
-- grace). extra holds more fields to set. It returns the outbox entry:
-- {id, client, key, device, generation, status, response, finished,
-- expires, next lane timer, group, traceparent}, which the caller relays
-- at once (group: the key of the group command of a child, else ''); the
-- entry carries the record's traceparent (field 'tp', the span that ended
-- the command) for the relay to continue.
local function finalize(K, r, status, body, reason, extra)
  local c, k, d = r.client, r.key, r.device
  local resp = response(r, body, status ~= 'succeeded' and status ~= 'failed')
  local set = {'status', status, 'finished', ms(NOW), 'resp', resp}
  if r.lw and r.lw ~= '' then set[#set + 1] = 'lw'; set[#set + 1] = '' end
  if reason and reason ~= '' then set[#set + 1] = 'reason'; set[#set + 1] = reason end
  if extra then for _, v in ipairs(extra) do set[#set + 1] = v end end
  local entry = r.entry
  if entry and entry ~= '' then
    set[#set + 1] = 'entry'; set[#set + 1] = ''
    redis.call('XDEL', K.mbox, entry)
    if redis.call('XLEN', K.mbox) == 0 then redis.call('SREM', K.mboxes, d) end
  end
  redis.call('ZREM', K.timers, tm('d', r), tm('a', r))
  if num(r.replays) > 0 then redis.call('ZREM', K.dead, c .. '|' .. k) end
  -- Only a queued record is in the queued set (queue and replay put it
  -- there with status queued; every step that moves it on takes it out):
  -- a sent or delivered one needs no ZREM.
  if r.status ~= 'sent' and r.status ~= 'delivered' then unqueue(K, r) end
  count(K.stats, status)
  local gen = ms(num(r.replays))
  local grp = r.grp or ''
  local tp = r.tp or ''
  local ob
  note_due(NOW + OBAGE)
  if grp ~= '' then
    ob = redis.call('XADD', K.outbox, '*', 'c', c, 'k', k, 'd', d, 'g', gen,
      's', status, 'r', resp, 'f', ms(NOW), 'x', ms(NOW + RET), 'tp', tp, 'G', grp)
  else
    ob = redis.call('XADD', K.outbox, '*', 'c', c, 'k', k, 'd', d, 'g', gen,
      's', status, 'r', resp, 'f', ms(NOW), 'x', ms(NOW + RET), 'tp', tp)
  end
  redis.call('HSET', K.rec, unpack(set))
  local ttl = RET
  local by = num(r.deliver_by) + GRACE - NOW
  if by > ttl then ttl = by end
  redis.call('PEXPIRE', K.rec, ms(ttl))
  r.status = status
  local nextlane = laneleave(K, r)
  return {ob, c, k, d, gen, status, resp, ms(NOW), ms(NOW + RET), nextlane, grp, tp}
end

-- again starts the next attempt of r, whose current one ended with
-- outcome why (retrying(r, why) holds): it leaves the device's mailbox,
-- tries is counted, and
--   - with no request at hand (a queued command whose AMQP message has
--     not come yet) or waiting for its lane (lw), it stays where it is
--     with a fresh window: deliver-by = now + backoff + expires_in (the
--     message, or its lane's turn, sends it; a message sees nb);
--   - with a backoff, it waits as scheduled (cancellable) until then, its
--     window starting then; the scheduled timer sends it;
--   - else request goes into the mailbox again at once (send).
-- The answer and deliver-by timers of the attempt that ended are taken
-- out. rw keeps why. Replies {'retry_waits'|'retry_scheduled', ''} or
-- send's reply with 'retried' for 'sent'.
local send
local function again(K, r, why, request, expired_body, expired_reason, rejected_body, rejected_reason)
  if r.entry and r.entry ~= '' then
    redis.call('XDEL', K.mbox, r.entry)
    if redis.call('XLEN', K.mbox) == 0 then redis.call('SREM', K.mboxes, r.device) end
  end
  redis.call('ZREM', K.timers, tm('d', r), tm('a', r))
  redis.call('HDEL', K.rec, 'delivered', 'sending', 'fetched')
  r.delivered, r.sending, r.fetched, r.entry = nil, nil, nil, ''
  local try = num(r.tries) + 1
  r.tries = ms(try)
  count(K.stats, 'retried')
  count(K.stats, 'retried_' .. why)
  local wait = backoff(r, try)
  local exp = num(r.exp)
  if not request or num(r.lw) > 0 then
    local by = NOW + wait + exp
    local f = {'tries', r.tries, 'entry', '', 'rw', why, 'deliver_by', ms(by)}
    if wait > 0 and num(r.lw) == 0 then f[#f + 1] = 'nb'; f[#f + 1] = ms(NOW + wait) end
    redis.call('HSET', K.rec, unpack(f))
    r.deliver_by = ms(by)
    arm(K.timers, by, tm('d', r))
    return {'retry_waits', ''}
  end
  if wait > 0 then
    local nb = NOW + wait
    redis.call('HSET', K.rec, 'status', 'scheduled', 'tries', r.tries, 'rw', why, 'nb', ms(nb),
      'deliver_by', ms(nb + exp), 'entry', '', 'req', request)
    r.status = 'scheduled'
    unqueue(K, r)
    arm(K.timers, nb, tm('s', r))
    return {'retry_scheduled', ''}
  end
  r.deliver_by = ms(NOW + exp)
  redis.call('HSET', K.rec, 'tries', r.tries, 'rw', why, 'entry', '', 'req', request, 'deliver_by', r.deliver_by)
  local res = send(K, r, r.device, request, NOW + exp, expired_body, expired_reason, rejected_body, rejected_reason)
  if res[1] == 'sent' then res[1] = 'retried' end
  return res
end

-- send puts a command into the device's mailbox (status sent, its
-- deliver-by timer armed), the device request of its current attempt
-- (attemptreq), or ends it expired (deliver-by passed) or rejected (the
-- mailbox is full), unless its retry policy takes the next attempt
-- instead (again). Replies as dispatch does.
send = function(K, r, device, request, by, expired_body, expired_reason, rejected_body, rejected_reason)
  local c, k = r.client, r.key
  if by <= NOW then
    if retrying(r, 'expired') then
      return again(K, r, 'expired', request, expired_body, expired_reason, rejected_body, rejected_reason)
    end
    return {'expired', '', '', finalize(K, r, 'expired', expired_body, expired_reason)}
  end
  local id = append(K.mbox, K.mboxes, device, 'devices/' .. device .. '/commands', attemptreq(r, request), by, c, k, r.tp)
  if not id then
    if retrying(r, 'rejected') then
      return again(K, r, 'rejected', request, expired_body, expired_reason, rejected_body, rejected_reason)
    end
    return {'rejected', '', '', finalize(K, r, 'rejected', rejected_body, rejected_reason)}
  end
  if r.tpw then
    -- dispatch's trace, written with this (dispatch.lua)
    redis.call('HSET', K.rec, 'status', 'sent', 'sent', ms(NOW), 'entry', id, 'tp', r.tp)
    r.tpw = nil
  else
    redis.call('HSET', K.rec, 'status', 'sent', 'sent', ms(NOW), 'entry', id)
  end
  r.status, r.entry = 'sent', id
  unqueue(K, r)
  arm(K.timers, by, tm('d', r))
  if num(r.replays) > 0 then redis.call('ZREM', K.dead, c .. '|' .. k) end
  count(K.stats, 'sent')
  return {'sent', id, session(K.sess)}
end
