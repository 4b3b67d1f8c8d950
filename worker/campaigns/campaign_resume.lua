-- Move up to ARGV[2] parked jobs of an active campaign back onto their queues, first in line first.
-- Like enqueue.lua it writes no arq job: the worker's claim does.
-- KEYS[1] campaign hash  KEYS[2] its parked set
-- ARGV[1] key prefix  ARGV[2] how many  ARGV[3] ledger TTL ms
-- ARGV[4..7] arq key prefixes: job, in-progress, retry, result
-- ARGV[8] "1": stop at the first job whose arq run is still finishing, so the order is kept (the caller
-- waits a moment and calls again); "0": skip such jobs (a worker died holding one: arq reruns it anyway)
-- Jobs get fresh scores from the campaign's pacing clock, in their parked order (a job deferred to a
-- later time before the pause keeps that time), so a long pause does not make the whole backlog due at
-- once ahead of other campaigns. A job whose arq run is still finishing (it was parked a moment ago)
-- is left for the next call: arq's clean-up would delete the requeued job.
-- Returns {moved, busy, dropped (no longer queued), left in the parked set}; {0, 0, 0, -1} when the
-- campaign is not active (paused again, or cancelled).
-- @include store/clock.lua
local P = ARGV[1]
if redis.call('HGET', KEYS[1], 'status') ~= 'active' then
  return {0, 0, 0, -1}
end
local ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
local now = now_ms()
local pace = tonumber(redis.call('HGET', KEYS[1], 'pace')) or 0
if pace < 0.01 then
  pace = 0.01
end
local ledger_ttl = tonumber(ARGV[3])
local moved, busy, dropped = 0, 0, 0
local clocks = {}
local due = {}  -- queues that got a job due now: their idle workers are woken (see enqueue.lua)
for i = 1, #ids, 2 do
  local id, old = ids[i], tonumber(ids[i + 1])
  if redis.call('EXISTS', ARGV[5] .. id) == 1 then
    busy = busy + 1
    if ARGV[8] == '1' then
      break
    end
  else
    local jk = P .. 'job:' .. id
    local h = redis.call('HMGET', jk, 'state', 'prio', 'first', 'pk')
    if h[1] ~= 'queued' then
      redis.call('ZREM', KEYS[2], id)
      dropped = dropped + 1
    else
      local field = 'vt:' .. h[2]
      local vt = clocks[field] or tonumber(redis.call('HGET', KEYS[1], field)) or 0
      local score = math.max(now, vt)
      if old > score then
        score = old
      else
        clocks[field] = score + pace
      end
      local delay = math.ceil(score - now)
      -- A leftover arq job goes too: the claim writes a fresh one (as for a new job).
      redis.call('DEL', ARGV[4] .. id, ARGV[6] .. id, ARGV[7] .. id)
      redis.call('ZADD', P .. 'queue:' .. h[2], string.format('%.3f', score), id)
      if score <= now then
        due[P .. 'queue:' .. h[2]] = true
      end
      if h[3] and h[4] then
        -- The pause does not count against the job's retry time budget.
        redis.call('HINCRBY', jk, 'first', now - tonumber(h[4]))
      end
      redis.call('HDEL', jk, 'pk')
      redis.call('PEXPIRE', jk, ms(ledger_ttl + delay))
      redis.call('ZREM', KEYS[2], id)
      moved = moved + 1
    end
  end
end
for field, vt in pairs(clocks) do
  redis.call('HSET', KEYS[1], field, string.format('%.3f', vt))
end
for zkey in pairs(due) do
  redis.call('PUBLISH', P .. 'wake', zkey)
end
return {moved, busy, dropped, redis.call('ZCARD', KEYS[2])}
