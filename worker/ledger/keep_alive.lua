-- A ledger record's TTL.
-- @include store/clock.lua

-- Refresh a record's TTL without ever shortening it (a deferred job's record outlives its wait) and
-- without giving one to a parked record (PTTL -1: a pause holds its jobs for as long as it lasts).
local function keep_alive(key, ttl)
  local pttl = redis.call('PTTL', key)
  if pttl >= 0 and pttl < ttl then
    redis.call('PEXPIRE', key, ms(ttl))
  end
end
