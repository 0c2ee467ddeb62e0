-- sync-engine L3 schema for MySQL / MariaDB (applied by the engine's migrations at start).
--
-- Ids and states are VARBINARY: compared byte by byte, case-sensitive, and without the
-- PAD SPACE rule of MariaDB's *_bin text collations (under which 'a' and 'a ' collide).
-- The payload is LONGTEXT, never the JSON type (which would rewrite the submitted text).

CREATE TABLE IF NOT EXISTS sync_items (
    id           VARBINARY(255) NOT NULL,
    -- JSON payload exactly as submitted; NULL for binary items. The collation only affects
    -- comparisons, never the stored bytes; a *_bin one would make clients see a BLOB.
    payload      LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NULL,
    -- binary payload; NULL for JSON items
    payload_blob LONGBLOB NULL,
    -- hex SHA-256 of the payload bytes
    content_hash CHAR(64) CHARACTER SET ascii NOT NULL,
    state        VARBINARY(255) NOT NULL,
    -- where the write came from: 'local' (library) or '<topic>/<partition>' (sidecar)
    source       VARBINARY(255) NOT NULL,
    -- engine clock (µs) or source offset; a write applies only when newer
    version      BIGINT NOT NULL,
    created_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY idx_sync_items_state (state, id)
) ENGINE = InnoDB;

-- What a delete leaves behind: the version it happened at, so an older put replayed later
-- cannot bring the item back.
CREATE TABLE IF NOT EXISTS sync_tombstones (
    id         VARBINARY(255) NOT NULL,
    source     VARBINARY(255) NOT NULL,
    version    BIGINT NOT NULL,
    deleted_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id)
) ENGINE = InnoDB;

-- Highest version written per source, updated in the same transaction as the rows: the
-- engine's clock starts above it, and the sidecar reads its committed progress from it.
CREATE TABLE IF NOT EXISTS sync_sources (
    source     VARBINARY(255) NOT NULL,
    version    BIGINT NOT NULL,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (source)
) ENGINE = InnoDB;
