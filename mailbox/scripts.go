package mailbox

import (
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// Every script starts with luaLib. Calling convention: ARGV[1] is the key
// prefix "{ns}:", ARGV[2] the current time (unix ms, from Options.Now),
// ARGV[3] the retention (ms), ARGV[4] the mailbox cap; the script's own
// arguments start at ARGV[5]. KEYS[1] is the main key the script works on
// (informational: a single primary does not require declared keys, and
// the keys of the signalled node are only known inside the script).
//
// Key names are built in Lua with the same formats as protocol.Keys;
// TestLuaKeysMatchProtocol keeps them in step.
var luaLib = `
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local RET = tonumber(ARGV[3])
local CAP = tonumber(ARGV[4])

local FINAL = {` + luaFinalSet() + `}

local function ms(n) return string.format('%d', n) end

local K = {}
K.cmd = function(c, k) return P .. 'cmd:' .. c .. ':' .. k end
K.cmds = function(c, d) return P .. 'cmds:' .. c .. ':' .. d end
K.mbox = function(i) return P .. 'mbox:' .. i end
K.mboxes = function() return P .. 'mboxes' end
K.timers = function() return P .. 'timers' end
K.dead = function() return P .. 'dead' end
K.ringnode = function(n) return P .. 'ring:node:' .. n end
K.sess = function(i) return P .. 'sess:' .. i end
K.nsess = function(n) return P .. 'node:' .. n .. ':sessions' end
K.pending = function(n) return P .. 'node:' .. n .. ':pending' end
K.wake = function(n) return P .. 'node:' .. n .. ':wake' end
K.stats = function(m) return P .. 'stats:' .. m end
local function results_topic(c, d) return 'clients/' .. c .. '/results/' .. d end
local function commands_topic(d) return 'devices/' .. d .. '/commands' end

local function num(v)
  if v == nil or v == false or v == '' then return 0 end
  return tonumber(v) or 0
end

local function fields(a)
  local t = {}
  for i = 1, #a, 2 do t[a[i]] = a[i + 1] end
  return t
end

local function load(key)
  local a = redis.call('HGETALL', key)
  if #a == 0 then return nil end
  return fields(a)
end

-- count records a transition into status (or an event) for StatusCounts.
local function count(what)
  local key = K.stats(ms(math.floor(NOW / 60000)))
  redis.call('HINCRBY', key, what, 1)
  redis.call('PEXPIRE', key, 3900000)
end

-- extend makes key live at least until the time at (unix ms). Relative
-- expiry, so a faked clock never deletes a key by accident.
local function extend(key, at)
  local ttl = at - NOW
  if ttl < 1000 then ttl = 1000 end
  local pttl = redis.call('PTTL', key)
  if pttl == -2 then return end
  if pttl == -1 or pttl < ttl then redis.call('PEXPIRE', key, ms(ttl)) end
end

-- signal tells the push server that should stream identity's mailbox:
-- the node of its live session if that node is still a ring member, else
-- owner (the ring owner computed by the caller).
local function signal(identity, owner)
  local target = owner
  local node = redis.call('GET', K.sess(identity))
  if node and node ~= '' and redis.call('EXISTS', K.ringnode(node)) == 1 then target = node end
  if target and target ~= '' then
    local pk = K.pending(target)
    redis.call('SADD', pk, identity)
    redis.call('PEXPIRE', pk, 86400000)
    redis.call('PUBLISH', K.wake(target), identity)
  end
  return target
end

-- stale reports whether a mailbox entry is dead weight: expired, or the
-- entry of a command that is gone, final, or carried by another entry.
local function stale(id, f)
  if num(f.x) <= NOW then return true end
  if f.c and f.c ~= '' then
    local st = redis.call('HMGET', K.cmd(f.c, f.k), 'status', 'entry')
    if not st[1] or FINAL[st[1]] or st[2] ~= id then return true end
  end
  return false
end

-- trim deletes stale entries among the first n of a mailbox.
local function trim(mk, n)
  local es = redis.call('XRANGE', mk, '-', '+', 'COUNT', n)
  local gone = 0
  for _, e in ipairs(es) do
    if stale(e[1], fields(e[2])) then
      redis.call('XDEL', mk, e[1])
      gone = gone + 1
    end
  end
  return gone
end

-- append adds a message to identity's mailbox and signals; false when
-- the mailbox is full (after dropping stale head entries).
local function append(identity, topic, payload, expires, c, k, owner)
  local mk = K.mbox(identity)
  if redis.call('XLEN', mk) >= CAP then
    trim(mk, 100)
    if redis.call('XLEN', mk) >= CAP then return false end
  end
  local id
  if c then
    id = redis.call('XADD', mk, '*', 't', topic, 'p', payload, 'x', ms(expires), 'c', c, 'k', k)
  else
    id = redis.call('XADD', mk, '*', 't', topic, 'p', payload, 'x', ms(expires))
  end
  extend(mk, expires)
  redis.call('SADD', K.mboxes(), identity)
  signal(identity, owner)
  return id
end

-- queue is pending → queued: the command is durable in RabbitMQ.
local function queue(ck, r)
  redis.call('HSET', ck, 'status', 'queued', 'queued', ms(NOW))
  redis.call('HDEL', ck, 'lease', 'lease_until')
  redis.call('PERSIST', ck)
  local ik = K.cmds(r.client, r.device)
  redis.call('ZADD', ik, 'NX', r.created, r.key)
  extend(ik, num(r.deliver_by) + num(r.tmo) + RET)
  count('queued')
  r.status = 'queued'
end

-- finalize sets a final status: body is the JSON-RPC response without
-- jsonrpc and id ('"result":…' or '"error":…'). It removes the device
-- mailbox entry, cancels the timers, appends the client's result (with
-- the client's own id) and sets the record's retention expiry.
local function finalize(ck, r, status, body, reason, owner)
  local c, k, d = r.client, r.key, r.device
  local resp = '{"jsonrpc":"2.0",' .. body .. ',"id":' .. r.id .. '}'
  if r.entry and r.entry ~= '' then redis.call('XDEL', K.mbox(d), r.entry) end
  redis.call('ZREM', K.timers(), 'd|' .. c .. '|' .. k, 'a|' .. c .. '|' .. k)
  redis.call('HSET', ck, 'status', status, 'finished', ms(NOW), 'resp', resp)
  if reason and reason ~= '' then redis.call('HSET', ck, 'reason', reason) end
  redis.call('HDEL', ck, 'entry', 'lease', 'lease_until')
  redis.call('PEXPIRE', ck, RET)
  local ik = K.cmds(c, d)
  redis.call('ZADD', ik, 'NX', r.created, k)
  extend(ik, NOW + RET)
  count(status)
  if not append(c, results_topic(c, d), resp, NOW + RET, nil, nil, owner) then
    redis.call('HSET', ck, 'dropped', '1')
    count('result_dropped')
  end
  r.status = status
  return resp
end
`

func luaFinalSet() string {
	var b strings.Builder
	for _, st := range protocol.Statuses {
		if st.Final() {
			b.WriteString("['" + string(st) + "']=true, ")
		}
	}
	return b.String()
}

func script(body string) *redis.Script { return redis.NewScript(luaLib + body) }

// reserveScript: ARGV[5..] client, device, id raw, key, method, params,
// fp, tmo ms, exp ms, created ms, token, lease ms.
var reserveScript = script(`
local ck = KEYS[1]
local fp, created, token, lease = ARGV[11], tonumber(ARGV[14]), ARGV[15], tonumber(ARGV[16])
local r = load(ck)
if not r then
  redis.call('HSET', ck, 'client', ARGV[5], 'device', ARGV[6], 'id', ARGV[7], 'key', ARGV[8],
    'method', ARGV[9], 'params', ARGV[10], 'fp', fp, 'status', 'pending',
    'tmo', ARGV[12], 'exp', ARGV[13], 'created', ms(created), 'deliver_by', ms(created + tonumber(ARGV[13])),
    'attempts', '0', 'lease', token, 'lease_until', ms(NOW + lease))
  redis.call('PEXPIRE', ck, ms(lease + RET))
  count('pending')
  return {'reserved', redis.call('HGETALL', ck)}
end
if r.fp ~= fp then return {'conflict', redis.call('HGETALL', ck)} end
if r.status == 'pending' and num(r.lease_until) <= NOW then
  redis.call('HSET', ck, 'lease', token, 'lease_until', ms(NOW + lease),
    'created', ms(created), 'deliver_by', ms(created + num(r.exp)))
  redis.call('HINCRBY', ck, 'retakes', 1)
  redis.call('PEXPIRE', ck, ms(lease + RET))
  return {'retake', redis.call('HGETALL', ck)}
end
return {'exists', redis.call('HGETALL', ck)}
`)

// markQueuedScript: no own arguments.
var markQueuedScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r then return 'notfound' end
if r.status ~= 'pending' then return 'ok' end
queue(ck, r)
return 'queued'
`)

// releaseScript: ARGV[5] token.
var releaseScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r or r.status ~= 'pending' or r.lease ~= ARGV[5] then return 'noop' end
if num(r.retakes) > 0 then
  -- An earlier lease holder's publish may still be confirmed: keep the
  -- record (a retry retakes it), only end this lease.
  redis.call('HSET', ck, 'lease_until', ms(NOW))
  redis.call('HDEL', ck, 'lease')
  return 'ended'
end
redis.call('DEL', ck)
return 'deleted'
`)

// dispatchScript: ARGV[5..] device, method, device request, envelope
// deliver-by ms, device owner, client owner, expired body, expired
// reason, rejected body, rejected reason.
var dispatchScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r then return {'noop', 'missing'} end
if r.device ~= ARGV[5] or r.method ~= ARGV[6] then return {'noop', 'mismatch'} end
local st = r.status
if st ~= 'pending' and st ~= 'queued' then return {'noop', st} end
if st == 'pending' then queue(ck, r) end
local by = num(r.deliver_by)
if by == 0 then by = num(ARGV[8]) end
if by <= NOW then
  finalize(ck, r, 'expired', ARGV[11], ARGV[12], ARGV[10])
  return {'expired', ''}
end
local c, k, d = r.client, r.key, r.device
local id = append(d, commands_topic(d), ARGV[7], by, c, k, ARGV[9])
if not id then
  finalize(ck, r, 'rejected', ARGV[13], ARGV[14], ARGV[10])
  return {'rejected', ''}
end
redis.call('HSET', ck, 'status', 'sent', 'sent', ms(NOW), 'entry', id)
redis.call('ZADD', K.timers(), ms(by), 'd|' .. c .. '|' .. k)
count('sent')
return {'sent', id}
`)

// completeScript: ARGV[5..] device, body, final status, raw response.
// ARGV[9] client owner.
var completeScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r or r.device ~= ARGV[5] then return 'noop' end
local st = r.status
if FINAL[st] then
  redis.call('HSET', ck, 'late', ARGV[8])
  count('late')
  return 'late'
end
if st ~= 'sent' and st ~= 'delivered' then return 'noop' end
if num(r.delivered) == 0 then redis.call('HSET', ck, 'delivered', ms(NOW)) end
finalize(ck, r, ARGV[7], ARGV[6], '', ARGV[9])
return ARGV[7]
`)

// cancelScript: ARGV[5..] cancelled body, reason, client owner.
var cancelScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r then return {'notfound', {}} end
local st = r.status
if st == 'queued' or (st == 'sent' and num(r.sending) == 0) then
  finalize(ck, r, 'cancelled', ARGV[5], ARGV[6], ARGV[7])
  return {'cancelled', redis.call('HGETALL', ck)}
end
return {'state', redis.call('HGETALL', ck)}
`)

// fireScript: ARGV[5..] timer member, kind ("d" or "a"), expired body,
// expired reason, timeout body, timeout reason, client owner. Returns
// {1, outcome} when this call took the timer, {0, ""} when another did
// (or it was re-armed to a later time).
var fireScript = script(`
local ck = KEYS[1]
local tk = K.timers()
local sc = redis.call('ZSCORE', tk, ARGV[5])
if not sc or tonumber(sc) > NOW then return {0, ''} end
redis.call('ZREM', tk, ARGV[5])
local r = load(ck)
if not r then return {1, 'noop'} end
local st = r.status
if ARGV[6] == 'd' then
  if st ~= 'sent' then return {1, 'noop'} end
  if num(r.sending) > 0 then
    -- On the wire: wait one timeout for the PUBACK or the answer.
    redis.call('ZADD', tk, ms(NOW + num(r.tmo)), 'a|' .. r.client .. '|' .. r.key)
    return {1, 'rearmed'}
  end
  finalize(ck, r, 'expired', ARGV[7], ARGV[8], ARGV[11])
  return {1, 'expired'}
end
if st == 'sent' or st == 'delivered' then
  finalize(ck, r, 'timeout', ARGV[9], ARGV[10], ARGV[11])
  return {1, 'timeout'}
end
return {1, 'noop'}
`)

// deadScript: ARGV[5..] dead body, reason, client owner.
var deadScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r or FINAL[r.status] then return 'noop' end
if r.status == 'pending' then queue(ck, r) end
finalize(ck, r, 'dead', ARGV[5], ARGV[6], ARGV[7])
redis.call('ZADD', K.dead(), ms(NOW), r.client .. '|' .. r.key)
return 'dead'
`)

// replayScript: dead → queued, with a fresh deliver-by window.
var replayScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r then
  redis.call('ZREM', K.dead(), ARGV[5])
  return {'notfound', {}}
end
if r.status ~= 'dead' then return {'state', redis.call('HGETALL', ck)} end
redis.call('PERSIST', ck)
redis.call('HDEL', ck, 'finished', 'resp', 'reason', 'dropped', 'sending', 'sent', 'delivered', 'entry')
redis.call('HSET', ck, 'status', 'queued', 'queued', ms(NOW), 'deliver_by', ms(NOW + num(r.exp)))
redis.call('HINCRBY', ck, 'replays', 1)
redis.call('ZREM', K.dead(), ARGV[5])
local ik = K.cmds(r.client, r.device)
redis.call('ZADD', ik, 'NX', r.created, r.key)
extend(ik, NOW + num(r.exp) + num(r.tmo) + RET)
count('queued')
return {'queued', redis.call('HGETALL', ck)}
`)

// fetchScript: KEYS[1] mailbox; ARGV[5..] after, count, scan budget.
var fetchScript = script(`
local mk = KEYS[1]
local after, want, budget = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local start = '-'
if after ~= '' and after ~= '0' and after ~= '0-0' then start = '(' .. after end
local out = {}
while #out < want and budget > 0 do
  local n = want - #out
  if n > budget then n = budget end
  local es = redis.call('XRANGE', mk, start, '+', 'COUNT', n)
  if #es == 0 then break end
  for _, e in ipairs(es) do
    budget = budget - 1
    start = '(' .. e[1]
    local f = fields(e[2])
    if stale(e[1], f) then
      redis.call('XDEL', mk, e[1])
    else
      if f.c and f.c ~= '' then
        local ck = K.cmd(f.c, f.k)
        if redis.call('HGET', ck, 'status') == 'sent' then
          redis.call('HSETNX', ck, 'sending', ms(NOW))
          redis.call('HINCRBY', ck, 'attempts', 1)
        end
      end
      out[#out + 1] = {e[1], f.t or '', f.p or '', f.x or '0', f.c or '', f.k or ''}
    end
  end
end
return out
`)

// ackScript: KEYS[1] mailbox; ARGV[5..] identity, entry id, client, key.
var ackScript = script(`
local mk = KEYS[1]
local identity, id, c, k = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
redis.call('XDEL', mk, id)
local res = 'deleted'
if c ~= '' then
  local ck = K.cmd(c, k)
  local r = load(ck)
  if r and r.status == 'sent' and r.entry == id and r.device == identity then
    redis.call('HSET', ck, 'status', 'delivered', 'delivered', ms(NOW))
    redis.call('HSETNX', ck, 'sending', ms(NOW))
    redis.call('HDEL', ck, 'entry')
    redis.call('ZREM', K.timers(), 'd|' .. c .. '|' .. k)
    redis.call('ZADD', K.timers(), ms(NOW + num(r.tmo)), 'a|' .. c .. '|' .. k)
    count('delivered')
    res = 'delivered'
  end
end
if redis.call('XLEN', mk) == 0 then redis.call('SREM', K.mboxes(), identity) end
return res
`)

// putScript: KEYS[1] mailbox; ARGV[5..] identity, topic, payload,
// expires ms, owner.
var putScript = script(`
local id = append(ARGV[5], ARGV[6], ARGV[7], num(ARGV[8]), nil, nil, ARGV[9])
if not id then return {'full', ''} end
return {'ok', id}
`)

// pruneScript: KEYS[1] mailbox; ARGV[5] identity. Forgets an empty
// mailbox in the Mailboxes set.
var pruneScript = script(`
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('SREM', K.mboxes(), ARGV[5])
  return 1
end
return 0
`)

// setSessionScript: ARGV[5..] identity, node.
var setSessionScript = script(`
local identity, node = ARGV[5], ARGV[6]
local sk = K.sess(identity)
local old = redis.call('GET', sk)
if old and old ~= node then redis.call('SREM', K.nsess(old), identity) end
redis.call('SET', sk, node)
redis.call('SADD', K.nsess(node), identity)
return 'ok'
`)

// clearSessionScript: ARGV[5..] identity, node.
var clearSessionScript = script(`
local identity, node = ARGV[5], ARGV[6]
local sk = K.sess(identity)
redis.call('SREM', K.nsess(node), identity)
if redis.call('GET', sk) == node then
  redis.call('DEL', sk)
  return 1
end
return 0
`)

// keysScript returns the key names the Lua helpers build, for the test
// that keeps them in step with protocol.Keys. ARGV[5..] client, key,
// device, identity, node, minute.
var keysScript = script(`
local c, k, d, i, n, m = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
return {K.cmd(c, k), K.cmds(c, d), K.mbox(i), K.mboxes(), K.timers(), K.dead(),
  K.ringnode(n), K.sess(i), K.nsess(n), K.pending(n), K.wake(n), K.stats(m),
  results_topic(c, d), commands_topic(d)}
`)

// scriptTransitions lists the status changes the scripts make, and for
// whom; TestScriptTransitionsAreLegal checks them against
// protocol.Transitions. Dispatch and MarkDead may first make pending →
// queued on the apiserver's behalf (the message they handle proves the
// publish). The operator's replay (dead → queued) is not in the table.
var scriptTransitions = []protocol.Transition{
	{From: protocol.StatusPending, To: protocol.StatusQueued, By: protocol.OwnerAPI},         // MarkQueued
	{From: protocol.StatusQueued, To: protocol.StatusSent, By: protocol.OwnerWorker},         // Dispatch
	{From: protocol.StatusQueued, To: protocol.StatusExpired, By: protocol.OwnerWorker},      // Dispatch
	{From: protocol.StatusQueued, To: protocol.StatusRejected, By: protocol.OwnerWorker},     // Dispatch
	{From: protocol.StatusQueued, To: protocol.StatusCancelled, By: protocol.OwnerAPI},       // Cancel
	{From: protocol.StatusQueued, To: protocol.StatusDead, By: protocol.OwnerWorker},         // MarkDead
	{From: protocol.StatusSent, To: protocol.StatusDelivered, By: protocol.OwnerPush},        // Ack
	{From: protocol.StatusSent, To: protocol.StatusSucceeded, By: protocol.OwnerWorker},      // Complete
	{From: protocol.StatusSent, To: protocol.StatusFailed, By: protocol.OwnerWorker},         // Complete
	{From: protocol.StatusSent, To: protocol.StatusCancelled, By: protocol.OwnerAPI},         // Cancel
	{From: protocol.StatusSent, To: protocol.StatusExpired, By: protocol.OwnerWorker},        // FireTimers
	{From: protocol.StatusSent, To: protocol.StatusTimeout, By: protocol.OwnerWorker},        // FireTimers
	{From: protocol.StatusSent, To: protocol.StatusDead, By: protocol.OwnerWorker},           // MarkDead
	{From: protocol.StatusDelivered, To: protocol.StatusSucceeded, By: protocol.OwnerWorker}, // Complete
	{From: protocol.StatusDelivered, To: protocol.StatusFailed, By: protocol.OwnerWorker},    // Complete
	{From: protocol.StatusDelivered, To: protocol.StatusTimeout, By: protocol.OwnerWorker},   // FireTimers
	{From: protocol.StatusDelivered, To: protocol.StatusDead, By: protocol.OwnerWorker},      // MarkDead
}
