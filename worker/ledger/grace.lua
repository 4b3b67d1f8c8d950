-- End the grace period of unknown jobs: those listed in the unknown set for longer than the grace get no
-- more time to be proved by a release event. Each one still `unknown` is marked `ev` = "none" ("unknown, no
-- evidence") and counted in its campaign; with after-grace redials on, it is put back on its queue once
-- (`agr`), with a fresh attempt and time budget, like an operator's requeue (requeue.lua). Jobs no longer
-- unknown (resolved by an event, requeued) just leave the set.
-- KEYS[1] unknown set
-- ARGV[1] grace ms  ARGV[2] most jobs per call  ARGV[3] key prefix  ARGV[4] ledger TTL ms
-- ARGV[5] "1" to redial after the grace, else "0"  ARGV[6..9] arq key prefixes: job, retry, result, in-progress
-- Returns {jobs looked at, marked no evidence, redialled, ids marked..., "|", ids redialled...}
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/events.lua
local now = now_ms()
local P, ttl = ARGV[3], tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now - tonumber(ARGV[1])), 'LIMIT', 0, tonumber(ARGV[2]))
local marked, redialled = {}, {}
for _, id in ipairs(due) do
  local key = P .. 'job:' .. id
  local h = redis.call('HMGET', key, 'state', 'ev', 'agr', 'prio', 'campaign', 'cm')
  local busy = h[1] == 'unknown' and ARGV[5] == '1' and not h[3]
    and redis.call('EXISTS', ARGV[9] .. id) == 1
  if not busy then
    redis.call('ZREM', KEYS[1], id)
  end
  if h[1] == 'unknown' then
    local counted = counted_campaign(h[5], h[6])
    if not h[2] then
      redis.call('HSET', key, 'ev', 'none')
      if counted then
        redis.call('HINCRBY', campaign_key(P, counted, ':counts'), 'no_evidence', 1)
      end
      marked[#marked + 1] = id
      emit(P, key, 'no_evidence', 'unknown', {grace_s = tonumber(ARGV[1]) / 1000})
    end
    if ARGV[5] == '1' and not h[3] and not busy and h[4] then
      -- Redialled once, never again: `agr` stays when it ends unknown a second time.
      redis.call('HSET', key, 'state', 'queued', 'agr', '1', 'attempts', '0', 'updated', ms(now))
      redis.call('HDEL', key, 'first')
      redis.call('PEXPIRE', key, ms(ttl))
      count_move(P, counted, 'unknown', 'queued', ttl)
      redis.call('DEL', ARGV[6] .. id, ARGV[7] .. id, ARGV[8] .. id)
      local queue = P .. 'queue:' .. h[4]
      redis.call('ZADD', queue, ms(now), id)
      redis.call('PUBLISH', P .. 'wake', queue)
      redialled[#redialled + 1] = id
      emit(P, key, 'queued', 'queued', {grace_redial = true})
    end
  end
end
local out = {#due, #marked, #redialled}
for _, id in ipairs(marked) do
  out[#out + 1] = id
end
out[#out + 1] = '|'
for _, id in ipairs(redialled) do
  out[#out + 1] = id
end
return out
