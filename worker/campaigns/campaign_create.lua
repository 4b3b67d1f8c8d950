-- Create a campaign, or confirm that it exists with the same settings.
-- KEYS[1] campaign hash  KEYS[2] campaign index (sorted set)
-- ARGV[1] name  ARGV[2] canonical spec JSON  ARGV[3] ledger TTL ms  ARGV[4..] field, value pairs
-- Returns {"created", "active"}, {"exists", status}, {"different", stored spec} or {"cancelled", spec}.
-- @include store/clock.lua
local cur = redis.call('HMGET', KEYS[1], 'status', 'spec')
if cur[1] then
  if cur[1] == 'cancelled' then
    return {'cancelled', cur[2] or ''}
  end
  if cur[2] ~= ARGV[2] then
    return {'different', cur[2] or ''}
  end
  return {'exists', cur[1]}
end
local snow = ms(now_ms())
redis.call('HSET', KEYS[1], 'status', 'active', 'created', snow, 'updated', snow, 'spec', ARGV[2])
for i = 4, #ARGV - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
-- A campaign that never gets a job expires like a finished one; its first job makes it persistent.
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], snow, ARGV[1])
return {'created', 'active'}
