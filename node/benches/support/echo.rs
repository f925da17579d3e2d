//! Timing loops and the raw QUIC echo the benchmarks measure their limits with.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Runs `f` 200 times to warm up, then `n` times; the sorted durations.
pub async fn measure<F, Fut>(n: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..200 {
        f().await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed());
    }
    v.sort();
    v
}

/// One raw echo: open a stream, send `body`, read it all back.
pub async fn raw_echo(conn: &quinn::Connection, body: &Bytes) {
    let (mut s, mut r) = conn.open_bi().await.expect("open");
    s.write_all(body).await.expect("write");
    s.finish().expect("finish");
    let back = r.read_to_end(64 << 20).await.expect("read");
    assert_eq!(back.len(), body.len());
}

/// Echoes every stream of every connection `ep` accepts; its address.
pub fn serve_echo(ep: quinn::Endpoint) -> SocketAddr {
    let addr = ep.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut s, mut r)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(data) = r.read_to_end(64 << 20).await {
                            let _ = s.write_all(&data).await;
                            let _ = s.finish();
                        }
                    });
                }
            });
        }
    });
    addr
}
