//! Outbox append throughput: one fsync per message against grouped flushes (group commit), on the temp directory's
//! disk. Prints figures; asserts nothing about time. Run with `cargo bench -p outpost-agent --bench outbox`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outpost_agent::outbox::Outbox;
use outpost_agent::store::{SledStore, Store};
use outpost_common::topics::Channel;

/// About the size of a sealed window summary.
const PAYLOAD: usize = 600;

fn open() -> (tempfile::TempDir, Arc<Outbox>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = SledStore::open(dir.path()).expect("store");
    let outbox = Outbox::open(store, 1 << 30).expect("outbox");
    (dir, Arc::new(outbox))
}

fn append(outbox: &Outbox) -> u64 {
    outbox.append(Channel::Telemetry, |_| Ok(vec![b'x'; PAYLOAD])).expect("append")
}

fn report(what: &str, n: u64, elapsed: Duration, flushes: u64) {
    let rate = n as f64 / elapsed.as_secs_f64();
    println!("{what:<44} {n:>7} msgs {:>9.1} ms {rate:>10.0} msg/s  {flushes:>6} fsyncs", elapsed.as_secs_f64() * 1e3);
}

fn main() {
    // 1. fsync per message: what throughput looks like when bound by the disk.
    let (_dir, outbox) = open();
    let n = 2_000;
    let start = Instant::now();
    for _ in 0..n {
        append(&outbox);
        outbox.flush().expect("flush");
    }
    report("flush per message", n, start.elapsed(), n);

    // 2. group commit: a flusher loops (as the link's flusher task does), appends never wait for it.
    for interval_ms in [0u64, 5, 20] {
        let (_dir, outbox) = open();
        let n = 100_000;
        let done = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (outbox, done) = (outbox.clone(), done.clone());
            std::thread::spawn(move || {
                let mut flushes = 0u64;
                while !done.load(Ordering::Acquire) || outbox.needs_flush() {
                    if outbox.needs_flush() {
                        outbox.flush().expect("flush");
                        flushes += 1;
                    }
                    std::thread::sleep(Duration::from_millis(interval_ms.max(1)));
                }
                flushes
            })
        };
        let start = Instant::now();
        let mut last = 0;
        for _ in 0..n {
            last = append(&outbox);
        }
        let appended = start.elapsed();
        done.store(true, Ordering::Release);
        let flushes = flusher.join().expect("flusher");
        let durable = start.elapsed();
        assert_eq!(outbox.stats().durable_seq, last);
        report(&format!("grouped, flush every {interval_ms} ms: appended"), n, appended, flushes);
        report(&format!("grouped, flush every {interval_ms} ms: all durable"), n, durable, flushes);
    }
}
