-- Store a running job's progress and/or append a log line, if the lease is still held.
-- KEYS: jobs, logs, events
-- ARGV: id, token, progress ('' = unchanged), log line JSON ('' = none), now
-- Returns 1, or 0 when the lease was lost.
local jobs, logs = KEYS[1], KEYS[2]
local id, token, progress, line = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rec = load_job(jobs, id)
if not (rec and rec[STATE] == 'active' and rec[TOKEN] == token) then
  return 0
end
if progress ~= '' then
  rec[PROGRESS] = tonumber(progress)
  save_job(jobs, id, rec)
  local ev = listen(KEYS[3])
  note(ev, 'progress', id, rec, tonumber(ARGV[5]), rec[PROGRESS])
  publish(ev)
end
if line ~= '' then
  append_json(logs, id, line)
end
return 1
