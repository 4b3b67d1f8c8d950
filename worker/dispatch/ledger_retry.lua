-- sending -> queued with the error; attempts kept (ledger_lib.lua is prepended).
-- KEYS[1] ledger hash; ARGV[1] error  ARGV[2] ledger TTL ms  ARGV[3] key prefix
-- Returns the previous state ("missing" if none); only "sending" and "queued" are changed.
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm')
local state = h[1]
if not state then
  return 'missing'
end
if state == 'sending' or state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'err', ARGV[1], 'updated', ms(now_ms()))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  count_move(ARGV[3], counted_campaign(h[2], h[3]), state, 'queued', tonumber(ARGV[2]))
end
return state
