-- When something next becomes due in one queue: its earliest scheduled job or lease expiry.
-- KEYS: ready, sched, active, paused
-- Returns that time as a string, '0' if a job is due now, or nil (paused, or nothing to wait
-- for) so that an idle worker blocks on the wake list alone.
local ready, sched, active, paused = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', paused) == 1 then
  return false
end
if redis.call('ZCARD', ready) > 0 then
  return '0'
end
local a = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')[2]
local b = redis.call('ZRANGE', active, 0, 0, 'WITHSCORES')[2]
if a and b then
  if tonumber(a) < tonumber(b) then
    return a
  end
  return b
end
return a or b or false
