-- Put a dead, failed or unknown job back on its queue with a fresh attempt budget.
--
-- KEYS[1] ledger hash  KEYS[2] arq job key  KEYS[3] arq queue  KEYS[4] dead-letter set
-- KEYS[5] arq retry key  KEYS[6] arq result key  KEYS[7] arq in-progress key
-- ARGV[1] job id  ARGV[2] ledger TTL ms  ARGV[3] the priority the caller read (KEYS[3] was built from it)
-- ARGV[4] key prefix
-- Returns "requeued", "missing", "moved" (priority differs from ARGV[3]), "busy" (an arq run of this
-- job has not finished yet), or the current state when it is not requeueable.
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/events.lua
local h = redis.call('HMGET', KEYS[1], 'state', 'prio', 'campaign', 'cm')
local state = h[1]
if not state then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 'missing'
end
if h[2] ~= ARGV[3] then
  return 'moved'
end
if state ~= 'dead' and state ~= 'failed' and state ~= 'unknown' then
  return state
end
-- The finishing run would delete our new queue entry (arq's finish_job).
if redis.call('EXISTS', KEYS[7]) == 1 then
  return 'busy'
end
local snow = ms(now_ms())
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', '0', 'updated', snow)
-- A fresh start: the old run's error and time budget do not carry over (the error stays in the logs).
redis.call('HDEL', KEYS[1], 'first', 'err')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
count_move(ARGV[4], counted_campaign(h[3], h[4]), state, 'queued', tonumber(ARGV[2]))
-- arq's own try counter and old result would make the new run look exhausted or finished; a leftover
-- arq job (a foreign payload, say) goes too: the worker's claim writes a fresh one (claim.lua).
redis.call('DEL', KEYS[2], KEYS[5], KEYS[6])
redis.call('ZADD', KEYS[3], snow, ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
emit(ARGV[4], KEYS[1], 'queued', 'queued', {requeued = state})
redis.call('PUBLISH', ARGV[4] .. 'wake', KEYS[3])  -- its queue's idle workers start it now (enqueue.lua)
return 'requeued'
