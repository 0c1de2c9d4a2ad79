-- Conveyor's SQLite schema, version 1. Applied by SQLiteEngine.connect(); idempotent.
-- Storage states: queued (due when run_at <= now, else shown as scheduled), active,
-- completed, dead. JSON columns hold arrays (failures, logs) appended in place.
CREATE TABLE IF NOT EXISTS jobs (
    queue            TEXT    NOT NULL,
    id               TEXT    NOT NULL,
    task             TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    state            TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           REAL    NOT NULL,
    created_at       REAL    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    options          TEXT    NOT NULL DEFAULT '{}',
    started_at       REAL,
    finished_at      REAL,
    progress         REAL    NOT NULL DEFAULT 0,
    result           BLOB,
    failures         TEXT    NOT NULL DEFAULT '[]',
    logs             TEXT    NOT NULL DEFAULT '[]',
    lease_token      TEXT,
    lease_expires_at REAL,
    worker           TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (queue, id)
);

-- Reserve walks this index in priority and due order.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (queue, priority DESC, run_at) WHERE state = 'queued';
-- Reclaiming expired leases touches only active jobs.
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_expires_at) WHERE state = 'active';
-- Listings of completed and dead jobs, newest first; retention trims by task.
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (queue, state, task, finished_at);

CREATE TABLE IF NOT EXISTS paused_queues (
    queue TEXT PRIMARY KEY
);

PRAGMA user_version = 1;
