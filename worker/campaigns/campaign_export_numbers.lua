-- One slice of a campaign's export (worker/campaigns/export.py) read from its number set: the rows of
-- every member of buckets ARGV[3] .. ARGV[3] + ARGV[4] - 1, whatever the member's state: pending in a chunk
-- (state "pending"), cancelled before it was a job, a live job (read from the ledger, as
-- campaign_export.lua does: the latest call's fields), or compacted (the compact value, see
-- compaction.py; its latest redial's record when that one is still whole). Read only; a member is read
-- once, in one script, so compaction cannot make a row appear twice or not at all.
-- KEYS[1] campaign hash
-- ARGV[1] key prefix  ARGV[2] campaign  ARGV[3] first bucket  ARGV[4] buckets  ARGV[5] state filter as
-- campaign_export.lua's
-- Returns {next bucket (-1: done), records missing, flat} with 13 strings per row (export.COLUMNS order).
-- @include campaigns/number_set.lua
local P, name, filter = ARGV[1], ARGV[2], ARGV[5]
local buckets = tonumber(redis.call('HGET', KEYS[1], 'buckets')) or 0
local first = tonumber(ARGV[3])
local last = math.min(first + tonumber(ARGV[4]), buckets) - 1
local STATE = {s = 'sent', f = 'failed', c = 'cancelled', e = 'expired', p = 'suppressed'}
local OUTCOME = {a = 'answered', u = 'unanswered', f = 'failed_to_connect'}
local out, n, missing = {}, 0, 0
local FIELDS = {'state', 'attempts', 'sent', 'serial', 'outcome', 'reason', 'tk', 'err', 'ev'}

local function digits(v)
  if v and string.find(v, '^%d+$') and #v <= 18 then return v end
  return ''
end

-- row: called, job id, latest id, then the 9 call fields (state ... ev) in FIELDS order, redials
local function emit(called, id, latest, f, redials)
  local state = f[1]
  if filter ~= '' and not string.find(filter, ',' .. state .. ',', 1, true) then
    return
  end
  out[n + 1] = called
  out[n + 2] = id
  out[n + 3] = latest
  out[n + 4] = state
  out[n + 5] = digits(f[2]) ~= '' and f[2] or '0'
  out[n + 6] = digits(f[3])
  out[n + 7] = f[4] or ''
  out[n + 8] = f[5] or ''
  out[n + 9] = f[6] or ''
  out[n + 10] = digits(f[7])
  out[n + 11] = tostring(redials)
  out[n + 12] = f[8] or ''
  out[n + 13] = f[9] or ''
  n = n + 13
end

for b = first, last do
  local all = redis.call('HGETALL', P .. 'campaign:' .. name .. ':n:' .. b)
  for i = 1, #all, 2 do
    local member, value = all[i], all[i + 1]
    local id, key
    local c = string.sub(member, 1, 1)
    if c == '=' then
      id = string.sub(member, 2)
      key = ''
    elseif c == '#' then
      id = nil
      key = ''
    else
      id = name .. ':' .. member
      key = member
    end
    if value == 'd' then
      -- its row's own id is another job's: no row of this campaign
    elseif id == nil then
      missing = missing + 1  -- a row with an id of over 60 characters: its job is found by that id only
    elseif value == '' then
      emit(key, id, id, {'pending'}, 0)
    elseif value == 'x' then
      emit(key, id, id, {'cancelled', '0', nil, nil, nil, nil, nil, 'campaign cancelled'}, 0)
    elseif value == 'm' then
      local f = redis.call('HMGET', P .. 'job:' .. id, 'state', 'attempts', 'sent', 'serial', 'outcome', 'reason',
        'tk', 'err', 'ev', 'rdl', 'called')
      if not f[1] then
        missing = missing + 1
      else
        local latest, redials = id, 0
        if f[10] and f[10] ~= '' then
          local last_id
          for r in string.gmatch(f[10], '[^,]+') do
            redials = redials + 1
            last_id = r
          end
          local g = redis.call('HMGET', P .. 'job:' .. last_id, unpack(FIELDS))
          if g[1] then
            latest = last_id
            for k = 1, 9 do f[k] = g[k] end
          end
        end
        emit(f[11] or key, id, latest, f, redials)
      end
    else
      local p = {}
      for v in string.gmatch(value, '([^|]*)|') do
        p[#p + 1] = v
        if #p == 9 then break end
      end
      local tail = string.sub(value, #table.concat(p, '|') + 2)
      local k, redials = tonumber(p[6]) or 0, tonumber(p[7]) or 0
      local state = STATE[string.sub(value, 1, 1)] or 'sent'
      local sent = p[3] ~= '' and p[3] and tostring(tonumber(p[3], 36)) or nil
      local called = p[9] == '' and key or (p[9] == '+' and '+' .. key or p[9])
      local latest = k == 0 and id or (id .. ':r' .. k)
      local f = {state, p[2], sent, state == 'sent' and tail or nil, OUTCOME[string.sub(value, 2, 2)], p[4], p[5],
        state ~= 'sent' and tail or nil, p[8]}
      if redials > k then
        local live = id .. ':r' .. redials
        local g = redis.call('HMGET', P .. 'job:' .. live, unpack(FIELDS))
        if g[1] then
          latest = live
          f = g
        end
      end
      for j = 1, 9 do
        if f[j] == '' then f[j] = nil end
      end
      emit(called, id, latest, f, redials)
    end
  end
end
local next_bucket = last + 1
if next_bucket >= buckets then
  next_bucket = -1
end
return {next_bucket, missing, out}
