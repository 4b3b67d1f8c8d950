-- A queued job waits for a later time (calling window closed, number cap reached) without using any of
-- its retry budget. Times are ms of the caller's clock (the dispatcher's,
-- which tests may shift); only differences reach Redis TTLs.
-- KEYS[1] ledger hash
-- ARGV[1] ledger TTL ms  ARGV[2] key prefix  ARGV[3] now ms  ARGV[4] run at, ms
-- ARGV[5] pace ms (campaign's send spacing)  ARGV[6] window slot field ("<opening ms>:<priority>") or ""
-- With a slot field, jobs deferred to the same opening get consecutive slots spaced by the pace, in the
-- order they were deferred, instead of all falling due at the opening's millisecond: order and pacing
-- survive the night, and a big campaign cannot flood the queue ahead of the others at the opening.
-- Returns {1, run at ms} or {0, state} when the job is no longer queued.
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/keep_alive.lua
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm', 'first')
if h[1] ~= 'queued' then
  return {0, h[1] or 'missing'}
end
local ttl = tonumber(ARGV[1])
local now, target = tonumber(ARGV[3]), tonumber(ARGV[4])
local counted = counted_campaign(h[2], h[3])
if ARGV[6] ~= '' and counted then
  local k = campaign_key(ARGV[2], counted, ':wz')
  local slot = tonumber(redis.call('HGET', k, ARGV[6]))
  if slot and slot > target then
    target = slot
  end
  local step = tonumber(ARGV[5])
  if step < 0.01 then
    step = 0.01
  end
  redis.call('HSET', k, ARGV[6], string.format('%.3f', target + step))
  local keep = math.ceil(target - now) + 86400000
  if redis.call('PTTL', k) < keep then
    redis.call('PEXPIRE', k, ms(keep))
  end
end
local wait = math.max(0, math.floor(target - now))
if h[4] then
  -- Time spent waiting is not time spent retrying.
  redis.call('HINCRBY', KEYS[1], 'first', wait)
end
keep_alive(KEYS[1], ttl + wait)
return {1, string.format('%.3f', target)}
