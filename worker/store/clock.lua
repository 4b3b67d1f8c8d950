-- The Redis server's clock, the one every script trusts (workers' clocks may drift), and the
-- integer formatting Redis commands expect. Included by scripts through worker/store/scripts.py.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ms(n)
  return string.format('%d', n)
end
