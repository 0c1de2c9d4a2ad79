-- List jobs of one queue in one state, paged. queued: priority, then due time; scheduled:
-- due time; active: start time; completed and dead: newest first. Scheduled jobs that came
-- due are promoted first so "queued" lists every due job in reserve order.
-- KEYS: jobs, fail, logs, ready, sched, active, done, dead
-- ARGV: state, now, limit, offset, promote batch
local jobs, fail, logs, ready, sched = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local active, done, dead = KEYS[6], KEYS[7], KEYS[8]
local state, now = ARGV[1], tonumber(ARGV[2])
local limit, offset, batch = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local last = offset + limit - 1

local ids = {}
if state == 'queued' then
  while promote(jobs, ready, sched, now, batch) == batch do
  end
  for _, member in ipairs(redis.call('ZRANGE', ready, offset, last)) do
    ids[#ids + 1] = ready_member_id(member)
  end
elseif state == 'scheduled' then
  local members = redis.call('ZRANGEBYSCORE', sched, '(' .. num(now), '+inf', 'LIMIT', offset, limit)
  for _, member in ipairs(members) do
    ids[#ids + 1] = seq_member_id(member)
  end
elseif state == 'active' then
  local entries = {}
  for _, id in ipairs(redis.call('ZRANGE', active, 0, -1)) do
    local rec = load_job(jobs, id)
    if rec then
      entries[#entries + 1] = { rec[STARTED_AT] or 0, rec[SEQ], id }
    end
  end
  table.sort(entries, function(a, b)
    if a[1] ~= b[1] then
      return a[1] < b[1]
    end
    return a[2] < b[2]
  end)
  for i = offset + 1, math.min(offset + limit, #entries) do
    ids[#ids + 1] = entries[i][3]
  end
else
  local index = (state == 'completed') and done or dead
  for _, member in ipairs(redis.call('ZREVRANGE', index, offset, last)) do
    ids[#ids + 1] = seq_member_id(member)
  end
end

local out = {}
for _, id in ipairs(ids) do
  local rec = load_job(jobs, id)
  if rec then
    out[#out + 1] = job_row(fail, logs, id, rec)
  end
end
return out
