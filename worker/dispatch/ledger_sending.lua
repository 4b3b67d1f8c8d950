-- queued -> sending, attempts + 1, just before a request leaves. KEYS[1] ledger hash; ARGV[1] ledger TTL ms.
-- Returns the new attempt count, or 0 when the job was no longer queued (the caller must not send).
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then
  return 0
end
local t = redis.call('TIME')
local snow = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HSET', KEYS[1], 'state', 'sending', 'updated', snow)
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
