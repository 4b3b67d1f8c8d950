-- sending -> queued with the error; attempts kept. KEYS[1] ledger hash; ARGV[1] error  ARGV[2] ledger TTL ms
-- Returns the previous state ("missing" if none); only "sending" and "queued" are changed.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 'missing'
end
if state == 'sending' or state == 'queued' then
  local t = redis.call('TIME')
  local snow = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('HSET', KEYS[1], 'state', 'queued', 'err', ARGV[1], 'updated', snow)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return state
