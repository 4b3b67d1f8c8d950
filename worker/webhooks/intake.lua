-- Move a batch of event-stream entries, read by the consumer group, to the jobs' delivery queues: each entry
-- is acknowledged (XACK) and, when its job has a statusCallbackUrl, appended to the job's queue, in this
-- one atomic step, so an entry is queued exactly once however often it is read.
-- ARGV[1] key prefix  ARGV[2] the caller's intake lock token  ARGV[3] consumer group
-- ARGV[4] DIALER_WEBHOOK_MAX_PER_DESTINATION
-- ARGV[5] the entries in stream order, separated by \30; an entry is id \31 job \31 destination \31 url \31
--         body, with destination "" when there is nothing to deliver (acknowledged only)
-- Returns how many were queued; -1 when the caller no longer holds the intake lock (nothing done); -2 when
-- an older entry than the batch's first is pending (read by another intake before it lost the lock): the
-- caller reads the pending entries again, oldest first, so that every job's events keep their order.
-- @include webhooks/common.lua
local P = ARGV[1]
if redis.call('GET', P .. 'webhooks:intake') ~= ARGV[2] then
  return -1
end
local stream = P .. 'events'
local group = ARGV[3]
local limit = tonumber(ARGV[4])
local first = string.match(ARGV[5], '^([^\30\31]*)')
local pending = redis.call('XPENDING', stream, group)
if pending[2] and first and pending[2] ~= first then
  return -2
end
local now = ms(now_ms())
local touched = {}
local queued = 0
for id, job, dest, url, body in string.gmatch(ARGV[5], '([^\30\31]*)\31([^\30\31]*)\31([^\30\31]*)\31([^\30\31]*)\31([^\30]*)') do
  if redis.call('XACK', stream, group, id) == 1 and dest ~= '' then
    local q = P .. 'webhooks:q:' .. job
    if redis.call('RPUSH', q, dest .. '\31' .. id .. '\31' .. url .. '\31' .. body) == 1 then
      redis.call('ZADD', P .. 'webhooks:due:' .. dest, now, job)
      touched[dest] = true
    end
    queued = queued + 1
  end
end
for d in pairs(touched) do
  wh_touch(P, d, limit)
end
return queued
