-- Enqueue one dial job, all or nothing: ledger record + arq job + queue entry, or nothing when the
-- job id is already known (idempotency). Server time (TIME) stamps everything.
--
-- KEYS[1] ledger hash   KEYS[2] arq job key   KEYS[3] arq queue (sorted set of the job's priority)
-- ARGV[1] job id        ARGV[2] priority      ARGV[3] called        ARGV[4] body (compact JSON)
-- ARGV[5] campaign or ""  ARGV[6] not_before ms or ""  ARGV[7] deadline ms or ""
-- ARGV[8] job TTL ms    ARGV[9] ledger TTL ms
-- ARGV[10] arq job JSON up to the enqueue time: the script appends "<ms>}" (see producer._ARQ_JOB_HEAD)
-- Returns {1, "queued"} when stored, {0, <existing state>} for a duplicate.
local state = redis.call('HGET', KEYS[1], 'state')
if state then
  return {0, state}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = now
if ARGV[6] ~= '' then
  score = math.max(now, tonumber(ARGV[6]))
end
-- A deferred job must outlive its wait: both TTLs count from its run-at time.
local delay = score - now
local job_ttl = tonumber(ARGV[8]) + delay
local ledger_ttl = math.max(tonumber(ARGV[9]) + delay, job_ttl)
local snow = string.format('%d', now)
-- Memory: `updated` (= created) and `attempts` (= 0) are left out until the first transition.
local f = {'state', 'queued', 'prio', ARGV[2], 'called', ARGV[3], 'body', ARGV[4], 'created', snow}
if ARGV[5] ~= '' then
  f[#f + 1] = 'campaign'; f[#f + 1] = ARGV[5]
end
if ARGV[6] ~= '' then
  f[#f + 1] = 'nb'; f[#f + 1] = ARGV[6]
end
if ARGV[7] ~= '' then
  f[#f + 1] = 'dl'; f[#f + 1] = ARGV[7]
end
-- Scripts are not rolled back on error: the only write that can fail (ZADD on a key of another type)
-- goes first, so a failing item leaves nothing behind.
redis.call('ZADD', KEYS[3], string.format('%d', score), ARGV[1])
redis.call('HSET', KEYS[1], unpack(f))
redis.call('PEXPIRE', KEYS[1], string.format('%d', ledger_ttl))
redis.call('SET', KEYS[2], ARGV[10] .. snow .. '}', 'PX', string.format('%d', job_ttl))
return {1, 'queued'}
