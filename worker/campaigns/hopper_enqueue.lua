-- Materialise a campaign's rows: the hopper's enqueue (worker/campaigns/hopper.py). A guard decides, per
-- row and atomically with the enqueue, whether the row is still to be made a job; the rows it keeps are
-- then enqueued by ledger/enqueue.lua itself (included below, unchanged), so a materialised job is a job
-- like any other: ledger record, queue entry, campaign counters, pacing, parking, events.
--
-- ARGV[1..3] as enqueue.lua (key prefix, ledger TTL ms, the jobs' records)
-- ARGV[4] the campaign  ARGV[5] per record, \30-separated: the number-set key holding its number
-- ARGV[6] per record, \30-separated: its field there (the number key)
--
-- The number-set value of a row decides (worker/campaigns/numbers.py has every value):
--   ""  pending: made a job now, value -> "m" (materialised)
--   anything else: done before (a chunk taken again after its hopper died, a second hopper): skipped
-- A row whose job id is already taken by another job (a row's own `id`, used elsewhere) is not enqueued:
-- value -> "d" (it is no job of the campaign; status reports it in `duplicate_ids`).
-- A row of a cancelled campaign is not enqueued either: value -> "x", counted `cancelled` and in `total`.
-- Counters: `pending` goes down by every row decided here, in this one script (enqueue.lua adds the jobs
-- to `queued` and `total`): status stays exact.
-- Returns enqueue.lua's reply for the rows kept (one flag each); the caller counts the others as decided
-- before (skipped), duplicate ids or cancelled from the number set if it needs to.
-- @include store/clock.lua
-- @include ledger/counts.lua
local HP, hname = ARGV[1], ARGV[4]
local hcounts = campaign_key(HP, hname, ':counts')
local hcancelled = redis.call('HGET', campaign_key(HP, hname, ''), 'status') == 'cancelled'
local hbuckets, hfields, hrecords = {}, {}, {}
for v in string.gmatch(ARGV[5], '[^\30]+') do hbuckets[#hbuckets + 1] = v end
for v in string.gmatch(ARGV[6], '[^\30]+') do hfields[#hfields + 1] = v end
for v in string.gmatch(ARGV[3], '[^\30]+') do hrecords[#hrecords + 1] = v end
if #hbuckets ~= #hrecords or #hfields ~= #hrecords then
  return redis.error_reply('hopper_enqueue: one number-set key and field per record')
end
local hkept, hskipped, hdup, hcancel = {}, 0, 0, 0
for i = 1, #hrecords do
  local v = redis.call('HGET', hbuckets[i], hfields[i])
  if v ~= '' then
    hskipped = hskipped + 1
  elseif hcancelled then
    redis.call('HSET', hbuckets[i], hfields[i], 'x')
    hcancel = hcancel + 1
  else
    local id = string.match(hrecords[i], '^([^\31]*)')
    if redis.call('EXISTS', HP .. 'job:' .. id) == 1 then
      redis.call('HSET', hbuckets[i], hfields[i], 'd')
      hdup = hdup + 1
    else
      redis.call('HSET', hbuckets[i], hfields[i], 'm')
      hkept[#hkept + 1] = hrecords[i]
    end
  end
end
local hdecided = #hkept + hdup + hcancel
if hdecided > 0 then
  redis.call('HINCRBY', hcounts, 'pending', -hdecided)
end
if hdup > 0 then
  redis.call('HINCRBY', hcounts, 'duplicate_ids', hdup)
end
if hcancel > 0 then
  redis.call('HINCRBY', hcounts, 'cancelled', hcancel)
  redis.call('HINCRBY', hcounts, 'total', hcancel)
end
ARGV[3] = table.concat(hkept, '\30')
-- @include ledger/enqueue.lua
