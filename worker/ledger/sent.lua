-- A call was created.
-- KEYS[1] ledger hash  KEYS[2] serial index key (callSerialNo -> job id)
-- KEYS[3] (optional) in-flight sorted set: the lease ARGV[6] is given back (whatever the state)
-- ARGV[1] callSerialNo  ARGV[2] ledger TTL ms  ARGV[3] job id  ARGV[4] key prefix
-- ARGV[5] "" for the worker's own write; "release" when the provider's release event is the evidence
--   (the record keeps `ev` = "release": a job the ledger had as unknown, or still queued, was resolved by it)
-- The provider's answer is a fact whatever the ledger says meanwhile (e.g. cancelled while the request
-- was in flight), so any state becomes "sent". A job already sent keeps its first serial; a second
-- serial (two calls for one job) is still indexed so its callback finds the job.
-- Returns the previous state, or "missing" (nothing written).
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/events.lua
if KEYS[3] then
  redis.call('ZREM', KEYS[3], ARGV[6])
end
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm')
local state = h[1]
if not state then
  return 'missing'
end
local now = now_ms()
local snow = ms(now)
if state == 'sent' then
  redis.call('HSET', KEYS[1], 'updated', snow)
else
  redis.call('HSET', KEYS[1], 'state', 'sent', 'serial', ARGV[1], 'sent', snow, 'updated', snow)
  redis.call('HDEL', KEYS[1], 'pk')
  if ARGV[5] ~= '' then
    redis.call('HSET', KEYS[1], 'ev', ARGV[5])
  end
  local counted = counted_campaign(h[2], h[3])
  if counted and ARGV[5] ~= '' and state == 'unknown' then
    redis.call('HINCRBY', campaign_key(ARGV[4], counted, ':counts'), 'unknown_resolved', 1)
  end
  if counted then
    count_move(ARGV[4], counted, state, 'sent', tonumber(ARGV[2]))
    count_sent_now(ARGV[4], counted, now)
  end
  local detail = {serial = ARGV[1]}
  if ARGV[5] ~= '' then
    detail.evidence = ARGV[5]
  end
  emit(ARGV[4], KEYS[1], 'sent', 'sent', detail)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return state
