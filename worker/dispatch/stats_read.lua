-- Read the last ARGV[2] + 1 minute hashes written by stats_record.lua, on the Redis server's clock.
-- ARGV[1] key prefix, ARGV[2] whole minutes to look back.
-- Returns {now seconds, now microseconds, minute, {field, value, ...}, minute, {...}, ...}, oldest first.
local t = redis.call('TIME')
local minute = math.floor(tonumber(t[1]) / 60)
local out = {t[1], t[2]}
for back = tonumber(ARGV[2]), 0, -1 do
  local m = minute - back
  out[#out + 1] = tostring(m)
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. m)
end
return out
