//! Async submissions accepted durably (issue 18's target: ≥ 5,000/s on 2 cores with group
//! commit), beside the limit measured in the same run: sled's own flush rate, one insert
//! and one flush at a time (what a durable acceptance costs without grouping).
//!
//! `cargo bench -p fogline-node --bench store` (release). Prints:
//! - limit: sled alone, insert of a 1 KiB call + `flush()`, one at a time, per second;
//! - fogline: `Store::enqueue` (call, its ids, its meta; returns once on disk) from 1 and
//!   from 64 concurrent submitters, per second, and the ratio to the limit.
//!
//! The disk is the machine's (the data folder is a temporary directory beside the build).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fogline_node::store::{AsyncCall, CallMeta, Store};

const RUN: Duration = Duration::from_secs(3);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let body = Bytes::from(vec![b'x'; 1024]);

    // The limit: sled alone, a flush per acceptance.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::open(dir.path()).expect("sled");
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < RUN {
        db.insert(n.to_be_bytes(), &body[..]).expect("insert");
        db.flush().expect("flush");
        n += 1;
    }
    let limit = n as f64 / t.elapsed().as_secs_f64();
    drop(db);
    println!("async acceptance, 1 KiB calls, {} s per row", RUN.as_secs());
    println!("limit: sled insert + flush, one at a time          {limit:>9.0}/s");

    for submitters in [1usize, 64] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        let done = Arc::new(AtomicU64::new(0));
        let rate = rt.block_on(async {
            let t = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..submitters {
                let (store, done, body) = (store.clone(), done.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    let call = AsyncCall {
                        function: "hello".into(),
                        callback: None,
                        body,
                        trace: None,
                    };
                    let meta = CallMeta::default();
                    while t.elapsed() < RUN {
                        store.enqueue(&call, &meta, 0).await.expect("enqueue");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for task in tasks {
                task.await.expect("submitter");
            }
            done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
        });
        println!(
            "fogline: Store::enqueue, {submitters:>2} submitter(s)          {rate:>9.0}/s   {:.1}x the limit{}",
            rate / limit,
            if submitters == 64 { "   (target: >= 5,000/s)" } else { "" }
        );
    }
}
