-- Lease up to `limit` due jobs from one or more queues, highest priority first, then oldest
-- due, then oldest enqueued. Before that, per queue: expired leases become due again (their
-- attempt stays counted) and scheduled jobs whose time has come are promoted.
-- KEYS: 9 per queue: jobs, fail, logs, ready, sched, active, paused, wake, events
--   (several queues in one call only on a single server; on a cluster one queue per call)
-- ARGV: now, lease expiry, limit, worker, token prefix (random per call), promote batch
-- Returns one row per leased job (see job_row in _lib.lua), plus its queue's 1-based index.
local now, expires = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, worker, token_prefix = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local batch = tonumber(ARGV[6])
local nq = #KEYS / 9

local candidates, evs = {}, {}
for q = 0, nq - 1 do
  local k = q * 9
  evs[q] = listen(KEYS[k + 9])
  local jobs, ready, sched, active = KEYS[k + 1], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
  local expired = redis.call('ZRANGEBYSCORE', active, '-inf', now, 'LIMIT', 0, batch)
  for _, id in ipairs(expired) do
    redis.call('ZREM', active, id)
    local rec = load_job(jobs, id)
    if rec then
      rec[STATE] = 'queued'
      rec[RUN_AT] = rec[EXPIRES_AT]
      rec[TOKEN] = false
      rec[EXPIRES_AT] = false
      save_job(jobs, id, rec)
      add_ready(ready, rec, id)
      note(evs[q], 'lost', id, rec, now)
    end
  end
  -- A paused queue hands nothing out, but its expired leases were still reclaimed above,
  -- as the SQLite engine does.
  if redis.call('EXISTS', KEYS[k + 7]) == 0 then
    promote(jobs, ready, sched, now, batch)
    local heads = redis.call('ZRANGE', ready, 0, limit - 1, 'WITHSCORES')
    for i = 1, #heads, 2 do
      candidates[#candidates + 1] = { tonumber(heads[i + 1]), heads[i], q }
    end
  end
end

if nq > 1 then
  table.sort(candidates, function(a, b)
    if a[1] ~= b[1] then
      return a[1] < b[1]
    end
    return a[2] < b[2]
  end)
end

local out = {}
for i = 1, math.min(limit, #candidates) do
  local c = candidates[i]
  local k = c[3] * 9
  local jobs, ready = KEYS[k + 1], KEYS[k + 4]
  local id = ready_member_id(c[2])
  redis.call('ZREM', ready, c[2])
  local rec = load_job(jobs, id)
  if rec then
    rec[STATE] = 'active'
    rec[TOKEN] = token_prefix .. i
    rec[EXPIRES_AT] = expires
    rec[ATTEMPTS] = rec[ATTEMPTS] + 1
    rec[STARTED_AT] = now
    rec[WORKER] = worker
    save_job(jobs, id, rec)
    redis.call('ZADD', KEYS[k + 6], expires, id)
    local row = job_row(KEYS[k + 2], KEYS[k + 3], id, rec)
    row[#row + 1] = c[3] + 1
    out[#out + 1] = row
    note(evs[c[3]], 'active', id, rec, now)
  end
end

-- Wake tokens only matter while due jobs wait: drop them once a queue has none (or is
-- paused), so an idle worker blocks instead of waking for nothing.
for q = 0, nq - 1 do
  local k = q * 9
  publish(evs[q])
  if redis.call('ZCARD', KEYS[k + 4]) == 0 or redis.call('EXISTS', KEYS[k + 7]) == 1 then
    redis.call('DEL', KEYS[k + 8])
  end
end
return out
