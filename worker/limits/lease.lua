-- The rules of a fleet-wide in-flight lease, shared by limits/inflight.lua (a lease per request) and
-- ledger/sending.lua (a job's lease taken with queued -> sending).
-- @include store/clock.lua

-- The fleet-wide in-flight lease of a job (the rules of inflight.lua): a member of the sorted set
-- `key` named after the job, scored by its expiry in ms. Taken by queued -> sending, given back by
-- the transition that ends the attempt, so a call pays no round trip of its own for it; a worker that
-- dies mid-request leaves a lease that expires by itself.
-- True when `member` may hold a lease now: it holds one already, or fewer than `cap` are held.
local function lease_free(key, member, cap, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ms(now))
  if redis.call('ZSCORE', key, member) then
    return true
  end
  return redis.call('ZCARD', key) < cap
end

-- Take (or extend) the lease of `member` until now + ttl. The set expires with its last lease.
local function lease_take(key, member, ttl, now)
  redis.call('ZADD', key, ms(now + ttl), member)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', key, ms(tonumber(last[2]) - now + 1))
end
