//! Fault injection for the integration tests: a TCP proxy of our own that sits between a client
//! and a real service (MariaDB, Redis, a Kafka-protocol broker) and breaks the path on command,
//! so a test can watch a client live through an outage and come back. No Toxiproxy: std threads
//! and sockets, plus `libc` for SO_LINGER.
//!
//! What each `Mode` simulates, and how it differs from the real thing:
//! - `Pass`: plain forwarding, byte for byte (TCP_NODELAY on both legs, so no added latency
//!   beyond a thread hop).
//! - `Reset`: the path drops connections (a server restart, a load balancer with no healthy
//!   backend, a firewall or NAT that lost its flow state): every open connection gets a TCP
//!   RST, and new connections are accepted, so connect() succeeds, and reset at once, so the
//!   client fails on its first read or write. Unlike a real restart, the service keeps running
//!   and keeps its state; the upstream leg is reset too, so it drops the session as it would.
//! - `Refuse`: the service is down on a host that is up: open connections are reset and the
//!   listener is closed, so connects fail at once with ECONNREFUSED. `restore` binds the same
//!   port again.
//! - `Stall`: a black hole (a partition, a half-open path, a firewall that drops packets):
//!   open connections stay open but not a byte moves either way (the proxy stops reading, so
//!   the sender's buffers fill), and clients only notice through their own timeouts. Unlike a
//!   real black hole, new connections complete the handshake (connect() succeeds, then nothing
//!   is ever answered, where a real one would leave the SYN unanswered), the kernel still ACKs
//!   what the proxy has not read, and TCP keepalives still succeed. And a stall does not heal
//!   into a resumed stream: `restore` resets every connection it held, since a client that
//!   already timed out would otherwise read the answer to an older request.
//!
//! Mode switches take effect before `set` returns for what it tears down (resets are sent,
//! the listener is closed), and within one pump tick (`TICK`) for forwarding that must pause.
//!
//! `Broker` is a private tansu broker behind such a proxy, for tests that cut Kafka without
//! disturbing the broker the rest of the suite shares.
#![allow(dead_code)] // each test binary uses its own subset

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// How often the accept thread looks for new connections, and the read/write timeout of the
/// pumps: the latency of noticing a mode switch, traded against idle wake-ups.
const TICK: Duration = Duration::from_millis(20);
/// Upper bound on a pump's wait for a mode switch it missed (it is woken on every switch).
const PARK: Duration = Duration::from_millis(200);
const UPSTREAM_CONNECT: Duration = Duration::from_secs(2);
/// How long `restore` after `Refuse` keeps trying to bind the port again.
const REBIND: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Reset,
    Refuse,
    Stall,
}

/// A fault-injecting TCP proxy on 127.0.0.1. Dropping it stops listening, resets every
/// connection and joins its threads.
pub struct Proxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    port: u16,
    accepted: AtomicUsize,
    state: Mutex<State>,
    /// Signalled on every mode switch and every connection teardown.
    changed: Condvar,
}

struct State {
    mode: Mode,
    stopping: bool,
    /// None while refusing.
    listener: Option<TcpListener>,
    /// Weak: the pumps own a connection, so one that ends by itself closes without us.
    conns: Vec<Weak<Conn>>,
    /// Accepted during a stall, never connected upstream.
    held: Vec<TcpStream>,
}

/// A forwarded connection: both legs, shared by its two pumps.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    killed: AtomicBool,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:<a free port> and forwards to `upstream` ("127.0.0.1:3306").
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fault proxy: bind 127.0.0.1:0");
        Proxy::serve(listener, upstream)
    }

    /// Like `start`, on a given port (for when it must be known beforehand).
    pub fn start_on(port: u16, upstream: &str) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("fault proxy: bind 127.0.0.1:{port}: {e}"));
        Proxy::serve(listener, upstream)
    }

    fn serve(listener: TcpListener, upstream: &str) -> Proxy {
        let upstream = upstream
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("fault proxy: bad upstream address {upstream:?}"));
        // polled, so the accept thread never sits in accept() on a listener `set` must close
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("listener address").port();
        let shared = Arc::new(Shared {
            upstream,
            port,
            accepted: AtomicUsize::new(0),
            state: Mutex::new(State {
                mode: Mode::Pass,
                stopping: false,
                listener: Some(listener),
                conns: Vec::new(),
                held: Vec::new(),
            }),
            changed: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("fault-proxy-{port}"))
                .spawn(move || shared.accept_loop())
                .expect("spawn the accept thread")
        };
        Proxy {
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// "127.0.0.1:PORT"
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// Switches to `mode`. Resets it implies (open connections for `Reset` and `Refuse`; stalled
    /// and held ones when a stall ends) have been sent when this returns, and so has the
    /// closing of the listener for `Refuse`.
    pub fn set(&self, mode: Mode) {
        let victims = {
            let mut st = self.shared.lock();
            let prev = std::mem::replace(&mut st.mode, mode);
            let cut_open = match mode {
                Mode::Pass => prev == Mode::Stall,
                Mode::Stall => false,
                Mode::Reset | Mode::Refuse => true,
            };
            let victims = if cut_open {
                kill_all(&mut st)
            } else {
                Vec::new()
            };
            if mode != Mode::Stall {
                st.held.drain(..).for_each(|s| reset(&s));
            }
            if mode == Mode::Refuse {
                st.listener = None;
            } else if st.listener.is_none() {
                st.listener = Some(rebind(self.shared.port));
            }
            self.shared.changed.notify_all();
            victims
        };
        join_pumps(victims);
    }

    /// Back to `Pass`.
    pub fn restore(&self) {
        self.set(Mode::Pass);
    }

    /// Breaks the path in mode `m` for `d`, then restores it.
    pub fn cut_for(&self, m: Mode, d: Duration) {
        self.set(m);
        thread::sleep(d);
        self.restore();
    }

    /// Connections accepted so far, in every mode (a reconnect shows up here).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let victims = {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.listener = None;
            st.held.drain(..).for_each(|s| reset(&s));
            self.shared.changed.notify_all();
            kill_all(&mut st)
        };
        join_pumps(victims);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    /// Tolerates poisoning: a panicking test thread must not turn teardown into a second panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(st, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    fn accept_loop(self: Arc<Self>) {
        let mut st = self.lock();
        while !st.stopping {
            while let Some(client) = st.listener.as_ref().and_then(accept_one) {
                self.accepted.fetch_add(1, Ordering::SeqCst);
                st = self.admit(st, client);
            }
            st = self.wait(st, TICK);
        }
    }

    /// Treats a freshly accepted connection as the current mode says.
    fn admit<'a>(
        self: &'a Arc<Self>,
        st: MutexGuard<'a, State>,
        client: TcpStream,
    ) -> MutexGuard<'a, State> {
        if st.mode != Mode::Pass {
            return self.place(st, client, None);
        }
        // dialled without the lock: a slow upstream must not hold up `set`
        drop(st);
        let upstream = TcpStream::connect_timeout(&self.upstream, UPSTREAM_CONNECT).ok();
        self.place(self.lock(), client, upstream)
    }

    /// Forwards, holds or resets a new connection; when its upstream leg was dialled in `Pass`,
    /// the mode may have changed meanwhile.
    fn place<'a>(
        self: &'a Arc<Self>,
        mut st: MutexGuard<'a, State>,
        client: TcpStream,
        upstream: Option<TcpStream>,
    ) -> MutexGuard<'a, State> {
        match (st.stopping, st.mode, upstream) {
            (false, Mode::Pass, Some(upstream)) => self.forward(&mut st, client, upstream),
            (false, Mode::Stall, _) => st.held.push(client),
            // the service is down, or the path broke while dialling: the client sees a reset
            _ => reset(&client),
        }
        st
    }

    fn forward(self: &Arc<Self>, st: &mut State, client: TcpStream, upstream: TcpStream) {
        for s in [&client, &upstream] {
            // blocking, with timeouts: the pumps look at the mode at least once a tick
            let _ = s.set_nonblocking(false);
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(TICK));
            let _ = s.set_write_timeout(Some(TICK));
        }
        let conn = Arc::new(Conn {
            client,
            upstream,
            killed: AtomicBool::new(false),
            pumps: Mutex::new(Vec::new()),
        });
        let pumps = [true, false].map(|to_upstream| {
            let (shared, conn) = (Arc::clone(self), Arc::clone(&conn));
            thread::Builder::new()
                .name(format!("fault-proxy-{}-pump", self.port))
                .spawn(move || {
                    let (from, to) = if to_upstream {
                        (&conn.client, &conn.upstream)
                    } else {
                        (&conn.upstream, &conn.client)
                    };
                    shared.pump(&conn, from, to);
                })
                .expect("spawn a pump thread")
        });
        *conn.pumps.lock().unwrap_or_else(PoisonError::into_inner) = pumps.into();
        st.conns.retain(|c| c.strong_count() > 0);
        st.conns.push(Arc::downgrade(&conn));
    }

    /// Copies `from` to `to` until either side ends or the connection is torn down.
    fn pump(&self, conn: &Conn, mut from: &TcpStream, to: &TcpStream) {
        let mut buf = vec![0; 64 * 1024];
        while self.may_move(conn) {
            match from.read(&mut buf) {
                Ok(0) => {
                    // pass the half-close on, unless it is our own teardown
                    if !conn.killed.load(Ordering::SeqCst) {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return;
                }
                Ok(n) => {
                    if !self.send(conn, to, &buf[..n]) {
                        return;
                    }
                }
                Err(e) if is_tick(&e) => {}
                Err(_) => return self.kill(conn),
            }
        }
    }

    /// Writes all of `data`, pausing through a stall.
    fn send(&self, conn: &Conn, mut to: &TcpStream, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if !self.may_move(conn) {
                return false;
            }
            match to.write(data) {
                Ok(0) => {
                    self.kill(conn);
                    return false;
                }
                Ok(n) => data = &data[n..],
                Err(e) if is_tick(&e) => {}
                Err(_) => {
                    self.kill(conn);
                    return false;
                }
            }
        }
        true
    }

    /// Whether bytes may move now: waits out a stall; false once the connection is torn down.
    fn may_move(&self, conn: &Conn) -> bool {
        let mut st = self.lock();
        loop {
            if st.stopping || conn.killed.load(Ordering::SeqCst) {
                return false;
            }
            if st.mode != Mode::Stall {
                return true;
            }
            st = self.wait(st, PARK);
        }
    }

    /// One leg failed (the peer reset it): reset the other too, as a broken path would.
    fn kill(&self, conn: &Conn) {
        let _st = self.lock();
        conn.kill();
        self.changed.notify_all();
    }
}

impl Conn {
    /// Marks both legs for an RST; it goes out when the last pump lets go of the connection.
    fn kill(&self) {
        reset(&self.client);
        reset(&self.upstream);
        self.killed.store(true, Ordering::SeqCst);
    }
}

/// Kills every live forwarded connection (under the lock, so no pump misses the wake-up) and
/// hands them back for `join_pumps`.
fn kill_all(st: &mut State) -> Vec<Arc<Conn>> {
    let conns: Vec<Arc<Conn>> = st.conns.drain(..).filter_map(|c| c.upgrade()).collect();
    conns.iter().for_each(|c| c.kill());
    conns
}

/// Waits for the pumps of killed connections, then drops the last references: the RSTs are
/// on the wire when this returns.
fn join_pumps(conns: Vec<Arc<Conn>>) {
    let pumps: Vec<JoinHandle<()>> = conns
        .iter()
        .flat_map(|c| std::mem::take(&mut *c.pumps.lock().unwrap_or_else(PoisonError::into_inner)))
        .collect();
    for pump in pumps {
        let _ = pump.join();
    }
    drop(conns);
}

fn accept_one(listener: &TcpListener) -> Option<TcpStream> {
    // WouldBlock means nothing is waiting; other errors (a client that reset before we got to
    // it) are retried on the next tick
    listener.accept().ok().map(|(stream, _)| stream)
}

/// Binds the port a `Refuse` let go of; something may hold it for a moment (std sets
/// SO_REUSEADDR, so TIME_WAIT leftovers do not count).
fn rebind(port: u16) -> TcpListener {
    let deadline = Instant::now() + REBIND;
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => {
                listener
                    .set_nonblocking(true)
                    .expect("non-blocking listener");
                return listener;
            }
            Err(e) if Instant::now() < deadline && e.kind() == ErrorKind::AddrInUse => {
                thread::sleep(TICK)
            }
            Err(e) => panic!("fault proxy: re-bind 127.0.0.1:{port} after Refuse: {e}"),
        }
    }
}

/// SO_LINGER {on, 0}: the socket's close sends an RST instead of a FIN (std has no stable
/// `set_linger`).
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a pointer to a live `linger` of the size passed
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A read or write timeout: a pump's chance to look at the mode, not a failure.
fn is_tick(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// A free port on 127.0.0.1, for a server we start that must bind it itself (it may be
/// taken again before the server binds it: rare, and the server then fails to start).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub const TANSU_ENV: &str = "SYNC_ENGINE_TEST_TANSU";
const BROKER_READY: Duration = Duration::from_secs(30);

/// A private tansu broker (in-memory storage) whose advertised listener is a `Proxy` in front
/// of it, so every client connection, bootstrap and advertised, goes through the proxy. Killed
/// on drop.
pub struct Broker {
    pub proxy: Proxy,
    child: Child,
    listen: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts the binary `SYNC_ENGINE_TEST_TANSU` names and waits until it answers metadata
    /// requests through the proxy.
    pub fn start() -> Broker {
        let tansu = std::env::var(TANSU_ENV).unwrap_or_else(|_| {
            panic!("{TANSU_ENV} is not set: it must name a tansu binary (scripts/services.sh installs one)")
        });
        let mut attempt = 1;
        loop {
            let mut broker = Broker::launch(&tansu);
            match broker.wait_ready() {
                Ok(()) => return broker,
                // the free port was taken before tansu bound it: a new one
                Err(log) if attempt < 3 && log.contains("AddrInUse") => attempt += 1,
                Err(log) => panic!("tansu exited before it was ready:\n{log}"),
            }
        }
    }

    fn launch(tansu: &str) -> Broker {
        let listen = free_port();
        let proxy = Proxy::start(&format!("127.0.0.1:{listen}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("tansu.log");
        let out = File::create(&log).expect("create the broker log");
        let child = Command::new(tansu)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://127.0.0.1:{listen}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://{}", proxy.addr()),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {tansu}: {e}"));
        Broker {
            proxy,
            child,
            listen,
            log,
            _dir: dir,
        }
    }

    /// "127.0.0.1:PORT" of the proxy: the bootstrap servers for clients.
    pub fn brokers(&self) -> String {
        self.proxy.addr()
    }

    /// The broker's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the broker listens, then until it answers through the proxy; Err(its log)
    /// if it exits first. Panics at the deadline.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + BROKER_READY;
        let direct: SocketAddr = ([127, 0, 0, 1], self.listen).into();
        while TcpStream::connect_timeout(&direct, Duration::from_secs(1)).is_err() {
            self.check_alive(deadline, "listen")?;
            thread::sleep(Duration::from_millis(20));
        }
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("a metadata client");
        while !client
            .fetch_metadata(None, Duration::from_secs(1))
            .is_ok_and(|m| !m.brokers().is_empty())
        {
            self.check_alive(deadline, "answer metadata requests through the proxy")?;
            thread::sleep(Duration::from_millis(50));
        }
        // what answered on the port may have been another server, if ours lost the race for it
        self.check_alive(deadline, "stay up")
    }

    fn check_alive(&mut self, deadline: Instant, what: &str) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("({status})\n{}", self.log()));
        }
        assert!(
            Instant::now() < deadline,
            "tansu did not {what} within {BROKER_READY:?}:\n{}",
            self.log()
        );
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
