-- Counts of one queue by state, its paused flag and its oldest dead job's time.
-- KEYS: ready, sched, active, done, dead, paused
-- ARGV: now
-- Returns queued, scheduled, active, completed, dead, paused (0/1), oldest dead (or nil).
local ready, sched, active, done, dead, paused = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = num(tonumber(ARGV[1]))
local oldest = redis.call('ZRANGE', dead, 0, 0, 'WITHSCORES')
return {
  redis.call('ZCARD', ready) + redis.call('ZCOUNT', sched, '-inf', now),
  redis.call('ZCOUNT', sched, '(' .. now, '+inf'),
  redis.call('ZCARD', active),
  redis.call('ZCARD', done),
  redis.call('ZCARD', dead),
  redis.call('EXISTS', paused),
  oldest[2] or false,
}
