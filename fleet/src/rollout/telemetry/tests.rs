//! The cache answers exactly what the store read answers, whatever the order of stores, observations, requests
//! and sweeps.

use std::sync::Mutex;

use outpost_common::protocol::{ConfidenceHistogram, Latency, ModelRef, WindowSummary};
use outpost_common::topics::DeviceId;
use time::OffsetDateTime;

use super::{MAX_WINDOWS_PER_DEVICE, WindowCache, WindowSource};
use crate::ingest::{StoredWindow, TimeRange, key_ms};
use crate::rollout::engine::RolloutError;
use crate::rollout::gates::WindowPoint;

/// The store's window read over a list: device and version match, start (ms) in range, in (start ms, seq) order.
#[derive(Default)]
struct FakeStore {
    windows: Mutex<Vec<(String, StoredWindow)>>,
}

impl FakeStore {
    fn put(&self, device: &str, seq: u64, window: WindowSummary) -> StoredWindow {
        let stored = StoredWindow { seq, received_at: window.end, window };
        self.windows.lock().expect("lock").push((device.to_string(), stored.clone()));
        stored
    }
}

impl WindowSource for FakeStore {
    fn windows(
        &self,
        device: &DeviceId,
        model: &ModelRef,
        range: TimeRange,
        limit: usize,
    ) -> Result<Vec<StoredWindow>, RolloutError> {
        let (from, to) = (key_ms(range.from), key_ms(range.to));
        let mut out: Vec<StoredWindow> = self
            .windows
            .lock()
            .expect("lock")
            .iter()
            .filter(|(d, w)| d == device.as_str() && w.window.model == *model)
            .filter(|(_, w)| (from..to).contains(&key_ms(w.window.start)))
            .map(|(_, w)| w.clone())
            .collect();
        out.sort_by_key(|w| (key_ms(w.window.start), w.seq));
        out.truncate(limit);
        Ok(out)
    }
}

fn t0() -> OffsetDateTime {
    time::macros::datetime!(2026-11-22 10:00 UTC)
}

fn window(version: u64, start: OffsetDateTime, confidence: f32) -> WindowSummary {
    let mut histogram = ConfidenceHistogram::default();
    histogram.add(confidence);
    WindowSummary {
        start,
        end: start + time::Duration::seconds(10),
        camera: "line-1".into(),
        model: ModelRef { name: "defect".into(), version },
        frames: 10,
        drops: 0,
        confidence: histogram,
        classes: Default::default(),
        latency_ms: Latency { p50: 10.0, p95: 20.0 + confidence, p99: 30.0 },
        flagged: u64::from(confidence < 0.5),
    }
}

fn direct(store: &FakeStore, device: &str, model: &ModelRef, range: TimeRange) -> Vec<WindowPoint> {
    let id = DeviceId::new(device).expect("device id");
    let windows = store.windows(&id, model, range, MAX_WINDOWS_PER_DEVICE).expect("read");
    windows.iter().map(|w| super::Figures::of(&w.window).point(device)).collect()
}

#[test]
fn a_window_read_and_observed_is_held_once() {
    let (store, cache) = (FakeStore::default(), WindowCache::default());
    let model = ModelRef { name: "defect".into(), version: 2 };
    let range = TimeRange::new(t0(), t0() + time::Duration::minutes(5));
    // Stored before the entry exists, observed after its first read (the ingest calls observe after storing).
    let early = store.put("cam-a", 1, window(2, t0() + time::Duration::seconds(5), 0.8));
    assert_eq!(cache.points(&store, "cam-a", &model, range, true).expect("points").len(), 1);
    cache.observe("cam-a", early.seq, &early.window);
    // Stored and observed after the read, starting before the last one (a late window).
    let late = store.put("cam-a", 2, window(2, t0() + time::Duration::seconds(1), 0.6));
    cache.observe("cam-a", late.seq, &late.window);
    // Another version and another device are not this entry's.
    let other = store.put("cam-a", 3, window(1, t0() + time::Duration::seconds(2), 0.6));
    cache.observe("cam-a", other.seq, &other.window);
    let got = cache.points(&store, "cam-a", &model, range, true).expect("points");
    assert_eq!(got, direct(&store, "cam-a", &model, range));
    assert_eq!(got.len(), 2);
    assert_eq!(cache.len(), 2);
    // One store read (the first request's), three points judged over the two requests.
    assert_eq!(cache.stats(), super::CacheStats { read: 1, served: 3 });
}

#[test]
fn matches_the_store_read_through_random_histories() {
    for seed in 0..200u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (store, cache) = (FakeStore::default(), WindowCache::default());
        let devices = ["cam-a", "cam-b"];
        let mut seq = 0u64;
        // Per (device, version): the stage start, which only moves forward, as the engine's requests do.
        let mut stage_start = [[t0(); 2]; 2];
        let mut now = t0();
        for step in 0..120 {
            now += time::Duration::milliseconds(rng.i64(0..3000));
            let d = rng.usize(0..2);
            let v = rng.usize(0..2);
            let model = ModelRef { name: "defect".into(), version: v as u64 + 1 };
            match rng.u8(0..10) {
                // A window: mostly recent, sometimes late (before earlier ones), at odd milliseconds.
                0..=4 => {
                    seq += 1;
                    let back = if rng.u8(0..5) == 0 { rng.i64(0..600_000) } else { rng.i64(0..15_000) };
                    let start =
                        now - time::Duration::milliseconds(back) + time::Duration::nanoseconds(rng.i64(0..999_999));
                    let stored = store.put(devices[d], seq, window(model.version, start, rng.f32()));
                    cache.observe(devices[d], stored.seq, &stored.window);
                }
                // The stage moves on.
                5 => {
                    let next = now - time::Duration::milliseconds(rng.i64(0..5000));
                    stage_start[d][v] = stage_start[d][v].max(next);
                }
                // A forward request (the stage's period).
                6..=7 => {
                    let range = TimeRange::new(stage_start[d][v], now);
                    let got = cache.points(&store, devices[d], &model, range, true).expect("points");
                    assert_eq!(got, direct(&store, devices[d], &model, range), "seed {seed} step {step}");
                }
                // A before/after request: an equally long period before the stage.
                8 => {
                    let start = stage_start[d][v];
                    let range = TimeRange::new(start - (now - start), start);
                    let got = cache.points(&store, devices[d], &model, range, false).expect("points");
                    assert_eq!(got, direct(&store, devices[d], &model, range), "seed {seed} step {step}");
                }
                _ => cache.sweep(),
            }
        }
    }
}
