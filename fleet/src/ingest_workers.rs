//! The ingest's worker threads: every received message goes to one of N blocking threads chosen by its device, so
//! the ingest uses several cores while one device's messages are still handled one at a time, in the order they
//! arrived.
//!
//! Design: a router task reads the MQTT client's channel and forwards each message to its worker's bounded channel
//! (waiting when that worker is behind, which backs the client up as a single channel did). Each worker is a
//! thread of its own, named `ingest-N` (not a task of tokio's blocking pool, which is meant for calls that end and
//! may queue a long-running task behind another when it cannot start a thread). The worker is a stable
//! hash of the device id parsed from the topic; a topic that names no device goes to worker 0 (the ingest drops it
//! as `bad_topic`). [`crate::ingest::Ingest::ingest`] is safe to call from several threads: every read-modify-write
//! is a compare-and-swap on per-device keys, and the drift trackers and the rollout engine each hold one short
//! mutex. Shutdown drains: when the client's sender is dropped the router ends, which drops the workers' senders;
//! each worker handles what is queued and exits, and [`Workers::join`] resolves once all have.

use std::sync::Arc;

use outpost_common::topics;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ingest::{Ingest, Ingested};
use crate::mqtt::Incoming;

/// Messages queued per worker before the router waits.
const QUEUE: usize = 1024;

/// What the service does with a message the ingest handled (rollout observations, alert forwarding); called on
/// the worker thread that handled it, with the time the message was handed to the ingest.
pub type AfterIngest = Arc<dyn Fn(&Ingested, OffsetDateTime) + Send + Sync>;

/// The worker a topic's messages go to, out of `workers` (at least 1): a stable hash of the device id, worker 0
/// when the topic names no device.
pub fn worker_for(topic: &str, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    match topics::parse(topic) {
        Ok((device, _)) => (crate::ingest::fnv1a(device.as_str().as_bytes()) % workers as u64) as usize,
        Err(_) => 0,
    }
}

/// The running router and workers.
#[derive(Debug)]
pub struct Workers {
    router: JoinHandle<()>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` (at least 1) worker threads and the router reading `rx`. Must be called in a tokio runtime.
    /// Fails only when the OS refuses a thread.
    pub fn start(
        ingest: Arc<Ingest>,
        count: usize,
        mut rx: mpsc::Receiver<Incoming>,
        after: AfterIngest,
    ) -> std::io::Result<Workers> {
        let count = count.max(1);
        let mut senders = Vec::with_capacity(count);
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::channel(QUEUE);
            senders.push(tx);
            let (ingest, after) = (ingest.clone(), after.clone());
            let thread = std::thread::Builder::new().name(format!("ingest-{index}"));
            workers.push(thread.spawn(move || work(index, &ingest, rx, after.as_ref()))?);
        }
        let router = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let index = worker_for(&m.topic, senders.len());
                if senders[index].send(m).await.is_err() {
                    // A worker only ends when its channel closes, which happens after this loop; nothing to do.
                    tracing::error!(worker = index, "ingest worker gone; message not ingested");
                }
            }
        });
        tracing::info!(workers = count, "ingest workers started");
        Ok(Workers { router, workers })
    }

    /// Resolves once the router has ended (its input closed) and every worker has drained its queue.
    pub async fn join(self) {
        let _ = self.router.await;
        let workers = self.workers;
        // The router's end dropped the workers' senders, so each thread ends once its queue is drained.
        let joined = tokio::task::spawn_blocking(move || workers.into_iter().all(|w| w.join().is_ok())).await;
        if !matches!(joined, Ok(true)) {
            tracing::error!("an ingest worker panicked");
        }
    }
}

/// One worker: feeds its messages to the ingest, on its own thread (the store is synchronous).
fn work(
    index: usize,
    ingest: &Ingest,
    mut rx: mpsc::Receiver<Incoming>,
    after: &(dyn Fn(&Ingested, OffsetDateTime) + Send + Sync),
) {
    while let Some(m) = rx.blocking_recv() {
        let now = OffsetDateTime::now_utc();
        match ingest.ingest(&m.topic, &m.payload, now) {
            Ok(done) => after(&done, now),
            Err(e) => tracing::error!(worker = index, kind = e.kind(), error = %e, topic = %m.topic, "ingest failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use outpost_common::store::SledStore;
    use outpost_common::topics::{Channel, DeviceId};

    use super::*;
    use crate::ingest::{DropReason, IngestConfig, MasterKeyDirectory};

    fn topic(device: &str, channel: Channel) -> String {
        topics::topic(&DeviceId::new(device).expect("valid id"), channel)
    }

    #[test]
    fn a_device_always_goes_to_the_same_worker_whatever_the_channel() {
        for workers in [1, 2, 3, 8] {
            for i in 0..200 {
                let device = format!("cam-{i}");
                let w = worker_for(&topic(&device, Channel::Telemetry), workers);
                assert!(w < workers);
                assert_eq!(worker_for(&topic(&device, Channel::Status), workers), w, "{device}");
                assert_eq!(worker_for(&topic(&device, Channel::Events), workers), w, "{device}");
            }
        }
    }

    #[test]
    fn devices_spread_over_the_workers() {
        for workers in [2, 4, 8] {
            let mut counts = vec![0usize; workers];
            for i in 0..10_000 {
                counts[worker_for(&topic(&format!("load-{i:05}"), Channel::Telemetry), workers)] += 1;
            }
            let fair = 10_000 / workers;
            assert!(counts.iter().all(|&c| c > fair * 8 / 10 && c < fair * 12 / 10), "{workers} workers: {counts:?}");
        }
    }

    #[test]
    fn topics_without_a_device_go_to_worker_zero() {
        for bad in ["", "nonsense", "outpost/v1/devices//telemetry", "outpost/v1/devices/cam-1/nope", "a/b/c/d/e"] {
            assert_eq!(worker_for(bad, 4), 0, "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_queued_message_is_ingested_before_join_returns_each_device_on_one_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(&dir.path().join("db")).expect("store");
        let directory = Arc::new(MasterKeyDirectory::new(b"test master secret, not a real one"));
        let ingest = Arc::new(Ingest::open(store, directory, IngestConfig::default()).expect("ingest"));
        // Unknown devices: every message is dropped and counted, and `after` still sees each one.
        let seen: Arc<Mutex<Vec<(String, u8, std::thread::ThreadId)>>> = Arc::default();
        let log = seen.clone();
        let after: AfterIngest = Arc::new(move |done: &Ingested, _| {
            let device = done.device.as_ref().map_or("-".to_string(), |d| d.as_str().to_string());
            let n = match done.dropped() {
                Some(DropReason::UnknownDevice) => 1,
                Some(DropReason::BadTopic) => 2,
                _ => 0,
            };
            log.lock().expect("lock").push((device, n, std::thread::current().id()));
        });
        let (tx, rx) = mpsc::channel(16);
        let workers = Workers::start(ingest.clone(), 3, rx, after).expect("worker threads");
        for round in 0..50u8 {
            for d in 0..20 {
                let topic = topic(&format!("dev-{d}"), Channel::Telemetry);
                tx.send(Incoming { topic, payload: bytes::Bytes::from(vec![round]) }).await.expect("send");
            }
        }
        tx.send(Incoming { topic: "not/a/device".into(), payload: bytes::Bytes::new() }).await.expect("send");
        drop(tx);
        workers.join().await;
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1001);
        assert_eq!(seen.iter().filter(|(_, n, _)| *n == 1).count(), 1000);
        assert_eq!(seen.iter().filter(|(_, n, _)| *n == 2).count(), 1);
        let mut threads = std::collections::HashMap::new();
        for (device, _, thread) in seen.iter() {
            assert_eq!(*threads.entry(device.clone()).or_insert(*thread), *thread, "{device} moved threads");
        }
        let distinct: std::collections::HashSet<_> = threads.values().collect();
        assert_eq!(distinct.len(), 3, "20 devices over 3 workers");
        let drops = ingest.drop_counts();
        assert_eq!(drops.get(&DropReason::UnknownDevice), Some(&1000));
        assert_eq!(drops.get(&DropReason::BadTopic), Some(&1));
    }
}
