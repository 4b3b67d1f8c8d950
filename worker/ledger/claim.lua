-- Start of one job run. KEYS[1] ledger hash  KEYS[2] unknown set (a stale job waits there for its
-- release event).
-- ARGV[1] ledger TTL ms  ARGV[2] "1" to redial a stale (sending) job, else "0"  ARGV[3] stale error text
-- ARGV[4] key prefix  ARGV[5] job id  ARGV[6] number cap: calls (0 = off)  ARGV[7] number cap: window ms
-- Returns {verdict, HGETALL, campaign HGETALL (empty unless counted in a campaign), extra}:
--   "run"     queued: go ahead (the campaign's settings come along: status, rate, window, pace ...)
--   "final"   already final, or made final now by a check: campaign cancelled, number suppressed
--   "stale"   a previous run died mid-request: sending -> unknown; with ARGV[2] = "1" it is requeued
--             instead and the verdict is "run" with extra "stale"
--   "parked"  the campaign is paused: the job now waits in the campaign's parked set
--   "cap"     the per-number cap is reached; extra = ms until a call to the number is allowed again
--   {"missing"} no record
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/keep_alive.lua
-- @include ledger/gate.lua
-- @include ledger/park.lua
-- @include ledger/events.lua
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm', 'called', 'prio')
local state = h[1]
if not state then
  return {'missing'}
end
local P, ttl = ARGV[4], tonumber(ARGV[1])
local counted = counted_campaign(h[2], h[3])
if state == 'queued' then
  local now = now_ms()
  local verdict, wait_ms = gate(P, ARGV[5], h[2], counted, h[4], now, tonumber(ARGV[6]), tonumber(ARGV[7]), false)
  if verdict == 'paused' then
    park(P, KEYS[1], ARGV[5], counted, h[5], now)
    return {'parked', redis.call('HGETALL', KEYS[1]), {}}
  end
  if verdict == 'cancelled' then
    finish_queued(P, KEYS[1], counted, 'cancelled', 'campaign cancelled', now, ttl)
    return {'final', redis.call('HGETALL', KEYS[1]), {}}
  end
  if verdict == 'suppressed' then
    finish_queued(P, KEYS[1], counted, 'suppressed', 'number is on the do-not-call list', now, ttl)
    return {'final', redis.call('HGETALL', KEYS[1]), {}}
  end
  -- A job being looked at is alive: its record must outlive further deferrals.
  keep_alive(KEYS[1], ttl)
  local camp = {}
  if counted then
    camp = redis.call('HGETALL', campaign_key(P, counted, ''))
  end
  if verdict == 'cap' then
    return {'cap', redis.call('HGETALL', KEYS[1]), camp, ms(wait_ms)}
  end
  return {'run', redis.call('HGETALL', KEYS[1]), camp}
end
if state == 'sending' then
  -- A run never leaves a job in "sending": the previous one died between sending and recording.
  local snow = ms(now_ms())
  local verdict, new = 'stale', 'unknown'
  if ARGV[2] == '1' then
    verdict, new = 'run', 'queued'
  end
  redis.call('HSET', KEYS[1], 'state', new, 'err', ARGV[3], 'updated', snow)
  if new == 'unknown' then
    redis.call('ZADD', KEYS[2], snow, ARGV[5])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  count_move(P, counted, 'sending', new, ttl)
  if new == 'unknown' then
    emit(P, KEYS[1], 'unknown', 'unknown', {error = ARGV[3]})
  else
    emit(P, KEYS[1], 'retrying', 'queued', {error = ARGV[3]})
  end
  local camp = {}
  if counted and verdict == 'run' then
    camp = redis.call('HGETALL', campaign_key(P, counted, ''))
  end
  return {verdict, redis.call('HGETALL', KEYS[1]), camp, 'stale'}
end
return {'final', redis.call('HGETALL', KEYS[1]), {}}
