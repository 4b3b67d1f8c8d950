-- The hopper takes one chunk of a campaign's not-yet-materialised rows (worker/campaigns/hopper.py).
-- KEYS[1] campaign hash  KEYS[2] its counts  KEYS[3] its rows (list of chunk blobs, launch order)
-- KEYS[4] its taken chunks (hash: token -> "<lease expiry ms>:<blob>")
-- ARGV[1] this take's token (unique per take)  ARGV[2] lease ms  ARGV[3] window: take nothing while the
-- campaign has this many jobs queued (parked ones included) or more
-- A chunk whose lease ran out (its hopper died mid-chunk, or is far too slow) is taken again first, whole:
-- materialising is idempotent per number (hopper_enqueue.lua), so its rows already enqueued are skipped.
-- Returns {"take", blob}, {"retake", blob, old token}, {"empty"}, {"full", queued} or {"status", status}.
-- @include store/clock.lua
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'active' then
  return {'status', st or 'missing'}
end
local queued = tonumber(redis.call('HGET', KEYS[2], 'queued')) or 0
if queued >= tonumber(ARGV[3]) then
  return {'full', queued}
end
local now = now_ms()
local lease = ms(now + tonumber(ARGV[2])) .. ':'
local taken = redis.call('HGETALL', KEYS[4])
for i = 1, #taken, 2 do
  local value = taken[i + 1]
  local colon = string.find(value, ':', 1, true)
  local expiry = colon and tonumber(string.sub(value, 1, colon - 1))
  if expiry and expiry < now then
    local blob = string.sub(value, colon + 1)
    redis.call('HDEL', KEYS[4], taken[i])
    redis.call('HSET', KEYS[4], ARGV[1], lease .. blob)
    return {'retake', blob, taken[i]}
  end
end
local blob = redis.call('LPOP', KEYS[3])
if not blob then
  return {'empty'}
end
redis.call('HSET', KEYS[4], ARGV[1], lease .. blob)
return {'take', blob}
