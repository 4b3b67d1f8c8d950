-- Record a call's outcome from its result callback. The FIRST outcome of a call stands: the same outcome
-- delivered again changes nothing and counts once; a different one is ignored (nothing written, nothing
-- counted; the caller sees the outcome that stands in the returned record and logs it), so a late or
-- forged callback cannot turn an answered call into an unanswered one. Counters equal the job records.
-- KEYS[1] ledger hash
-- ARGV[1] ledger TTL ms  ARGV[2] key prefix  ARGV[3] outcome  ARGV[4] release reason
-- ARGV[5..] extra field, value pairs stored on the record
-- Returns {HGETALL} after the write (or of the untouched record), or {} when there is no record.
-- @include ledger/counts.lua
-- @include ledger/keep_alive.lua
-- @include ledger/events.lua
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm', 'outcome')
if not h[1] then
  return {}
end
if h[4] then
  return redis.call('HGETALL', KEYS[1])
end
local counted = counted_campaign(h[2], h[3])
if counted then
  redis.call('HINCRBY', campaign_key(ARGV[2], counted, ':counts'), ARGV[3], 1)
end
redis.call('HSET', KEYS[1], 'outcome', ARGV[3], 'reason', ARGV[4])
for i = 5, #ARGV - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
keep_alive(KEYS[1], tonumber(ARGV[1]))
local detail = {outcome = ARGV[3], release_reason = ARGV[4]}
local talk = redis.call('HGET', KEYS[1], 'tk')
if talk then
  detail.talk_duration_s = tonumber(talk)
end
emit(ARGV[2], KEYS[1], 'outcome', h[1], detail)
return redis.call('HGETALL', KEYS[1])
