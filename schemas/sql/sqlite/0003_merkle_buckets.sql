-- The Merkle digests of each source partition (algorithm: schemas/MERKLE.md): per bucket, how
-- many items and the XOR of their leaves. Written in the same transaction as the rows they
-- describe, so the root computed from them is always the root of the committed rows.
CREATE TABLE IF NOT EXISTS sync_merkle_buckets (
    source     BLOB NOT NULL,
    bucket     INTEGER NOT NULL,
    item_count INTEGER NOT NULL,
    -- hex XOR of the bucket's leaves (64 zeros when empty)
    digest     TEXT NOT NULL,
    PRIMARY KEY (source, bucket)
);
