-- Pause (ARGV[1] = '1') or resume (ARGV[1] = '0') one queue; resuming wakes idle workers.
-- KEYS: paused, ready, wake
local paused, ready, wake_key = KEYS[1], KEYS[2], KEYS[3]
if ARGV[1] == '1' then
  redis.call('SET', paused, '1')
else
  redis.call('DEL', paused)
  -- Scheduled jobs may have come due while paused; one token makes a waiter look.
  wake(wake_key, math.max(redis.call('ZCARD', ready), 1))
end
return 1
