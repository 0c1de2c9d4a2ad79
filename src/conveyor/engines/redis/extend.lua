-- Push lease expiries of one queue forward, for leases still held.
-- KEYS: jobs, active
-- ARGV: new expiry, then pairs of id, token
-- Returns one 1 (extended) or 0 (lease lost) per lease.
local jobs, active = KEYS[1], KEYS[2]
local expires = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local rec = load_job(jobs, id)
  if rec and rec[STATE] == 'active' and rec[TOKEN] == token then
    rec[EXPIRES_AT] = expires
    save_job(jobs, id, rec)
    redis.call('ZADD', active, expires, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
