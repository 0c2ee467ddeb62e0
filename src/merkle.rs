//! Merkle state roots: one per source partition, over the set of `(id, content_hash)` pairs
//! the partition's items hold in SQL. `schemas/MERKLE.md` is the normative description; in
//! short:
//!
//! ```text
//! leaf     = SHA-256(0x00 ‖ be16(len id) ‖ id ‖ content_hash as 64 ASCII hex)
//! bucket   = leaf[0]                                   (256 buckets)
//! digest_b = XOR of the leaves in bucket b, count_b = how many  (zero / 0 when empty)
//! node_b   = SHA-256(0x01 ‖ be64(count_b) ‖ digest_b)
//! root     = rs_merkle SHA-256 tree over node_0 … node_255
//! ```
//!
//! XOR makes a bucket order-independent and updatable in O(1) per changed item, so a batch
//! moves the stored digests in O(batch) inside its own transaction; the 256-leaf tree on top
//! costs 511 hashes per root. A proof lists the other members of the item's bucket (so the
//! verifier recomputes that bucket) plus the tree path.

use std::collections::BTreeMap;

use rs_merkle::{algorithms::Sha256 as TreeHash, MerkleProof, MerkleTree};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Names the algorithm in checkpoints and proofs; a change to anything above bumps it.
pub const ALGORITHM: &str = "sync-engine-merkle-v1";
pub const BUCKETS: usize = 256;

pub type Hash = [u8; 32];

/// The leaf of one item.
pub fn leaf(id: &str, content_hash: &str) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update((id.len() as u16).to_be_bytes());
    h.update(id.as_bytes());
    h.update(content_hash.as_bytes());
    h.finalize().into()
}

/// One bucket: how many leaves it holds and their XOR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub count: u64,
    pub digest: Hash,
}

impl Bucket {
    fn xor(&mut self, leaf: &Hash) {
        for (d, l) in self.digest.iter_mut().zip(leaf) {
            *d ^= l;
        }
    }

    /// This bucket's leaf in the tree.
    pub fn node(&self) -> Hash {
        let mut h = Sha256::new();
        h.update([0x01]);
        h.update(self.count.to_be_bytes());
        h.update(self.digest);
        h.finalize().into()
    }
}

/// The 256 buckets of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDigest {
    buckets: Vec<Bucket>,
}

impl Default for PartitionDigest {
    fn default() -> Self {
        PartitionDigest {
            buckets: vec![Bucket::default(); BUCKETS],
        }
    }
}

impl PartitionDigest {
    pub fn add(&mut self, id: &str, content_hash: &str) {
        let leaf = leaf(id, content_hash);
        let bucket = &mut self.buckets[leaf[0] as usize];
        bucket.xor(&leaf);
        bucket.count += 1;
    }

    pub fn remove(&mut self, id: &str, content_hash: &str) {
        let leaf = leaf(id, content_hash);
        let bucket = &mut self.buckets[leaf[0] as usize];
        bucket.xor(&leaf);
        bucket.count = bucket.count.saturating_sub(1);
    }

    pub fn bucket(&self, index: u8) -> Bucket {
        self.buckets[index as usize]
    }

    pub fn set_bucket(&mut self, index: u8, bucket: Bucket) {
        self.buckets[index as usize] = bucket;
    }

    pub fn item_count(&self) -> u64 {
        self.buckets.iter().map(|b| b.count).sum()
    }

    fn tree(&self) -> MerkleTree<TreeHash> {
        let nodes: Vec<Hash> = self.buckets.iter().map(Bucket::node).collect();
        MerkleTree::<TreeHash>::from_leaves(&nodes)
    }

    pub fn root(&self) -> Hash {
        self.tree().root().expect("256 leaves")
    }

    /// Indices of the buckets that differ from `other`'s.
    pub fn diff(&self, other: &PartitionDigest) -> Vec<u8> {
        (0..BUCKETS)
            .filter(|&b| self.buckets[b] != other.buckets[b])
            .map(|b| b as u8)
            .collect()
    }

    /// The buckets that are not empty, by index.
    pub fn non_empty(&self) -> impl Iterator<Item = (u8, Bucket)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.count > 0)
            .map(|(i, b)| (i as u8, *b))
    }
}

/// A partition's root as reported to callers, confirmations and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRoot {
    pub partition: String,
    /// Hex SHA-256.
    pub root: String,
    pub item_count: u64,
}

impl StateRoot {
    pub fn of(partition: &str, digest: &PartitionDigest) -> Self {
        StateRoot {
            partition: partition.to_string(),
            root: hex::encode(digest.root()),
            item_count: digest.item_count(),
        }
    }
}

/// How a batch moves the buckets of the partitions it touches: XOR and count change per
/// (partition, bucket). Applying it to the stored buckets gives the new ones.
#[derive(Debug, Default)]
pub struct Delta {
    changes: BTreeMap<(String, u8), (i64, Hash)>,
}

impl Delta {
    fn toggle(&mut self, partition: &str, id: &str, content_hash: &str, count: i64) {
        let leaf = leaf(id, content_hash);
        let entry = self
            .changes
            .entry((partition.to_string(), leaf[0]))
            .or_insert((0, [0; 32]));
        entry.0 += count;
        for (d, l) in entry.1.iter_mut().zip(&leaf) {
            *d ^= l;
        }
    }

    pub fn add(&mut self, partition: &str, id: &str, content_hash: &str) {
        self.toggle(partition, id, content_hash, 1);
    }

    pub fn remove(&mut self, partition: &str, id: &str, content_hash: &str) {
        self.toggle(partition, id, content_hash, -1);
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The partitions it touches, each once, in order.
    pub fn partitions(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.changes.keys().map(|(p, _)| p.as_str()).collect();
        out.dedup();
        out
    }

    /// `(partition, bucket, count change, XOR)` per touched bucket.
    pub fn changes(&self) -> impl Iterator<Item = (&str, u8, i64, &Hash)> {
        self.changes
            .iter()
            .map(|((p, b), (count, xor))| (p.as_str(), *b, *count, xor))
    }

    /// `bucket` after this delta.
    pub fn apply_to(bucket: Bucket, count: i64, xor: &Hash) -> Bucket {
        let mut out = bucket;
        out.xor(xor);
        out.count = (out.count as i64 + count).max(0) as u64;
        out
    }
}

/// One other member of the proven item's bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub content_hash: String,
}

/// An inclusion proof of `(id, content_hash)` in `partition`'s state `root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub algorithm: String,
    pub partition: String,
    pub id: String,
    pub content_hash: String,
    pub bucket: u8,
    /// Every other item of the bucket, by id.
    pub bucket_members: Vec<Member>,
    /// Sibling hashes from the bucket's node up to the root (hex, rs_merkle order).
    pub path: Vec<String>,
    pub root: String,
}

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("unknown algorithm {0:?} (this build checks {ALGORITHM})")]
    Algorithm(String),
    #[error("the item's leaf is in bucket {actual}, the proof says {claimed}")]
    WrongBucket { claimed: u8, actual: u8 },
    #[error("bucket member {0:?} does not belong to the bucket (or repeats an id)")]
    StrayMember(String),
    #[error("malformed hex in {0}")]
    Hex(&'static str),
    #[error("the path does not lead to the root")]
    RootMismatch,
}

impl Proof {
    /// The proof for `id` from the full member list of its partition, or `None` when the
    /// partition does not hold it.
    pub fn build<'a>(
        partition: &str,
        id: &str,
        members: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<Proof> {
        let mut digest = PartitionDigest::default();
        let mut found: Option<String> = None;
        let mut in_bucket: Vec<Member> = Vec::new();
        let mut all: Vec<(Hash, Member)> = Vec::new();
        for (member_id, hash) in members {
            digest.add(member_id, hash);
            if member_id == id {
                found = Some(hash.to_string());
            } else {
                all.push((
                    leaf(member_id, hash),
                    Member {
                        id: member_id.to_string(),
                        content_hash: hash.to_string(),
                    },
                ));
            }
        }
        let content_hash = found?;
        let bucket = leaf(id, &content_hash)[0];
        in_bucket.extend(
            all.into_iter()
                .filter(|(l, _)| l[0] == bucket)
                .map(|(_, m)| m),
        );
        in_bucket.sort_by(|a, b| a.id.cmp(&b.id));
        let tree = digest.tree();
        Some(Proof {
            algorithm: ALGORITHM.to_string(),
            partition: partition.to_string(),
            id: id.to_string(),
            content_hash,
            bucket,
            bucket_members: in_bucket,
            path: tree.proof(&[bucket as usize]).proof_hashes_hex(),
            root: hex::encode(digest.root()),
        })
    }

    /// Checks the proof against its own `root`; compare that root with a trusted one (a
    /// checkpoint's) to trust the answer.
    pub fn check(&self) -> Result<(), ProofError> {
        if self.algorithm != ALGORITHM {
            return Err(ProofError::Algorithm(self.algorithm.clone()));
        }
        let own = leaf(&self.id, &self.content_hash);
        if own[0] != self.bucket {
            return Err(ProofError::WrongBucket {
                claimed: self.bucket,
                actual: own[0],
            });
        }
        let mut bucket = Bucket::default();
        bucket.xor(&own);
        bucket.count = 1;
        let mut seen = std::collections::HashSet::from([self.id.as_str()]);
        for m in &self.bucket_members {
            let l = leaf(&m.id, &m.content_hash);
            if l[0] != self.bucket || !seen.insert(m.id.as_str()) {
                return Err(ProofError::StrayMember(m.id.clone()));
            }
            bucket.xor(&l);
            bucket.count += 1;
        }
        let root = decode_hash(&self.root).ok_or(ProofError::Hex("root"))?;
        let path = self
            .path
            .iter()
            .map(|h| decode_hash(h))
            .collect::<Option<Vec<Hash>>>()
            .ok_or(ProofError::Hex("path"))?;
        let proof = MerkleProof::<TreeHash>::new(path);
        if proof.verify(root, &[self.bucket as usize], &[bucket.node()], BUCKETS) {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        }
    }
}

pub fn decode_hash(text: &str) -> Option<Hash> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(items: &[(&str, &str)]) -> PartitionDigest {
        let mut d = PartitionDigest::default();
        for (id, h) in items {
            d.add(id, h);
        }
        d
    }

    const H1: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const H2: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

    /// The worked example of `schemas/MERKLE.md`.
    #[test]
    fn documented_example() {
        let sha = |s: &str| crate::item::content_hash(s.as_bytes());
        let d = digest_of(&[
            ("user:1", &sha(r#"{"name":"ada"}"#)),
            ("user:2", &sha(r#"{"name":"bob"}"#)),
            ("order:7", &sha("hello")),
        ]);
        assert_eq!(
            hex::encode(d.root()),
            "d585d54113712fc4f9b54efa9efb389f1d7fbd97bc86616df1673902330dc19c"
        );
        assert_eq!(
            hex::encode(PartitionDigest::default().root()),
            "c3526b2d8416b82ec1efbfaa8577fd962febbeba50d46f6f5f34114088addb83"
        );
        assert_eq!(d.bucket(56).count, 1);
    }

    #[test]
    fn order_independent_and_removal_undoes_add() {
        let a = digest_of(&[("a", H1), ("b", H2), ("c", H1)]);
        let b = digest_of(&[("c", H1), ("a", H1), ("b", H2)]);
        assert_eq!(a.root(), b.root());
        let mut c = a.clone();
        c.add("d", H2);
        assert_ne!(c.root(), a.root());
        c.remove("d", H2);
        assert_eq!(c, a);
        assert_eq!(a.item_count(), 3);
    }

    #[test]
    fn delta_equals_direct_update() {
        let mut direct = digest_of(&[("a", H1), ("b", H2)]);
        let mut delta = Delta::default();
        delta.remove("p", "a", H1);
        delta.add("p", "a", H2);
        delta.add("p", "z", H1);
        direct.remove("a", H1);
        direct.add("a", H2);
        direct.add("z", H1);
        let mut via = digest_of(&[("a", H1), ("b", H2)]);
        for (_, b, count, xor) in delta.changes() {
            via.set_bucket(b, Delta::apply_to(via.bucket(b), count, xor));
        }
        assert_eq!(via, direct);
        assert_eq!(delta.partitions(), vec!["p"]);
    }

    #[test]
    fn proofs_check_and_tampering_fails() {
        let items: Vec<(String, String)> = (0..2000)
            .map(|i| {
                (
                    format!("id-{i}"),
                    crate::item::content_hash(&i.to_string().into_bytes()),
                )
            })
            .collect();
        let refs = || items.iter().map(|(a, b)| (a.as_str(), b.as_str()));
        let proof = Proof::build("t/0", "id-7", refs()).expect("member");
        assert!(!proof.bucket_members.is_empty());
        proof.check().expect("valid");
        assert_eq!(
            proof.root,
            hex::encode(digest_of(&refs().collect::<Vec<_>>()).root())
        );
        assert!(Proof::build("t/0", "absent", refs()).is_none());

        let mut tampered = proof.clone();
        tampered.content_hash = H1.to_string();
        assert!(tampered.check().is_err());
        let mut other_root = proof.clone();
        other_root.root = hex::encode([7u8; 32]);
        assert_eq!(other_root.check(), Err(ProofError::RootMismatch));
        let mut dropped = proof.clone();
        dropped.bucket_members.pop();
        assert_eq!(dropped.check(), Err(ProofError::RootMismatch));
    }
}
