-- Record a call's outcome from its result callback. Idempotent: the same
-- callback delivered twice counts once; a different outcome for the same job replaces the first one in
-- the campaign's counters as well, so counters always equal what the job records say.
-- KEYS[1] ledger hash
-- ARGV[1] ledger TTL ms  ARGV[2] key prefix  ARGV[3] outcome  ARGV[4] release reason
-- ARGV[5..] extra field, value pairs stored on the record
-- Returns {HGETALL} after the write, or {} when there is no record.
-- @include ledger/counts.lua
-- @include ledger/keep_alive.lua
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm', 'outcome')
if not h[1] then
  return {}
end
local counted = counted_campaign(h[2], h[3])
if counted and h[4] ~= ARGV[3] then
  local ck = campaign_key(ARGV[2], counted, ':counts')
  if h[4] then
    redis.call('HINCRBY', ck, h[4], -1)
  end
  redis.call('HINCRBY', ck, ARGV[3], 1)
end
redis.call('HSET', KEYS[1], 'outcome', ARGV[3], 'reason', ARGV[4])
for i = 5, #ARGV - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
keep_alive(KEYS[1], tonumber(ARGV[1]))
return redis.call('HGETALL', KEYS[1])
