-- Delete jobs that are not active (an active job's worker still holds it).
-- KEYS: jobs, fail, logs, ready, sched, done, donet, dead
-- ARGV: ids...
-- Returns how many jobs were deleted.
local jobs, fail, logs, ready, sched = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local done, donet, dead = KEYS[6], KEYS[7], KEYS[8]
local n = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local rec = load_job(jobs, id)
  if rec and rec[STATE] ~= 'active' then
    local state = rec[STATE]
    if state == 'queued' then
      remove_queued(ready, sched, rec, id)
    elseif state == 'completed' then
      redis.call('ZREM', done, seq_member(rec, id))
      redis.call('ZREM', donet, retention_member(rec, id))
    elseif state == 'dead' then
      redis.call('ZREM', dead, seq_member(rec, id))
    end
    redis.call('HDEL', jobs, id)
    redis.call('HDEL', fail, id)
    redis.call('HDEL', logs, id)
    n = n + 1
  end
end
return n
