-- Claim up to ARGV[3] due webhook deliveries for one process: for each destination with work due (earliest
-- first, at most ARGV[5] of them), take back the leases of processes that died, then lease as many due jobs
-- as its room under DIALER_WEBHOOK_MAX_PER_DESTINATION (ARGV[2]) allows, for ARGV[4] ms.
-- ARGV[1] key prefix
-- Returns {now ms, next ms or "", job, entry, tries, job, entry, tries, ...}: the Redis clock, when the
-- earliest destination is due next (for the caller's sleep), and each claimed job with its first event's
-- entry and its "<failed attempts>:<first attempt ms>" ("" when none).
-- @include webhooks/common.lua
local P = ARGV[1]
local limit = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local now = now_ms()
local snow = ms(now)
local until_ms = ms(now + lease)
local out = {snow, ''}
local tries = P .. 'webhooks:tries'
for _, d in ipairs(redis.call('ZRANGEBYSCORE', P .. 'webhooks:dests', '-inf', snow, 'LIMIT', 0, tonumber(ARGV[5]))) do
  if want <= 0 then
    break
  end
  local due = P .. 'webhooks:due:' .. d
  local busy = P .. 'webhooks:busy:' .. d
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', busy, '-inf', snow)) do
    redis.call('ZREM', busy, job)
    redis.call('ZADD', due, snow, job)
  end
  local room = math.min(limit - redis.call('ZCARD', busy), want)
  if room > 0 then
    for _, job in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', snow, 'LIMIT', 0, room)) do
      redis.call('ZREM', due, job)
      local head = redis.call('LINDEX', P .. 'webhooks:q:' .. job, 0)
      if head then
        redis.call('ZADD', busy, until_ms, job)
        out[#out + 1] = job
        out[#out + 1] = head
        out[#out + 1] = redis.call('HGET', tries, job) or ''
        want = want - 1
      end
    end
  end
  wh_touch(P, d, limit)
end
local nxt = redis.call('ZRANGE', P .. 'webhooks:dests', 0, 0, 'WITHSCORES')
if nxt[2] then
  out[2] = nxt[2]
end
return out
