-- Helpers shared by the ledger, producer and campaign scripts; ledger.lua_source() puts this file in
-- front of each script that needs it (Redis has no `require`). P is the key prefix (settings.key_prefix);
-- the key formats match worker/store/keys.py.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ms(n)
  return string.format('%d', n)
end

local function campaign_key(P, name, suffix)
  return P .. 'campaign:' .. name .. suffix
end

-- The campaign whose counters include this job (field `cm`, set at enqueue when the campaign existed),
-- or nil. A job merely tagged with a campaign name nobody created is not counted anywhere.
local function counted_campaign(campaign, cm)
  if campaign and cm then
    return campaign
  end
  return nil
end

-- Move one job from state `old` to `new` in its campaign's counters (old or new may be nil). Once a
-- campaign has nothing left queued or sending, its keys expire with the ledger TTL, like its records.
local function count_move(P, campaign, old, new, ttl)
  if not campaign or old == new then
    return
  end
  local ck = campaign_key(P, campaign, ':counts')
  if old then
    redis.call('HINCRBY', ck, old, -1)
  end
  if new then
    redis.call('HINCRBY', ck, new, 1)
  end
  if new == 'queued' and old ~= 'sending' then
    -- Work again for a campaign that may have started to expire (a dead job requeued).
    for _, suffix in ipairs({'', ':counts', ':jobs'}) do
      redis.call('PERSIST', campaign_key(P, campaign, suffix))
    end
  elseif new ~= 'queued' and new ~= 'sending' then
    local open = redis.call('HMGET', ck, 'queued', 'sending')
    if (tonumber(open[1]) or 0) <= 0 and (tonumber(open[2]) or 0) <= 0 then
      for _, suffix in ipairs({'', ':counts', ':jobs', ':parked'}) do
        redis.call('PEXPIRE', campaign_key(P, campaign, suffix), ttl)
      end
    end
  end
end

-- One more call sent by a campaign, in a ring of per-second counters (field second % 120).
local function count_sent_now(P, campaign, now)
  local k = campaign_key(P, campaign, ':sent')
  local sec = math.floor(now / 1000)
  local slot = ms(sec % 120)
  local n = 1
  local v = redis.call('HGET', k, slot)
  if v then
    local s, c = string.match(v, '^(%d+):(%d+)$')
    if tonumber(s) == sec then
      n = tonumber(c) + 1
    end
  end
  redis.call('HSET', k, slot, ms(sec) .. ':' .. ms(n))
  redis.call('PEXPIRE', k, 180000)
end

-- Refresh a record's TTL without ever shortening it (a deferred job's record outlives its wait) and
-- without giving one to a parked record (PTTL -1: a pause holds its jobs for as long as it lasts).
local function keep_alive(key, ttl)
  local pttl = redis.call('PTTL', key)
  if pttl >= 0 and pttl < ttl then
    redis.call('PEXPIRE', key, ms(ttl))
  end
end

-- The do-not-call and per-number-cap key of a number: `called` without its leading '+' (the same rule
-- as worker.campaigns.suppression.normalize_number for a valid `called`).
local function number_key(called)
  local n = string.gsub(called, '^%+', '')
  return n
end

-- The checks made before a campaign job is dialled, at claim (book = false) and again at
-- queued -> sending (book = true: the call is counted against the number's cap). Jobs without a
-- campaign (one-off, transactional calls) are not subject to the do-not-call list or the cap.
-- Returns 'ok', 'cancelled', 'paused', 'suppressed', or 'cap' and the ms until the cap allows a call.
local function gate(P, job_id, tag, counted, called, now, cap_calls, cap_window, book)
  if counted then
    local st = redis.call('HGET', campaign_key(P, counted, ''), 'status')
    if st == 'cancelled' or st == 'paused' then
      return st
    end
  end
  if not tag then
    return 'ok'
  end
  local num = number_key(called)
  if redis.call('SISMEMBER', P .. 'suppress', num) == 1 then
    return 'suppressed'
  end
  if cap_calls > 0 then
    local k = P .. 'calls:' .. num
    redis.call('ZREMRANGEBYSCORE', k, '-inf', ms(now - cap_window))
    -- A job counts once however many attempts it takes.
    if not redis.call('ZSCORE', k, job_id) then
      if redis.call('ZCARD', k) >= cap_calls then
        local oldest = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
        return 'cap', math.max(tonumber(oldest[2]) + cap_window - now, 1)
      end
      if book then
        redis.call('ZADD', k, ms(now), job_id)
        redis.call('PEXPIRE', k, ms(cap_window))
      end
    end
  end
  return 'ok'
end

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
end

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
