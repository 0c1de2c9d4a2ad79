"""The embedded SQLite engine: one file, WAL mode, safe for several processes on one machine."""
