-- Cancel one chunk of a cancelled campaign's rows not yet materialised (worker/campaigns/control.py):
-- each member still pending ('') becomes 'x' (cancelled before it was a job) and is counted `cancelled`
-- (and in `total`), `pending` down by as many, and the chunk leaves the rows list or the taken chunks.
-- KEYS[1] the campaign's rows list (ARGV[4] = "") or its taken chunks (ARGV[4] = the take's token)
-- KEYS[2] the campaign's counts
-- ARGV[1] key prefix  ARGV[2] campaign  ARGV[3] its bucket count  ARGV[4] "" or a token
-- ARGV[5] the chunk exactly as stored there (the list's head, or the taken value)
-- ARGV[6] the chunk's members, ',' joined (decoded by the caller: Lua cannot inflate it)
-- Returns the rows cancelled, or -1 when the chunk is no longer there (taken or finished meanwhile).
-- @include campaigns/number_set.lua
if ARGV[4] == '' then
  if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[5] then
    return -1
  end
  redis.call('LPOP', KEYS[1])
else
  if redis.call('HGET', KEYS[1], ARGV[4]) ~= ARGV[5] then
    return -1
  end
  redis.call('HDEL', KEYS[1], ARGV[4])
end
local P, name, buckets = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = 0
for m in string.gmatch(ARGV[6], '[^,]+') do
  local k = number_set_key(P, name, m, buckets)
  if redis.call('HGET', k, m) == '' then
    redis.call('HSET', k, m, 'x')
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[2], 'pending', -n)
  redis.call('HINCRBY', KEYS[2], 'cancelled', n)
  redis.call('HINCRBY', KEYS[2], 'total', n)
end
return n
