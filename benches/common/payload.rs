//! What every benchmark shares, so their numbers compare: the payload, the plain Redis hash
//! an item is stored as (the raw ceilings write it), and the median of a report.
#![allow(dead_code)] // each bench uses its own subset

use serde_json::json;

/// Bytes of every benchmark item.
pub const ITEM_BYTES: usize = 1024;

/// A realistic customer record, padded with a free-text field to exactly `ITEM_BYTES`.
pub fn payload(n: u64) -> Vec<u8> {
    let mut value = json!({
        "id": n,
        "type": "customer",
        "name": format!("Customer {n}"),
        "email": format!("customer{n}@example.com"),
        "created_at": "2024-05-17T09:31:12.482Z",
        "updated_at": "2025-01-03T17:04:55.019Z",
        "active": n % 7 != 0,
        "score": (n % 1000) as f64 / 10.0,
        "tags": ["retail", "newsletter", if n % 2 == 0 { "even" } else { "odd" }],
        "address": {
            "street": format!("{} Main Street", n % 9999),
            "city": "Springfield",
            "zip": format!("{:05}", n % 100_000),
            "country": "US"
        },
        "preferences": {
            "language": "en-US",
            "currency": "USD",
            "notifications": { "email": true, "sms": false, "push": n % 3 == 0 }
        },
        "orders": [
            { "sku": format!("SKU-{:06}", n % 1_000_000), "qty": 1 + n % 5, "price": 19.99 },
            { "sku": format!("SKU-{:06}", (n * 7) % 1_000_000), "qty": 2, "price": 4.5 },
            { "sku": format!("SKU-{:06}", (n * 13) % 1_000_000), "qty": 1, "price": 129.0 }
        ],
        "notes": ""
    });
    let bare = serde_json::to_vec(&value).expect("serializes").len();
    assert!(bare < ITEM_BYTES, "the record alone is {bare} bytes");
    let filler: String = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "
        .chars()
        .cycle()
        .skip((n % 17) as usize)
        .take(ITEM_BYTES - bare)
        .collect();
    value["notes"] = filler.into();
    let bytes = serde_json::to_vec(&value).expect("serializes");
    assert_eq!(bytes.len(), ITEM_BYTES);
    bytes
}

/// Queues `HSET key` with the fields of the engine's plain-Redis hash shape (`payload`,
/// `hash`, `state`, `version`, `type`), as the raw ceilings write an item.
pub fn hset_item(
    pipe: &mut redis::Pipeline,
    key: &str,
    item: &sync_engine::SyncItem,
    version: u64,
) {
    pipe.cmd("HSET")
        .arg(key)
        .arg("payload")
        .arg(item.content())
        .arg("hash")
        .arg(item.content_hash())
        .arg("state")
        .arg(item.state())
        .arg("version")
        .arg(version)
        .arg("type")
        .arg("json");
}

/// The median (NaN when there is nothing to take it of).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
