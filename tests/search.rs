//! Search: on the same data, RediSearch (Redis Stack) and SQL (SQLite and MariaDB) return the
//! same ids, and hostile inputs are only ever literals.

mod common;

use common::Backend;
use serde_json::json;
use sync_engine::search::{Query, SearchIndex};
use sync_engine::{SearchTier, SyncEngineConfig, SyncError, SyncItem};

use common::redis::STACK_ENV;

/// Values that mean something to RediSearch or SQL, stored as plain data.
const HOSTILE: [&str; 8] = [
    "it's \"quoted\"",
    "star*",
    "@role:{admin}",
    "{braces}",
    "100%_sure",
    "x' OR '1'='1",
    "a|b -c ~d",
    "back\\slash",
];

fn fixture() -> Vec<(String, serde_json::Value, &'static str)> {
    let roles = ["admin", "Admin", "dev", "ops"];
    let cities = ["Paris", "paris", "Zürich", "New York"];
    let words = [
        "alpha",
        "Beta",
        "gamma-ray",
        "delta_x",
        "epsilon/zeta",
        "ÉCOLE",
        "straße",
    ];
    (0..240)
        .map(|i| {
            let role = if i % 17 == 0 {
                HOSTILE[i % HOSTILE.len()]
            } else {
                roles[i % roles.len()]
            };
            let name = format!(
                "{} {} user{i}",
                words[i % words.len()],
                words[(i / 3) % words.len()]
            );
            let mut payload = json!({
                "name": name,
                "role": role,
                "age": (i % 70) as f64 + if i % 2 == 0 { 0.5 } else { 0.0 },
                "address": {"city": cities[i % cities.len()]},
            });
            if i % 23 == 0 {
                payload.as_object_mut().unwrap().remove("age"); // missing field
            }
            let id = format!("{}:{i:03}", ["users", "users%", "staff_", "x"][i % 4]);
            (id, payload, ["active", "gone", "it's"][i % 3])
        })
        .collect()
}

fn queries() -> Vec<Query> {
    let mut queries = vec![
        Query::field_eq("role", "admin"),
        Query::field_eq("role", "Admin"),
        Query::field_eq("address.city", "Zürich"),
        Query::field_eq("address.city", "New York"),
        Query::numeric_range("age", Some(20.0), Some(40.5)),
        Query::numeric_range("age", None, Some(10.0)),
        Query::numeric_range("age", Some(69.5), None),
        Query::text("name", "alpha"),
        Query::text("name", "GAMMA"),
        Query::text("name", "ray beta"),
        Query::text("name", "delta_x"),
        Query::text("name", "zeta"),
        Query::text("name", "école"),
        Query::text("name", "ÉCOLE"),
        Query::text("name", "straße"),
        Query::text("name", "user7"),
        Query::state("it's"),
        Query::id_prefix("users%"),
        Query::id_prefix("staff_"),
        Query::id_prefix("users")
            .and(Query::state("active"))
            .and(Query::numeric_range("age", Some(30.0), None)),
        Query::field_eq("role", "dev").and(Query::text("name", "beta")),
    ];
    queries.extend(HOSTILE.iter().map(|v| Query::field_eq("role", v)));
    queries.extend(HOSTILE.iter().map(|v| Query::text("name", v)).filter(|q| {
        // a "text" of only punctuation has no words: that is a typed error, tested below
        !matches!(q, Query::Text { words, .. } if words.chars().all(|c| !c.is_alphanumeric()))
    }));
    queries.extend(HOSTILE.iter().map(|v| Query::state(v)));
    queries.extend(HOSTILE.iter().map(|v| Query::id_prefix(v)));
    queries
}

async fn executors_agree(sql: Backend) {
    let redis_url = common::redis::url(STACK_ENV);
    let prefix = format!("search{}:{}:", std::process::id(), sql.name);
    let engine = sql
        .engine_with(SyncEngineConfig {
            redis_url: Some(redis_url),
            redis_prefix: Some(prefix),
            ..sql.config()
        })
        .await;
    let index = SearchIndex::new("people")
        .text("name")
        .tag("role")
        .numeric("age")
        .tag("address.city");
    engine.drop_search_index("people").await.unwrap();
    let data = fixture();
    for (id, payload, state) in &data {
        engine
            .submit(SyncItem::from_json(id.clone(), payload.clone()).with_state(*state))
            .await
            .unwrap();
    }
    engine
        .submit(SyncItem::new("binary:1".into(), b"\x00admin".to_vec()))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    // created over existing documents: returns once they are indexed
    engine.create_search_index(&index).await.unwrap();

    let ids = |items: Vec<SyncItem>| {
        items
            .into_iter()
            .map(|i| i.id().to_string())
            .collect::<Vec<_>>()
    };
    let mut non_empty = 0;
    for query in queries() {
        let redis = ids(engine
            .search(&index, &query, 10_000, SearchTier::RedisOnly)
            .await
            .unwrap());
        let sql_ids = ids(engine
            .search(&index, &query, 10_000, SearchTier::SqlOnly)
            .await
            .unwrap());
        assert_eq!(redis, sql_ids, "{query:?}");
        non_empty += usize::from(!redis.is_empty());
    }
    assert!(
        non_empty >= 20,
        "the fixture exercises the queries ({non_empty} non-empty)"
    );

    // spot checks computed from the fixture itself
    let count = |f: &dyn Fn(&serde_json::Value, &str, &str) -> bool| {
        data.iter().filter(|(id, p, s)| f(p, id, s)).count()
    };
    let admins = engine
        .search(
            &index,
            &Query::field_eq("role", "admin"),
            10_000,
            SearchTier::Auto,
        )
        .await
        .unwrap();
    assert_eq!(admins.len(), count(&|p, _, _| p["role"] == "admin"));
    let hostile = engine
        .search(
            &index,
            &Query::field_eq("role", "x' OR '1'='1"),
            10_000,
            SearchTier::Auto,
        )
        .await
        .unwrap();
    assert_eq!(hostile.len(), count(&|p, _, _| p["role"] == "x' OR '1'='1"));
    assert!(!hostile.is_empty());
    let ranged = engine
        .search(
            &index,
            &Query::numeric_range("age", Some(20.0), Some(40.5)),
            10_000,
            SearchTier::Auto,
        )
        .await
        .unwrap();
    assert_eq!(
        ranged.len(),
        count(&|p, _, _| p["age"]
            .as_f64()
            .is_some_and(|a| (20.0..=40.5).contains(&a)))
    );
    let limited = engine
        .search(&index, &Query::id_prefix("users"), 5, SearchTier::Auto)
        .await
        .unwrap();
    assert_eq!(ids(limited), {
        let mut all: Vec<String> = data
            .iter()
            .map(|(id, _, _)| id.clone())
            .filter(|id| id.starts_with("users"))
            .collect();
        all.sort();
        all.truncate(5);
        all
    });

    // invalid queries are typed errors, not injections
    for bad in [
        Query::field_eq("age", "1"),
        Query::field_eq("role", ""),
        Query::text("name", "*@{}"),
        Query::field_eq("x') OR 1=1 --", "a"),
    ] {
        let err = engine
            .search(&index, &bad, 10, SearchTier::Auto)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SyncError::InvalidQuery(_)),
            "{bad:?}: {err:?}"
        );
    }
    engine.drop_search_index("people").await.unwrap();
    engine.shutdown().await;
}

on_both_backends!(executors_agree);
