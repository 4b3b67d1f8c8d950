-- Enqueue dial jobs, each all or nothing: ledger record + queue entry, or nothing when the job id is
-- already known (idempotency). Server time (TIME) stamps everything.
-- No arq job (`arq:job:<id>`) is written: the worker's claim (claim.lua) materializes it when it starts
-- the job, so a queued job costs its ledger hash and its queue entry only.
-- One call takes a batch of jobs: the per-call cost of a script (and of packing its arguments) is paid
-- once per batch, which is most of what enqueuing costs.
--
-- ARGV[1] key prefix  ARGV[2] ledger TTL ms
-- ARGV[3] the jobs, one record each, records separated by \30 (ASCII record separator); a record is its
-- fields joined by \31 (unit separator): id, priority, called, campaign or "", not_before ms or "",
-- deadline ms or "", IANA time zone or "", statusCallbackUrl or "" (field `scb`, never part of the body),
-- number key or "" (field `nk`: a campaign job's E.164 key when it is not gate.lua's number_key(called),
-- see worker/numbers.py), body (compact JSON). No field may hold \30 or \31 (JSON escapes control characters; the URL is
-- checked for them). (One argument per batch: packing arguments is most of a producer's work.)
-- Returns {flags, states...}: flags has one character per job, "1" stored (state "queued"), "0" a
-- duplicate; then the existing state of each duplicate, in order. (A compact reply: converting and
-- parsing two reply values per job cost the producer more than storing the job.)
-- Keys are built from the prefix (see keys.py): ledger `job:<id>`, `queue:<priority>`, and for a
-- campaign `campaign:<name>` with `:counts`, `:jobs`, `:parked`.
--
-- The body is stored in pieces of at most 64 bytes: `body`, then `b1`, `b2`, ... (JobRecord.from_hash
-- joins them). 64 bytes is Redis' default hash-max-listpack-value: one longer value turns the whole hash
-- into a real hash table, ~400 bytes more per queued job (bench P5). Pieces end on UTF-8 character
-- boundaries, so each one decodes on its own (readers decode every hash value separately).
--
-- A campaign created by `dialer campaign launch` (its hash exists) also gets, atomically with the job:
-- its counters (queued + 1, total + 1), the job id appended to its job list, and a queue score from its
-- pacing clock: each (campaign, priority) hands out scores `pace` ms apart from max(now, last score),
-- so concurrent campaigns of one priority interleave in the queue instead of the first one launched
-- holding every worker until it is done (see README, "Fairness"). A paused campaign's new job goes
-- straight to its parked set.
-- @include store/clock.lua
-- @include ledger/counts.lua
-- @include ledger/events.lua
local P = ARGV[1]
local ledger_ttl0 = tonumber(ARGV[2])
local now = now_ms()
local snow = ms(now)
local campaigns = {}
local flags = {}
local out = {false}
-- Enqueue sequence numbers: jobs enqueued in the same millisecond share a queue score, and arq then
-- starts them in job-id order; workers break such ties by this number, so a level stays FIFO.
local seq0 = tonumber(redis.call('GET', P .. 'seq') or '0')
local seq = seq0

-- A campaign's bookkeeping is written once per batch (and before an error is returned, so the jobs
-- stored before it are counted).
local function flush()
  for name, c in pairs(campaigns) do
    if c and #c.ids > 0 then
      local counts = campaign_key(P, name, ':counts')
      local jobs = campaign_key(P, name, ':jobs')
      for prio, vt in pairs(c.vt) do
        redis.call('HSET', c.key, 'vt:' .. prio, string.format('%.3f', vt))
      end
      redis.call('HINCRBY', counts, 'queued', #c.ids)
      redis.call('HINCRBY', counts, 'total', #c.ids)
      redis.call('RPUSH', jobs, unpack(c.ids))
      -- A campaign with work to do never expires (see count_move for when it starts to).
      redis.call('PERSIST', c.key)
      redis.call('PERSIST', counts)
      redis.call('PERSIST', jobs)
      c.ids = {}
    end
  end
end

-- Appends the body's fields to `f` (see the header). A body too long for hash-max-listpack-entries
-- (128 fields in redis.conf, 512 compiled in: over ~7 KB) makes a hash table anyway: correct, just bigger.
-- (Written for speed: it runs for every job enqueued.)
local PIECE = 64
local byte, sub = string.byte, string.sub
local piece_names = {'body'}
local function add_body(f, body)
  local n = #body
  local m = #f
  if n <= PIECE then
    f[m + 1] = 'body'; f[m + 2] = body
    return
  end
  local i, k = 1, 1
  while i <= n do
    local j = i + PIECE - 1
    if j >= n then
      j = n
    else
      local b = byte(body, j + 1)
      if b >= 128 and b < 192 then
        -- The cut would fall before a continuation byte (10xxxxxx): end the piece before that
        -- character instead. A UTF-8 character is at most 4 bytes; bytes that are not UTF-8 (the
        -- producer never sends any) are cut at 64.
        local cut = j - 1
        while cut > j - 4 do
          b = byte(body, cut + 1)
          if b < 128 or b >= 192 then
            break
          end
          cut = cut - 1
        end
        if cut > j - 4 then
          j = cut
        end
      end
    end
    local name = piece_names[k]
    if not name then
      name = 'b' .. (k - 1)
      piece_names[k] = name
    end
    f[m + 1] = name; f[m + 2] = sub(body, i, j)
    m = m + 2
    k = k + 1
    i = j + 1
  end
end

-- Queues that got a job due now: their workers are woken (PUBLISH on `<prefix>wake`, the queue's key
-- as the message) instead of finding the job at their next poll. Only a latency gain: polling stays.
local due = {}
local function wake()
  for zkey in pairs(due) do
    redis.call('PUBLISH', P .. 'wake', zkey)
  end
end

local F = '([^\30\31]*)\31'
local RECORD = F .. F .. F .. F .. F .. F .. F .. F .. F .. '([^\30]*)'
for id, prio, called, campaign, nb, dl, tz, scb, nk, body in string.gmatch(ARGV[3], RECORD) do
  local jobkey = P .. 'job:' .. id
  local state = redis.call('EXISTS', jobkey) == 1 and redis.call('HGET', jobkey, 'state')
  if state then
    flags[#flags + 1] = '0'
    out[#out + 1] = state
  else
    local score = now
    if nb ~= '' then
      score = math.max(now, tonumber(nb))
    end
    local c = nil
    if campaign ~= '' then
      c = campaigns[campaign]
      if c == nil then
        local ck = campaign_key(P, campaign, '')
        c = false
        if redis.call('EXISTS', ck) == 1 then
          local h = redis.call('HMGET', ck, 'status', 'pace')
          -- Even unpaced, consecutive jobs get distinct scores so the queue keeps the launch order.
          local step = tonumber(h[2]) or 0
          if step < 0.01 then
            step = 0.01
          end
          c = {key = ck, paused = h[1] == 'paused', step = step, vt = {}, ids = {}}
        end
        campaigns[campaign] = c
      end
      if c == false then
        c = nil
      end
    end
    local score_text
    if c then
      local vt = c.vt[prio] or tonumber(redis.call('HGET', c.key, 'vt:' .. prio)) or 0
      if nb ~= '' and score > math.max(now, vt) then
        -- Deferred past the campaign's clock (a redial, a notBefore job): it keeps its own time and does
        -- not move the clock, or every later job of the campaign (a resume's backlog) would wait behind it.
        c.vt[prio] = vt
      else
        if vt > score then
          score = vt
        end
        c.vt[prio] = score + c.step
      end
      score_text = string.format('%.3f', score)
    else
      score_text = ms(score)
    end
    -- A deferred job must outlive its wait: its TTL counts from its run-at time.
    local ledger_ttl = ledger_ttl0 + math.ceil(score - now)
    -- Memory: `updated` (= created) and `attempts` (= 0) are left out until the first transition.
    seq = seq + 1
    local f = {'state', 'queued', 'prio', prio, 'called', called, 'created', snow, 'q', seq}
    add_body(f, body)
    if campaign ~= '' then
      f[#f + 1] = 'campaign'; f[#f + 1] = campaign
    end
    if c then
      f[#f + 1] = 'cm'; f[#f + 1] = '1'
    end
    if nb ~= '' then
      f[#f + 1] = 'nb'; f[#f + 1] = nb
    end
    if dl ~= '' then
      f[#f + 1] = 'dl'; f[#f + 1] = dl
    end
    if tz ~= '' then
      f[#f + 1] = 'tz'; f[#f + 1] = tz
    end
    if scb ~= '' then
      f[#f + 1] = 'scb'; f[#f + 1] = scb
    end
    if nk ~= '' then
      f[#f + 1] = 'nk'; f[#f + 1] = nk
    end
    local paused = c and c.paused
    if paused then
      f[#f + 1] = 'pk'; f[#f + 1] = snow
    end
    -- Scripts are not rolled back on error: the only write that can fail (ZADD on a key of another
    -- type) goes first, so a failing job leaves nothing of itself behind (the ones before it stay,
    -- with their campaign's bookkeeping).
    local zkey = P .. 'queue:' .. prio
    if paused then
      zkey = campaign_key(P, campaign, ':parked')
    end
    local added = redis.pcall('ZADD', zkey, score_text, id)
    if type(added) == 'table' and added.err then
      flush()
      wake()
      if seq > seq0 then redis.call('SET', P .. 'seq', seq) end
      return redis.error_reply(added.err)
    end
    redis.call('HSET', jobkey, unpack(f))
    if not paused then
      redis.call('PEXPIRE', jobkey, ms(ledger_ttl))
    end
    if c then
      c.ids[#c.ids + 1] = id
    end
    local detail = {priority = tonumber(prio)}
    if nb ~= '' then
      detail.not_before = tonumber(nb)
    end
    emit_event(P, id, campaign, 'queued', 'queued', '0', detail)
    if not paused and score <= now then
      due[zkey] = true
    end
    flags[#flags + 1] = '1'
  end
end
flush()
wake()
if seq > seq0 then
  redis.call('SET', P .. 'seq', seq)  -- written only when something was stored: a duplicate writes nothing
end
out[1] = table.concat(flags)
return out
