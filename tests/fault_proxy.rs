//! The fault proxy (tests/common/fault.rs) against the real services: what a client sees in each
//! mode, and that it can come back after `restore`. Redis and MariaDB are the servers
//! scripts/test names (the defaults below when run by hand); the Kafka test starts a private
//! broker from `SYNC_ENGINE_TEST_TANSU`.

#[path = "common/fault.rs"]
mod fault;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fault::{Broker, Mode, Proxy};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::Connection;
use tokio::time::error::Elapsed;

/// Bounds every wait on a reply that should come, so a broken proxy fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(5);

/// host:port of the plain Redis server.
fn redis_upstream() -> String {
    let url = std::env::var("SYNC_ENGINE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    rest.split('/').next().unwrap().to_string()
}

/// (user, host:port, database) of the MariaDB server.
fn mysql_upstream() -> (String, String, String) {
    let url = std::env::var("SYNC_ENGINE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let rest = url.trim_start_matches("mysql://");
    let (server, db) = rest.split_once('/').expect("url ends in /database");
    let (user, addr) = server.rsplit_once('@').expect("url names a user");
    (user.into(), addr.into(), db.into())
}

fn redis_client(proxy: &Proxy) -> redis::Client {
    redis::Client::open(format!("redis://{}", proxy.addr())).unwrap()
}

fn redis_connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(PATIENCE)?;
    con.set_read_timeout(Some(PATIENCE))?;
    Ok(con)
}

fn ping(con: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

/// A new connection and a PING on it.
fn fresh_ping(client: &redis::Client) -> redis::RedisResult<String> {
    ping(&mut redis_connect(client)?)
}

/// PING over a bare socket, reading the reply line with `timeout`.
fn raw_ping(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = Vec::new();
    let mut byte = [0; 1];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut byte)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            _ => reply.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&reply).trim_end().to_string())
}

#[test]
fn reset_breaks_open_and_new_connections_until_restore() {
    let proxy = Proxy::start(&redis_upstream());
    let client = redis_client(&proxy);
    let mut con = redis_connect(&client).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    proxy.set(Mode::Reset);
    let err = ping(&mut con).unwrap_err();
    assert!(err.is_connection_dropped(), "open connection: {err:?}");
    let before = proxy.accepted();
    let err = fresh_ping(&client).unwrap_err();
    assert!(err.is_connection_dropped(), "new connection: {err:?}");
    assert_eq!(proxy.accepted(), before + 1, "accepted, then reset");

    proxy.restore();
    assert_eq!(fresh_ping(&client).unwrap(), "PONG");
}

#[test]
fn refuse_closes_the_port_and_restore_reopens_it() {
    let proxy = Proxy::start(&redis_upstream());
    let mut open = TcpStream::connect(proxy.addr()).unwrap();
    assert_eq!(raw_ping(&mut open, PATIENCE).unwrap(), "+PONG");

    proxy.set(Mode::Refuse);
    let err = TcpStream::connect(proxy.addr()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let err = raw_ping(&mut open, PATIENCE).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "open connection");

    proxy.restore();
    let mut again = TcpStream::connect(proxy.addr()).expect("re-bound after Refuse");
    assert_eq!(raw_ping(&mut again, PATIENCE).unwrap(), "+PONG");
}

#[test]
fn stall_is_silent_and_restore_resets_what_it_held() {
    let proxy = Proxy::start(&redis_upstream());
    let client = redis_client(&proxy);
    let mut con = redis_connect(&client).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    con.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    proxy.set(Mode::Stall);
    let started = Instant::now();
    let err = ping(&mut con).unwrap_err();
    assert!(err.is_timeout(), "open connection: {err:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // a new connection completes its handshake and then hears nothing
    let mut held = TcpStream::connect(proxy.addr()).expect("accepted while stalled");
    let err = raw_ping(&mut held, Duration::from_millis(300)).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "new connection: {err:?}"
    );

    proxy.restore();
    let mut byte = [0; 1];
    let err = held.read(&mut byte).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "held connection");
    assert!(ping(&mut con).is_err(), "stalled connection");
    assert_eq!(fresh_ping(&client).unwrap(), "PONG");
}

#[test]
fn cut_for_restores_by_itself() {
    let proxy = Proxy::start(&redis_upstream());
    let client = redis_client(&proxy);
    proxy.cut_for(Mode::Refuse, Duration::from_millis(100));
    assert_eq!(fresh_ping(&client).unwrap(), "PONG");
    assert_eq!(proxy.accepted(), 1);
}

async fn select_one(conn: &mut sqlx::MySqlConnection) -> Result<sqlx::Result<i64>, Elapsed> {
    let query = sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(conn);
    tokio::time::timeout(PATIENCE, query).await
}

#[tokio::test]
async fn mariadb_query_fails_on_reset_and_a_reconnect_works() {
    let (user, upstream, db) = mysql_upstream();
    let proxy = Proxy::start(&upstream);
    let url = format!("mysql://{user}@{}/{db}", proxy.addr());
    let connect = || tokio::time::timeout(PATIENCE, sqlx::MySqlConnection::connect(&url));
    let mut conn = connect().await.unwrap().unwrap();
    assert_eq!(select_one(&mut conn).await.unwrap().unwrap(), 1);

    proxy.set(Mode::Reset);
    let result = select_one(&mut conn).await.expect("fails, does not hang");
    assert!(result.is_err(), "query on a reset connection: {result:?}");
    assert!(connect().await.expect("fails fast").is_err());

    proxy.restore();
    let mut again = connect().await.unwrap().unwrap();
    assert_eq!(select_one(&mut again).await.unwrap().unwrap(), 1);
}

fn kafka_client(broker: &Broker) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.brokers())
        // so a client that lived through the outage reconnects soon after it
        .set("reconnect.backoff.max.ms", "500");
    config
}

fn metadata_ok(client: &BaseConsumer, timeout: Duration) -> bool {
    client
        .fetch_metadata(None, timeout)
        .is_ok_and(|m| !m.brokers().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_behind_the_proxy_round_trips_and_refuses() {
    let broker = Broker::start();
    let topic = format!("fault-proxy-{}", std::process::id());

    let admin: AdminClient<DefaultClientContext> = kafka_client(&broker).create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    created.into_iter().for_each(|r| {
        r.unwrap();
    });

    let producer: FutureProducer = kafka_client(&broker).create().unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .key("k")
                .payload("through the proxy"),
            PATIENCE,
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce: {e}\n{}", broker.log()));

    let consumer: BaseConsumer = kafka_client(&broker)
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let payload = loop {
        assert!(Instant::now() < deadline, "record not read back");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            break message.unwrap().payload().unwrap().to_vec();
        }
    };
    assert_eq!(payload, b"through the proxy");

    let before = broker.proxy.accepted();
    broker.proxy.set(Mode::Refuse);
    assert!(!metadata_ok(&consumer, Duration::from_secs(2)), "refused");
    broker.proxy.restore();
    let deadline = Instant::now() + PATIENCE;
    while !metadata_ok(&consumer, Duration::from_secs(1)) {
        assert!(Instant::now() < deadline, "no metadata after restore");
    }
    assert!(broker.proxy.accepted() > before, "the client reconnected");
}
