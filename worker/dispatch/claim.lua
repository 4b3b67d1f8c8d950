-- Claim a poll's worth of jobs of one arq queue in one round trip (queues._Worker.start_jobs), instead of
-- arq's optimistic transaction per job (WATCH, EXISTS, ZSCORE, MULTI/PSETEX/EXEC). Per job, the same
-- checks as arq, atomically: a job is skipped when its in-progress key exists (it runs elsewhere), when
-- it left the queue (finished, cancelled), or when its score is later than now (deferred meanwhile).
-- A claimed job gets arq's in-progress key and, when it has none yet, its arq job: the producer writes
-- only the ledger record and the queue entry, and the arq job (which carries nothing but "run a dial")
-- is materialized here. One that exists (a deferred job's, or a foreign one) is left as it is: arq's
-- run reads it, and garbage in it is dead-lettered with its reason. Its "et" (arq's enqueue time, used
-- only in arq's logs) is the claim time: the ledger keeps the real one (`created`).
--
-- KEYS[1] the arq queue (sorted set scored by run-at ms)
-- ARGV[1] now, ms (arq's own clock, as arq compares it)  ARGV[2] in-progress TTL ms
-- ARGV[3] arq job TTL ms  ARGV[4] arq job JSON up to its enqueue time (codec.DIAL_JOB_HEAD): "<now>}"
-- is appended  ARGV[5] most jobs to claim  ARGV[6] in-progress key prefix  ARGV[7] arq job key prefix
-- ARGV[8..] job ids, in queue order
-- Returns {{id, score, ...} claimed, in the given order; {id, score, ...} with a score that is not a
-- finite number (arq would crash casting it): the caller dead-letters those}.
local now = tonumber(ARGV[1])
local want = tonumber(ARGV[5])
local job = ARGV[4] .. ARGV[1] .. '}'
local claimed, bad = {}, {}
local n = 0
for i = 8, #ARGV do
  if n >= want then
    break
  end
  local id = ARGV[i]
  -- Running jobs stay in the queue and come back in every poll: the cheapest check first.
  if redis.call('EXISTS', ARGV[6] .. id) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score then
      local s = tonumber(score)
      if s == nil or s ~= s or s == math.huge or s == -math.huge then
        bad[#bad + 1] = id
        bad[#bad + 1] = score
      elseif s <= now then
        redis.call('SET', ARGV[6] .. id, '1', 'PX', ARGV[2])
        redis.call('SET', ARGV[7] .. id, job, 'PX', ARGV[3], 'NX')
        claimed[#claimed + 1] = id
        claimed[#claimed + 1] = score
        n = n + 1
      end
    end
  end
end
return {claimed, bad}
