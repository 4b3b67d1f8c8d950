-- The checks made before a campaign job is dialled: campaign status, do-not-call list, per-number cap.
-- @include store/clock.lua
-- @include ledger/counts.lua

-- The do-not-call and per-number-cap key of a number, or nil if it is not one: the same rule as
-- worker.rules.normalize_number (tests/test_rules.py feeds both the same numbers): ASCII blanks, '-',
-- '.', '(' and ')' removed, then one leading '+', then 1-32 ASCII digits. A job's stored key (`nk`,
-- worker/numbers.py: E.164 digits, e.g. 8613800000001 for 13800000001 in region CN) wins over it; this
-- is the key of jobs that need no other (most numbers) and of records written before `nk` existed.
local function number_key(called)
  local n = (string.gsub(called, '[ \t\n\r\f\v%-%.%(%)]', ''))
  n = (string.gsub(n, '^%+', ''))
  if #n < 1 or #n > 32 or string.find(n, '[^0-9]') then
    return nil
  end
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
  -- A stored `called` was validated (digits, optional '+'); anything else cannot be on the list.
  -- KEYS[1] is the job's ledger hash in every script that includes this one (claim.lua, sending.lua).
  local num = redis.call('HGET', KEYS[1], 'nk') or number_key(called) or called
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
