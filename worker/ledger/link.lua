-- Link a redial to the first job of its number. Idempotent: a second call
-- (a duplicate callback) changes nothing.
-- KEYS[1] the first job's record  KEYS[2] the redial's record
-- ARGV[1] key prefix  ARGV[2] first job id  ARGV[3] redial job id  ARGV[4] redial number (1, 2, ...)
-- Returns 1 when linked now, 0 when it was linked already, -1 when the redial has no record.
-- @include ledger/counts.lua
-- @include ledger/events.lua
local r = redis.call('HMGET', KEYS[2], 'state', 'rof', 'campaign', 'cm')
if not r[1] then
  return -1
end
if r[2] then
  return 0
end
redis.call('HSET', KEYS[2], 'rof', ARGV[2], 'rn', ARGV[4])
-- The first job's record may have expired (a redial long after it): the redial still knows its origin.
local list = redis.call('HGET', KEYS[1], 'rdl')
if list then
  redis.call('HSET', KEYS[1], 'rdl', list .. ',' .. ARGV[3])
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'rdl', ARGV[3])
end
local counted = counted_campaign(r[3], r[4])
if counted then
  redis.call('HINCRBY', campaign_key(ARGV[1], counted, ':counts'), 'redials', 1)
end
local first = KEYS[1]
if redis.call('EXISTS', first) == 0 then
  first = KEYS[2]
end
emit(ARGV[1], first, 'redial', redis.call('HGET', first, 'state'),
  {redial = ARGV[3], number = tonumber(ARGV[4]), redial_of = ARGV[2]})
return 1
