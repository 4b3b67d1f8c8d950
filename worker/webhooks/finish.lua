-- Record what became of a claimed delivery (a job's first event). Nothing happens unless that event is still
-- the job's first and the job still holds a lease (a process whose lease expired meanwhile changes nothing).
-- ARGV[1] key prefix  ARGV[2] DIALER_WEBHOOK_MAX_PER_DESTINATION  ARGV[3] job  ARGV[4] event id
-- ARGV[5] verdict: "delivered" | "retry" | "release" (a stopping process gives it back) | "dead"
-- ARGV[6] ms until it is due again (retry, release)  ARGV[7] the job's new tries (retry)
-- ARGV[8] the dead letter's JSON (dead)  ARGV[9] DIALER_WEBHOOK_DEAD_MAX_LEN (dead)
-- delivered and dead take the event off the job's queue, and the job's next event (if any) is due at once.
-- Returns 1 when recorded, 0 when the claim was no longer this caller's.
-- @include webhooks/common.lua
local P = ARGV[1]
local limit = tonumber(ARGV[2])
local job = ARGV[3]
local verdict = ARGV[5]
local q = P .. 'webhooks:q:' .. job
local head = redis.call('LINDEX', q, 0)
if not head then
  return 0
end
local d, id = wh_parse(head)
if id ~= ARGV[4] then
  return 0
end
local busy = P .. 'webhooks:busy:' .. d
if not redis.call('ZSCORE', busy, job) then
  return 0
end
redis.call('ZREM', busy, job)
local now = now_ms()
local tries = P .. 'webhooks:tries'
if verdict == 'retry' or verdict == 'release' then
  if verdict == 'retry' then
    redis.call('HSET', tries, job, ARGV[7])
  end
  redis.call('ZADD', P .. 'webhooks:due:' .. d, ms(now + tonumber(ARGV[6])), job)
  wh_touch(P, d, limit)
  return 1
end
redis.call('LPOP', q)
redis.call('HDEL', tries, job)
if verdict == 'dead' then
  local dead = P .. 'webhooks:dead'
  local ids = P .. 'webhooks:dead:ids'
  redis.call('HSET', dead, id, ARGV[8])
  redis.call('ZADD', ids, ms(now), id)
  local over = redis.call('ZCARD', ids) - tonumber(ARGV[9])
  if over > 0 then
    local old = redis.call('ZRANGE', ids, 0, over - 1)
    redis.call('ZREMRANGEBYRANK', ids, 0, over - 1)
    redis.call('HDEL', dead, unpack(old))
  end
end
local d2 = wh_schedule(P, job, ms(now))
wh_touch(P, d, limit)
if d2 and d2 ~= d then
  wh_touch(P, d2, limit)
end
return 1
