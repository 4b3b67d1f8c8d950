-- Claim a poll's worth of jobs of one arq queue in one round trip (engine.QueueWorker.start_jobs), instead of
-- arq's optimistic transaction per job (WATCH, EXISTS, ZSCORE, MULTI/PSETEX/EXEC) and the pipeline arq's
-- run_job then sends per job (GET job, INCR/EXPIRE its try counter). Per job, the same checks as arq,
-- atomically: a job is skipped when its in-progress key exists (it runs elsewhere), when it left the
-- queue (finished, cancelled), or when its score is later than now (deferred meanwhile).
-- A claimed job gets arq's in-progress key, its try counter incremented, and, when it has none yet, its
-- arq job: the producer writes only the ledger record and the queue entry, and the arq job (which
-- carries nothing but "run a dial") is materialized here. One that exists (a deferred job's, or a
-- foreign one) is left as it is and returned: garbage in it is dead-lettered with its reason by the
-- caller. Its "et" (arq's enqueue time, used only in arq's logs) is the claim time: the ledger keeps the
-- real one (`created`).
--
-- KEYS[1] the arq queue (sorted set scored by run-at ms)
-- ARGV[1] now, ms (arq's own clock, as arq compares it)  ARGV[2] in-progress TTL ms
-- ARGV[3] arq job TTL ms  ARGV[4] arq job JSON up to its enqueue time (engine.DIAL_JOB_HEAD): "<now>}"
-- is appended  ARGV[5] most jobs to claim  ARGV[6] in-progress key prefix  ARGV[7] arq job key prefix
-- ARGV[8] try counter key prefix  ARGV[9] the try counter's TTL in s (arq's own, engine.ARQ_TRY_TTL_S)
-- ARGV[10..] job ids, in queue order
-- Returns {claimed, bad, corrupt}: claimed = {id, score, try, job, ...} in the given order, where job is
-- "" when this claim wrote the standard job (the caller knows it) and the stored arq job otherwise;
-- bad = {id, score, ...} with a score that is not a finite number (arq would crash casting it);
-- corrupt = {id, reason, ...} whose arq job or try counter is not a string (arq would crash reading
-- it). The caller dead-letters bad and corrupt jobs; neither gets an in-progress key.
local now = tonumber(ARGV[1])
local want = tonumber(ARGV[5])
local job = ARGV[4] .. ARGV[1] .. '}'
local claimed, bad, corrupt = {}, {}, {}
local n = 0
local TRY_TTL_S = tonumber(ARGV[9])
for i = 10, #ARGV do
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
        local jk, tk = ARGV[7] .. id, ARGV[8] .. id
        local stored = ''
        local problem = nil
        -- SET NX never fails on type: a key of another type is simply "present".
        if not redis.call('SET', jk, job, 'PX', ARGV[3], 'NX') then
          stored = redis.pcall('GET', jk)
          if type(stored) ~= 'string' then
            problem = 'its arq job is not a string'
          end
        end
        local try = nil
        if not problem then
          try = redis.pcall('INCR', tk)
          if type(try) ~= 'number' then
            problem = 'its try counter is not an integer'
          end
        end
        if problem then
          corrupt[#corrupt + 1] = id
          corrupt[#corrupt + 1] = problem
        else
          redis.call('EXPIRE', tk, TRY_TTL_S)
          redis.call('SET', ARGV[6] .. id, '1', 'PX', ARGV[2])
          claimed[#claimed + 1] = id
          claimed[#claimed + 1] = score
          claimed[#claimed + 1] = try
          claimed[#claimed + 1] = stored
          n = n + 1
        end
      end
    end
  end
end
return {claimed, bad, corrupt}
