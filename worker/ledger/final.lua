-- Finish a job that is still queued or sending. The first final state
-- wins: a job already final (sent above all) is left as it is.
-- KEYS[1] ledger hash  KEYS[2] dead-letter set (used when ARGV[1] is "dead")
-- KEYS[3] (optional) in-flight sorted set: the lease ARGV[6] is given back (whatever the state)
-- ARGV[1] final state  ARGV[2] error or "" (keep the last one)  ARGV[3] ledger TTL ms  ARGV[4] job id
-- ARGV[5] key prefix
-- Returns the previous state ("missing" if none).
-- @include store/clock.lua
-- @include ledger/counts.lua
if KEYS[3] then
  redis.call('ZREM', KEYS[3], ARGV[6])
end
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm')
local state = h[1]
if not state then
  return 'missing'
end
-- Dead-lettering twice just records the newer reason.
if state == 'queued' or state == 'sending' or (state == 'dead' and ARGV[1] == 'dead') then
  local now = now_ms()
  local snow = ms(now)
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated', snow)
  redis.call('HDEL', KEYS[1], 'pk')
  if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[1], 'err', ARGV[2])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  count_move(ARGV[5], counted_campaign(h[2], h[3]), state, ARGV[1], tonumber(ARGV[3]))
  if ARGV[1] == 'dead' then
    redis.call('ZADD', KEYS[2], snow, ARGV[4])
    -- The set has no TTL of its own: drop members whose ledger records have expired by now.
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('(%d', now - tonumber(ARGV[3])))
  end
end
return state
