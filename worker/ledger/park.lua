-- Parking a paused campaign's job, and ending a queued job on a check.
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/events.lua

-- Hold a queued job of a paused campaign: into the campaign's parked set with its queue score (its
-- place in line), without a TTL (a pause may last any time). Its arq run then ends normally, which
-- removes the arq job; resume recreates it.
local function park(P, jobkey, job_id, campaign, prio, now)
  local score = redis.call('ZSCORE', P .. 'queue:' .. prio, job_id) or ms(now)
  redis.call('ZADD', campaign_key(P, campaign, ':parked'), score, job_id)
  redis.call('HSET', jobkey, 'pk', ms(now))
  redis.call('PERSIST', jobkey)
end

-- queued -> a final state decided by a check (cancelled, suppressed), counted.
local function finish_queued(P, jobkey, campaign, new, err, now, ttl)
  redis.call('HSET', jobkey, 'state', new, 'err', err, 'updated', ms(now))
  redis.call('HDEL', jobkey, 'pk')
  redis.call('PEXPIRE', jobkey, ms(ttl))
  count_move(P, campaign, 'queued', new, ttl)
  emit(P, jobkey, new, new, {error = err})
end
