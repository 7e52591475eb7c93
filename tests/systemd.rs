//! systemd: socket activation (the sockets systemd passes are served instead of binding),
//! `sd_notify` state reports, and the unit files in `deploy/`.

mod util;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::{ServerProc, WAIT, bin, free_port};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        eprintln!("SKIP the_unit_files_pass_systemd_analyze_verify: systemd-analyze not installed");
        return;
    }
    // The units name the installed path; verify them against the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    for unit in ["upecho.socket", "upecho.service"] {
        let text = std::fs::read_to_string(format!("{root}/deploy/{unit}")).unwrap();
        let text = text.replace("/usr/local/bin/upecho", bin());
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "upecho.socket", "upecho.service"])
        .current_dir(dir.path())
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("upecho"),
        "systemd-analyze has something to say about the units: {err}"
    );
}

#[test]
fn socket_activation_serves_the_tcp_and_udp_sockets_systemd_passes() {
    if !have("systemd-socket-activate") {
        eprintln!("SKIP socket activation test: systemd-socket-activate not installed");
        return;
    }
    let port = free_port();
    let at = format!("127.0.0.1:{port}");
    // One systemd-socket-activate per socket type: the outer one holds the UDP socket and
    // passes it through the inner one, which adds the TCP listener; each execs the next in place
    // once its socket is ready, so the process finally is upecho with LISTEN_FDS=2.
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args([
        "-d",
        "-l",
        &at,
        "--",
        "systemd-socket-activate",
        "-l",
        &at,
        "--",
    ])
    .args([bin(), "serve", "--listen", "127.0.0.1:1"])
    .env("RUST_LOG", "info");
    let activator = thread::spawn(move || {
        // The outer activator starts the inner one at the first datagram, and the inner one
        // upecho at the first connection; keep knocking until both listen.
        let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 16];
        loop {
            assert!(
                Instant::now() < deadline,
                "no UDP reply through socket activation"
            );
            let _ = u.send_to(b"activated", ("127.0.0.1", port));
            let _ = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), WAIT);
            if let Ok((n, _)) = u.recv_from(&mut buf) {
                return buf[..n].to_vec();
            }
        }
    });
    let mut s = ServerProc::spawn(cmd, true, true);
    assert_eq!(activator.join().unwrap(), b"ACTIVATED");
    assert_eq!(
        s.tcp().port(),
        port,
        "the listening lines name the passed sockets"
    );
    assert_eq!(s.udp().port(), port);
    let mut c = s.connect();
    c.write_all(b"via systemd").unwrap();
    let mut got = [0u8; 11];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"VIA SYSTEMD");
    assert!(s.logged("--listen ignored"), "{}", s.stderr());
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

#[test]
fn sd_notify_gets_ready_then_watchdog_pings_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "info");
    let mut s = ServerProc::spawn(cmd, true, true);
    let next = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        seen.push(next());
        assert!(seen.len() < 100, "{seen:?}");
    }
    let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready.contains("STATUS=serving 1 TCP listener(s)"),
        "{ready}"
    );
    s.signal(libc::SIGTERM);
    loop {
        let m = next();
        if m.contains("STOPPING=1") {
            break;
        }
        assert!(m.contains("WATCHDOG=1"), "unexpected {m}");
    }
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}
