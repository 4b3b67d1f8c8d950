-- Delete a campaign that has no work left: no job queued or sending (its exact counters) and none
-- parked by a pause. Its finished jobs stay in the ledger (their records expire with the ledger TTL).
-- KEYS[1] campaign hash  KEYS[2] counts  KEYS[3] jobs  KEYS[4] parked  KEYS[5] sent  KEYS[6] window slots
-- KEYS[7] the campaign's rate-limit state  KEYS[8] campaign index (sorted set)
-- ARGV[1] name
-- Returns {"deleted", 0, 0, 0}, {"missing", 0, 0, 0} or {"busy", queued, sending, parked}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing', 0, 0, 0}
end
local open = redis.call('HMGET', KEYS[2], 'queued', 'sending')
local queued = math.max(tonumber(open[1]) or 0, 0)
local sending = math.max(tonumber(open[2]) or 0, 0)
local parked = redis.call('ZCARD', KEYS[4])
if queued > 0 or sending > 0 or parked > 0 then
  return {'busy', queued, sending, parked}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[8], ARGV[1])
return {'deleted', 0, 0, 0}
