-- Append one chunk of campaign rows (worker/campaigns/rows.py), all or nothing: each member goes into
-- the campaign's number set, the chunk onto its rows list, and its row count onto `pending`, in one step;
-- or, when any member is already in the set (a re-run, or a repeat) or any number is on the do-not-call
-- list, nothing is written and those are returned, so the caller drops them and sends the chunk again
-- without them. That is what makes a launch resumable after a crash: what a previous run appended is in
-- the set, and only that. (Listed numbers are checked again by the worker right before dialling.)
--
-- KEYS[1] campaign hash  KEYS[2] campaign counts  KEYS[3] campaign rows list  KEYS[4] do-not-call set
-- ARGV[1] key prefix  ARGV[2] campaign name  ARGV[3] bucket count for a campaign that has none yet
-- ARGV[4] the chunk's members joined by ',' (members never hold ','), in the chunk's row order
-- ARGV[5] the chunk blob (rows.encode_chunk of exactly those rows)
-- ARGV[6] the rows' number keys joined by ',', or '' when every member is its row's number key
-- Returns {'ok', added}, {'skip', number of duplicates, duplicate member..., listed member...} (nothing
-- written), {'missing'} or {'cancelled'} (nothing written: no rows are added to a campaign that does not
-- exist or was cancelled).
-- @include campaigns/number_set.lua
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {'missing'}
end
if status == 'cancelled' then
  return {'cancelled'}
end
local buckets = tonumber(redis.call('HGET', KEYS[1], 'buckets'))
if not buckets then
  buckets = tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'buckets', ARGV[3])
end
local P, name = ARGV[1], ARGV[2]
local numbers = nil
if ARGV[6] ~= '' then
  numbers = {}
  for k in string.gmatch(ARGV[6], '[^,]+') do
    numbers[#numbers + 1] = k
  end
end
local members, keys, seen, dups, listed = {}, {}, {}, {}, {}
local i = 0
for m in string.gmatch(ARGV[4], '[^,]+') do
  i = i + 1
  local k = number_set_key(P, name, m, buckets)
  if seen[m] or redis.call('HEXISTS', k, m) == 1 then
    dups[#dups + 1] = m
  elseif redis.call('SISMEMBER', KEYS[4], numbers and numbers[i] or m) == 1 then
    listed[#listed + 1] = m
  else
    seen[m] = true
    members[#members + 1] = m
    keys[#keys + 1] = k
  end
end
if #dups > 0 or #listed > 0 then
  local out = {'skip', #dups}
  for _, m in ipairs(dups) do
    out[#out + 1] = m
  end
  for _, m in ipairs(listed) do
    out[#out + 1] = m
  end
  return out
end
if #members == 0 then
  return {'ok', 0}
end
for j = 1, #members do
  -- '' (the cheapest value) = pending: in a chunk, not yet materialised. The hopper and the ledger write
  -- the later statuses (see worker/campaigns/hopper.py).
  redis.call('HSET', keys[j], members[j], '')
end
redis.call('RPUSH', KEYS[3], ARGV[5])
redis.call('HINCRBY', KEYS[2], 'pending', #members)
-- A campaign with work to do never expires (count_move starts the TTL when it has none left).
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
return {'ok', #members}
