-- Put dead-lettered webhooks back: each goes to the end of its job's queue (due at once when the queue was
-- empty), with its attempts starting again, and leaves the dead letters.
-- ARGV[1] key prefix  ARGV[2] DIALER_WEBHOOK_MAX_PER_DESTINATION  ARGV[3..] event ids
-- Returns how many were put back (unknown ids are skipped).
-- @include webhooks/common.lua
local P = ARGV[1]
local limit = tonumber(ARGV[2])
local dead = P .. 'webhooks:dead'
local ids = P .. 'webhooks:dead:ids'
local now = ms(now_ms())
local touched = {}
local n = 0
for i = 3, #ARGV do
  local raw = redis.call('HGET', dead, ARGV[i])
  if raw then
    local rec = cjson.decode(raw)
    if redis.call('RPUSH', P .. 'webhooks:q:' .. rec.job, rec.entry) == 1 then
      local d = wh_parse(rec.entry)
      redis.call('ZADD', P .. 'webhooks:due:' .. d, now, rec.job)
      touched[d] = true
    end
    redis.call('HDEL', dead, ARGV[i])
    n = n + 1
  end
  redis.call('ZREM', ids, ARGV[i])
end
for d in pairs(touched) do
  wh_touch(P, d, limit)
end
return n
