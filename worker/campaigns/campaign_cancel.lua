-- Cancel one slice of a campaign's job list: every job still queued
-- (parked or not) becomes "cancelled" and leaves its queue; jobs sending or final are left alone (a
-- request in flight finishes and is recorded as sent: the call exists).
-- KEYS[1] campaign job list  KEYS[2] campaign parked set
-- ARGV[1] key prefix  ARGV[2] campaign name  ARGV[3] first index  ARGV[4] how many  ARGV[5] ledger TTL ms
-- ARGV[6] arq job key prefix  ARGV[7] arq in-progress key prefix
-- Returns {cancelled, ids read}.
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/park.lua
local P, name, ttl = ARGV[1], ARGV[2], tonumber(ARGV[5])
local first = tonumber(ARGV[3])
local ids = redis.call('LRANGE', KEYS[1], first, first + tonumber(ARGV[4]) - 1)
local now = now_ms()
local cancelled = 0
for _, id in ipairs(ids) do
  local jk = P .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'prio', 'campaign', 'cm')
  if h[1] == 'queued' and counted_campaign(h[3], h[4]) == name then
    finish_queued(P, jk, name, 'cancelled', 'campaign cancelled', now, ttl)
    redis.call('ZREM', KEYS[2], id)
    -- A job being run right now is stopped by the ledger (queued -> sending is refused); arq's own
    -- clean-up of that run removes its queue entry.
    if redis.call('EXISTS', ARGV[7] .. id) == 0 then
      redis.call('ZREM', P .. 'queue:' .. h[2], id)
      redis.call('DEL', ARGV[6] .. id)
    end
    cancelled = cancelled + 1
  end
end
return {cancelled, #ids}
