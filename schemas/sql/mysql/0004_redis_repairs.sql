-- Ids whose Redis copy may be wrong: a Redis write failed (or was skipped while Redis was
-- unreachable) after their SQL commit. The engine rewrites each from its SQL row and deletes
-- the mark; `marks` counts how often it was marked, so a repair never deletes a mark made
-- after it read the row. Empty whenever Redis is healthy.
CREATE TABLE IF NOT EXISTS sync_redis_repairs (
    id        VARBINARY(255) NOT NULL PRIMARY KEY,
    marks     BIGINT NOT NULL DEFAULT 1,
    marked_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB;
