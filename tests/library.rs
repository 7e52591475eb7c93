//! The reactor as a library: already-bound sockets in, a `Summary` out, stopped by a handle.
//! This is how a supervisor of `SO_REUSEPORT` workers or socket activation will embed it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use upecho::net::{SocketOptions, bind_tcp, bind_udp};
use upecho::serve::{Config, Server};

#[test]
fn in_process_server_serves_and_stops_on_its_handle_with_counters() {
    let opts = SocketOptions::default();
    let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
    let udp = bind_udp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
    let (tcp_addr, udp_addr) = (listener.local_addr().unwrap(), udp.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let reactor = thread::spawn(move || {
        let server = Server::new(Config::default(), vec![listener], vec![udp]).unwrap();
        tx.send(server.shutdown_handle()).unwrap();
        server.run().unwrap()
    });
    let handle = rx.recv_timeout(Duration::from_secs(20)).unwrap();

    let mut c = TcpStream::connect(tcp_addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"library").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"LIBRARY");

    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    u.send_to(b"dgram", udp_addr).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = u.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"DGRAM");

    handle.shutdown();
    let summary = reactor.join().unwrap();
    assert!(!summary.forced);
    let s = summary.stats;
    assert_eq!(
        (s.accepted, s.active, s.bytes_in, s.bytes_out),
        (1, 0, 7, 7)
    );
    assert_eq!((s.datagrams_in, s.datagrams_out), (1, 1));
}

#[test]
fn a_server_can_be_built_on_one_thread_and_run_on_another() {
    fn assert_send<T: Send>() {}
    assert_send::<Server>();
}
