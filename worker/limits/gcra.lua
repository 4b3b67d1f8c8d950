-- GCRA: book up to n send slots under every limit in KEYS at once, on the Redis server's clock.
--
-- Each key holds the limit's theoretical arrival time (TAT) in microseconds of Redis TIME. A call may be
-- sent at `TAT - tau` (tau = (burst - 1) * interval: the burst allowance); sending it moves the TAT to
-- max(TAT, slot) + interval. Unlike fixed windows this never lets 2x the limit through at a boundary.
--
-- KEYS[1..k]     one GCRA state per limit (global first, then the extra limits)
-- ARGV[1]        n: slots wanted, one per waiter, best priority first
-- ARGV[2..n+1]   horizon (us) of each wanted slot: a slot further ahead than this is not booked, so a
--                backlog of low-priority calls cannot hold the schedule against a later urgent call
-- then for each key, three values:
--   interval (us)  1e6 / rate
--   tau (us)       (burst - 1) * interval
--   max gap (us)   -1, or the most a slot may lie beyond this key's own next free time. A slot chosen by
--                  another key (a throttled campaign) leaves this key's capacity before it unused;
--                  capping the gap keeps a campaign call from wasting global capacity by booking it early.
--
-- Returns {retry, now, delay_1, ..., delay_g}: g slots booked in every key (a slot is never booked in
-- only some), delay_j = microseconds from `now` (Redis TIME, us) to slot j; retry = 0 when all n were
-- booked, otherwise the microseconds to wait before asking again for the first slot not booked. The
-- caller sleeps the delays on its own clock, so the clocks of the callers' hosts need not agree.

if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME before a write

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local nkeys = #KEYS

local interval, tau, maxgap, tat, free = {}, {}, {}, {}, {}
for i = 1, nkeys do
  local a = n + 1 + 3 * (i - 1)
  interval[i] = tonumber(ARGV[a + 1])
  tau[i] = tonumber(ARGV[a + 2])
  maxgap[i] = tonumber(ARGV[a + 3])
  local stored = tonumber(redis.call('GET', KEYS[i]))
  -- A TAT in the past means the limit is idle: the full burst is available, exactly as with no key.
  if stored == nil or stored < now then stored = now end
  tat[i] = stored
end

local out = {0, now}
for j = 1, n do
  local slot = now
  for i = 1, nkeys do
    local f = tat[i] - tau[i]
    if f < now then f = now end
    free[i] = f
    if f > slot then slot = f end
  end
  local wait = slot - now - tonumber(ARGV[1 + j])
  for i = 1, nkeys do
    if maxgap[i] >= 0 then
      local w = slot - free[i] - maxgap[i]
      if w > wait then wait = w end
    end
  end
  if wait > 0 then
    out[1] = math.ceil(wait)
    break
  end
  for i = 1, nkeys do
    local base = tat[i]
    if slot > base then base = slot end
    tat[i] = base + interval[i]
  end
  out[#out + 1] = slot - now
end

if #out > 2 then
  for i = 1, nkeys do
    -- '%.0f': tostring() would print a 16-digit TAT in exponent form and lose microseconds.
    -- The key expires once its TAT has passed, when "no key" means the same as the stored state.
    redis.call('SET', KEYS[i], string.format('%.0f', tat[i]), 'PX', math.ceil((tat[i] - now) / 1000) + 1)
  end
end
return out
