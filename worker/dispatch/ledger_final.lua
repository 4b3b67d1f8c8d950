-- Finish a job that is still queued or sending. The first final state wins: a job already final
-- (sent above all) is left as it is.
-- KEYS[1] ledger hash  KEYS[2] dead-letter set (used when ARGV[1] is "dead")
-- ARGV[1] final state  ARGV[2] error or "" (keep the last one)  ARGV[3] ledger TTL ms  ARGV[4] job id
-- Returns the previous state ("missing" if none).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 'missing'
end
-- Dead-lettering twice just records the newer reason.
if state == 'queued' or state == 'sending' or (state == 'dead' and ARGV[1] == 'dead') then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local snow = string.format('%d', now)
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated', snow)
  if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[1], 'err', ARGV[2])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  if ARGV[1] == 'dead' then
    redis.call('ZADD', KEYS[2], snow, ARGV[4])
    -- The set has no TTL of its own: drop members whose ledger records have expired by now.
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('(%d', now - tonumber(ARGV[3])))
  end
end
return state
