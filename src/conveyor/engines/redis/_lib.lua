-- Shared prelude, prepended to every script of the Redis engine when it is loaded.
--
-- Storage layout of one queue (every key shares the queue's {hash tag}, so one script only
-- ever touches one cluster slot, and every key is passed in KEYS):
--   jobs    hash   id -> cmsgpack array (fields below)
--   fail    hash   id -> JSON array of failed attempts (records.Attempt.to_dict)
--   logs    hash   id -> JSON array of log lines
--   ready   zset   due queued jobs: score -priority, member run_at|seq|id (see ready_member)
--   sched   zset   queued jobs not yet due: score run_at, member seq|id
--   active  zset   leased jobs: score lease expiry, member id
--   done    zset   completed jobs: score finished_at, member seq|id
--   donet   zset   completed jobs for retention, all scores 0: member task\0finished|seq|id
--   dead    zset   dead jobs: score finished_at, member seq|id
--   paused  string present while the queue is paused
--   wake    list   tokens an idle worker blocks on (BLPOP); pushed when jobs become due
--   seq     string counter giving each job its insertion order (the SQLite rowid)
--   events  string present while someone listens to the queue's job events (see below); the
--                  events are published on the pub/sub channel of the same name
-- Times are seconds since the epoch from the engine's clock (ARGV), never Redis TIME, so
-- tests can move time.

local TASK, PAYLOAD, STATE, PRIORITY, RUN_AT, CREATED_AT, ATTEMPTS, OPTIONS, REDRIVEN = 1, 2, 3, 4, 5, 6, 7, 8, 9
local STARTED_AT, FINISHED_AT, PROGRESS, RESULT, TOKEN, EXPIRES_AT, WORKER, SEQ, SETTLED = 10, 11, 12, 13, 14, 15, 16, 17, 18

-- Enough wake tokens for this many idle workers; more would only cause spurious wake-ups.
local WAKE_TOKENS_MAX = 32

local function load_job(jobs, id)
  local packed = redis.call('HGET', jobs, id)
  if not packed then
    return nil
  end
  return cmsgpack.unpack(packed)
end

local function save_job(jobs, id, rec)
  redis.call('HSET', jobs, id, cmsgpack.pack(rec))
end

-- Full precision: tostring() keeps only 14 digits, and Lua numbers returned to Redis
-- become integers.
local function num(x)
  return string.format('%.17g', x)
end

local function opt_num(x)
  if x then
    return num(x)
  end
  return false
end

-- Fixed-width fields make lexicographic member order equal numeric order.
local function time_key(t)
  return string.format('%020.6f', math.max(t, 0))
end

local function seq_member(rec, id)
  return string.format('%012d', rec[SEQ]) .. id
end

local function seq_member_id(member)
  return string.sub(member, 13)
end

-- Members of equal score sort by bytes, so within one priority this orders by due time,
-- then insertion order: the same order as the SQLite engine's (priority, run_at, rowid).
local function ready_member(rec, id)
  return time_key(rec[RUN_AT]) .. seq_member(rec, id)
end

local function ready_member_id(member)
  return string.sub(member, 33)
end

local function retention_member(rec, id)
  return rec[TASK] .. '\0' .. time_key(rec[FINISHED_AT]) .. seq_member(rec, id)
end

local function add_ready(ready, rec, id)
  redis.call('ZADD', ready, -rec[PRIORITY], ready_member(rec, id))
end

local function add_sched(sched, rec, id)
  redis.call('ZADD', sched, rec[RUN_AT], seq_member(rec, id))
end

-- A queued job lives in ready once due and in sched before; put it where it belongs.
-- Returns true when it is due.
local function add_queued(ready, sched, rec, id, now)
  if rec[RUN_AT] <= now then
    add_ready(ready, rec, id)
    return true
  end
  add_sched(sched, rec, id)
  return false
end

local function remove_queued(ready, sched, rec, id)
  redis.call('ZREM', ready, ready_member(rec, id))
  redis.call('ZREM', sched, seq_member(rec, id))
end

local function wake(key, n)
  if n <= 0 then
    return
  end
  local tokens = {}
  for i = 1, math.min(n, WAKE_TOKENS_MAX) do
    tokens[i] = '1'
  end
  redis.call('LPUSH', key, unpack(tokens))
  redis.call('LTRIM', key, 0, WAKE_TOKENS_MAX - 1)
end

-- Move scheduled jobs whose time has come into ready (at most max of them).
local function promote(jobs, ready, sched, now, max)
  local due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'LIMIT', 0, max)
  for _, member in ipairs(due) do
    redis.call('ZREM', sched, member)
    local id = seq_member_id(member)
    local rec = load_job(jobs, id)
    if rec then
      add_ready(ready, rec, id)
    end
  end
  return #due
end

local function append_json(hash, id, item)
  local current = redis.call('HGET', hash, id)
  if current then
    current = string.sub(current, 1, -2) .. ',' .. item .. ']'
  else
    current = '[' .. item .. ']'
  end
  redis.call('HSET', hash, id, current)
end

-- The reply layout of one job; engine.py's _record() reads it in this order.
local function job_row(jobs_fail, jobs_logs, id, rec)
  return {
    id, rec[TASK], rec[PAYLOAD], rec[STATE], rec[PRIORITY], num(rec[RUN_AT]),
    num(rec[CREATED_AT]), rec[ATTEMPTS], rec[OPTIONS], rec[REDRIVEN], opt_num(rec[STARTED_AT]),
    opt_num(rec[FINISHED_AT]), num(rec[PROGRESS]), rec[RESULT], rec[TOKEN],
    opt_num(rec[EXPIRES_AT]), rec[WORKER],
    redis.call('HGET', jobs_fail, id), redis.call('HGET', jobs_logs, id),
  }
end

-- Job events. A listener (events.py) sets the queue's `events` key, with an expiry it keeps
-- renewing, to how it subscribed: 's' (SSUBSCRIBE, sharded pub/sub on Redis Cluster) or 'p'
-- (SUBSCRIBE). While the key exists, a script that changes jobs publishes what changed as one
-- JSON array per call on the channel of that name; without it, the scripts publish nothing
-- and the events cost one GET per call.
local function listen(key)
  local how = redis.call('GET', key)
  if not how then
    return false
  end
  return { key = key, how = how, list = {} }
end

-- The state a job shows: a queued job that is not due yet is scheduled.
local function shown_state(rec, now)
  if rec[STATE] == 'queued' and rec[RUN_AT] > now then
    return 'scheduled'
  end
  return rec[STATE]
end

-- Note one event (wire.py reads these fields); a no-op when nobody listens.
local function note(ev, kind, id, rec, now, progress)
  if ev then
    ev.list[#ev.list + 1] = {
      event = kind, id = id, state = shown_state(rec, now), attempt = rec[ATTEMPTS], at = now,
      progress = progress,
    }
  end
end

local function publish(ev)
  if ev and #ev.list > 0 then
    local command = 'PUBLISH'
    if ev.how == 's' then
      command = 'SPUBLISH'
    end
    -- pcall: a publish refused (say, an ACL user without channel rights) must not fail the
    -- transition it reports; listeners then wait, and poll nothing, until their timeout.
    redis.pcall(command, ev.key, cjson.encode(ev.list))
  end
end
