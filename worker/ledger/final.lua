-- Finish a job that is still queued or sending. The first final state
-- wins: a job already final (sent above all) is left as it is.
-- KEYS[1] ledger hash  KEYS[2] dead-letter set (used when ARGV[1] is "dead")
-- KEYS[3] unknown set (used when ARGV[1] is "unknown": the job waits there for its release event)
-- KEYS[4] serial index key of ARGV[6] (any key when ARGV[6] is "")
-- KEYS[5] (optional) in-flight sorted set: the lease ARGV[7] is given back (whatever the state)
-- ARGV[1] final state  ARGV[2] error or "" (keep the last one)  ARGV[3] ledger TTL ms  ARGV[4] job id
-- ARGV[5] key prefix  ARGV[6] a callSerialNo the provider gave although the outcome is unknown, or ""
--   (kept on the record and indexed, so the call's release event finds the job)
-- Returns the previous state ("missing" if none).
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/events.lua
if KEYS[5] then
  redis.call('ZREM', KEYS[5], ARGV[7])
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
  if ARGV[1] == 'unknown' then
    redis.call('ZADD', KEYS[3], now, ARGV[4])
    -- Normally emptied by the grace sweep; without one, members whose records have expired go here.
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('(%d', now - tonumber(ARGV[3])))
    if ARGV[6] ~= '' then
      redis.call('HSET', KEYS[1], 'serial', ARGV[6])
      redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3])
    end
  end
  local detail = {error = redis.call('HGET', KEYS[1], 'err') or nil}
  if ARGV[6] ~= '' then
    detail.serial = ARGV[6]
  end
  emit(ARGV[5], KEYS[1], ARGV[1], ARGV[1], detail)
  if ARGV[1] == 'dead' then
    redis.call('ZADD', KEYS[2], snow, ARGV[4])
    -- The set has no TTL of its own: drop members whose ledger records have expired by now.
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('(%d', now - tonumber(ARGV[3])))
  end
end
return state
