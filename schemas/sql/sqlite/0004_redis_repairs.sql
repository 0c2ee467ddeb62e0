-- Ids whose Redis copy may be wrong: a Redis write failed (or was skipped while Redis was
-- unreachable) after their SQL commit. The engine rewrites each from its SQL row and deletes
-- the mark; `marks` counts how often it was marked, so a repair never deletes a mark made
-- after it read the row. Empty whenever Redis is healthy.
CREATE TABLE IF NOT EXISTS sync_redis_repairs (
    id        BLOB NOT NULL PRIMARY KEY,
    marks     INTEGER NOT NULL DEFAULT 1,
    marked_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
