-- A result callback for a campaign call whose job was compacted before its callback came
-- (worker/campaigns/compaction.py): the outcome goes into the number's compact value, counted once in the
-- campaign, as outcome.lua does for a whole record. The first outcome stands.
-- KEYS[1] campaign hash  KEYS[2] its counts
-- ARGV[1] key prefix  ARGV[2] campaign  ARGV[3] member  ARGV[4] which call (0 first, k the k-th redial)
-- ARGV[5] callSerialNo  ARGV[6] outcome code (a, u, f)  ARGV[7] releaseReason  ARGV[8] talkDuration or ""
-- ARGV[9] the outcome's name (counted)
-- Returns {"recorded", value}, {"stands", value} (an outcome was there: this one changed nothing),
-- {"superseded", value} (the number was called again since: the compact value is a later call's) or
-- {"missing"} (no such compacted call, or another callSerialNo).
-- @include campaigns/number_set.lua
local buckets = tonumber(redis.call('HGET', KEYS[1], 'buckets'))
if not buckets then
  return {'missing'}
end
local key = number_set_key(ARGV[1], ARGV[2], ARGV[3], buckets)
local cur = redis.call('HGET', key, ARGV[3])
if not cur or string.sub(cur, 1, 1) ~= 's' then
  return {'missing'}
end
local f = {}
for v in string.gmatch(cur, '([^|]*)|') do
  f[#f + 1] = v
  if #f == 9 then break end
end
local tail = string.sub(cur, #table.concat(f, '|') + 2)
if tonumber(f[6]) ~= tonumber(ARGV[4]) then
  return {'superseded', cur}
end
if tail ~= ARGV[5] then
  return {'missing'}
end
if string.sub(cur, 2, 2) ~= '.' then
  return {'stands', cur}
end
local value = 's' .. ARGV[6] .. '|' .. f[2] .. '|' .. f[3] .. '|' .. string.sub(string.gsub(ARGV[7], '|', '/'), 1, 8)
  .. '|' .. ARGV[8] .. '|' .. f[6] .. '|' .. f[7] .. '|' .. f[8] .. '|' .. f[9] .. '|' .. tail
redis.call('HSET', key, ARGV[3], value)
redis.call('HINCRBY', KEYS[2], ARGV[9], 1)
return {'recorded', value}
