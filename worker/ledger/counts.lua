-- A campaign's keys and exact counters, moved in the same atomic step as the job's state. P is the key
-- prefix (settings.key_prefix); the key formats match worker/store/keys.py.
-- @include store/clock.lua

local function campaign_key(P, name, suffix)
  return P .. 'campaign:' .. name .. suffix
end

-- The campaign whose counters include this job (field `cm`, set at enqueue when the campaign existed),
-- or nil. A job merely tagged with a campaign name nobody created is not counted anywhere.
local function counted_campaign(campaign, cm)
  if campaign and cm then
    return campaign
  end
  return nil
end

-- Move one job from state `old` to `new` in its campaign's counters (old or new may be nil). Once a
-- campaign has nothing left queued or sending, its keys expire with the ledger TTL, like its records.
local function count_move(P, campaign, old, new, ttl)
  if not campaign or old == new then
    return
  end
  local ck = campaign_key(P, campaign, ':counts')
  if old then
    redis.call('HINCRBY', ck, old, -1)
  end
  if new then
    redis.call('HINCRBY', ck, new, 1)
  end
  if new == 'queued' and old ~= 'sending' then
    -- Work again for a campaign that may have started to expire (a dead job requeued).
    for _, suffix in ipairs({'', ':counts', ':jobs'}) do
      redis.call('PERSIST', campaign_key(P, campaign, suffix))
    end
  elseif new ~= 'queued' and new ~= 'sending' then
    -- `pending`: rows stored in chunks, not yet jobs (worker/campaigns/hopper.py): still work to do.
    local open = redis.call('HMGET', ck, 'queued', 'sending', 'pending')
    if (tonumber(open[1]) or 0) <= 0 and (tonumber(open[2]) or 0) <= 0 and (tonumber(open[3]) or 0) <= 0 then
      for _, suffix in ipairs({'', ':counts', ':jobs', ':parked'}) do
        redis.call('PEXPIRE', campaign_key(P, campaign, suffix), ttl)
      end
    end
  end
end

-- One more call sent by a campaign, in a ring of per-second counters (field second % 120).
local function count_sent_now(P, campaign, now)
  local k = campaign_key(P, campaign, ':sent')
  local sec = math.floor(now / 1000)
  local slot = ms(sec % 120)
  local n = 1
  local v = redis.call('HGET', k, slot)
  if v then
    local s, c = string.match(v, '^(%d+):(%d+)$')
    if tonumber(s) == sec then
      n = tonumber(c) + 1
    end
  end
  redis.call('HSET', k, slot, ms(sec) .. ':' .. ms(n))
  redis.call('PEXPIRE', k, 180000)
end
