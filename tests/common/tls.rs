//! Services that speak TLS, for one test's own use, with certificates made at test time:
//! a MariaDB with `REQUIRE SSL` users, a `redis-server --tls-port` with a password, and a
//! tansu broker behind a socat TLS terminator (tansu's own TLS cannot be started: its CLI
//! declares `--cert` and `--key` mutually exclusive). Each is a child process killed on drop.
//!
//! Declared by a test binary as `#[path = "common/tls.rs"] mod tls;`.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str, child: &mut Child, log: &Path) {
    let end = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < end, "{what} does not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate it signed for 127.0.0.1, a client certificate it signed, and
/// an unrelated CA (the "wrong CA"). Keys are unencrypted PKCS#8 PEM.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn new(dir: &Path) -> Certs {
        let certs = Certs {
            dir: dir.to_path_buf(),
        };
        let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN=sync-engine test {ca}"),
            ]);
        }
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=sync-engine")] {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subject,
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        certs
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// A child process and its log, killed on drop.
pub struct Service {
    pub port: u16,
    child: Child,
    pub log: PathBuf,
    extra: Vec<Child>,
}

impl Service {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(&mut self.extra) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(command: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

/// `redis-server` (Debian's, TLS built in) on a TLS port only, requiring `password`;
/// client certificates are checked when sent, not required.
pub fn redis(certs: &Certs, password: &str) -> Service {
    let port = free_port();
    let log = certs.dir.join(format!("redis-{port}.log"));
    let mut child = spawn(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &certs.path("server.pem")])
            .args(["--tls-key-file", &certs.path("server.key")])
            .args(["--tls-ca-cert-file", &certs.path("ca.pem")])
            .args(["--tls-auth-clients", "optional", "--requirepass", password])
            .args(["--dir", &certs.dir.display().to_string()]),
        &log,
    );
    wait_listening(port, "redis-server --tls-port", &mut child, &log);
    Service {
        port,
        child,
        log,
        extra: Vec::new(),
    }
}

/// A MariaDB of its own (own datadir, port and socket) with TLS, and a user `app` with
/// `password` that must use TLS, owning database `sync`.
pub fn mariadb(certs: &Certs, password: &str) -> Service {
    let data = certs.dir.join("mariadb");
    run(Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--user=root", "--auth-root-authentication-method=normal"])
        .arg("--skip-test-db"));
    let port = free_port();
    let socket = certs.dir.join("mariadb.sock");
    let log = certs.dir.join(format!("mariadb-{port}.log"));
    let mut child = spawn(
        Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--ssl-cert={}", certs.path("server.pem")))
            .arg(format!("--ssl-key={}", certs.path("server.key")))
            .arg(format!("--ssl-ca={}", certs.path("ca.pem"))),
        &log,
    );
    wait_listening(port, "mariadbd with TLS", &mut child, &log);
    run(Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "-e"])
        .arg(format!(
            "CREATE DATABASE sync; CREATE USER app@'%' IDENTIFIED BY '{password}' REQUIRE SSL; \
             GRANT ALL ON sync.* TO app@'%';"
        )));
    Service {
        port,
        child,
        log,
        extra: Vec::new(),
    }
}

/// A tansu broker reachable only through TLS: tansu listens on a private plaintext port and
/// advertises the TLS port, on which socat terminates TLS with the server certificate.
pub fn kafka(certs: &Certs) -> Service {
    tansu_behind_tls(certs, false)
}

/// A tansu broker that requires SASL (`--authentication`) and has no users, behind socat's
/// TLS: every SCRAM exchange fails with `unknown-user`. (tansu creates users only while
/// authentication is off, and keeps them in storage that the pip-installed tansu has only in
/// memory, so no user survives the restart a working login would need: a SASL round trip
/// cannot be tested here, the client's side of the exchange can.)
pub fn sasl_kafka(certs: &Certs) -> Service {
    tansu_behind_tls(certs, true)
}

fn tansu_behind_tls(certs: &Certs, authentication: bool) -> Service {
    let tansu = std::env::var("SYNC_ENGINE_TEST_TANSU")
        .expect("SYNC_ENGINE_TEST_TANSU is not set: run the suite with scripts/test");
    let (plain, port) = (free_port(), free_port());
    let log = certs.dir.join(format!("tansu-{port}.log"));
    let mut broker = Command::new(tansu);
    broker
        .arg("broker")
        .args(["--listener-url", &format!("tcp://127.0.0.1:{plain}")])
        .args([
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
        ])
        .args(["--storage-engine", "memory://tansu/"]);
    if authentication {
        broker.arg("--authentication");
    }
    let mut child = spawn(&mut broker, &log);
    wait_listening(plain, "tansu", &mut child, &log);
    let socat_log = certs.dir.join(format!("socat-{port}.log"));
    let mut socat = spawn(
        Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                certs.path("server.pem"),
                certs.path("server.key")
            ))
            .arg(format!("TCP:127.0.0.1:{plain}")),
        &socat_log,
    );
    wait_listening(port, "socat TLS terminator", &mut socat, &socat_log);
    Service {
        port,
        child,
        log,
        extra: vec![socat],
    }
}
