//! The tokio baseline: the server most Rust users would write. `#[tokio::main]`-style
//! multi-thread runtime (pinned to one CPU it runs one worker), a task per connection with a
//! 16 KiB buffer, upper-case, `write_all` back; UDP is one task doing `recv_from`/`send_to`. It is
//! this bench binary re-executed as `e2e baseline-server ADDR`.
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

fn upper(buf: &mut [u8]) {
    buf.make_ascii_uppercase();
}

pub fn serve(listen: SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let tcp = TcpListener::bind(listen).await.expect("bind tcp");
        let addr = tcp.local_addr().expect("local addr");
        let udp = UdpSocket::bind(addr).await.expect("bind udp");
        println!("listening tcp {addr}");
        println!("listening udp {addr}");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                upper(&mut buf[..n]);
                let _ = udp.send_to(&buf[..n], peer).await;
            }
        });
        loop {
            let (mut s, _) = match tcp.accept().await {
                Ok(c) => c,
                Err(_) => {
                    // EMFILE and friends: back off rather than spin.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    upper(&mut buf[..n]);
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}
