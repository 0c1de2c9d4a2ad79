-- Named queries of the SQLite engine, loaded once by queries.py.
-- Parameters are named; :queues is a JSON array of queue names.

-- name: insert_job
INSERT INTO jobs (queue, id, task, payload, state, priority, run_at, created_at, options)
VALUES (:queue, :id, :task, :payload, 'queued', :priority, :run_at, :created_at, :options)
ON CONFLICT (queue, id) DO NOTHING;

-- name: any_exists
SELECT 1 FROM jobs
WHERE queue = :queue AND id IN (SELECT value FROM json_each(:ids))
LIMIT 1;

-- name: reclaim_expired
UPDATE jobs
SET state = 'queued', run_at = lease_expires_at, lease_token = NULL, lease_expires_at = NULL
WHERE state = 'active' AND lease_expires_at <= :now
  AND queue IN (SELECT value FROM json_each(:queues));

-- name: reserve
UPDATE jobs
SET state = 'active',
    lease_token = lower(hex(randomblob(12))),
    lease_expires_at = :expires_at,
    attempts = attempts + 1,
    started_at = :now,
    worker = :worker
WHERE rowid IN (
    SELECT rowid FROM jobs
    WHERE state = 'queued' AND run_at <= :now
      AND queue IN (SELECT value FROM json_each(:queues))
      AND queue NOT IN (SELECT queue FROM paused_queues)
    ORDER BY priority DESC, run_at, rowid
    LIMIT :limit
)
RETURNING *;

-- name: next_due
SELECT min(t) FROM (
    SELECT min(run_at) AS t FROM jobs
    WHERE state = 'queued' AND queue IN (SELECT value FROM json_each(:queues))
    UNION ALL
    SELECT min(lease_expires_at) FROM jobs
    WHERE state = 'active' AND queue IN (SELECT value FROM json_each(:queues))
);

-- name: extend
UPDATE jobs SET lease_expires_at = :expires_at
WHERE queue = :queue AND id = :id AND lease_token = :token AND state = 'active';

-- name: complete
UPDATE jobs
SET state = 'completed', result = :result, finished_at = :now, progress = 100,
    lease_token = NULL, lease_expires_at = NULL
WHERE queue = :queue AND id = :id AND lease_token = :token AND state = 'active';

-- name: complete_and_forget
DELETE FROM jobs
WHERE queue = :queue AND id = :id AND lease_token = :token AND state = 'active';

-- name: retry
UPDATE jobs
SET state = 'queued', run_at = :run_at, failures = json_insert(failures, '$[#]', json(:attempt)),
    lease_token = NULL, lease_expires_at = NULL
WHERE queue = :queue AND id = :id AND lease_token = :token AND state = 'active';

-- name: dead_letter
UPDATE jobs
SET state = 'dead', finished_at = :now, failures = json_insert(failures, '$[#]', json(:attempt)),
    lease_token = NULL, lease_expires_at = NULL
WHERE queue = :queue AND id = :id AND lease_token = :token AND state = 'active';

-- name: release
UPDATE jobs
SET state = 'queued', run_at = :now, attempts = max(attempts - 1, 0),
    lease_token = NULL, lease_expires_at = NULL
WHERE queue = :queue AND id = :id AND lease_token = :token AND state = 'active';

-- name: report
UPDATE jobs
SET progress = coalesce(:progress, progress),
    logs = CASE WHEN :log IS NULL THEN logs ELSE json_insert(logs, '$[#]', json(:log)) END
WHERE queue = :queue AND id = :id AND lease_token = :token AND state = 'active';

-- name: get
SELECT * FROM jobs WHERE queue = :queue AND id = :id;

-- name: list_due
SELECT * FROM jobs WHERE queue = :queue AND state = 'queued' AND run_at <= :now
ORDER BY priority DESC, run_at, rowid LIMIT :limit OFFSET :offset;

-- name: list_scheduled
SELECT * FROM jobs WHERE queue = :queue AND state = 'queued' AND run_at > :now
ORDER BY run_at, rowid LIMIT :limit OFFSET :offset;

-- name: list_active
SELECT * FROM jobs WHERE queue = :queue AND state = 'active'
ORDER BY started_at, rowid LIMIT :limit OFFSET :offset;

-- name: list_finished
SELECT * FROM jobs WHERE queue = :queue AND state = :state
ORDER BY finished_at DESC, rowid DESC LIMIT :limit OFFSET :offset;

-- name: counts
SELECT queue,
       CASE WHEN state = 'queued' AND run_at > :now THEN 'scheduled' ELSE state END AS shown,
       count(*)
FROM jobs GROUP BY queue, shown;

-- name: oldest_dead
SELECT queue, min(finished_at) FROM jobs WHERE state = 'dead' GROUP BY queue;

-- name: paused
SELECT queue FROM paused_queues;

-- name: pause
INSERT INTO paused_queues (queue) VALUES (:queue) ON CONFLICT (queue) DO NOTHING;

-- name: resume
DELETE FROM paused_queues WHERE queue = :queue;

-- name: redrive
UPDATE jobs
SET state = 'queued', run_at = :now, attempts = 0, finished_at = NULL, progress = 0,
    options = json_set(options, '$.redriven', coalesce(json_extract(options, '$.redriven'), 0) + 1)
WHERE queue = :queue AND id = :id AND state = 'dead';

-- name: delete
DELETE FROM jobs WHERE queue = :queue AND id = :id AND state != 'active';

-- name: trim_by_age
DELETE FROM jobs
WHERE queue = :queue AND task = :task AND state = 'completed' AND finished_at < :older_than;

-- name: trim_by_count
DELETE FROM jobs
WHERE queue = :queue AND task = :task AND state = 'completed' AND rowid NOT IN (
    SELECT rowid FROM jobs WHERE queue = :queue AND task = :task AND state = 'completed'
    ORDER BY finished_at DESC LIMIT :keep
);

-- name: data_version
PRAGMA data_version;
