//! An independent reference implementation of `sync-engine-merkle-v1` (schemas/MERKLE.md),
//! written from the document alone: it shares no code with `sync_engine::merkle`, so a test
//! comparing the two catches a drift of either from the spec.
//!
//! Declared by a test binary as `#[path = "common/merkle_ref.rs"] mod merkle_ref;`.
#![allow(dead_code)] // each test binary uses its own subset

use sha2::{Digest, Sha256};

/// The root of a partition without items.
pub const EMPTY_ROOT: &str = "c3526b2d8416b82ec1efbfaa8577fd962febbeba50d46f6f5f34114088addb83";
/// The node of a bucket without items.
pub const EMPTY_NODE: &str = "f350fbd7557ef9d0a8fb9906b5699288f3bf3f68ee9adbddb5d69c0bd39575c0";

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
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
pub fn leaf(id: &[u8], content_hash: &str) -> [u8; 32] {
    let len = u16::try_from(id.len()).expect("ids are at most 255 bytes");
    sha256(&[&[0x00], &len.to_be_bytes(), id, content_hash.as_bytes()])
}

/// `SHA-256(0x01 ‖ be64(count) ‖ digest)`.
pub fn node(count: u64, digest: &[u8; 32]) -> [u8; 32] {
    sha256(&[&[0x01], &count.to_be_bytes(), digest])
}

/// The state root (hex) of a partition holding `rows` = (id bytes, content_hash text), in any
/// order; ids are distinct (as in `sync_items`).
pub fn root(rows: &[(Vec<u8>, String)]) -> String {
    let mut count = [0u64; 256];
    let mut digest = [[0u8; 32]; 256];
    for (id, hash) in rows {
        let leaf = leaf(id, hash);
        let bucket = usize::from(leaf[0]);
        count[bucket] += 1;
        for (d, l) in digest[bucket].iter_mut().zip(leaf) {
            *d ^= l;
        }
    }
    let mut layer: Vec<[u8; 32]> = (0..256).map(|b| node(count[b], &digest[b])).collect();
    while layer.len() > 1 {
        layer = layer
            .chunks(2)
            .map(|pair| sha256(&[&pair[0], &pair[1]]))
            .collect();
    }
    hex::encode(layer[0])
}
