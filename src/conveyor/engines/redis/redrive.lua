-- Move dead jobs back to queued, due now: attempts reset, failure log kept, and
-- options.redriven counted up (the core numbers rounds of attempts with it).
-- KEYS: jobs, ready, dead, wake, events
-- ARGV: now, ids...
-- Returns how many jobs were redriven.
local jobs, ready, dead, wake_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[1])
local ev = listen(KEYS[5])
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local rec = load_job(jobs, id)
  if rec and rec[STATE] == 'dead' then
    redis.call('ZREM', dead, seq_member(rec, id))
    rec[STATE] = 'queued'
    rec[RUN_AT] = now
    rec[ATTEMPTS] = 0
    rec[FINISHED_AT] = false
    rec[PROGRESS] = 0
    rec[REDRIVEN] = rec[REDRIVEN] + 1
    save_job(jobs, id, rec)
    add_ready(ready, rec, id)
    n = n + 1
    note(ev, 'redriven', id, rec, now)
  end
end
wake(wake_key, n)
publish(ev)
return n
