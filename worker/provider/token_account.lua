-- The fleet's pause while createVoiceNotification answers 401/403 even with a fresh access token (the
-- seed's 401: the service is not purchased, or the account is wrong). The token is fine, so this is a
-- key of its own: a successful tokenByAkSk does not end it; an accepted request does (the caller DELs it).
-- KEYS[1] the pause key (JSON {"until": ms on this server's clock, "step": s, "why": text, "status": n})
-- ARGV[1] "check" (read only) or "refuse" (a request was refused: pause the fleet)
-- ARGV[2] first step (s)  ARGV[3] largest step (s)  ARGV[4] why  ARGV[5] HTTP status
-- Returns {pause JSON or nil, Redis server time (ms)}. "refuse" while a pause is on keeps it as it is
-- (requests sent before it began are refused too, and must not double it); after its end the step doubles,
-- up to ARGV[3]. The key outlives its pause by the largest step, so the next refusal still doubles it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.call('GET', KEYS[1])
local prev = nil
if raw then
  local ok, p = pcall(cjson.decode, raw)
  if ok and type(p) == 'table' and tonumber(p['until']) and tonumber(p['step']) then
    prev = p
  else
    raw = false
  end
end
if ARGV[1] ~= 'refuse' or (prev and tonumber(prev['until']) > now) then
  return {raw, now}
end
local limit = tonumber(ARGV[3])
local step = tonumber(ARGV[2])
if prev then
  step = tonumber(prev['step']) * 2
end
if step > limit then
  step = limit
end
local data = cjson.encode({['until'] = now + step * 1000, step = step, why = ARGV[4], status = tonumber(ARGV[5])})
redis.call('SET', KEYS[1], data, 'PX', math.floor((step + limit) * 1000))
return {data, now}
