-- Start of one job run. KEYS[1] ledger hash.
-- ARGV[1] ledger TTL ms  ARGV[2] "1" to redial a stale (sending) job, else "0"  ARGV[3] stale error text
-- Returns {verdict, HGETALL}: "run" (queued), "final", "stale" (sending -> unknown), or {"missing"};
-- a stale job redialled (sending -> queued) gives {"run", HGETALL, "stale"}.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {'missing'}
end
if state == 'queued' then
  return {'run', redis.call('HGETALL', KEYS[1])}
end
if state == 'sending' then
  -- A run never leaves a job in "sending": the previous one died between sending and recording.
  local t = redis.call('TIME')
  local snow = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  local verdict, new = 'stale', 'unknown'
  if ARGV[2] == '1' then
    verdict, new = 'run', 'queued'
  end
  redis.call('HSET', KEYS[1], 'state', new, 'err', ARGV[3], 'updated', snow)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return {verdict, redis.call('HGETALL', KEYS[1]), 'stale'}
end
return {'final', redis.call('HGETALL', KEYS[1])}
