-- queued -> sending, attempts + 1, just before a request leaves: the last
-- gate before a call, so it repeats the campaign checks of the claim (status, do-not-call, number cap)
-- for whatever changed while the job waited for its rate permit, and books the number cap.
-- With KEYS[2] it also takes the job's fleet-wide in-flight lease (see limits/lease.lua),
-- so that the lease costs no round trip of its own.
-- KEYS[1] ledger hash  KEYS[2] (optional) in-flight sorted set
-- ARGV[1] ledger TTL ms  ARGV[2] key prefix  ARGV[3] job id  ARGV[4] number cap: calls (0 = off)
-- ARGV[5] number cap: window ms  with KEYS[2]: ARGV[6] lease member  ARGV[7] cap  ARGV[8] lease TTL ms
-- Returns {attempts} when the job may be sent; otherwise {0, why[, wait]}: why is "state" (no longer
-- queued; the caller must not send), "busy" (the in-flight cap is reached: nothing changed, no lease),
-- "parked" (campaign paused), "cancelled", "suppressed" (both now final), or "cap" with the ms until
-- the number may be called again.
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/gate.lua
-- @include ledger/park.lua
-- @include limits/lease.lua
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm', 'called', 'prio', 'first')
if h[1] ~= 'queued' then
  return {0, 'state'}
end
local P, ttl = ARGV[2], tonumber(ARGV[1])
local counted = counted_campaign(h[2], h[3])
local now = now_ms()
if KEYS[2] and not lease_free(KEYS[2], ARGV[6], tonumber(ARGV[7]), now) then
  return {0, 'busy'}
end
local verdict, wait_ms = gate(P, ARGV[3], h[2], counted, h[4], now, tonumber(ARGV[4]), tonumber(ARGV[5]), true)
if verdict == 'paused' then
  park(P, KEYS[1], ARGV[3], counted, h[5], now)
  return {0, 'parked'}
end
if verdict == 'cancelled' then
  finish_queued(P, KEYS[1], counted, 'cancelled', 'campaign cancelled', now, ttl)
  return {0, 'cancelled'}
end
if verdict == 'suppressed' then
  finish_queued(P, KEYS[1], counted, 'suppressed', 'number is on the do-not-call list', now, ttl)
  return {0, 'suppressed'}
end
if verdict == 'cap' then
  return {0, 'cap', ms(wait_ms)}
end
local snow = ms(now)
redis.call('HSET', KEYS[1], 'state', 'sending', 'updated', snow)
if not h[6] then
  -- The retry time budget counts from the first attempt, not from enqueue (campaign jobs are paced).
  redis.call('HSET', KEYS[1], 'first', snow)
end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
count_move(P, counted, 'queued', 'sending', ttl)
if KEYS[2] then
  lease_take(KEYS[2], ARGV[6], tonumber(ARGV[8]), now)
end
return {n}
