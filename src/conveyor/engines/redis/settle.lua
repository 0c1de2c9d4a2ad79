-- End leases of one queue: complete, complete-and-forget, retry, dead-letter or release.
-- Each settlement applies only if the job is active under that very lease token; a stale
-- token changes nothing, and so does a second settlement of one lease. Only this very call
-- replayed (redis-py resends a command whose reply a dropped connection lost) answers 1
-- again, recognised by its random call id, instead of reporting a lost lease.
-- KEYS: jobs, fail, logs, ready, sched, active, done, donet, dead, wake, events
-- ARGV: now, call id, then 5 per settlement: kind, id, token, a, b
--   kind c: complete, a = result    n: complete with no result    f: complete and delete
--        r: retry, a = run_at, b = attempt JSON    d: dead-letter, b = attempt JSON
--        l: release (the attempt does not count)
-- Returns one 1 (applied) or 0 (stale lease) per settlement.
local jobs, fail, logs, ready, sched = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local active, done, donet, dead, wake_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local now, call = tonumber(ARGV[1]), ARGV[2]
local ev = listen(KEYS[11])
local events = { c = 'completed', n = 'completed', f = 'completed', r = 'failed', d = 'dead',
  l = 'released' }
local out, woken = {}, 0
-- Jobs settled by this execution: a second settlement of one of them in the same batch is
-- a duplicate, not a replay.
local settled_here = {}
for i = 0, (#ARGV - 2) / 5 - 1 do
  local a = 3 + i * 5
  local kind, id, token = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local rec = load_job(jobs, id)
  local ok = 0
  if rec and rec[STATE] == 'active' and rec[TOKEN] == token then
    ok = 1
    settled_here[id] = true
    redis.call('ZREM', active, id)
    if kind == 'f' then
      redis.call('HDEL', jobs, id)
      redis.call('HDEL', fail, id)
      redis.call('HDEL', logs, id)
      rec[STATE] = 'completed'
    else
      rec[TOKEN] = false
      rec[EXPIRES_AT] = false
      rec[SETTLED] = call .. token
      if kind == 'c' or kind == 'n' then
        rec[STATE] = 'completed'
        rec[RESULT] = (kind == 'c') and ARGV[a + 3]
        rec[FINISHED_AT] = now
        rec[PROGRESS] = 100
        redis.call('ZADD', done, now, seq_member(rec, id))
        redis.call('ZADD', donet, 0, retention_member(rec, id))
      elseif kind == 'r' then
        rec[STATE] = 'queued'
        rec[RUN_AT] = tonumber(ARGV[a + 3])
        append_json(fail, id, ARGV[a + 4])
        add_queued(ready, sched, rec, id, now)
        woken = woken + 1
      elseif kind == 'd' then
        rec[STATE] = 'dead'
        rec[FINISHED_AT] = now
        append_json(fail, id, ARGV[a + 4])
        redis.call('ZADD', dead, now, seq_member(rec, id))
      elseif kind == 'l' then
        rec[STATE] = 'queued'
        rec[RUN_AT] = now
        rec[ATTEMPTS] = math.max(rec[ATTEMPTS] - 1, 0)
        add_ready(ready, rec, id)
        woken = woken + 1
      else
        return redis.error_reply('unknown settlement kind ' .. kind)
      end
      save_job(jobs, id, rec)
    end
    note(ev, events[kind], id, rec, now)
  elseif rec and rec[SETTLED] == call .. token and not settled_here[id] then
    ok = 1
  end
  out[i + 1] = ok
end
wake(wake_key, woken)
publish(ev)
return out
