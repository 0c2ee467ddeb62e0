//! An independent reference implementation of `sync-engine-merkle-v1` (schemas/MERKLE.md),
//! written from the document alone: it shares no code with `sync_engine::merkle`, so a test
//! comparing the two catches a drift of either from the spec.
//!
//! Declared by a test binary as `#[path = "common/merkle_ref.rs"] mod merkle_ref;`; its own
//! test (the document's worked example) then runs in that binary too.
#![allow(dead_code)] // each test binary uses its own subset

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The root of a partition without items.
pub const EMPTY_ROOT: &str = "c3526b2d8416b82ec1efbfaa8577fd962febbeba50d46f6f5f34114088addb83";
/// The node of a bucket without items.
pub const EMPTY_NODE: &str = "f350fbd7557ef9d0a8fb9906b5699288f3bf3f68ee9adbddb5d69c0bd39575c0";

/// MERKLE.md, "Worked example": id, payload, content_hash, leaf, bucket.
pub const EXAMPLE: [(&str, &str, &str, &str, u8); 3] = [
    (
        "user:1",
        r#"{"name":"ada"}"#,
        "749a62808254a4acbcaf5262beaecfbd42a9c88877ec1f53de3d2fe58fa8449b",
        "f387b3f07ba0d3ea2b3ede39ade1f5ad669d5c9d8530848b5d0ddc03ecfa9b38",
        243,
    ),
    (
        "user:2",
        r#"{"name":"bob"}"#,
        "91a73e713f3ccae0a3f290f976316ffdc5b7182fb96ebac574c92c424473b5c6",
        "c32bb91e88cab26cae1489db276d44dea27bb6d7cf6286fa089121a5d0ba54af",
        195,
    ),
    (
        "order:7",
        "hello",
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "38e202b8b3cfc3d5c54efaaefe1c044504a6c1dbe6e56fad1fcd9c3ec7c73088",
        56,
    ),
];
/// The root of the worked example's three items.
pub const EXAMPLE_ROOT: &str = "d585d54113712fc4f9b54efa9efb389f1d7fbd97bc86616df1673902330dc19c";

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The `content_hash` column of a payload: lowercase hex SHA-256 of its bytes.
pub fn content_hash(payload: &[u8]) -> String {
    hex::encode(sha256(&[payload]))
}

/// `SHA-256(0x00 ‖ be16(len(id)) ‖ id ‖ content_hash)`, the hash taken as its hex text.
pub fn leaf(id: &[u8], content_hash: &str) -> Hash {
    let len = u16::try_from(id.len()).expect("ids are at most 255 bytes");
    sha256(&[&[0x00], &len.to_be_bytes(), id, content_hash.as_bytes()])
}

/// `SHA-256(0x01 ‖ be64(count) ‖ digest)`.
pub fn node(count: u64, digest: &Hash) -> Hash {
    sha256(&[&[0x01], &count.to_be_bytes(), digest])
}

/// One of the 256 buckets: how many leaves it holds and their XOR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub count: u64,
    pub digest: Hash,
}

/// The 256 buckets of a partition holding `rows` = (id bytes, content_hash text), in any
/// order; ids are distinct (as in `sync_items`). An item goes to bucket `leaf[0]`.
pub fn buckets(rows: &[(Vec<u8>, String)]) -> Vec<Bucket> {
    let mut out = vec![Bucket::default(); 256];
    for (id, hash) in rows {
        let leaf = leaf(id, hash);
        let bucket = &mut out[usize::from(leaf[0])];
        bucket.count += 1;
        for (d, l) in bucket.digest.iter_mut().zip(leaf) {
            *d ^= l;
        }
    }
    out
}

/// Every level of the tree over the bucket nodes of `rows`: the 256 nodes first, the root
/// (alone) last.
pub fn levels(rows: &[(Vec<u8>, String)]) -> Vec<Vec<Hash>> {
    let nodes = buckets(rows)
        .iter()
        .map(|b| node(b.count, &b.digest))
        .collect();
    let mut levels: Vec<Vec<Hash>> = vec![nodes];
    while levels.last().unwrap().len() > 1 {
        let pairs = levels.last().unwrap().chunks(2);
        levels.push(pairs.map(|p| sha256(&[&p[0], &p[1]])).collect());
    }
    levels
}

/// The state root (hex) of a partition holding `rows` (as for [`buckets`]).
pub fn root(rows: &[(Vec<u8>, String)]) -> String {
    hex::encode(levels(rows).last().unwrap()[0])
}

#[test]
fn reference_implementation_reproduces_the_worked_example() {
    assert_eq!(hex::encode(node(0, &[0; 32])), EMPTY_NODE);
    assert_eq!(root(&[]), EMPTY_ROOT);
    let mut rows = Vec::new();
    for (id, payload, hash, want_leaf, bucket) in EXAMPLE {
        assert_eq!(content_hash(payload.as_bytes()), hash, "{id}");
        let computed = leaf(id.as_bytes(), hash);
        assert_eq!(
            (hex::encode(computed), computed[0]),
            (want_leaf.to_string(), bucket),
            "{id}"
        );
        rows.push((id.as_bytes().to_vec(), hash.to_string()));
    }
    assert_eq!(root(&rows), EXAMPLE_ROOT);
    rows.reverse();
    assert_eq!(root(&rows), EXAMPLE_ROOT, "order does not matter");
    // the content hash enters as its hex text: another hash, another root
    rows[0].1 = content_hash(b"hello!");
    assert_ne!(root(&rows), EXAMPLE_ROOT);
}
