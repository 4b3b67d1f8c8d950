-- One slice of a campaign's export (worker/campaigns/export.py): the rows of the numbers whose first job
-- is among the next ARGV[3] ids of the campaign's job list. Read only.
-- KEYS[1] campaign job list
-- ARGV[1] key prefix  ARGV[2] first index  ARGV[3] how many ids to read
-- ARGV[4] state filter: "" for every row, else ",state1,state2," (the row's state: its latest call's)
-- Returns {ids read, records missing, flat}: flat holds 13 strings per row, in export.COLUMNS order:
--   called, first job id, latest job id, state, attempts, sent ms, callSerialNo, outcome, releaseReason,
--   talkDuration, redial count, last error, evidence ("" where the record has no such field).
-- A redial's id (<first>:r<k>) is never a row of its own: its number's row is its first job's, which
-- names it in `rdl`; the row's call fields are those of the last redial in `rdl` (its latest call), or
-- the first job's when it has none (or that redial's record has expired). A first job whose record has
-- expired is counted in "records missing" and has no row.
-- KEYS[2] (optional) the campaign hash, ARGV[5] its name: a job whose number is in the campaign's number
-- set (a row launched compactly) is skipped here: campaign_export_numbers.lua gives its row.
-- @include campaigns/number_set.lua
local P, first, filter = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local buckets = KEYS[2] and tonumber(redis.call('HGET', KEYS[2], 'buckets'))
local function in_number_set(id)
  if not buckets then return false end
  local head = ARGV[5] .. ':'
  local m
  if string.sub(id, 1, #head) == head then
    m = string.sub(id, #head + 1)
  elseif #id <= 60 then
    m = '=' .. id
  else
    return false
  end
  return redis.call('HEXISTS', number_set_key(P, ARGV[5], m, buckets), m) == 1
end
local ids = redis.call('LRANGE', KEYS[1], first, first + tonumber(ARGV[3]) - 1)
local out = {}
local n = 0
local missing = 0
for i = 1, #ids do
  local id = ids[i]
  if not string.find(id, ':r', 1, true) and not in_number_set(id) then  -- only a redial's id holds ':r' (names and numbers cannot)
    local f = redis.call('HMGET', P .. 'job:' .. id,
      'called', 'state', 'attempts', 'sent', 'serial', 'outcome', 'reason', 'tk', 'err', 'ev', 'rdl')
    if not f[2] then
      missing = missing + 1
    else
      local latest = id
      local redials = 0
      local rdl = f[11]
      if rdl and rdl ~= '' then
        local from = 1
        while true do
          local comma = string.find(rdl, ',', from, true)
          if not comma then break end
          if comma > from then redials = redials + 1 end
          from = comma + 1
        end
        if from <= #rdl then
          redials = redials + 1
          local last = string.sub(rdl, from)
          local g = redis.call('HMGET', P .. 'job:' .. last,
            'state', 'attempts', 'sent', 'serial', 'outcome', 'reason', 'tk', 'err', 'ev')
          if g[1] then
            latest = last
            for k = 1, 9 do f[k + 1] = g[k] end
          end
        end
      end
      local state = f[2]
      if filter == '' or string.find(filter, ',' .. state .. ',', 1, true) then
        local attempts, sent, tk = f[3], f[4], f[8]
        if not attempts or not string.find(attempts, '^%d+$') then attempts = '0' end
        if sent and not string.find(sent, '^%d+$') then sent = false end
        -- talkDuration comes from a callback: only 1-18 ASCII digits are a duration (as rules.ascii_int)
        if tk and (#tk > 18 or not string.find(tk, '^%d+$')) then tk = false end
        out[n + 1] = f[1] or ''
        out[n + 2] = id
        out[n + 3] = latest
        out[n + 4] = state
        out[n + 5] = attempts
        out[n + 6] = sent or ''
        out[n + 7] = f[5] or ''
        out[n + 8] = f[6] or ''
        out[n + 9] = f[7] or ''
        out[n + 10] = tk or ''
        out[n + 11] = tostring(redials)
        out[n + 12] = f[9] or ''
        out[n + 13] = f[10] or ''
        n = n + 13
      end
    end
  end
end
return {#ids, missing, out}
