-- The event stream (Keys.events): one entry per ledger transition a producer cares about, written in the
-- same script, hence the same atomic step, as the transition itself. Every entry has the same seven
-- fields, so Redis stores their names once per stream node: type, job, campaign ("" for none), state,
-- attempt, ts (ms, Redis clock) and data (compact JSON of the type's details, "" for none).
-- EVENTS_MAX_LEN is set by the loader (worker/store/scripts.py) from DIALER_EVENTS_MAX_LEN; 0 = no events.
-- @include store/clock.lua

-- One entry with every field given (the enqueue script knows them all without reading the record).
local function emit_event(P, job_id, campaign, kind, state, attempt, data)
  if EVENTS_MAX_LEN <= 0 then
    return
  end
  local payload = ''
  if data then
    payload = cjson.encode(data)
  end
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', EVENTS_MAX_LEN, '*', 'type', kind, 'job', job_id,
    'campaign', campaign, 'state', state, 'attempt', attempt, 'ts', ms(now_ms()), 'data', payload)
end

-- One entry for the job whose record is `jobkey` (its campaign and attempt count read from it).
local function emit(P, jobkey, kind, state, data)
  if EVENTS_MAX_LEN <= 0 then
    return
  end
  local f = redis.call('HMGET', jobkey, 'campaign', 'attempts')
  emit_event(P, string.sub(jobkey, #P + 5), f[1] or '', kind, state, f[2] or '0', data)
end
