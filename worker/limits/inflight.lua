-- Take one fleet-wide in-flight lease if fewer than `cap` unexpired leases are held.
--
-- KEYS[1]  sorted set of leases: member = lease id, score = expiry in ms on the Redis clock
-- ARGV[1]  lease id (unique per request, or the job id: see ledger/sending.lua, which takes a job's
--          lease by the same rules); one already held is extended, whatever the cap
-- ARGV[2]  cap (settings.max_in_flight)
-- ARGV[3]  lease TTL in ms: a worker killed mid-request gets its slots back after this long
-- Returns 1 when the lease was taken, 0 when the cap is reached.
-- @include limits/lease.lua

if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME before a write

local now = now_ms()
if not lease_free(KEYS[1], ARGV[1], tonumber(ARGV[2]), now) then
  return 0
end
lease_take(KEYS[1], ARGV[1], tonumber(ARGV[3]), now)
return 1
