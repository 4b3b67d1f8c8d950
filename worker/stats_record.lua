-- Count one provider attempt in the per-minute stats hash of the current Redis-server second.
-- The key depends on the server clock, so it is built here from the prefix (standalone Redis only,
-- like the rest of the dialer's scripts that share one instance).
-- ARGV[1] key prefix ("dialer:stats:"), ARGV[2] "1" if the call was created, ARGV[3] error kind ("" = none),
-- ARGV[4] TTL of a minute's hash in seconds.
-- Fields: a:<second> attempts, ok:<second> created calls, e:<kind> errors of that minute.
local t = redis.call('TIME')
local sec = tonumber(t[1])
local key = ARGV[1] .. math.floor(sec / 60)
local s = sec % 60
redis.call('HINCRBY', key, 'a:' .. s, 1)
if ARGV[2] == '1' then
  redis.call('HINCRBY', key, 'ok:' .. s, 1)
end
if ARGV[3] ~= '' then
  redis.call('HINCRBY', key, 'e:' .. ARGV[3], 1)
end
redis.call('EXPIRE', key, tonumber(ARGV[4]))
return sec
