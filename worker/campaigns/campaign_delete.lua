-- Delete a campaign that has no work left: no job queued or sending (its exact counters), none parked by
-- a pause and no row pending in a chunk. Its finished jobs stay in the ledger (their records expire with
-- the ledger TTL). Its number set (up to a million small hashes) goes a slice of buckets per call, before
-- the rest, so the campaign exists (and its name is taken) until the last slice is gone.
-- KEYS[1] campaign hash  KEYS[2] counts  KEYS[3] jobs  KEYS[4] parked  KEYS[5] sent  KEYS[6] window slots
-- KEYS[7] the campaign's rate-limit state  KEYS[8] campaign index (sorted set)  KEYS[9] rows list
-- KEYS[10] taken chunks
-- ARGV[1] name  ARGV[2] key prefix  ARGV[3] first bucket to delete  ARGV[4] buckets per call
-- Returns {"deleted", 0, 0, 0}, {"more", next bucket, 0, 0}, {"missing", 0, 0, 0} or
-- {"busy", queued, sending, parked, pending}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing', 0, 0, 0}
end
local open = redis.call('HMGET', KEYS[2], 'queued', 'sending', 'pending')
local queued = math.max(tonumber(open[1]) or 0, 0)
local sending = math.max(tonumber(open[2]) or 0, 0)
local pending = math.max(tonumber(open[3]) or 0, 0)
local parked = redis.call('ZCARD', KEYS[4])
if queued > 0 or sending > 0 or parked > 0 or pending > 0 then
  return {'busy', queued, sending, parked, pending}
end
local buckets = tonumber(redis.call('HGET', KEYS[1], 'buckets')) or 0
local first = tonumber(ARGV[3])
local last = math.min(first + tonumber(ARGV[4]), buckets) - 1
for b = first, last do
  redis.call('DEL', ARGV[2] .. 'campaign:' .. ARGV[1] .. ':n:' .. b)
end
if last + 1 < buckets then
  return {'more', last + 1, 0, 0}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[9], KEYS[10])
redis.call('ZREM', KEYS[8], ARGV[1])
return {'deleted', 0, 0, 0}
