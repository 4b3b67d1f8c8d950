-- Delete the shared token only if it is the one that failed: a late 401 for an old token must not
-- evict the fresh token another worker has just stored.
-- KEYS[1] token key; ARGV[1] the failing token's value
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
local ok, tok = pcall(cjson.decode, raw)
if (not ok) or type(tok) ~= 'table' or tok['v'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
