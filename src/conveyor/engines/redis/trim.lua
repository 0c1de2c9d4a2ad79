-- Retention of one task's completed jobs: delete those finished before older_than, then
-- all but the newest `keep`. At most `batch` jobs per rule and call, so a long backlog is
-- worked off over several maintenance rounds instead of blocking the server at once.
-- KEYS: jobs, fail, logs, done, donet
-- ARGV: task, keep ('' = no count limit), older_than ('' = no age limit), batch
-- Returns how many jobs were deleted.
local jobs, fail, logs, done, donet = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local task, keep, older_than, batch = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local low, high = '[' .. task .. '\0', '(' .. task .. '\1'
-- member = task \0 finished_at(20) seq(12) id
local seq_start = #task + 22

local function remove(members)
  for _, member in ipairs(members) do
    local id = string.sub(member, seq_start + 12)
    redis.call('ZREM', donet, member)
    redis.call('ZREM', done, string.sub(member, seq_start))
    redis.call('HDEL', jobs, id)
    redis.call('HDEL', fail, id)
    redis.call('HDEL', logs, id)
  end
  return #members
end

local n = 0
if older_than ~= '' then
  local before = '(' .. task .. '\0' .. time_key(tonumber(older_than))
  n = n + remove(redis.call('ZRANGEBYLEX', donet, low, before, 'LIMIT', 0, batch))
end
if keep ~= '' then
  local extra = redis.call('ZLEXCOUNT', donet, low, high) - tonumber(keep)
  if extra > 0 then
    n = n + remove(redis.call('ZRANGEBYLEX', donet, low, high, 'LIMIT', 0, math.min(extra, batch)))
  end
end
return n
