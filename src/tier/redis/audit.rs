//! What `verify` and `inspect` read of Redis besides items: a probe of each key (its hash,
//! TTL and Merkle membership, `lua/probe.lua`), a SCAN over the item keys, the Merkle mirror
//! of a partition (read, and replaced after a repair), and a key's type.

use std::collections::HashMap;

use redis::{RedisError, Value};

use super::codec::{corrupt, glob_escape};
use super::RedisTier;
use crate::merkle::{self, PartitionDigest};

/// What `verify` learns of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    /// The item's content hash (`None`: not an item, e.g. a stray string key).
    pub hash: Option<String>,
    /// Remaining TTL in ms; negative when the key has none.
    pub pttl: i64,
    /// Its Merkle membership (bucket, leaf, partition) when mirrored.
    pub membership: Option<String>,
}

impl Probe {
    fn decode(value: Value) -> Option<Probe> {
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        match value {
            Value::Array(parts) if parts.len() == 3 => Some(Probe {
                hash: text(&parts[0]),
                pttl: match parts[1] {
                    Value::Int(n) => n,
                    _ => -1,
                },
                membership: text(&parts[2]),
            }),
            _ => None,
        }
    }

    /// The partition its membership names.
    pub fn partition(&self) -> Option<&str> {
        self.membership.as_deref().and_then(|m| m.get(66..))
    }
}

impl RedisTier {
    /// The Redis type of `id`'s key (`none` when there is no key), for `inspect`.
    pub(crate) async fn key_type(&self, id: &str) -> Result<String, RedisError> {
        let mut connection = self.connection().await?;
        self.observe(
            redis::cmd("TYPE")
                .arg(self.key(id))
                .query_async(&mut connection)
                .await,
        )
    }

    /// What Redis holds under each id, for `verify`: one pipeline per call.
    pub(crate) async fn probe(&self, ids: &[&str]) -> Result<Vec<Option<Probe>>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection().await?;
        let script = include_str!("lua/probe.lua");
        let sha = redis::Script::new(script).get_hash().to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(script).ignore();
        for id in ids {
            pipe.cmd("EVALSHA").arg(&sha).arg(1).arg(self.key(id));
        }
        let replies: Vec<Value> = self.observe(pipe.query_async(&mut connection).await)?;
        Ok(replies.into_iter().map(Probe::decode).collect())
    }

    /// One SCAN step over the item keys under `{prefix}{id_prefix}` (meta keys
    /// `{prefix}\xff…` left out): the next cursor (0 = done) and the ids found.
    pub(crate) async fn scan_ids(
        &self,
        id_prefix: &str,
        cursor: u64,
    ) -> Result<(u64, Vec<String>), RedisError> {
        let mut connection = self.connection().await?;
        let pattern = format!("{}*", glob_escape(&self.key(id_prefix)));
        let (next, keys): (u64, Vec<Vec<u8>>) = self.observe(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await,
        )?;
        let ids = keys
            .iter()
            .filter_map(|k| k.strip_prefix(self.prefix.as_bytes()))
            .filter(|id| id.first() != Some(&0xFF))
            .filter_map(|id| std::str::from_utf8(id).ok().map(str::to_string))
            .collect();
        Ok((next, ids))
    }

    fn mirror_key(&self, partition: &str) -> Vec<u8> {
        let mut key = self.mirrors.clone();
        key.extend_from_slice(partition.as_bytes());
        key
    }

    /// The Merkle mirror of `partition`: digests of the items Redis holds without TTL.
    pub(crate) async fn mirror(&self, partition: &str) -> Result<PartitionDigest, RedisError> {
        let mut connection = self.connection().await?;
        let fields: HashMap<u8, String> = self.observe(
            redis::cmd("HGETALL")
                .arg(self.mirror_key(partition))
                .query_async(&mut connection)
                .await,
        )?;
        let mut digest = PartitionDigest::default();
        for (bucket, value) in fields {
            let parsed = value.split_once(':').and_then(|(count, hex)| {
                Some(merkle::Bucket {
                    count: count.parse().ok()?,
                    digest: merkle::decode_hash(hex)?,
                })
            });
            let bucket_value = parsed.ok_or_else(|| corrupt(partition, "Merkle mirror field"))?;
            digest.set_bucket(bucket, bucket_value);
        }
        Ok(digest)
    }

    /// Replaces the mirror of `partition` (after a repair made Redis equal SQL).
    pub(crate) async fn set_mirror(
        &self,
        partition: &str,
        digest: &PartitionDigest,
    ) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        let key = self.mirror_key(partition);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        for (bucket, b) in digest.non_empty() {
            pipe.cmd("HSET")
                .arg(&key)
                .arg(bucket)
                .arg(format!("{}:{}", b.count, hex::encode(b.digest)))
                .ignore();
        }
        self.observe(pipe.query_async::<()>(&mut connection).await)
    }
}
