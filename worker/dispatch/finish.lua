-- End one arq run (engine.QueueWorker), as arq's finish_job pipeline does (MULTI ... EXEC), but as one
-- script call that the worker's auto-pipeline batches with its other jobs' calls instead of a
-- transaction of its own per job.
--
-- KEYS[1] the arq queue  KEYS[2] the job's in-progress key  KEYS[3] its try counter  KEYS[4] its arq job
-- ARGV[1] job id  ARGV[2] "done" (the job is over: its keys and queue entry go), or a run again:
-- "" (at its current score) or the milliseconds to add to its score (a deferral)
-- ARGV[3] with a deferral: the arq job's new TTL in ms (it must outlive the wait), else ""
if ARGV[2] == 'done' then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
if ARGV[2] ~= '' then
  redis.call('ZINCRBY', KEYS[1], ARGV[2], ARGV[1])
end
if ARGV[3] ~= '' then
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
redis.call('DEL', KEYS[2])
return 0
