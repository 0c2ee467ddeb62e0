//! The JSON Schemas in `schemas/` against the code they describe: each schema is a valid
//! draft 2020-12 schema; confirmations serialized by `events.rs` validate and malformed ones
//! do not; the DLQ codes and headers in the schemas are exactly the code's; and the
//! input-record schema accepts exactly what `record::decode` accepts on the same records.

use std::collections::BTreeSet;

use jsonschema::Validator;
use serde_json::{json, Value};
use sync_engine::item::content_hash;
use sync_engine::merkle::ALGORITHM;
use sync_engine::sidecar::events::{
    Checkpoint, Confirmation, ConfirmedItem, ConfirmedOp, Outcome, DLQ_HEADERS,
};
use sync_engine::sidecar::record::DlqCode::{self, *};
use sync_engine::sidecar::record::{decode, RawRecord};

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// Every `DlqCode` variant, in declaration order.
const ALL_CODES: [DlqCode; 13] = DlqCode::ALL;

/// Position of `code` in `ALL_CODES`. Exhaustive on purpose: a new variant stops this file
/// compiling until it is listed here, in `ALL_CODES` and in the schemas.
fn position(code: DlqCode) -> usize {
    match code {
        MissingKey => 0,
        EmptyKey => 1,
        KeyNotUtf8 => 2,
        KeyTooLong => 3,
        PayloadTooLarge => 4,
        InvalidJson => 5,
        UnknownContentType => 6,
        UnknownRoute => 7,
        MalformedTtl => 8,
        InvalidState => 9,
        TtlWithoutRedis => 10,
        HeaderNotUtf8 => 11,
        RouteUnavailable => 12,
    }
}

fn schema(file: &str) -> Value {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn validator(file: &str) -> Validator {
    let schema = schema(file);
    assert_eq!(schema["$schema"], DRAFT_2020_12, "{file}");
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("{file} is not a valid JSON Schema: {e}");
    }
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn assert_valid(validator: &Validator, instance: &Value) {
    let errors = errors(validator, instance);
    assert!(errors.is_empty(), "{instance}\nshould be valid: {errors:?}");
}

fn assert_invalid(validator: &Validator, instance: &Value, why: &str) {
    assert!(
        !validator.is_valid(instance),
        "{why}: should be invalid: {instance}"
    );
}

/// A named way to break a valid instance.
type Mutation = fn(&mut Value);

fn put(offset: i64, id: &str, payload: &[u8], tiers: Vec<&'static str>) -> ConfirmedItem {
    ConfirmedItem {
        offset,
        id: Some(id.to_string()),
        op: ConfirmedOp::Put,
        outcome: Some(Outcome::Applied),
        content_hash: Some(content_hash(payload)),
        tiers,
        error_code: None,
    }
}

fn delete(offset: i64, id: &str) -> ConfirmedItem {
    ConfirmedItem {
        offset,
        id: Some(id.to_string()),
        op: ConfirmedOp::Delete,
        outcome: Some(Outcome::Unchanged),
        content_hash: None,
        tiers: vec!["sql", "redis"],
        error_code: None,
    }
}

fn dlq(offset: i64, id: Option<&str>, code: DlqCode) -> ConfirmedItem {
    ConfirmedItem {
        offset,
        id: id.map(str::to_string),
        op: ConfirmedOp::Dlq,
        outcome: None,
        content_hash: None,
        tiers: Vec::new(),
        error_code: Some(code.as_str()),
    }
}

fn confirmation(items: Vec<ConfirmedItem>) -> Confirmation {
    Confirmation {
        kind: Confirmation::KIND,
        source_topic: "orders".into(),
        partition: 3,
        first_offset: items.first().unwrap().offset,
        last_offset: items.last().unwrap().offset,
        items,
        state_root: "ab".repeat(32),
        item_count: 7,
        state_offset: 12,
    }
}

fn schema_codes(file: &str) -> BTreeSet<String> {
    schema(file)["$defs"]["dlq_code"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: no $defs/dlq_code/enum"))
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_schema_is_valid_draft_2020_12() {
    for file in [
        "confirmation.schema.json",
        "input-record.schema.json",
        "dlq-record.schema.json",
        "checkpoint.schema.json",
    ] {
        validator(file);
    }
}

#[test]
fn checkpoints_as_serialized_by_the_code_are_valid() {
    let validator = validator("checkpoint.schema.json");
    let checkpoint = Checkpoint {
        kind: Checkpoint::KIND.to_string(),
        source_topic: "orders".into(),
        partition: 3,
        offset: 41,
        state_root: "0f".repeat(32),
        item_count: 12,
        algorithm: ALGORITHM.to_string(),
    };
    assert_eq!(checkpoint.key(), "orders:3");
    assert_eq!(checkpoint.source(), "orders/3");
    let value = serde_json::to_value(&checkpoint).unwrap();
    assert_valid(&validator, &value);
    for (what, mutate) in [
        ("other algorithm", json!({"algorithm": "v0"})),
        ("uppercase root", json!({"state_root": "0F".repeat(32)})),
        ("negative offset", json!({"offset": -1})),
        ("confirmation type", json!({"type": "confirmation"})),
    ] {
        let mut bad = value.clone();
        for (k, v) in mutate.as_object().unwrap() {
            bad[k] = v.clone();
        }
        assert!(!validator.is_valid(&bad), "{what} should be invalid");
    }
}

#[test]
fn confirmations_as_serialized_by_the_code_are_valid() {
    let validator = validator("confirmation.schema.json");
    let long_id = "k".repeat(300);
    let c = confirmation(vec![
        put(10, "user.1", br#"{"name":"Ada"}"#, vec!["sql", "redis"]),
        put(11, "blob", b"\x00\x01", vec!["sql"]),
        put(12, "cache-only", b"1", vec!["redis"]),
        // redis-only route on a sidecar without Redis: the code confirms no tier
        put(13, "nowhere", b"1", Vec::new()),
        delete(15, "user.1"),
        dlq(16, None, MissingKey),
        dlq(17, Some(""), EmptyKey),
        dlq(18, Some(&long_id), KeyTooLong),
        dlq(19, Some("k"), InvalidJson),
    ]);
    assert_eq!(c.key(), "orders:3");
    let value = serde_json::to_value(&c).unwrap();
    assert_eq!(value["type"], "confirmation");
    assert_valid(&validator, &value);

    for code in ALL_CODES {
        let value = serde_json::to_value(confirmation(vec![dlq(0, Some("k"), code)])).unwrap();
        assert_valid(&validator, &value);
    }
}

#[test]
fn malformed_confirmations_are_invalid() {
    let validator = validator("confirmation.schema.json");
    let valid = serde_json::to_value(confirmation(vec![
        put(1, "a", b"{}", vec!["sql", "redis"]),
        delete(2, "b"),
        dlq(3, Some("c"), UnknownRoute),
    ]))
    .unwrap();
    assert_valid(&validator, &valid);

    let cases: Vec<(&str, Mutation)> = vec![
        ("wrong op", |v| v["items"][0]["op"] = json!("upsert")),
        ("uppercase hash", |v| {
            let hash = v["items"][0]["content_hash"].as_str().unwrap();
            v["items"][0]["content_hash"] = json!(hash.to_uppercase());
        }),
        ("short hash", |v| {
            v["items"][0]["content_hash"] = json!("ab".repeat(31));
        }),
        ("extra top-level field", |v| v["version"] = json!(1)),
        ("short state root", |v| v["state_root"] = json!("00")),
        ("no item count", |v| {
            v.as_object_mut().unwrap().remove("item_count");
        }),
        ("extra item field", |v| v["items"][0]["version"] = json!(2)),
        ("dlq without error_code", |v| {
            v["items"][2].as_object_mut().unwrap().remove("error_code");
        }),
        ("unknown error_code", |v| {
            v["items"][2]["error_code"] = json!("bad_luck")
        }),
        ("dlq with tiers", |v| {
            v["items"][2]["tiers"] = json!(["sql"])
        }),
        ("dlq with a hash", |v| {
            v["items"][2]["content_hash"] = v["items"][0]["content_hash"].clone()
        }),
        ("put without hash", |v| {
            v["items"][0]
                .as_object_mut()
                .unwrap()
                .remove("content_hash");
        }),
        ("put without id", |v| {
            v["items"][0].as_object_mut().unwrap().remove("id");
        }),
        ("put with empty id", |v| v["items"][0]["id"] = json!("")),
        ("put with error_code", |v| {
            v["items"][0]["error_code"] = json!("invalid_json")
        }),
        ("delete with a hash", |v| {
            v["items"][1]["content_hash"] = v["items"][0]["content_hash"].clone()
        }),
        ("unknown tier", |v| {
            v["items"][0]["tiers"] = json!(["sql", "disk"])
        }),
        ("repeated tier", |v| {
            v["items"][0]["tiers"] = json!(["sql", "sql"])
        }),
        ("wrong type", |v| v["type"] = json!("checkpoint")),
        ("no items", |v| v["items"] = json!([])),
        ("missing last_offset", |v| {
            v.as_object_mut().unwrap().remove("last_offset");
        }),
        ("negative offset", |v| v["items"][0]["offset"] = json!(-1)),
    ];
    for (why, mutate) in cases {
        let mut broken = valid.clone();
        mutate(&mut broken);
        assert_invalid(&validator, &broken, why);
    }
}

#[test]
fn dlq_codes_in_the_schemas_are_exactly_the_code_variants() {
    // ALL_CODES lists each variant once, and position() (exhaustive) has exactly as many
    // arms as ALL_CODES has entries
    let positions: BTreeSet<usize> = ALL_CODES.iter().map(|c| position(*c)).collect();
    assert_eq!(positions, (0..ALL_CODES.len()).collect());
    for (i, code) in ALL_CODES.iter().enumerate() {
        assert_eq!(position(*code), i, "{code:?}");
    }

    let code: BTreeSet<String> = ALL_CODES.iter().map(|c| c.as_str().to_string()).collect();
    assert_eq!(code.len(), ALL_CODES.len(), "as_str() values are distinct");
    assert_eq!(schema_codes("confirmation.schema.json"), code);
    assert_eq!(schema_codes("dlq-record.schema.json"), code);
}

#[test]
fn dlq_headers_in_the_schema_are_exactly_the_code_ones() {
    let schema = schema("dlq-record.schema.json");
    let headers = &schema["properties"]["headers"];
    let required: Vec<&str> = headers["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(required, DLQ_HEADERS);
    for name in DLQ_HEADERS {
        assert!(
            headers["properties"].get(name).is_some(),
            "{name} described"
        );
    }
}

fn dlq_record(code: DlqCode) -> Value {
    let values = [code.as_str(), "why it failed", "orders", "3", "17"];
    let mut headers: serde_json::Map<String, Value> = DLQ_HEADERS
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    headers.insert("sync-ttl".into(), json!("soon"));
    headers.insert("x-null".into(), Value::Null);
    json!({ "key": "k", "value": "{}", "headers": headers })
}

#[test]
fn dlq_records_validate() {
    let validator = validator("dlq-record.schema.json");
    for code in ALL_CODES {
        assert_valid(&validator, &dlq_record(code));
    }
    let mut keyless_delete = dlq_record(MissingKey);
    keyless_delete["key"] = Value::Null;
    keyless_delete["value"] = Value::Null;
    assert_valid(&validator, &keyless_delete);

    let cases: Vec<(&str, Mutation)> = vec![
        ("unknown code", |v| {
            v["headers"]["sync-error-code"] = json!("bad_luck")
        }),
        ("negative partition", |v| {
            v["headers"]["sync-source-partition"] = json!("-1")
        }),
        ("offset not a decimal string", |v| {
            v["headers"]["sync-source-offset"] = json!(17)
        }),
        ("no offset", |v| {
            v["headers"]
                .as_object_mut()
                .unwrap()
                .remove("sync-source-offset");
        }),
        ("extra field", |v| v["offset"] = json!(17)),
    ];
    for (why, mutate) in cases {
        let mut broken = dlq_record(InvalidJson);
        mutate(&mut broken);
        assert_invalid(&validator, &broken, why);
    }
}

/// A record both as the decoder sees it and as its JSON rendering.
struct Case {
    key: Option<&'static str>,
    value: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    /// What `decode` says; the schema must accept exactly the records with `None`.
    rejected: Option<DlqCode>,
}

fn case(
    key: &'static str,
    value: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    rejected: Option<DlqCode>,
) -> Case {
    Case {
        key: Some(key),
        value,
        headers,
        rejected,
    }
}

#[test]
fn input_record_schema_accepts_what_the_decoder_accepts() {
    let validator = validator("input-record.schema.json");
    let long_key: &'static str = "k".repeat(256).leak();
    let max_key: &'static str = "k".repeat(255).leak();
    let state: &'static str = "s".repeat(256).leak();
    let long_state: &'static [(&str, &str)] = vec![("sync-state", state)].leak();
    let traced: &[(&str, &str)] = &[
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "vendor=abc"),
        ("x-anything", "kept"),
    ];
    let cases = [
        case("user.1", Some(r#"{"a":1}"#), &[], None),
        case(max_key, Some("1"), &[], None),
        case("user.1", None, &[], None),
        case("bin", Some("not json"), &[], None),
        case(
            "user.1",
            Some(r#"{"a":1}"#),
            &[
                ("sync-state", "active"),
                ("sync-ttl", "3600"),
                ("sync-route", "redis,sql"),
                ("content-type", "application/json"),
            ],
            None,
        ),
        case(
            "c",
            Some("1"),
            &[("sync-ttl", "week"), ("sync-route", "redis")],
            None,
        ),
        case("c", Some("1"), &[("sync-route", "sql,redis")], None),
        case("c", Some("1"), &[("sync-route", "sql")], None),
        case(
            "c",
            Some("{}"),
            &[("content-type", "application/octet-stream")],
            None,
        ),
        case("t", Some("1"), traced, None),
        case("", Some("1"), &[], Some(EmptyKey)),
        case(long_key, Some("1"), &[], Some(KeyTooLong)),
        case(
            "k",
            Some("{"),
            &[("content-type", "application/json")],
            Some(InvalidJson),
        ),
        case(
            "k",
            Some("1"),
            &[("content-type", "text/plain")],
            Some(UnknownContentType),
        ),
        case(
            "k",
            Some("1"),
            &[("sync-route", "disk")],
            Some(UnknownRoute),
        ),
        case("k", Some("1"), &[("sync-route", "")], Some(UnknownRoute)),
        case("k", Some("1"), &[("sync-ttl", "0")], Some(MalformedTtl)),
        case("k", Some("1"), &[("sync-ttl", "soon")], Some(MalformedTtl)),
        case("k", Some("1"), &[("sync-ttl", "-5")], Some(MalformedTtl)),
        case("k", Some("1"), &[("sync-state", "")], Some(InvalidState)),
        case("k", Some("1"), long_state, Some(InvalidState)),
        case(
            "k",
            Some("1"),
            &[("sync-route", "sql"), ("sync-ttl", "60")],
            Some(TtlWithoutRedis),
        ),
        Case {
            key: None,
            value: Some("1"),
            headers: &[],
            rejected: Some(MissingKey),
        },
    ];
    for case in &cases {
        let raw = RawRecord {
            key: case.key.map(str::as_bytes),
            value: case.value.map(str::as_bytes),
            headers: case
                .headers
                .iter()
                .map(|(k, v)| (*k, Some(v.as_bytes())))
                .collect(),
        };
        let decoded = decode(&raw, 1 << 20, true).err().map(|r| r.code);
        let headers: serde_json::Map<String, Value> = case
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let rendering = json!({ "key": case.key, "value": case.value, "headers": headers });
        assert_eq!(decoded, case.rejected, "decode of {rendering}");
        match case.rejected {
            None => assert_valid(&validator, &rendering),
            // JSON Schema cannot ask whether a string parses as JSON: the schema says it in
            // words only
            Some(InvalidJson) => assert_valid(&validator, &rendering),
            Some(code) => assert_invalid(&validator, &rendering, code.as_str()),
        }
    }

    let extra = json!({ "key": "k", "value": "1", "partition": 0 });
    assert_invalid(&validator, &extra, "unknown top-level field");
}
