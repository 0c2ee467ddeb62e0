//! RediSearch over the RedisJSON documents of one tier: an index per [`SearchIndex`] under
//! `{redis_prefix}idx:{name}`, created over the tier's key prefix, and searches read page by
//! page. Only the exact text (`$.raw`) and the item's metadata are returned, so a hit is
//! byte-identical to what `get` serves.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};

use super::codec::{corrupt, text_of};
use super::RedisTier;
use crate::item::{ContentType, SyncItem};
use crate::search::SearchIndex;

impl RedisTier {
    fn index_name(&self, name: &str) -> String {
        format!("{}idx:{name}", self.prefix)
    }

    /// Creates the RediSearch index over this tier's JSON documents; an existing index of
    /// that name is left as it is.
    pub(crate) async fn create_index(&self, index: &SearchIndex) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        let created: Result<(), RedisError> = redis::cmd("FT.CREATE")
            .arg(self.index_name(&index.name))
            .arg("ON")
            .arg("JSON")
            .arg("PREFIX")
            .arg(1)
            .arg(&self.prefix)
            .arg("STOPWORDS")
            .arg(0)
            .arg(index.schema_args())
            .query_async(&mut connection)
            .await;
        match created {
            Err(e) if e.to_string().contains("already exists") => {}
            other => self.observe(other)?,
        }
        // documents already in Redis are indexed in the background: wait for that, so a
        // search right after this call sees them
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info: Vec<Value> = self.observe(
                redis::cmd("FT.INFO")
                    .arg(self.index_name(&index.name))
                    .query_async(&mut connection)
                    .await,
            )?;
            let indexing = info.chunks(2).find_map(|pair| match pair {
                [key, value] if text_of(key).as_deref() == Some("indexing") => {
                    Some(text_of(value).as_deref() != Some("0"))
                }
                _ => None,
            });
            if indexing != Some(true) || Instant::now() > deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn drop_index(&self, name: &str) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        let dropped: Result<(), RedisError> = redis::cmd("FT.DROPINDEX")
            .arg(self.index_name(name))
            .query_async(&mut connection)
            .await;
        match dropped {
            // "Unknown Index name" (wording varies between RediSearch versions)
            Err(e) if e.to_string().to_lowercase().contains("unknown") => Ok(()),
            other => self.observe(other),
        }
    }

    /// Every document of `index` matching the RediSearch `query`, read page by page.
    pub(crate) async fn search(
        &self,
        index: &str,
        query: &str,
    ) -> Result<Vec<SyncItem>, RedisError> {
        const PAGE: usize = 1000;
        let mut connection = self.connection().await?;
        let mut found = Vec::new();
        let mut offset = 0;
        loop {
            let reply: Vec<Value> = self.observe(
                redis::cmd("FT.SEARCH")
                    .arg(self.index_name(index))
                    .arg(query)
                    .arg("DIALECT")
                    .arg(2)
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(PAGE)
                    .arg("RETURN")
                    .arg(4)
                    .arg(&["$.raw", "$.hash", "$.state", "$.version"][..])
                    .query_async(&mut connection)
                    .await,
            )?;
            let total = match reply.first() {
                Some(Value::Int(n)) => *n as usize,
                _ => return Err(corrupt(index, "FT.SEARCH reply")),
            };
            for pair in reply[1..].chunks(2) {
                if let [Value::BulkString(key), Value::Array(fields)] = pair {
                    if let Some(item) = self.search_hit(key, fields) {
                        found.push(item);
                    }
                }
            }
            offset += PAGE;
            if offset >= total {
                return Ok(found);
            }
        }
    }

    fn search_hit(&self, key: &[u8], fields: &[Value]) -> Option<SyncItem> {
        let id = std::str::from_utf8(key.strip_prefix(self.prefix.as_bytes())?).ok()?;
        let mut values = HashMap::new();
        for pair in fields.chunks(2) {
            if let [Value::BulkString(name), Value::BulkString(value)] = pair {
                values.insert(name.as_slice(), String::from_utf8(value.clone()).ok()?);
            }
        }
        let raw = values.remove(&b"$.raw"[..])?;
        Some(SyncItem::from_stored(
            id.to_string(),
            raw.into_bytes(),
            ContentType::Json,
            values.remove(&b"$.hash"[..])?,
            values.remove(&b"$.state"[..])?,
            values.get(&b"$.version"[..])?.parse().ok()?,
            Some(0),
        ))
    }
}
