-- Webhook delivery state, shared by the webhooks scripts (names as in store/keys.py, under the prefix P):
--   webhooks:q:<job>      list: the job's events still to deliver, oldest first; an entry is
--                         <destination> \31 <event id> \31 <url> \31 <body>
--   webhooks:due:<dest>   zset: jobs whose first event waits for <dest> (scheme://host:port), scored by when
--                         it is due (ms). A job is in at most one due or busy set, under its first event's
--                         destination: that is what keeps a job's events in order.
--   webhooks:busy:<dest>  zset: jobs whose first event is being POSTed to <dest>, scored by when that lease
--                         expires (a process that died leaves it to expire; the next claim takes it back)
--   webhooks:dests        zset: destinations with work, scored by when a claim should look at them again:
--                         their earliest due job, or, while DIALER_WEBHOOK_MAX_PER_DESTINATION POSTs are
--                         out, their earliest lease expiry (a finish re-scores them at once)
--   webhooks:tries        hash: job -> "<failed attempts>:<first attempt ms>" of its first event
-- @include store/clock.lua

local function wh_parse(entry)
  return string.match(entry, '^([^\31]*)\31([^\31]*)\31')
end

-- Re-score destination `d` in webhooks:dests (or drop it when it has nothing left).
local function wh_touch(P, d, limit)
  local busy = P .. 'webhooks:busy:' .. d
  local score = nil
  local b = redis.call('ZRANGE', busy, 0, 0, 'WITHSCORES')
  if b[2] then
    score = tonumber(b[2])
  end
  if redis.call('ZCARD', busy) < limit then
    local u = redis.call('ZRANGE', P .. 'webhooks:due:' .. d, 0, 0, 'WITHSCORES')
    if u[2] and (score == nil or tonumber(u[2]) < score) then
      score = tonumber(u[2])
    end
  end
  if score == nil then
    redis.call('ZREM', P .. 'webhooks:dests', d)
  else
    redis.call('ZADD', P .. 'webhooks:dests', ms(score), d)
  end
end

-- Put the job's first event (if any) on its destination's due set at `at` (ms text); its destination.
local function wh_schedule(P, job, at)
  local head = redis.call('LINDEX', P .. 'webhooks:q:' .. job, 0)
  if not head then
    return nil
  end
  local d = wh_parse(head)
  redis.call('ZADD', P .. 'webhooks:due:' .. d, at, job)
  return d
end
