-- sending -> queued with the error; attempts kept, or taken back by one
-- when the request never left (ARGV[4] = "1": the attempt that begin_send counted did not happen).
-- KEYS[1] ledger hash
-- ARGV[1] error ("": keep the last one)  ARGV[2] ledger TTL ms  ARGV[3] key prefix  ARGV[4] "1" or "0"
-- KEYS[2] (optional) in-flight sorted set: the lease ARGV[5] is given back (whatever the state)
-- Returns the previous state ("missing" if none); only "sending" and "queued" are changed.
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/events.lua
if KEYS[2] then
  redis.call('ZREM', KEYS[2], ARGV[5])
end
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm')
local state = h[1]
if not state then
  return 'missing'
end
if state == 'sending' or state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'updated', ms(now_ms()))
  if ARGV[1] ~= '' then
    redis.call('HSET', KEYS[1], 'err', ARGV[1])
  end
  if state == 'sending' and ARGV[4] == '1' and tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') > 0 then
    redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  count_move(ARGV[3], counted_campaign(h[2], h[3]), state, 'queued', tonumber(ARGV[2]))
  if state == 'sending' and ARGV[4] ~= '1' then
    emit(ARGV[3], KEYS[1], 'retrying', 'queued', {error = redis.call('HGET', KEYS[1], 'err') or nil})
  end
end
return state
