-- sync-engine L3 schema for SQLite (applied by the engine's migrations at start).
--
-- Ids and states are BLOBs, like MySQL's VARBINARY: compared byte by byte. Query a single id
-- with `WHERE id = CAST('the-id' AS BLOB)`. The payload is TEXT exactly as submitted.

CREATE TABLE IF NOT EXISTS sync_items (
    id           BLOB    NOT NULL PRIMARY KEY,
    payload      TEXT    NULL,
    payload_blob BLOB    NULL,
    content_hash TEXT    NOT NULL,
    state        BLOB    NOT NULL,
    source       BLOB    NOT NULL,
    version      INTEGER NOT NULL,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS idx_sync_items_state ON sync_items (state, id);

CREATE TABLE IF NOT EXISTS sync_tombstones (
    id         BLOB    NOT NULL PRIMARY KEY,
    source     BLOB    NOT NULL,
    version    INTEGER NOT NULL,
    deleted_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS sync_sources (
    source     BLOB    NOT NULL PRIMARY KEY,
    version    INTEGER NOT NULL,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
