-- Take one fleet-wide in-flight lease if fewer than `cap` unexpired leases are held.
--
-- KEYS[1]  sorted set of leases: member = lease id, score = expiry in ms on the Redis clock
-- ARGV[1]  lease id (unique per request, or the job id: see sending.lua); one already held is
--          extended, whatever the cap
-- ARGV[2]  cap (settings.max_in_flight)
-- ARGV[3]  lease TTL in ms: a worker killed mid-request gets its slots back after this long
-- Returns 1 when the lease was taken, 0 when the cap is reached.

if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME before a write

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
-- The set may go when its last lease ends (processes may run with different TTLs), so an idle fleet
-- leaves no key behind.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - now + 1)
return 1
