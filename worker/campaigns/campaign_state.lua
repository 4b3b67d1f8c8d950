-- Pause, resume or cancel a campaign. KEYS[1] campaign hash.
-- ARGV[1] "pause" (active -> paused), "resume" (paused -> active) or "cancel" (any -> cancelled).
-- Returns the status before, or "missing". A cancelled campaign stays cancelled.
-- @include store/clock.lua
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  return 'missing'
end
local new = nil
if ARGV[1] == 'pause' and st == 'active' then
  new = 'paused'
elseif ARGV[1] == 'resume' and st == 'paused' then
  new = 'active'
elseif ARGV[1] == 'cancel' and st ~= 'cancelled' then
  new = 'cancelled'
end
if new then
  redis.call('HSET', KEYS[1], 'status', new, 'updated', ms(now_ms()))
end
return st
