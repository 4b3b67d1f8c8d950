-- A call was created. KEYS[1] ledger hash  KEYS[2] serial index key (callSerialNo -> job id)
-- ARGV[1] callSerialNo  ARGV[2] ledger TTL ms  ARGV[3] job id
-- The provider's answer is a fact whatever the ledger says meanwhile (e.g. cancelled while the request
-- was in flight), so any state becomes "sent". A job already sent keeps its first serial; a second
-- serial (two calls for one job) is still indexed so its callback finds the job.
-- Returns the previous state, or "missing" (nothing written).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 'missing'
end
local t = redis.call('TIME')
local snow = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if state == 'sent' then
  redis.call('HSET', KEYS[1], 'updated', snow)
else
  redis.call('HSET', KEYS[1], 'state', 'sent', 'serial', ARGV[1], 'sent', snow, 'updated', snow)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return state
