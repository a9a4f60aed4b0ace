package mailbox

import (
	"regexp"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// Calling convention of every script: ARGV[1] is the key prefix "{ns}:",
// ARGV[2] the current time (unix ms, from Options.Now), ARGV[3] the
// retention (ms), ARGV[4] the mailbox cap, ARGV[5] the index horizon (ms:
// Retention + MaxLifetime + Lease); the script's own arguments start at
// ARGV[6]. KEYS[1] is the main key the script works on (informational: a
// single primary does not require declared keys, and the keys of the
// signalled node are only known inside the script).
//
// A script is its body preceded by the pieces of the library below that
// it uses (directly or through another piece), so that each call defines
// only the helpers it needs. Key names are built in Lua with the same
// formats as protocol.Keys; TestLuaKeysMatchProtocol keeps them in step.
//
// Rules every script follows:
//   - numbers passed to redis.call go through ms() (an integer string:
//     a bare Lua number may be sent in exponent notation);
//   - a record is loaded and checked (sane) before the script's first
//     write, so a corrupt record is never half-changed;
//   - expiries are relative (PEXPIRE), so a faked clock never deletes a
//     key by accident.
const luaHeader = `
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local RET = tonumber(ARGV[3])
local CAP = tonumber(ARGV[4])
local HORIZON = tonumber(ARGV[5])
`

// luaPiece is one named helper of the Lua library. A piece may use only
// pieces listed before it.
type luaPiece struct{ name, code string }

var luaPieces = []luaPiece{
	{"ms", `
local function ms(n) return string.format('%d', n) end
`},
	{"num", `
local function num(v)
  if v == nil or v == false or v == '' then return 0 end
  return tonumber(v) or 0
end
`},
	{"FINAL", `
local FINAL = {` + luaFinalSet() + `}
`},
	{"K", `
local K = {}
K.cmd = function(c, k) return P .. 'cmd:' .. c .. ':' .. k end
K.cmds = function(c, d) return P .. 'cmds:' .. c .. ':' .. d end
K.mbox = function(i) return P .. 'mbox:' .. i end
K.mboxes = function() return P .. 'mboxes' end
K.timers = function() return P .. 'timers' end
K.dead = function() return P .. 'dead' end
K.ringnode = function(n) return P .. 'ring:node:' .. n end
K.sess = function(i) return P .. 'sess:' .. i end
K.sessconn = function(i) return P .. 'sess:' .. i .. ':conn' end
K.nsess = function(n) return P .. 'node:' .. n .. ':sessions' end
K.pending = function(n) return P .. 'node:' .. n .. ':pending' end
K.wake = function(n) return P .. 'node:' .. n .. ':wake' end
K.stats = function(m) return P .. 'stats:' .. m end
`},
	{"results_topic", `
local function results_topic(c, d) return 'clients/' .. c .. '/results/' .. d end
`},
	{"commands_topic", `
local function commands_topic(d) return 'devices/' .. d .. '/commands' end
`},
	{"fields", `
local function fields(a)
  local t = {}
  for i = 1, #a, 2 do t[a[i]] = a[i + 1] end
  return t
end
`},
	{"flat", `
local function flat(t)
  local a = {}
  for f, v in pairs(t) do a[#a + 1] = f; a[#a + 1] = v end
  return a
end
`},
	{"load", `
-- load returns the record at key as a table and as the flat HGETALL
-- reply, or nil.
local function load(key)
  local a = redis.call('HGETALL', key)
  if #a == 0 then return nil end
  return fields(a), a
end
`},
	{"sane", `
-- sane reports whether a record has every field a transition reads; a
-- script checks it before its first write.
local function sane(r)
  local function set(v) return v ~= nil and v ~= false and v ~= '' end
  if not (set(r.client) and set(r.device) and set(r.key) and set(r.status) and set(r.id)) then return false end
  if not tonumber(r.created) then return false end
  -- The id is spliced into the client's result: a JSON string as the
  -- client wrote it (escapes included) or an integer.
  return string.match(r.id, '^".+"$') ~= nil or string.match(r.id, '^%-?%d+$') ~= nil
end
`},
	{"count", `
-- count records a transition into status (or an event) for StatusCounts.
local function count(what)
  local key = K.stats(ms(math.floor(NOW / 60000)))
  if redis.call('HINCRBY', key, what, 1) == 1 then redis.call('PEXPIRE', key, '3900000') end
end
`},
	{"extend", `
-- extend makes key live at least until the time at (unix ms): one call
-- when the expiry grows, two when it does not (or the key has none).
local function extend(key, at)
  local ttl = at - NOW
  if ttl < 1000 then ttl = 1000 end
  if redis.call('PEXPIRE', key, ms(ttl), 'GT') == 0 then redis.call('PEXPIRE', key, ms(ttl), 'NX') end
end
`},
	{"signal", `
-- signal tells the push servers that should stream identity's mailbox:
-- the node named by its live session (whether or not that node's ring key
-- is alive: a heartbeat gap must not hide a connected identity) and owner
-- (the ring owner computed by the caller), each once. SESS is the session
-- node of the last signal, for scripts that leave the owner to the caller.
local SESS = ''
local function wake(node, identity)
  local pk = K.pending(node)
  if redis.call('SADD', pk, identity) == 1 then redis.call('PEXPIRE', pk, '86400000') end
  redis.call('PUBLISH', K.wake(node), identity)
end
local function signal(identity, owner)
  local node = redis.call('GET', K.sess(identity))
  if not node then node = '' end
  SESS = node
  if node ~= '' and node ~= owner then wake(node, identity) end
  if owner and owner ~= '' then wake(owner, identity) end
end
`},
	{"stale", `
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
`},
	{"makeroom", `
-- makeroom frees the stale entries at the head of a full mailbox. It
-- looks at the first entry only; when that one is stale, it removes the
-- run of stale entries that starts there (at most 100) with one XTRIM
-- MINID. Entries mostly leave in order (results all expire in id order,
-- command entries leave when their command ends), so the head tells
-- whether there is room to make, and every entry read beyond the first
-- is one that goes.
local function makeroom(mk)
  local es = redis.call('XRANGE', mk, '-', '+', 'COUNT', 1)
  if #es == 0 or not stale(es[1][1], fields(es[1][2])) then return end
  es = redis.call('XRANGE', mk, '-', '+', 'COUNT', 100)
  local cut
  for i = 2, #es do
    if not stale(es[i][1], fields(es[i][2])) then cut = es[i][1]; break end
  end
  if not cut then
    local t, seq = string.match(es[#es][1], '^(%d+)%-(%d+)$')
    cut = t .. '-' .. ms(tonumber(seq) + 1)
  end
  redis.call('XTRIM', mk, 'MINID', cut)
end
`},
	{"append", `
-- append adds a message to identity's mailbox and signals; false when
-- the mailbox is full (after freeing stale head entries).
local function append(identity, topic, payload, expires, c, k, owner)
  local mk = K.mbox(identity)
  local n = redis.call('XLEN', mk)
  if n >= CAP then
    makeroom(mk)
    n = redis.call('XLEN', mk)
    if n >= CAP then return false end
  end
  local id
  if c then
    id = redis.call('XADD', mk, '*', 't', topic, 'p', payload, 'x', ms(expires), 'c', c, 'k', k)
  else
    id = redis.call('XADD', mk, '*', 't', topic, 'p', payload, 'x', ms(expires))
  end
  local ttl = expires - NOW
  if ttl < 1000 then ttl = 1000 end
  if n == 0 then
    -- A new (or empty) mailbox: set its expiry, list it in Mailboxes.
    redis.call('PEXPIRE', mk, ms(ttl))
    redis.call('SADD', K.mboxes(), identity)
  else
    redis.call('PEXPIRE', mk, ms(ttl), 'GT')
  end
  signal(identity, owner)
  return id
end
`},
	{"index", `
-- index puts the command into its (client, device) index, scored by
-- creation, after dropping members older than any record can live, and
-- keeps the index until the record's retention can end.
local function index(r)
  local ik = K.cmds(r.client, r.device)
  local h = RET + num(r.exp) + num(r.tmo)
  if h < HORIZON then h = HORIZON end
  redis.call('ZREMRANGEBYSCORE', ik, '-inf', '(' .. ms(NOW - h))
  redis.call('ZADD', ik, r.created, r.key)
  extend(ik, num(r.deliver_by) + num(r.tmo) + RET)
end
`},
	{"queue", `
-- queue is pending → queued: the command is durable in RabbitMQ. Its
-- deliver-by timer (the watchdog) is armed since Reserve.
local function queue(ck, r)
  redis.call('HSET', ck, 'status', 'queued', 'queued', ms(NOW), 'lease', '', 'lease_until', '')
  redis.call('PERSIST', ck)
  index(r)
  count('queued')
  r.status = 'queued'
end
`},
	{"finalize", `
-- finalize sets a final status: body is the JSON-RPC response without
-- jsonrpc and id ('"result":…' or '"error":…'). It removes the device
-- mailbox entry, cancels the timers, appends the client's result (with
-- the client's own id) and sets the record's retention expiry. extra
-- holds more fields to set. The caller checked sane(r); everything is
-- computed before the first write.
local function finalize(ck, r, status, body, reason, owner, extra)
  local c, k, d = r.client, r.key, r.device
  local resp = '{"jsonrpc":"2.0",' .. body .. ',"id":' .. r.id .. '}'
  local set = {'status', status, 'finished', ms(NOW), 'resp', resp}
  if reason and reason ~= '' then set[#set + 1] = 'reason'; set[#set + 1] = reason end
  if extra then for _, v in ipairs(extra) do set[#set + 1] = v end end
  local entry = r.entry
  if entry and entry ~= '' then
    set[#set + 1] = 'entry'; set[#set + 1] = ''
    redis.call('XDEL', K.mbox(d), entry)
  end
  redis.call('ZREM', K.timers(), 'd|' .. c .. '|' .. k, 'a|' .. c .. '|' .. k)
  if num(r.replays) > 0 then redis.call('ZREM', K.dead(), c .. '|' .. k) end
  count(status)
  if not append(c, results_topic(c, d), resp, NOW + RET, nil, nil, owner) then
    set[#set + 1] = 'dropped'; set[#set + 1] = '1'
    count('result_dropped')
  end
  redis.call('HSET', ck, unpack(set))
  redis.call('PEXPIRE', ck, ms(RET))
  -- The index was kept until deliver_by + timeout + retention; a command
  -- that ends later than that (a late timer) extends it.
  if NOW > num(r.deliver_by) + num(r.tmo) then extend(K.cmds(c, d), NOW + RET) end
  r.status = status
  return resp
end
`},
}

var luaIdent = regexp.MustCompile(`[A-Za-z_][A-Za-z0-9_]*`)

// luaSources holds the source of every script, plain and batched, for
// tests; allScripts holds every script, for Store's batchers.
var (
	luaSources []string
	allScripts []*luaScript
)

// script returns the script made of body and the library pieces it uses,
// with its batched form (see batch.go).
func script(body string) *luaScript {
	src := luaSource(body)
	bsrc := luaSource(batchWrapperHead + body + batchWrapperTail)
	luaSources = append(luaSources, src, bsrc)
	sc := &luaScript{body: body, one: redis.NewScript(src), batch: redis.NewScript(bsrc)}
	allScripts = append(allScripts, sc)
	return sc
}

func luaSource(body string) string {
	used := map[string]bool{}
	mark := func(code string) {
		for _, w := range luaIdent.FindAllString(code, -1) {
			used[w] = true
		}
	}
	mark(body)
	include := make([]bool, len(luaPieces))
	for i := len(luaPieces) - 1; i >= 0; i-- {
		if used[luaPieces[i].name] {
			include[i] = true
			mark(luaPieces[i].code)
		}
	}
	var b strings.Builder
	b.WriteString(luaHeader)
	for i, p := range luaPieces {
		if include[i] {
			b.WriteString(p.code)
		}
	}
	b.WriteString(body)
	return b.String()
}

func luaFinalSet() string {
	var b strings.Builder
	for _, st := range protocol.Statuses {
		if st.Final() {
			b.WriteString("['" + string(st) + "']=true, ")
		}
	}
	return b.String()
}

// reserveScript: ARGV[6..] client, device, id raw, key, method, params,
// fp, tmo ms, exp ms, created ms, token, lease ms. A new record gets its
// deliver-by timer at once, the watchdog of pending and queued commands,
// at deliver-by but not before the lease ends (a message that arrives
// late is expired by its own Dispatch; the timer is for messages that
// never arrive). It expires, unless something queues it, exp + tmo +
// lease + retention from now: its message may wait in RabbitMQ until
// deliver-by.
var reserveScript = script(`
local ck = KEYS[1]
local c, key, fp = ARGV[6], ARGV[9], ARGV[12]
local tmo, exp, created, token, lease = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15]), ARGV[16], tonumber(ARGV[17])
local r, raw = load(ck)
if not r then
  local rec = {'client', c, 'device', ARGV[7], 'id', ARGV[8], 'key', key,
    'method', ARGV[10], 'params', ARGV[11], 'fp', fp, 'status', 'pending',
    'tmo', ms(tmo), 'exp', ms(exp), 'created', ms(created), 'deliver_by', ms(created + exp),
    'attempts', '0', 'lease', token, 'lease_until', ms(NOW + lease)}
  redis.call('HSET', ck, unpack(rec))
  redis.call('PEXPIRE', ck, ms(exp + tmo + lease + RET))
  redis.call('ZADD', K.timers(), ms(math.max(created + exp, NOW + lease)), 'd|' .. c .. '|' .. key)
  count('pending')
  return {'reserved', rec}
end
if r.fp ~= fp then return {'conflict', raw} end
if r.status == 'pending' and num(r.lease_until) <= NOW then
  if not sane(r) then return {'corrupt', raw} end
  local by = created + num(r.exp)
  r.lease, r.lease_until, r.created, r.deliver_by = token, ms(NOW + lease), ms(created), ms(by)
  r.retakes = ms(num(r.retakes) + 1)
  redis.call('HSET', ck, 'lease', r.lease, 'lease_until', r.lease_until,
    'created', r.created, 'deliver_by', r.deliver_by, 'retakes', r.retakes)
  redis.call('PEXPIRE', ck, ms(num(r.exp) + num(r.tmo) + lease + RET))
  redis.call('ZADD', K.timers(), ms(math.max(by, NOW + lease)), 'd|' .. r.client .. '|' .. r.key)
  return {'retake', flat(r)}
end
return {'exists', raw}
`)

// markQueuedScript: no own arguments.
var markQueuedScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r then return 'notfound' end
if r.status ~= 'pending' then return 'ok' end
if not sane(r) then return 'corrupt' end
queue(ck, r)
return 'queued'
`)

// releaseScript: ARGV[6] token.
var releaseScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r or r.status ~= 'pending' or r.lease ~= ARGV[6] then return 'noop' end
if num(r.retakes) > 0 then
  -- An earlier lease holder's publish may still be confirmed: keep the
  -- record (a retry retakes it), only end this lease.
  redis.call('HSET', ck, 'lease', '', 'lease_until', ms(NOW))
  return 'ended'
end
redis.call('DEL', ck)
if r.client and r.key then redis.call('ZREM', K.timers(), 'd|' .. r.client .. '|' .. r.key) end
return 'deleted'
`)

// dispatchScript: ARGV[6..] device, method, device request, envelope
// deliver-by ms, device owner, client owner, expired body, expired
// reason, rejected body, rejected reason.
var dispatchScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r then return {'noop', 'missing'} end
if r.device ~= ARGV[6] or r.method ~= ARGV[7] then return {'noop', 'mismatch'} end
local st = r.status
if st ~= 'pending' and st ~= 'queued' then return {'noop', st} end
if not sane(r) then return {'corrupt', ''} end
if st == 'pending' then queue(ck, r) end
local c, k, d = r.client, r.key, r.device
local by = num(r.deliver_by)
if by == 0 then by = num(ARGV[9]) end
if by <= NOW then
  finalize(ck, r, 'expired', ARGV[12], ARGV[13], ARGV[11])
  return {'expired', ''}
end
local id = append(d, commands_topic(d), ARGV[8], by, c, k, ARGV[10])
if not id then
  finalize(ck, r, 'rejected', ARGV[14], ARGV[15], ARGV[11])
  return {'rejected', ''}
end
redis.call('HSET', ck, 'status', 'sent', 'sent', ms(NOW), 'entry', id)
-- The watchdog armed at Reserve (or ReplayDead) becomes the deliver-by
-- deadline of the sent command: same member, its score now deliver-by.
redis.call('ZADD', K.timers(), ms(by), 'd|' .. c .. '|' .. k)
-- A replay is done once its command is dispatched: it leaves the dead set.
if num(r.replays) > 0 then redis.call('ZREM', K.dead(), c .. '|' .. k) end
count('sent')
return {'sent', id}
`)

// completeScript: ARGV[6..] device, body, final status, raw response,
// client owner.
var completeScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r or r.device ~= ARGV[6] then return 'noop' end
local st = r.status
if FINAL[st] then
  if (st == 'succeeded' or st == 'failed') and r.id and
      r.resp == '{"jsonrpc":"2.0",' .. ARGV[7] .. ',"id":' .. r.id .. '}' then
    return 'duplicate'
  end
  if r.late ~= ARGV[9] then
    redis.call('HSET', ck, 'late', ARGV[9])
    count('late')
  end
  return 'late'
end
if st ~= 'sent' and st ~= 'delivered' then return 'noop' end
if not sane(r) then return 'corrupt' end
local extra
if num(r.delivered) == 0 then extra = {'delivered', ms(NOW)} end
finalize(ck, r, ARGV[8], ARGV[7], '', ARGV[10], extra)
return ARGV[8]
`)

// cancelScript: ARGV[6..] cancelled body, reason, client owner.
var cancelScript = script(`
local ck = KEYS[1]
local r, raw = load(ck)
if not r then return {'notfound', {}} end
local st = r.status
if st == 'queued' or (st == 'sent' and num(r.sending) == 0) then
  if not sane(r) then return {'corrupt', raw} end
  finalize(ck, r, 'cancelled', ARGV[6], ARGV[7], ARGV[8])
  return {'cancelled', redis.call('HGETALL', ck)}
end
return {'state', raw}
`)

// cancelManyScript: ARGV[6..] cancelled body, reason, client owner, then
// message ID keys of one client (the client is ARGV[9]). Cancels those
// that can be (see cancelScript) and returns how many it did.
var cancelManyScript = script(`
local n = 0
for i = 10, #ARGV do
  local ck = K.cmd(ARGV[9], ARGV[i])
  local r = load(ck)
  if r and (r.status == 'queued' or (r.status == 'sent' and num(r.sending) == 0)) and sane(r) then
    finalize(ck, r, 'cancelled', ARGV[6], ARGV[7], ARGV[8])
    n = n + 1
  end
end
return n
`)

// fireScript: ARGV[6..] limit, expired body, expired reason, timeout
// body, timeout reason. It pops up to limit due timers and applies each
// (see FireTimers). Results are appended signalling only the client's
// session node: the caller signals the ring owner. It returns one row
// per timer taken: {member, outcome, client signalled (empty: none),
// session node}.
var fireScript = script(`
local tk = K.timers()
local due = redis.call('ZRANGEBYSCORE', tk, '-inf', ms(NOW), 'LIMIT', '0', ARGV[6])
if #due == 0 then return {} end
redis.call('ZREM', tk, unpack(due))
local function expire(ck, r)
  finalize(ck, r, 'expired', ARGV[7], ARGV[8], '')
  return 'expired'
end
local function fire(m, kind, ck, r)
  local st = r.status
  if kind == 'd' then
    if st ~= 'pending' and st ~= 'queued' and st ~= 'sent' then return 'noop' end
    local by = num(r.deliver_by)
    if by > NOW then
      -- Not due after all (a deliver-by that moved): wait for it.
      redis.call('ZADD', tk, ms(by), m)
      return 'rearmed'
    end
    if st == 'pending' then
      local lu = num(r.lease_until)
      if lu > NOW then
        -- Its publish is still being confirmed: decide when the lease ends.
        redis.call('ZADD', tk, ms(lu), m)
        return 'rearmed'
      end
      -- Past deliver-by and past its lease: whether or not its message
      -- is in RabbitMQ, it can no longer be delivered in time.
      queue(ck, r)
      return expire(ck, r)
    end
    if st == 'queued' then return expire(ck, r) end
    if num(r.sending) > 0 then
      -- On the wire: wait one timeout for the PUBACK or the answer.
      redis.call('ZADD', tk, ms(NOW + num(r.tmo)), 'a|' .. r.client .. '|' .. r.key)
      return 'rearmed'
    end
    return expire(ck, r)
  end
  if st == 'sent' and num(r.sending) == 0 then
    -- Re-armed while on the wire, then handed back (Unsend): it never
    -- reached the device, so its deliver-by decides.
    local by = num(r.deliver_by)
    if by > NOW then
      redis.call('ZADD', tk, ms(by), 'd|' .. r.client .. '|' .. r.key)
      return 'rearmed'
    end
    return expire(ck, r)
  end
  if st == 'sent' or st == 'delivered' then
    finalize(ck, r, 'timeout', ARGV[9], ARGV[10], '')
    return 'timeout'
  end
  return 'noop'
end
local out = {}
for _, m in ipairs(due) do
  local kind, c, k = string.match(m, '^([da])|([^|]+)|(.+)$')
  local what, who, sess = 'malformed', '', ''
  if kind then
    local ck = K.cmd(c, k)
    local r = load(ck)
    if not r then
      what = 'noop'
    elseif not sane(r) then
      what = 'corrupt'
    else
      SESS = ''
      what = fire(m, kind, ck, r)
      if what == 'expired' or what == 'timeout' then who, sess = c, SESS end
    end
  end
  out[#out + 1] = {m, what, who, sess}
end
return out
`)

// deadScript: ARGV[6..] dead body, reason, client owner. Only a command
// that was never handed to a device (pending or queued) dies: for a sent
// or delivered one the timers decide.
var deadScript = script(`
local ck = KEYS[1]
local r = load(ck)
if not r then return 'noop' end
if r.status ~= 'pending' and r.status ~= 'queued' then return 'noop' end
if not sane(r) then return 'corrupt' end
if r.status == 'pending' then queue(ck, r) end
finalize(ck, r, 'dead', ARGV[6], ARGV[7], ARGV[8])
redis.call('ZADD', K.dead(), ms(NOW), r.client .. '|' .. r.key)
return 'dead'
`)

// replayScript: ARGV[6] dead-set member. dead → queued, with a fresh
// deliver-by window and its timer; the member stays in the dead set until
// Dispatch (or a final transition) takes it out, so an interrupted replay
// stays visible and can be replayed again.
var replayScript = script(`
local ck = KEYS[1]
local member = ARGV[6]
local r, raw = load(ck)
if not r then
  redis.call('ZREM', K.dead(), member)
  return {'notfound', {}}
end
if r.status == 'queued' and redis.call('ZSCORE', K.dead(), member) then
  -- An earlier replay not dispatched yet: publish again.
  return {'queued', raw}
end
if r.status ~= 'dead' then return {'state', raw} end
if not sane(r) then return {'corrupt', raw} end
local by = NOW + num(r.exp)
redis.call('PERSIST', ck)
redis.call('HDEL', ck, 'finished', 'resp', 'reason', 'dropped', 'sending', 'sent', 'delivered', 'entry')
redis.call('HSET', ck, 'status', 'queued', 'queued', ms(NOW), 'deliver_by', ms(by), 'replays', ms(num(r.replays) + 1))
redis.call('ZADD', K.timers(), ms(by), 'd|' .. r.client .. '|' .. r.key)
r.deliver_by = ms(by)
index(r)
count('queued')
return {'queued', redis.call('HGETALL', ck)}
`)

// fetchScript: KEYS[1] mailbox; ARGV[6..] after, count, scan budget.
var fetchScript = script(`
local mk = KEYS[1]
local after, want, budget = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local start = '-'
if after ~= '' and after ~= '0' and after ~= '0-0' then start = '(' .. after end
local out, gone = {}, {}
while #out < want and budget > 0 do
  local n = want - #out
  if n > budget then n = budget end
  local es = redis.call('XRANGE', mk, start, '+', 'COUNT', n)
  for _, e in ipairs(es) do
    budget = budget - 1
    start = '(' .. e[1]
    local f = fields(e[2])
    local drop = num(f.x) <= NOW
    if not drop and f.c and f.c ~= '' then
      local ck = K.cmd(f.c, f.k)
      local st = redis.call('HMGET', ck, 'status', 'entry', 'sending')
      if not st[1] or FINAL[st[1]] or st[2] ~= e[1] then
        drop = true
      elseif st[1] == 'sent' then
        if not st[3] or st[3] == '' then redis.call('HSET', ck, 'sending', ms(NOW)) end
        redis.call('HINCRBY', ck, 'attempts', 1)
      end
    end
    if drop then
      gone[#gone + 1] = e[1]
    else
      out[#out + 1] = {e[1], f.t or '', f.p or '', f.x or '0', f.c or '', f.k or ''}
    end
  end
  if #es < n then break end
end
if #gone > 0 then redis.call('XDEL', mk, unpack(gone)) end
-- more: the scan stopped at its budget, not at the end of the mailbox.
local more = 0
if #out < want and budget <= 0 then more = 1 end
return {out, more}
`)

// ackScript: KEYS[1] mailbox; ARGV[6] identity, ARGV[7..] entry IDs. The
// command an entry carries is read from the entry itself.
var ackScript = script(`
local mk, identity = KEYS[1], ARGV[6]
local tk = K.timers()
local out, gone = {}, {}
for i = 7, #ARGV do
  local id = ARGV[i]
  local es = redis.call('XRANGE', mk, id, id)
  local what = 'gone'
  if #es > 0 then
    gone[#gone + 1] = id
    what = 'deleted'
    local f = fields(es[1][2])
    if f.c and f.c ~= '' then
      local c, k = f.c, f.k
      local ck = K.cmd(c, k)
      local r = redis.call('HMGET', ck, 'status', 'entry', 'device', 'tmo', 'sending')
      if r[1] == 'sent' and r[2] == id and r[3] == identity then
        local set = {'status', 'delivered', 'delivered', ms(NOW), 'entry', ''}
        if not r[5] or r[5] == '' then set[#set + 1] = 'sending'; set[#set + 1] = ms(NOW) end
        redis.call('HSET', ck, unpack(set))
        redis.call('ZREM', tk, 'd|' .. c .. '|' .. k)
        redis.call('ZADD', tk, ms(NOW + num(r[4])), 'a|' .. c .. '|' .. k)
        count('delivered')
        what = 'delivered'
      end
    end
  end
  out[#out + 1] = what
end
if #gone > 0 then
  redis.call('XDEL', mk, unpack(gone))
  if redis.call('XLEN', mk) == 0 then redis.call('SREM', K.mboxes(), identity) end
end
return out
`)

// unsendScript: KEYS[1] mailbox; ARGV[6] identity, ARGV[7] entry ID.
// Undoes what Fetch did for an entry that was not published: one attempt
// less, and SendingAt cleared when no other fetch counted.
var unsendScript = script(`
local mk, identity, id = KEYS[1], ARGV[6], ARGV[7]
local es = redis.call('XRANGE', mk, id, id)
if #es == 0 then return 'gone' end
local f = fields(es[1][2])
if not f.c or f.c == '' then return 'noop' end
local ck = K.cmd(f.c, f.k)
local r = redis.call('HMGET', ck, 'status', 'entry', 'device', 'attempts', 'sending')
if r[1] ~= 'sent' or r[2] ~= id or r[3] ~= identity then return 'noop' end
local a = num(r[4])
if a > 0 then a = redis.call('HINCRBY', ck, 'attempts', -1) end
if a > 0 then return 'kept' end
if r[5] and r[5] ~= '' then redis.call('HDEL', ck, 'sending') end
return 'unsent'
`)

// putScript: KEYS[1] mailbox; ARGV[6..] identity, topic, payload,
// expires ms, owner.
var putScript = script(`
local id = append(ARGV[6], ARGV[7], ARGV[8], num(ARGV[9]), nil, nil, ARGV[10])
if not id then return {'full', ''} end
return {'ok', id}
`)

// pruneScript: KEYS[1] mailbox; ARGV[6] identity. Forgets an empty
// mailbox in the Mailboxes set.
var pruneScript = script(`
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('SREM', K.mboxes(), ARGV[6])
  return 1
end
return 0
`)

// setSessionScript: ARGV[6..] identity, node, connection ("" for none).
var setSessionScript = script(`
local identity, node, conn = ARGV[6], ARGV[7], ARGV[8]
local sk = K.sess(identity)
local old = redis.call('GET', sk)
if old and old ~= node then redis.call('SREM', K.nsess(old), identity) end
redis.call('SET', sk, node)
if conn ~= '' then
  redis.call('SET', K.sessconn(identity), conn)
else
  redis.call('DEL', K.sessconn(identity))
end
redis.call('SADD', K.nsess(node), identity)
return 'ok'
`)

// clearSessionScript: ARGV[6..] identity, node, connection ("" for any).
var clearSessionScript = script(`
local identity, node, conn = ARGV[6], ARGV[7], ARGV[8]
local sk = K.sess(identity)
if redis.call('GET', sk) == node then
  -- A newer connection of the identity on the same node keeps it.
  if conn ~= '' and redis.call('GET', K.sessconn(identity)) ~= conn then return 0 end
  redis.call('DEL', sk, K.sessconn(identity))
  redis.call('SREM', K.nsess(node), identity)
  return 1
end
redis.call('SREM', K.nsess(node), identity)
return 0
`)

// forgetSessionsScript: ARGV[6..] node, batch size, force ("1": even
// while the node's ring key is alive). It takes up to batch identities
// out of NodeSessions(node) and deletes the registration of each that
// still names node; the last batch (fewer taken) also deletes the node's
// pending set. Unless forced it does nothing while the node is a live
// ring member (returns -1): a node that was pruned after a pause and came
// back registers its sessions again, and none of this may undo that.
var forgetSessionsScript = script(`
local node, batch, force = ARGV[6], tonumber(ARGV[7]), ARGV[8] == '1'
if not force and redis.call('EXISTS', K.ringnode(node)) == 1 then return -1 end
local ids = redis.call('SPOP', K.nsess(node), batch)
for _, i in ipairs(ids) do
  if redis.call('GET', K.sess(i)) == node then redis.call('DEL', K.sess(i), K.sessconn(i)) end
end
if #ids < batch then redis.call('DEL', K.pending(node)) end
return #ids
`)

// keysScript returns the key names the Lua helpers build, for the test
// that keeps them in step with protocol.Keys. ARGV[6..] client, key,
// device, identity, node, minute.
var keysScript = script(`
local c, k, d, i, n, m = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
return {K.cmd(c, k), K.cmds(c, d), K.mbox(i), K.mboxes(), K.timers(), K.dead(),
  K.ringnode(n), K.sess(i), K.nsess(n), K.pending(n), K.wake(n), K.stats(m),
  results_topic(c, d), commands_topic(d), K.sessconn(i)}
`)

// scriptTransitions lists the status changes the scripts make, and for
// whom; TestScriptTransitionsAreLegal checks them against
// protocol.Transitions. Dispatch and MarkDead may first make pending →
// queued on the apiserver's behalf (the message they handle proves the
// publish), and so may FireTimers for a pending command past its lease
// and its deliver-by (which then expires at once).
var scriptTransitions = []protocol.Transition{
	{From: protocol.StatusPending, To: protocol.StatusQueued, By: protocol.OwnerAPI},         // MarkQueued
	{From: protocol.StatusQueued, To: protocol.StatusSent, By: protocol.OwnerWorker},         // Dispatch
	{From: protocol.StatusQueued, To: protocol.StatusExpired, By: protocol.OwnerWorker},      // Dispatch, FireTimers
	{From: protocol.StatusQueued, To: protocol.StatusRejected, By: protocol.OwnerWorker},     // Dispatch
	{From: protocol.StatusQueued, To: protocol.StatusCancelled, By: protocol.OwnerAPI},       // Cancel, CancelAll
	{From: protocol.StatusQueued, To: protocol.StatusDead, By: protocol.OwnerWorker},         // MarkDead
	{From: protocol.StatusSent, To: protocol.StatusDelivered, By: protocol.OwnerPush},        // Ack, AckMany
	{From: protocol.StatusSent, To: protocol.StatusSucceeded, By: protocol.OwnerWorker},      // Complete
	{From: protocol.StatusSent, To: protocol.StatusFailed, By: protocol.OwnerWorker},         // Complete
	{From: protocol.StatusSent, To: protocol.StatusCancelled, By: protocol.OwnerAPI},         // Cancel, CancelAll
	{From: protocol.StatusSent, To: protocol.StatusExpired, By: protocol.OwnerWorker},        // FireTimers
	{From: protocol.StatusSent, To: protocol.StatusTimeout, By: protocol.OwnerWorker},        // FireTimers
	{From: protocol.StatusDelivered, To: protocol.StatusSucceeded, By: protocol.OwnerWorker}, // Complete
	{From: protocol.StatusDelivered, To: protocol.StatusFailed, By: protocol.OwnerWorker},    // Complete
	{From: protocol.StatusDelivered, To: protocol.StatusTimeout, By: protocol.OwnerWorker},   // FireTimers
	{From: protocol.StatusDead, To: protocol.StatusQueued, By: protocol.OwnerAPI},            // ReplayDead (operator)
}
