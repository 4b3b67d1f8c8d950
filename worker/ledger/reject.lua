-- Dead-letter a job that cannot run as stored (malformed payload, no ledger record, corrupt record).
-- Unlike final.lua it also works without a record: it writes a minimal one, so the operator
-- sees the job and the reason in `dialer dead-letter list` instead of it vanishing.
--
-- KEYS[1] ledger hash  KEYS[2] dead-letter set
-- ARGV[1] reason  ARGV[2] ledger TTL ms  ARGV[3] job id  ARGV[4] key prefix
-- Returns the previous state, or "missing".
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/events.lua
local snow = ms(now_ms())
local h = redis.call('HMGET', KEYS[1], 'state', 'campaign', 'cm')
local state = h[1]
if state == 'sent' then
  return state  -- a created call stays recorded as such
end
if not state then
  redis.call('DEL', KEYS[1])  -- a hash without a state is corrupt: start clean
  redis.call('HSET', KEYS[1], 'prio', '0', 'called', '', 'body', '{}', 'created', snow)
else
  count_move(ARGV[4], counted_campaign(h[2], h[3]), state, 'dead', tonumber(ARGV[2]))
end
redis.call('HSET', KEYS[1], 'state', 'dead', 'err', ARGV[1], 'updated', snow)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], snow, ARGV[3])
emit(ARGV[4], KEYS[1], 'dead', 'dead', {error = ARGV[1]})
return state or 'missing'
