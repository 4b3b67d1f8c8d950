-- Read the shared access token; if it is missing, unreadable or inside its refresh margin, try to
-- take the refresh lock in the same step, so whoever gets the lock has seen the latest token.
-- KEYS[1] token key, KEYS[2] lock key, KEYS[3] (optional) the fleet's pause while tokenByAkSk refuses
-- KEYS[4] (optional) the fleet's pause while createVoiceNotification refuses the account (token_account.lua)
-- ARGV[1] lock owner id, ARGV[2] lock ttl (ms), ARGV[3] refresh margin (ms)
-- Returns {lock_taken 0|1, stored token JSON or nil, Redis server time (ms), pause JSON or nil, account
-- pause JSON or nil}: while the pause lasts ("until" ahead) nobody takes the lock, so nobody calls
-- tokenByAkSk. The account pause does not stop a refresh (the token is fine); it is only passed on, so a
-- process learns of it when it next refreshes.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = false
if KEYS[3] then
  pause = redis.call('GET', KEYS[3])
end
local account = false
if KEYS[4] then
  account = redis.call('GET', KEYS[4])
end
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, tok = pcall(cjson.decode, raw)
  if ok and type(tok) == 'table' and tonumber(tok['exp']) and tonumber(tok['at']) then
    local exp = tonumber(tok['exp']) * 1000
    -- a short-lived token gets at most a tenth of its life as margin (token.MAX_MARGIN_SHARE)
    local margin = math.min(tonumber(ARGV[3]), (exp - tonumber(tok['at']) * 1000) * 0.1)
    if exp - now > margin then
      return {0, raw, now, pause, account}
    end
  else
    raw = false
  end
end
if pause then
  local ok, p = pcall(cjson.decode, pause)
  if ok and type(p) == 'table' and tonumber(p['until']) and tonumber(p['until']) > now then
    return {0, raw, now, pause, account}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, raw, now, pause, account}
end
return {0, raw, now, pause, account}
