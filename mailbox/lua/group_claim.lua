-- group_claim: intake of a group command (issue 14), in the client's
-- partition. It creates the group's record (state pending until the
-- publish of its envelope is confirmed) or reports the one there: the
-- same body ('same', with its state) or another one ('conflict'). A
-- new group is listed in the partition's set of groups (KEYS[2]), whose
-- members older than the longest a group lives are dropped.
local gk, list = KEYS[1], KEYS[2]
local fp, id, client, method, params, tmo, exp = A[1], A[2], A[3], A[4], A[5], A[6], A[7]
local total, rate, abort_after, abort_at, target, devs, lifetime =
  A[8], A[9], A[10], A[11], A[12], A[13], tonumber(A[14])
local member, horizon = A[15], tonumber(A[16])
local retries, rb_i, rb_m, rb_x = A[17] or '0', A[18] or '0', A[19] or '', A[20] or '0'
local ron = A[21] or ''

local g = redis.call('HMGET', gk, 'fp', 'state')
if g[1] then
  if g[1] ~= fp then return {'conflict', ''} end
  return {'same', g[2]}
end
redis.call('HSET', gk, 'fp', fp, 'id', id, 'client', client, 'method', method, 'params', params,
  'tmo', tmo, 'exp', exp, 'total', total, 'rate', rate, 'abort_after', abort_after, 'abort_at', abort_at,
  'target', target, 'devs', devs, 'state', 'pending', 'created', ms(NOW),
  'released', '0', 'done', '0', 'failures', '0', 'retries', retries, 'rb_i', rb_i, 'rb_m', rb_m, 'rb_x', rb_x, 'ron', ron)
redis.call('PEXPIRE', gk, ms(lifetime))
redis.call('ZREMRANGEBYSCORE', list, '-inf', '(' .. ms(NOW - horizon))
redis.call('ZADD', list, ms(NOW), member)
return {'new', 'pending'}
