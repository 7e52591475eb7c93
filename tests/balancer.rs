//! A real L4 front: nginx `stream` and HAProxy, run with the configurations shipped in deploy/
//! (only their port numbers substituted), in front of three upecho instances on 127.0.0.2-4. TCP
//! and UDP clients through the balancer get correct replies, spread over all three (each
//! instance's own /metrics), the real client address reaches upecho in the PROXY header, and
//! with one instance killed new clients are still served by the other two.
//!
//! Each test skips, saying so, where its balancer is not installed (`.ci/run` installs nginx,
//! libnginx-mod-stream and haproxy).

mod util;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use util::{
    ServerProc, WAIT, free_port, random_bytes, read_n, sample, scrape, upper, wait_until,
    wait_until_within,
};

const INSTANCES: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// Where the test clients connect from, so the instances' logs can show it arrived via PROXY.
const CLIENT_IP: &str = "127.0.0.9";

/// One upecho behind the balancer, with its metrics endpoint.
struct Instance {
    proc: ServerProc,
    metrics: SocketAddr,
}

fn start_instances() -> Vec<Instance> {
    INSTANCES
        .iter()
        .map(|ip| {
            let listen = format!("{ip}:0");
            let proc = ServerProc::start_raw(
                &[
                    "serve",
                    "--listen",
                    &listen,
                    "--metrics",
                    &listen,
                    "--proxy-protocol",
                    "--proxy-from",
                    "127.0.0.1",
                ],
                None,
            );
            let metrics = proc.metrics_addr();
            Instance { proc, metrics }
        })
        .collect()
}

/// One counter of an instance's `/metrics`.
fn counter(i: &Instance, name: &str) -> f64 {
    let body = scrape(i.metrics);
    sample(&body, name).unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// A shipped configuration with the example ports (8005) replaced: the balancer's by `front`,
/// each instance's by the port it was given.
fn substitute(template: &str, front: u16, instances: &[Instance]) -> String {
    let mut out = template.replace("127.0.0.1:8005", &format!("127.0.0.1:{front}"));
    for (ip, i) in INSTANCES.iter().zip(instances) {
        out = out.replace(
            &format!("{ip}:8005"),
            &format!("{ip}:{}", i.proc.tcp().port()),
        );
    }
    let left = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| l.contains(":8005"));
    assert!(!left, "a port left unsubstituted:\n{out}");
    out
}

fn deploy(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A balancer process, ended (by its PID) when the test ends.
struct Balancer {
    child: Child,
    front: SocketAddr,
    log: PathBuf,
}

impl Balancer {
    /// Waits until it accepts TCP on its front port, or it has exited.
    fn ready(&mut self) -> bool {
        let mut exited = false;
        wait_until(|| {
            exited = matches!(self.child.try_wait(), Ok(Some(_)));
            exited || TcpStream::connect_timeout(&self.front, Duration::from_millis(200)).is_ok()
        }) && !exited
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if wait_until_within(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a balancer from `start(front_port)` until one binds its port (a free port may be
/// taken by someone else before the balancer binds it).
fn start_balancer(mut start: impl FnMut(u16) -> Balancer) -> Balancer {
    let mut last = String::new();
    for _ in 0..3 {
        let mut b = start(free_port());
        if b.ready() {
            return b;
        }
        last = b.log();
    }
    panic!("the balancer did not start:\n{last}");
}

/// A TCP client from [`CLIENT_IP`] through the balancer.
fn client(front: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{CLIENT_IP}:0").parse().unwrap();
    s.bind(&src.into()).unwrap();
    s.connect_timeout(&front.into(), WAIT).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// `n` clients at once, each held open until all have their 1000-byte reply; returns the
/// clients' own addresses.
fn tcp_clients(front: SocketAddr, n: usize, seed: u64) -> Vec<SocketAddr> {
    let mut open: Vec<(TcpStream, Vec<u8>)> = (0..n)
        .map(|i| {
            let mut c = client(front);
            let data = random_bytes(1000, seed + i as u64);
            c.write_all(&data).unwrap();
            (c, data)
        })
        .collect();
    let mut addrs = Vec::new();
    for (c, data) in &mut open {
        assert_eq!(read_n(c, data.len()), upper(data));
        addrs.push(c.local_addr().unwrap());
    }
    addrs
}

/// What nginx's and HAProxy's tests share: spread, the real address, half-close, and a killed
/// instance. Returns the two left alive.
fn exercise_tcp(front: SocketAddr, mut instances: Vec<Instance>) -> Vec<Instance> {
    let before: Vec<f64> = instances
        .iter()
        .map(|i| counter(i, "upecho_received_bytes_total"))
        .collect();
    let clients = tcp_clients(front, 30, 1);
    // Spread: every instance got a fair share of the 30 kB (health checks add a few bytes).
    for (i, b) in instances.iter().zip(&before) {
        let got = counter(i, "upecho_received_bytes_total") - b;
        assert!(got >= 5_000.0, "an instance got {got} bytes of 30,000");
    }
    // The real client address reached upecho: its log names the client, via the balancer.
    let first = clients[0].to_string();
    let via = format!("{first} via 127.0.0.1:");
    assert!(
        wait_until(|| instances.iter().any(|i| i.proc.stderr().contains(&via))),
        "no instance logged {via:?}"
    );
    // `printf abc | upecho tcp` through the balancer: a half-close still gets its reply.
    let mut c = client(front);
    c.write_all(b"abc").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ABC");
    // One instance dies; new clients are served by the other two.
    drop(instances.remove(0));
    tcp_clients(front, 15, 100);
    instances
}

/// Where a balancer's shipped configuration can run as a test, or why not.
fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

#[test]
fn nginx_stream_balances_tcp_and_udp_over_three_instances() {
    let Some(nginx) = tool("nginx") else {
        eprintln!(
            "skipped: nginx is not installed (Debian: apt-get install nginx libnginx-mod-stream)"
        );
        return;
    };
    // Debian builds the stream module as a loadable one (package libnginx-mod-stream).
    let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    let version = Command::new(&nginx).arg("-V").output().unwrap();
    let built_in = String::from_utf8_lossy(&version.stderr).contains("--with-stream ");
    if !module.exists() && !built_in {
        eprintln!(
            "skipped: nginx has no stream module (Debian: apt-get install libnginx-mod-stream)"
        );
        return;
    }
    let instances = start_instances();
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream.conf");
    let b = start_balancer(|front| {
        fs::write(
            &stream,
            substitute(&deploy("nginx-stream.conf"), front, &instances),
        )
        .unwrap();
        let log = dir.path().join("error.log");
        let main = format!(
            "{load}daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
             error_log {log} info;\nevents {{ worker_connections 1024; }}\ninclude {stream};\n",
            load = if module.exists() {
                format!("load_module {};\n", module.display())
            } else {
                String::new()
            },
            pid = dir.path().join("nginx.pid").display(),
            log = log.display(),
            stream = stream.display(),
        );
        let conf = dir.path().join("nginx.conf");
        fs::write(&conf, main).unwrap();
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&log)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Balancer {
            child,
            front: SocketAddr::from(([127, 0, 0, 1], front)),
            log,
        }
    });
    // UDP: one datagram per client socket, each balanced anew (proxy_responses 1).
    let before: Vec<f64> = instances
        .iter()
        .map(|i| counter(i, "upecho_udp_received_datagrams_total"))
        .collect();
    for i in 0..30u64 {
        let u = UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap();
        u.set_read_timeout(Some(WAIT)).unwrap();
        let data = random_bytes(200, 1000 + i);
        u.send_to(&data, b.front).unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = u.recv_from(&mut buf).expect("a UDP reply through nginx");
        assert_eq!(&buf[..n], upper(&data).as_slice());
    }
    for (i, b0) in instances.iter().zip(&before) {
        let got = counter(i, "upecho_udp_received_datagrams_total") - b0;
        assert!(got >= 5.0, "an instance got {got} of 30 datagrams");
    }
    let _alive = exercise_tcp(b.front, instances);
    // UDP with an instance gone: nginx learns of it from the ICMP error (max_fails=1), so a
    // client that retries, as UDP clients do, is answered by the other two.
    for i in 0..10u64 {
        let u = UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let data = random_bytes(100, 2000 + i);
        let answered = (0..5).any(|_| {
            u.send_to(&data, b.front).unwrap();
            let mut buf = [0u8; 512];
            matches!(u.recv_from(&mut buf), Ok((n, _)) if buf[..n] == upper(&data)[..])
        });
        assert!(answered, "datagram {i} never answered:\n{}", b.log());
    }
}

#[test]
fn haproxy_balances_tcp_with_proxy_v2_and_health_checks() {
    let Some(haproxy) = tool("haproxy") else {
        eprintln!("skipped: haproxy is not installed (Debian: apt-get install haproxy)");
        return;
    };
    let instances = start_instances();
    let dir = tempfile::tempdir().unwrap();
    let b = start_balancer(|front| {
        let conf = dir.path().join("haproxy.cfg");
        fs::write(&conf, substitute(&deploy("haproxy.cfg"), front, &instances)).unwrap();
        let log = dir.path().join("haproxy.log");
        let child = Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start haproxy");
        Balancer {
            child,
            front: SocketAddr::from(([127, 0, 0, 1], front)),
            log,
        }
    });
    // The active checks send their PROXY header and are answered: all three come up.
    assert!(
        wait_until(|| instances
            .iter()
            .all(|i| counter(i, "upecho_proxy_headers_total") >= 1.0)),
        "health checks never reached every instance"
    );
    for i in &instances {
        assert_eq!(counter(i, "upecho_proxy_rejected_total"), 0.0);
    }
    let _alive = exercise_tcp(b.front, instances);
}
