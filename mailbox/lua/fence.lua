-- fence: the partition's fixed counts (DESIGN §7a, "Fixed counts, fenced
-- twice"). The first process to start records GW_PARTITIONS and GW_QUEUES
-- in the partition's meta key (when record is '1'); every later one must
-- bring the same partitions and either queues or, during a resize of
-- GW_QUEUES, from (the count resized from; '' when none). record '2' is
-- the switch of a resize: a partition that records from (or nothing)
-- then records queues. Replies {'set'} (recorded now), {'unset'} (nothing recorded,
-- and record is '0'), {'ok'} (also {'moved'} for a switch), or
-- {'mismatch', partitions, queues} with the recorded counts.
local meta = KEYS[1]
local partitions, queues, record, from = A[1], A[2], A[3], A[4] or ''

local m = redis.call('HMGET', meta, 'partitions', 'queues')
if not m[1] then
  if record == '0' then return {'unset'} end
  -- A resizing process (from set) records the count still in effect;
  -- the switch records queues.
  local q = queues
  if record == '1' and from ~= '' then q = from end
  redis.call('HSET', meta, 'partitions', partitions, 'queues', q)
  return {'set'}
end
if m[1] ~= partitions or (m[2] ~= queues and (from == '' or m[2] ~= from)) then
  return {'mismatch', m[1], m[2] or ''}
end
if record == '2' and m[2] == from then
  redis.call('HSET', meta, 'queues', queues)
  return {'moved'}
end
return {'ok'}
