//! The sidecar over TLS to all three services, as a platform team would run it: a MariaDB
//! whose user must use TLS (`REQUIRE SSL`), a Redis that only speaks TLS and wants a password,
//! and a Kafka broker reachable only through TLS (tansu behind socat). Certificates are made
//! at test time; passwords come from `_FILE` secrets and never appear in the logs.
//!
//! And the refusals: a wrong CA, a wrong password, or a plaintext server where TLS is
//! required makes the sidecar exit non-zero with an error naming the service, having consumed
//! and committed nothing. A plaintext Kafka listener never answers the TLS hello: librdkafka
//! gives up on the handshake after `socket.connection.setup.timeout.ms` (30 s), and the
//! sidecar, not yet in its group, ends the run then.

mod common;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/tls.rs"]
mod tls;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Backend;
use kafka::{confirmed, log_ends, put, Pipeline, Rec};
use sync_engine::tier::redis::RedisAccess;
use tls::Certs;

const SQL_PASSWORD: &str = "sql-Secret-0012";
const REDIS_PASSWORD: &str = "redis-Secret-0034";

/// A JSON record for even `i`, a binary one (with NUL bytes) for odd `i`.
fn record(i: usize) -> Rec {
    if i % 2 == 0 {
        put(
            &format!("tls-{i:03}"),
            format!(r#"{{"n": {i}, "over": "tls"}}"#).as_bytes(),
            &[],
        )
    } else {
        put(&format!("tls-{i:03}"), &[0, i as u8, 0, 0xFF], &[])
    }
}

struct Secrets {
    sql: String,
    redis: String,
}

fn secrets(certs: &Certs) -> Secrets {
    let sql = certs.dir.join("sql-password");
    let redis = certs.dir.join("redis-password");
    std::fs::write(&sql, format!("{SQL_PASSWORD}\n")).unwrap();
    std::fs::write(&redis, REDIS_PASSWORD).unwrap();
    Secrets {
        sql: sql.display().to_string(),
        redis: redis.display().to_string(),
    }
}

fn sql_url(port: u16, ca: &str) -> String {
    format!("mysql://app@127.0.0.1:{port}/sync?ssl-mode=verify_ca&ssl-ca={ca}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_round_trip_over_tls_to_mariadb_redis_and_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let secret = secrets(&certs);
    let mariadb = tls::mariadb(&certs, SQL_PASSWORD);
    let redis = tls::redis(&certs, REDIS_PASSWORD);
    let broker = tls::kafka(&certs);
    let ca = certs.path("ca.pem");

    // the test's own view of SQL, with the password in the URL
    let raw_url = format!(
        "mysql://app:{SQL_PASSWORD}@127.0.0.1:{}/sync?ssl-mode=verify_ca&ssl-ca={ca}",
        mariadb.port
    );
    let pipeline = Pipeline::on_brokers_with(
        "tls",
        2,
        Backend::at("mariadb", raw_url),
        format!("127.0.0.1:{}", broker.port),
        &[("security.protocol", "ssl"), ("ssl.ca.location", &ca)],
    )
    .await;
    let redis_url = format!("rediss://127.0.0.1:{}", redis.port);
    // the sidecar's SQL URL has no password: it comes from a file, like a Kubernetes Secret;
    // Kafka's security settings come from the environment, dots written as `__`
    let sql = sql_url(mariadb.port, &ca);
    let mut sidecar = pipeline.start_with(
        &format!(
            "redis_url = \"{redis_url}\"\nredis_ca_file = \"{ca}\"\n\
             redis_cert_file = \"{}\"\nredis_key_file = \"{}\"",
            certs.path("client.pem"),
            certs.path("client.key"),
        ),
        &[
            ("SYNC_ENGINE__SQL_URL", &sql),
            ("SYNC_ENGINE__SQL_PASSWORD_FILE", &secret.sql),
            ("SYNC_ENGINE__REDIS_PASSWORD_FILE", &secret.redis),
            ("SYNC_ENGINE__KAFKA__CLIENT__SECURITY__PROTOCOL", "ssl"),
            ("SYNC_ENGINE__KAFKA__CLIENT__SSL__CA__LOCATION", &ca),
        ],
    );

    let records: Vec<Rec> = (0..40).map(record).collect();
    let positions = pipeline.produce(&records).await;
    let ends = log_ends(positions.iter().copied());
    pipeline.wait_committed(&ends, Duration::from_secs(120));

    // every offset confirmed, over the TLS broker
    let outs = pipeline.read_until("out", Duration::from_secs(60), |outs| {
        confirmed(outs).len() >= records.len()
    });
    let confirmed = confirmed(&outs);
    for position in &positions {
        assert!(confirmed.contains_key(position), "{position:?} unconfirmed");
    }

    // SQL holds the exact bytes
    let contents = pipeline.sql.raw().await.contents().await;
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = records
        .iter()
        .map(|r| (r.key.clone().unwrap(), r.value.clone().unwrap()))
        .collect();
    let stored: BTreeMap<Vec<u8>, Vec<u8>> = contents
        .into_iter()
        .map(|(id, (bytes, _))| (id, bytes))
        .collect();
    assert_eq!(stored, expected);

    // Redis too, read over TLS with the library's own client
    let client = RedisAccess {
        password: Some(REDIS_PASSWORD.into()),
        ca_file: Some(ca.clone().into()),
        ..Default::default()
    }
    .client(&redis_url)
    .unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    for r in &records {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let payload: Vec<u8> = redis::cmd("HGET")
            .arg(&key)
            .arg("payload")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(&payload, r.value.as_ref().unwrap(), "{key} in Redis");
    }

    sidecar.stop();
    let log = sidecar.log();
    for secret in [SQL_PASSWORD, REDIS_PASSWORD] {
        assert!(!log.contains(secret), "a password in the log:\n{log}");
    }
    drop((mariadb, redis, broker));
}

/// One way to get a service's TLS or credentials wrong.
struct Refusal {
    name: &'static str,
    /// What the log must say (the service, at least).
    says: &'static [&'static str],
    extra: String,
    env: Vec<(&'static str, String)>,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_password_or_plaintext_server_is_refused_naming_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let secret = secrets(&certs);
    let mariadb = tls::mariadb(&certs, SQL_PASSWORD);
    let redis = tls::redis(&certs, REDIS_PASSWORD);
    let broker = tls::kafka(&certs);
    let ca = certs.path("ca.pem");
    let other_ca = certs.path("other-ca.pem");
    let wrong = certs.dir.join("wrong-password");
    std::fs::write(&wrong, "not-it").unwrap();
    let wrong = wrong.display().to_string();
    let plain_mariadb = common::mysql_url();
    let plain_redis = common::redis::url(common::redis::PLAIN_ENV);
    let tls_redis = format!("rediss://127.0.0.1:{}", redis.port);
    let good_sql = sql_url(mariadb.port, &ca);
    let kafka_ssl = |ca: &str| {
        vec![
            (
                "SYNC_ENGINE__KAFKA__CLIENT__SECURITY__PROTOCOL",
                "ssl".to_string(),
            ),
            (
                "SYNC_ENGINE__KAFKA__CLIENT__SSL__CA__LOCATION",
                ca.to_string(),
            ),
        ]
    };
    let sql_env = |url: String, password: &str| {
        vec![
            ("SYNC_ENGINE__SQL_URL", url),
            ("SYNC_ENGINE__SQL_PASSWORD_FILE", password.to_string()),
        ]
    };
    let good = || [sql_env(good_sql.clone(), &secret.sql), kafka_ssl(&ca)].concat();
    let redis_with =
        |url: &str, ca: &str| format!("redis_url = \"{url}\"\nredis_ca_file = \"{ca}\"");
    let tls_broker = format!("127.0.0.1:{}", broker.port);

    let cases = vec![
        Refusal {
            name: "sql-wrong-ca",
            says: &["SQL", "TLS"],
            extra: String::new(),
            env: [
                sql_env(sql_url(mariadb.port, &other_ca), &secret.sql),
                kafka_ssl(&ca),
            ]
            .concat(),
        },
        Refusal {
            name: "sql-wrong-password",
            says: &["SQL", "Access denied"],
            extra: String::new(),
            env: [sql_env(good_sql.clone(), &wrong), kafka_ssl(&ca)].concat(),
        },
        Refusal {
            name: "sql-plaintext-server",
            says: &["SQL", "TLS"],
            extra: String::new(),
            env: [
                vec![(
                    "SYNC_ENGINE__SQL_URL",
                    format!("{plain_mariadb}?ssl-mode=required"),
                )],
                kafka_ssl(&ca),
            ]
            .concat(),
        },
        Refusal {
            name: "redis-wrong-ca",
            says: &["Redis"],
            extra: redis_with(&tls_redis, &other_ca),
            env: [
                good(),
                vec![("SYNC_ENGINE__REDIS_PASSWORD_FILE", secret.redis.clone())],
            ]
            .concat(),
        },
        Refusal {
            name: "redis-wrong-password",
            says: &["Redis"],
            extra: redis_with(&tls_redis, &ca),
            env: [
                good(),
                vec![("SYNC_ENGINE__REDIS_PASSWORD_FILE", wrong.clone())],
            ]
            .concat(),
        },
        Refusal {
            name: "redis-plaintext-server",
            says: &["Redis"],
            extra: redis_with(&plain_redis.replacen("redis://", "rediss://", 1), &ca),
            env: good(),
        },
        Refusal {
            name: "kafka-wrong-ca",
            says: &["Kafka", "SSL"],
            extra: String::new(),
            env: [sql_env(good_sql.clone(), &secret.sql), kafka_ssl(&other_ca)].concat(),
        },
        Refusal {
            name: "kafka-plaintext-broker",
            says: &["Kafka", "SSL_HANDSHAKE", "plaintext listener"],
            extra: String::new(),
            env: [
                good(),
                vec![("SYNC_ENGINE__KAFKA__BROKERS", kafka::brokers())],
            ]
            .concat(),
        },
    ];

    // one pipeline (topics, group) per case, all on the TLS broker, each with a record
    // waiting; the sidecars run side by side
    let mut running = Vec::new();
    for case in cases {
        let pipeline = Pipeline::on_brokers_with(
            case.name,
            1,
            Backend::at("mariadb", String::new()),
            tls_broker.clone(),
            &[("security.protocol", "ssl"), ("ssl.ca.location", &ca)],
        )
        .await;
        pipeline.produce(&[record(0)]).await;
        let env: Vec<(&str, &str)> = case.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sidecar = pipeline.start_with(&case.extra, &env);
        running.push((case, pipeline, sidecar));
    }
    for (case, pipeline, mut sidecar) in running {
        let status = sidecar.wait_exit(Duration::from_secs(120));
        let log = sidecar.log();
        assert!(
            !status.success(),
            "{}: exited {status}, not an error:\n{log}",
            case.name
        );
        for word in case.says {
            assert!(
                log.contains(word),
                "{}: the log does not say {word:?}:\n{log}",
                case.name
            );
        }
        assert!(
            pipeline.committed().is_empty(),
            "{}: something was committed:\n{log}",
            case.name
        );
        for secret in [SQL_PASSWORD, REDIS_PASSWORD, "not-it"] {
            assert!(
                !log.contains(secret),
                "{}: a password in the log:\n{log}",
                case.name
            );
        }
    }
    // nothing reached the good database either
    let mut check = Backend::at(
        "mariadb",
        format!(
            "mysql://app:{SQL_PASSWORD}@127.0.0.1:{}/sync?ssl-mode=verify_ca&ssl-ca={ca}",
            mariadb.port
        ),
    )
    .raw()
    .await;
    let rows = check.rows().await;
    assert!(rows.is_empty(), "rows written: {rows:?}");
    drop((mariadb, redis, broker));
}

/// SASL/SCRAM-SHA-512 over TLS, configured from the environment with the password from a
/// file: the broker (tansu with `--authentication`) takes the client's SCRAM exchange and
/// answers `unknown-user` (it has no users, see `tls::sasl_kafka`), and the sidecar exits
/// naming Kafka and the authentication failure, having consumed and committed nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_sasl_scram_login_over_tls_ends_the_run_naming_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let broker = tls::sasl_kafka(&certs);
    let ca = certs.path("ca.pem");
    // topics and the group's offsets live on the shared broker; the sidecar is pointed at
    // the SASL one
    let pipeline = Pipeline::new("sasl", 1).await;
    pipeline.produce(&[record(0)]).await;
    let password = certs.dir.join("kafka-password");
    std::fs::write(&password, "kafka-Secret-0056\n").unwrap();
    let password = password.display().to_string();
    let brokers = format!("127.0.0.1:{}", broker.port);
    let mut sidecar = pipeline.start_with(
        "",
        &[
            ("SYNC_ENGINE__KAFKA__BROKERS", &brokers),
            ("SYNC_ENGINE__KAFKA__CLIENT__SECURITY__PROTOCOL", "sasl_ssl"),
            ("SYNC_ENGINE__KAFKA__CLIENT__SSL__CA__LOCATION", &ca),
            (
                "SYNC_ENGINE__KAFKA__CLIENT__SASL__MECHANISM",
                "SCRAM-SHA-512",
            ),
            ("SYNC_ENGINE__KAFKA__CLIENT__SASL__USERNAME", "sidecar"),
            ("SYNC_ENGINE__KAFKA__CLIENT__SASL__PASSWORD_FILE", &password),
        ],
    );
    let status = sidecar.wait_exit(Duration::from_secs(120));
    let log = sidecar.log();
    assert!(!status.success(), "exited {status}:\n{log}");
    for words in ["Kafka", "SASL SCRAM authentication failed", "unknown-user"] {
        assert!(
            log.contains(words),
            "the log does not say {words:?}:\n{log}"
        );
    }
    assert!(!log.contains("kafka-Secret-0056"), "{log}");
    assert!(pipeline.committed().is_empty());
    drop(broker);
}
