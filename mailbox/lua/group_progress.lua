-- group_progress: the release cursor of a group command moves forward
-- to n (children 0..n-1 are created); it never moves back. With skip
-- set, the child of that device could not be created (its id was taken
-- by another command of the client): it counts once as done, status
-- skipped. Replies the cursor.
local gk = KEYS[1]
local n, skip = tonumber(A[1]), A[2] or ''

if redis.call('EXISTS', gk) == 0 then return 0 end
if skip ~= '' and redis.call('HSETNX', gk, 'skip:' .. skip, '1') == 1 then
  redis.call('HINCRBY', gk, 'done', 1)
  redis.call('HINCRBY', gk, 'n:skipped', 1)
end
local cur = num(redis.call('HGET', gk, 'released'))
if n > cur then
  redis.call('HSET', gk, 'released', ms(n))
  return n
end
return cur
