-- Store new jobs of one queue; a job whose id exists already (in any state) is left alone.
-- KEYS: jobs, ready, sched, seq, wake, events
-- ARGV: now, then 8 per job: id, task, payload, priority, run_at, created_at, options, redriven
-- Returns one 1 (stored) or 0 (duplicate) per job.
local jobs, ready, sched, seq, wake_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ev = listen(KEYS[6])
local now = tonumber(ARGV[1])
local n = (#ARGV - 1) / 8
local first_seq = redis.call('INCRBY', seq, n) - n
local out, due, later = {}, 0, 0
for i = 0, n - 1 do
  local a = 2 + i * 8
  local id = ARGV[a]
  if redis.call('HEXISTS', jobs, id) == 1 then
    out[i + 1] = 0
  else
    local rec = {
      ARGV[a + 1], ARGV[a + 2], 'queued', tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
      tonumber(ARGV[a + 5]), 0, ARGV[a + 6], tonumber(ARGV[a + 7]), false, false, 0, false,
      false, false, '', first_seq + i + 1, false,
    }
    save_job(jobs, id, rec)
    if add_queued(ready, sched, rec, id, now) then
      due = due + 1
    else
      later = 1
    end
    out[i + 1] = 1
    note(ev, 'enqueued', id, rec, now)
  end
end
-- A scheduled job wakes one waiter too, so it re-reads the next due time.
wake(wake_key, due + later)
publish(ev)
return out
