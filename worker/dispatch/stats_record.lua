-- Add one worker's buffered counts to the per-minute stats hashes (the worker flushes about once a
-- second, so the dashboard costs one Redis call per second per worker, not one per call).
-- ARGV[1] key prefix ("dialer:stats:")  ARGV[2] TTL of a minute's hash in seconds
-- ARGV[3] number of second-triples N, then N x (unix second, attempts, created calls),
-- then any number of (unix minute, error kind, count) triples.
-- Fields: a:<second> attempts, ok:<second> created calls, e:<kind> errors of that minute.
local prefix, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local touched = {}
local i = 4
for _ = 1, n do
  local sec = tonumber(ARGV[i])
  local key = prefix .. math.floor(sec / 60)
  local s = sec % 60
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HINCRBY', key, 'a:' .. s, ARGV[i + 1]) end
  if tonumber(ARGV[i + 2]) > 0 then redis.call('HINCRBY', key, 'ok:' .. s, ARGV[i + 2]) end
  touched[key] = true
  i = i + 3
end
while i + 2 <= #ARGV do
  local key = prefix .. ARGV[i]
  redis.call('HINCRBY', key, 'e:' .. ARGV[i + 1], ARGV[i + 2])
  touched[key] = true
  i = i + 3
end
for key in pairs(touched) do redis.call('EXPIRE', key, ttl) end
return n
