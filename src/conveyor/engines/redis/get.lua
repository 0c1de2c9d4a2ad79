-- Read one job.
-- KEYS: jobs, fail, logs
-- ARGV: id
-- Returns the job's row (see job_row) or nil.
local rec = load_job(KEYS[1], ARGV[1])
if not rec then
  return false
end
return job_row(KEYS[2], KEYS[3], ARGV[1], rec)
