-- fence: the partition's fixed counts (DESIGN §7a, "Fixed counts, fenced
-- twice"). The first process to start records GW_PARTITIONS and GW_QUEUES
-- in the partition's meta key (when record is '1'); every later one must
-- bring the same. Replies {'set'} (recorded now), {'unset'} (nothing
-- recorded, and record is '0'), {'ok'}, or {'mismatch', partitions,
-- queues} with the recorded counts.
local meta = KEYS[1]
local partitions, queues, record = A[1], A[2], A[3]

local m = redis.call('HMGET', meta, 'partitions', 'queues')
if not m[1] then
  if record ~= '1' then return {'unset'} end
  redis.call('HSET', meta, 'partitions', partitions, 'queues', queues)
  return {'set'}
end
if m[1] ~= partitions or m[2] ~= queues then
  return {'mismatch', m[1], m[2] or ''}
end
return {'ok'}
