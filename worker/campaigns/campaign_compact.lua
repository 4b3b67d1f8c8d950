-- Compact a campaign's finished jobs (worker/campaigns/compaction.py): a job that reached its end and
-- that nothing more will happen to leaves the ledger; its number's value in the campaign's number set
-- keeps what export, late callbacks and dedupe need (the format is in compaction.py). Examines up to
-- ARGV[3] ids of the campaign's job list from a cursor (campaign hash field `cx`); the ids at the head of
-- the list that are done (compacted, gone, or final for good and kept whole: dead, unknown) leave it, so
-- the list holds about the jobs still at work.
-- KEYS[1] campaign hash  KEYS[2] its job list
-- ARGV[1] key prefix  ARGV[2] campaign  ARGV[3] ids to examine  ARGV[4] ms a job stays whole after its
-- last transition  ARGV[5] ms a sent job without an outcome waits for its result callback
-- Returns {ids examined, compacted, ids removed from the list}.
-- @include store/clock.lua
-- @include campaigns/number_set.lua
local P, name = ARGV[1], ARGV[2]
local buckets = tonumber(redis.call('HGET', KEYS[1], 'buckets'))
if not buckets then
  return {0, 0, 0}  -- launched without compact rows: nothing to compact into
end
local age, wait = tonumber(ARGV[4]), tonumber(ARGV[5])
local len = redis.call('LLEN', KEYS[2])
local cx = tonumber(redis.call('HGET', KEYS[1], 'cx')) or 0
if cx >= len then
  cx = 0
end
local ids = redis.call('LRANGE', KEYS[2], cx, cx + tonumber(ARGV[3]) - 1)
local now = now_ms()
local STATE = {sent = 's', failed = 'f', cancelled = 'c', expired = 'e', suppressed = 'p'}
local OUTCOME = {answered = 'a', unanswered = 'u', failed_to_connect = 'f'}
local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'
local function b36(n)
  local s = ''
  repeat
    local r = n % 36
    s = string.sub(DIGITS, r + 1, r + 1) .. s
    n = math.floor(n / 36)
  until n == 0
  return s
end
local function clean(v, most)
  v = string.gsub(v or '', '|', '/')
  return string.sub(v, 1, most)
end
local prefix, contiguous, compacted = 0, cx == 0, 0
local prefix_name = name .. ':'
for _, id in ipairs(ids) do
  local done = false
  local jk = P .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'updated', 'created', 'sent', 'outcome', 'reason', 'tk', 'attempts',
    'serial', 'ev', 'err', 'rdl', 'rn', 'rof', 'called')
  if not h[1] then
    done = true  -- expired or deleted
  elseif h[1] ~= 'queued' and h[1] ~= 'sending' then
    local first = h[14] or id
    local member
    if string.sub(first, 1, #prefix_name) == prefix_name then
      member = string.sub(first, #prefix_name + 1)
    elseif #first <= 60 then
      member = '=' .. first
    end
    local bkey = member and number_set_key(P, name, member, buckets)
    local cur = bkey and redis.call('HGET', bkey, member)
    if cur and cur ~= '' and cur ~= 'x' and cur ~= 'd' then
      local code = STATE[h[1]]
      local updated = tonumber(h[2] or h[3]) or now
      local ready = code ~= nil and now - updated >= age
      if ready and h[1] == 'sent' and not h[5] then
        ready = now - (tonumber(h[4]) or updated) >= wait
      end
      if ready then
        local k = tonumber(h[13]) or 0
        local n = k
        if h[12] then
          for _ in string.gmatch(h[12], '[^,]+') do n = n + 1 end
        end
        local stored_k, stored_n = -1, 0
        if cur ~= 'm' then
          local f = {}
          for v in string.gmatch(cur .. '|', '([^|]*)|') do f[#f + 1] = v end
          stored_k, stored_n = tonumber(f[6]) or 0, tonumber(f[7]) or 0
        end
        if n < stored_n then n = stored_n end
        if k >= stored_k then
          local called = h[15] or ''
          if called == member then
            called = ''
          elseif called == '+' .. member then
            called = '+'
          end
          local tail = h[1] == 'sent' and (h[9] or '') or clean(h[11], 40)
          local value = code .. (OUTCOME[h[5] or ''] or '.') .. '|' .. (h[8] or '0') .. '|'
            .. (h[4] and b36(tonumber(h[4])) or '') .. '|' .. clean(h[6], 8) .. '|' .. clean(h[7], 18) .. '|'
            .. k .. '|' .. n .. '|' .. (h[10] or '') .. '|' .. clean(called, 40) .. '|' .. tail
          redis.call('HSET', bkey, member, value)
        else
          -- an older call than the one stored (a first job finishing after its redial): only the count
          redis.call('HSET', bkey, member, (string.gsub(cur, '^([^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|)[^|]*', '%1' .. n)))
        end
        redis.call('DEL', jk)
        if h[9] then
          redis.call('DEL', P .. 'serial:' .. h[9])
        end
        compacted = compacted + 1
        done = true
      elseif not code then
        done = true  -- dead or unknown: kept whole (requeue, evidence), found through the number set
      end
    end
  end
  if contiguous and done then
    prefix = prefix + 1
  else
    contiguous = false
  end
end
local next_cx = cx + #ids
if cx == 0 then
  if prefix > 0 then
    redis.call('LTRIM', KEYS[2], prefix, -1)
  end
  next_cx = #ids - prefix
end
redis.call('HSET', KEYS[1], 'cx', next_cx)
return {#ids, compacted, prefix}
