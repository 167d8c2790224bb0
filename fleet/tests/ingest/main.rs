//! Ingest end to end over a real sled store: messages sealed as the agent seals them, forgeries, duplicates across a
//! fleet restart, out-of-order replays, status and last will, range queries and aggregates, retention and
//! roll-ups, the event log, several threads delivering at once; drift on the real defect model's confidences in
//! `drift.rs`.

mod drift;
mod support;

use outpost_common::protocol::auth::{MAX_SEALED_BYTES, Sealed, derive_device_key};
use outpost_common::protocol::{self, AgentState, ServedModel, Status};
use outpost_common::topics::{self, Channel};
use outpost_fleet::drift::DriftGroup;
use outpost_fleet::ingest::{AggregateFilter, DropReason, IngestConfig, Outcome, StatusApplied, TimeRange};
use support::{Fleet, event, id, key, model, sealed_with, simple_window, status, t};

const DAY: i64 = 24 * 60;

fn stored(outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Dropped(_))
}

fn all_time() -> TimeRange {
    TimeRange::new(t(-100 * DAY), t(100 * DAY))
}

#[test]
fn forged_unknown_and_malformed_messages_are_dropped_and_counted() {
    let fleet = Fleet::new(IngestConfig::default());
    let a = fleet.enroll("cam-a", &[]);
    let b = fleet.enroll("cam-b", &[]);
    let message = simple_window(1, 1, 0);
    let bytes = protocol::encode(&message).expect("encodes");
    let text = String::from_utf8(bytes.clone()).expect("utf-8");
    let b_topic = topics::topic(&b, Channel::Telemetry);
    let mut tampered: Sealed = serde_json::from_slice(&sealed_with(&key(&b), &b, &message)).expect("envelope");
    tampered.payload[20] ^= 1;
    let seal_b = |payload: &str| outpost_common::protocol::auth::seal(&key(&b), &b, payload.as_bytes());
    let unknown = id("cam-unknown");

    use DropReason::*;
    let cases: Vec<(String, Vec<u8>, DropReason)> = vec![
        // A's connection publishing data for B: B named in the envelope, sealed with A's key.
        (b_topic.clone(), sealed_with(&key(&a), &b, &message), Forged),
        // A's own authentic message, published on B's topic.
        (b_topic.clone(), sealed_with(&key(&a), &a, &message), Forged),
        // A key from another fleet's master secret.
        (b_topic.clone(), sealed_with(&derive_device_key(b"another master", &b), &b, &message), Forged),
        // One payload bit flipped in transit.
        (b_topic.clone(), serde_json::to_vec(&tampered).expect("serialises"), Forged),
        (topics::topic(&unknown, Channel::Telemetry), sealed_with(&key(&unknown), &unknown, &message), UnknownDevice),
        (format!("{b_topic}/extra"), seal_b(&text), BadTopic),
        ("outpost/v1/devices/+/telemetry".into(), seal_b(&text), BadTopic),
        (topics::topic(&b, Channel::Commands), seal_b(&text), WrongChannel),
        (b_topic.clone(), b"not json".to_vec(), Malformed),
        (b_topic.clone(), seal_b(&text.replacen("{\"schema\":1,", "{\"schema\":1,\"x\":1,", 1)), Malformed),
        (b_topic.clone(), seal_b(&text.replacen("\"schema\":1", "\"schema\":2", 1)), UnsupportedSchema),
        // A status sent on the telemetry topic.
        (b_topic.clone(), sealed_with(&key(&b), &b, &status(AgentState::Running, t(0))), Malformed),
        (b_topic.clone(), vec![b' '; MAX_SEALED_BYTES + 1], TooLarge),
    ];
    for (topic, payload, reason) in &cases {
        let got = fleet.publish(topic, payload, t(2));
        assert_eq!(got.dropped(), Some(*reason), "{topic}: {got:?}");
    }

    // Nothing of B's was stored or counted.
    assert_eq!(fleet.ingest.device(&b).expect("query"), None);
    assert!(fleet.ingest.windows(&b, &model(1), all_time(), 10).expect("query").is_empty());

    // A revoked device is refused from then on.
    let c = fleet.enroll("cam-c", &[]);
    assert!(stored(&fleet.send(&c, &simple_window(1, 1, 0), t(1)).outcome));
    fleet.directory.revoke(&c);
    assert_eq!(fleet.send(&c, &simple_window(2, 1, 1), t(2)).dropped(), Some(UnknownDevice));

    let counts = fleet.ingest.drop_counts();
    let expect = [
        (Forged, 4),
        (UnknownDevice, 2),
        (BadTopic, 2),
        (WrongChannel, 1),
        (Malformed, 3),
        (UnsupportedSchema, 1),
        (TooLarge, 1),
        (Duplicate, 0),
    ];
    for (reason, n) in expect {
        assert_eq!(counts[&reason], n, "{reason}: {counts:?}");
    }

    // B's own messages still go through.
    let got = fleet.send(&b, &message, t(2));
    assert!(matches!(got.outcome, Outcome::Window { seq: 1, frames: 10, .. }), "{got:?}");
    assert_eq!(fleet.ingest.device(&b).expect("query").expect("known").totals.frames, 10);
}

#[test]
fn duplicates_are_stored_once_also_after_a_fleet_restart() {
    let mut fleet = Fleet::new(IngestConfig::default());
    let d = fleet.enroll("cam-1", &[]);
    for seq in 1..=5 {
        assert!(stored(&fleet.send(&d, &simple_window(seq, 1, seq as i64), t(10)).outcome));
    }
    assert!(matches!(fleet.send(&d, &event(6, t(6)), t(10)).outcome, Outcome::Event(ref e) if e.seq == 6));

    // The agent was killed before it saw the acknowledgements: it sends everything again, before and after the
    // fleet itself restarts.
    for round in 0..2 {
        for seq in 1..=5 {
            let got = fleet.send(&d, &simple_window(seq, 1, seq as i64), t(11));
            assert_eq!(got.dropped(), Some(DropReason::Duplicate), "round {round}, seq {seq}");
        }
        assert_eq!(fleet.send(&d, &event(6, t(6)), t(11)).dropped(), Some(DropReason::Duplicate));
        assert_eq!(fleet.ingest.drop_counts()[&DropReason::Duplicate], 6, "counted since this start");
        fleet = fleet.restart();
    }

    let totals = fleet.ingest.device(&d).expect("query").expect("known").totals;
    assert_eq!((totals.windows, totals.frames, totals.events), (5, 50, 1));
    assert_eq!(fleet.ingest.windows(&d, &model(1), all_time(), 100).expect("query").len(), 5);
    let hours = fleet.ingest.hourly(&d, &model(1), all_time()).expect("query");
    assert_eq!(hours.iter().map(|h| h.rollup.windows).sum::<u64>(), 5, "the roll-up counted each window once");
    assert_eq!(fleet.ingest.events(&d, None, 10).expect("query").len(), 1);
    // The next new seq is stored.
    assert!(stored(&fleet.send(&d, &simple_window(7, 1, 7), t(12)).outcome));
}

#[test]
fn out_of_order_replays_store_late_first_deliveries_once() {
    let fleet = Fleet::new(IngestConfig { dedupe_window: 64, ..IngestConfig::default() });
    let d = fleet.enroll("cam-1", &[]);
    let send = |seq: u64| fleet.send(&d, &simple_window(seq, 1, seq as i64), t(200)).dropped();
    // 4, 5 and 6 were held up behind 7..9 (an outage, a reconnect): they arrive late, for the first time.
    for seq in [1, 2, 3, 7, 8, 9, 5, 4, 6] {
        assert_eq!(send(seq), None, "seq {seq} is new");
    }
    for seq in 1..=9 {
        assert_eq!(send(seq), Some(DropReason::Duplicate), "seq {seq} again");
    }
    // Far ahead, then a never-seen seq 70 behind (outside the 64-seq window) and one 60 behind (inside).
    assert_eq!(send(100), None);
    assert_eq!(send(30), Some(DropReason::Stale));
    assert_eq!(send(40), None);
    assert_eq!(send(40), Some(DropReason::Duplicate));
    assert_eq!(send(9), Some(DropReason::Stale), "an old replay is never stored twice");

    let windows = fleet.ingest.windows(&d, &model(1), all_time(), 100).expect("query");
    let seqs: Vec<u64> = windows.iter().map(|w| w.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 40, 100], "each once, in time order");
    assert_eq!(fleet.ingest.device(&d).expect("query").expect("known").totals.windows, 11);
}

#[test]
fn status_tracks_online_offline_and_the_last_will() {
    let fleet = Fleet::new(IngestConfig::default());
    let d = fleet.enroll("cam-1", &[]);
    let quiet = fleet.enroll("cam-2", &[]);
    let applied = |online, changed, state| Outcome::Status(StatusApplied { state, online, changed });

    // Connect: status `running`, and the last will registered with it (same `at`).
    let running = status(AgentState::Running, t(0));
    let will = running.last_will();
    assert_eq!(fleet.send(&d, &running, t(0)).outcome, applied(true, true, AgentState::Running));
    let view = fleet.ingest.device(&d).expect("query").expect("known");
    assert_eq!((view.online, view.since, view.last_seen), (true, Some(t(0)), Some(t(0))));
    let agent = view.status.expect("status kept");
    assert_eq!((agent.agent_version.as_str(), agent.models.len()), ("0.1.0", 1));
    assert!(agent.health.is_some());

    assert_eq!(
        fleet.send(&d, &status(AgentState::Degraded, t(5)), t(5)).outcome,
        applied(true, false, AgentState::Degraded)
    );
    // The connection drops; the broker publishes the will, whose `at` is older than the last status.
    assert_eq!(fleet.send(&d, &will, t(7)).outcome, applied(false, true, AgentState::Offline));
    let view = fleet.ingest.device(&d).expect("query").expect("known");
    assert_eq!((view.online, view.state, view.since), (false, Some(AgentState::Offline), Some(t(7))));
    assert_eq!(view.last_seen, Some(t(5)), "a will is the broker's message, not the device's");
    // A replayed old status cannot bring it back online.
    let replay = fleet.send(&d, &status(AgentState::Running, t(3)), t(8));
    assert_eq!(replay.dropped(), Some(DropReason::StaleStatus));
    assert!(!fleet.ingest.device(&d).expect("query").expect("known").online);
    // Reconnected.
    assert_eq!(
        fleet.send(&d, &status(AgentState::Running, t(10)), t(10)).outcome,
        applied(true, true, AgentState::Running)
    );

    // It swaps to v2 (a newer status), then its connection drops: the will, written at connect, names v1, but the
    // device is shown offline on v2.
    let swapped = Status {
        model: Some(model(2)),
        models: vec![ServedModel { name: "defect".into(), active: 2, previous: Some(1), committed: true }],
        ..status(AgentState::Running, t(12))
    };
    let will = status(AgentState::Running, t(10)).last_will();
    assert_eq!(fleet.send(&d, &swapped, t(12)).outcome, applied(true, false, AgentState::Running));
    assert_eq!(fleet.send(&d, &will, t(13)).outcome, applied(false, true, AgentState::Offline));
    let view = fleet.ingest.device(&d).expect("query").expect("known");
    let agent = view.status.expect("status kept");
    assert_eq!((view.online, agent.state, agent.model), (false, AgentState::Offline, Some(model(2))));
    assert_eq!(agent.models[0].active, 2, "the will's v1 does not replace the newer v2");
    assert!(agent.health.is_none(), "a stopped device has no health");
    // Back on v2 after the reconnect.
    assert_eq!(
        fleet.send(&d, &Status { at: t(14), ..swapped.clone() }, t(14)).outcome,
        applied(true, true, AgentState::Running)
    );

    // A device that only sent telemetry is listed too, without a state.
    assert!(stored(&fleet.send(&quiet, &simple_window(1, 1, 0), t(1)).outcome));
    let fleet = fleet.restart();
    let list = fleet.ingest.devices(None, 10).expect("query");
    let summary: Vec<_> = list.iter().map(|v| (v.device.as_str(), v.online, v.state, v.totals.frames)).collect();
    assert_eq!(summary, [("cam-1", true, Some(AgentState::Running), 0), ("cam-2", false, None, 10)]);
    assert_eq!(list[1].last_seen, Some(t(1)));
    let page = |after: Option<&str>, limit| -> Vec<String> {
        let after = after.map(id);
        let views = fleet.ingest.devices(after.as_ref(), limit).expect("query");
        views.into_iter().map(|v| v.device.to_string()).collect()
    };
    assert_eq!(
        (page(None, 1), page(Some("cam-1"), 10), page(Some("cam-2"), 10)),
        (vec!["cam-1".to_string()], vec!["cam-2".to_string()], vec![])
    );
}

#[test]
fn windows_are_queryable_by_range_and_aggregated_per_model_and_group() {
    let fleet = Fleet::new(IngestConfig::default());
    let north = fleet.enroll("cam-n", &[("site", "north")]);
    let south = fleet.enroll("cam-s", &[("site", "south")]);
    // cam-n runs v1 for three hours; cam-s runs v1 for an hour, then v2.
    for minute in 0..180 {
        let seq = minute as u64 + 1;
        assert!(stored(&fleet.send(&north, &simple_window(seq, 1, minute), t(181)).outcome));
        let version = if minute < 60 { 1 } else { 2 };
        assert!(stored(&fleet.send(&south, &simple_window(seq, version, minute), t(181)).outcome));
    }

    let range = TimeRange::new(t(30), t(40));
    let windows = fleet.ingest.windows(&north, &model(1), range, 100).expect("query");
    let starts: Vec<_> = windows.iter().map(|w| w.window.start).collect();
    assert_eq!(starts, (30..40).map(t).collect::<Vec<_>>());
    assert_eq!(fleet.ingest.windows(&north, &model(1), range, 3).expect("query").len(), 3);
    assert!(fleet.ingest.windows(&north, &model(2), range, 100).expect("query").is_empty());

    let hours = fleet.ingest.hourly(&north, &model(1), TimeRange::new(t(0), t(180))).expect("query");
    let per_hour: Vec<_> = hours.iter().map(|h| (h.hour, h.rollup.windows, h.rollup.frames, h.raw_expired)).collect();
    assert_eq!(per_hour, [(t(0), 60, 600, false), (t(60), 60, 600, false), (t(120), 60, 600, false)]);
    // Partial hours at both edges come from the raw windows.
    let sum = fleet.ingest.summary(&north, &model(1), TimeRange::new(t(30), t(150))).expect("query");
    assert_eq!((sum.windows, sum.frames, sum.classes["dent"]), (120, 1200, 360));

    let everything = TimeRange::new(t(0), t(180));
    let per_model: Vec<_> = fleet
        .ingest
        .aggregate(everything, &AggregateFilter::default())
        .expect("query")
        .into_iter()
        .map(|a| (a.model.version, a.devices, a.rollup.windows, a.rollup.frames))
        .collect();
    assert_eq!(per_model, [(1, 2, 240, 2400), (2, 1, 120, 1200)]);
    let south_v1 = AggregateFilter { model: Some(model(1)), group: Some(DriftGroup::tag("site", "south")) };
    let got = fleet.ingest.aggregate(everything, &south_v1).expect("query");
    assert_eq!(got.iter().map(|a| (a.devices, a.rollup.windows)).collect::<Vec<_>>(), [(1, 60)]);
    let nobody = AggregateFilter { model: None, group: Some(DriftGroup::tag("site", "east")) };
    assert!(fleet.ingest.aggregate(everything, &nobody).expect("query").is_empty());
    assert!(
        fleet.ingest.aggregate(TimeRange::new(t(180), t(0)), &AggregateFilter::default()).expect("query").is_empty()
    );
}

#[test]
fn compact_rolls_up_and_deletes_by_retention() {
    let fleet = Fleet::new(IngestConfig { raw_days: 1, rollup_days: 3, ..IngestConfig::default() });
    let d = fleet.enroll("cam-1", &[]);
    for n in 0..18 {
        assert!(stored(&fleet.send(&d, &simple_window(n + 1, 1, 10 * n as i64), t(180)).outcome));
    }
    let report = fleet.ingest.compact(t(180)).expect("compacts");
    assert_eq!((report.windows_deleted, report.rollups_deleted), (0, 0), "nothing is old yet");

    // Two days later the raw windows are gone and the hourly roll-ups answer for them.
    let report = fleet.ingest.compact(t(2 * DAY)).expect("compacts");
    assert_eq!((report.windows_deleted, report.rollups_deleted, report.series_deleted), (18, 0, 0));
    assert!(fleet.ingest.windows(&d, &model(1), all_time(), 100).expect("query").is_empty());
    let hours = fleet.ingest.hourly(&d, &model(1), all_time()).expect("query");
    assert_eq!(hours.iter().map(|h| (h.rollup.windows, h.raw_expired)).collect::<Vec<_>>(), [(6, true); 3]);
    let sum = fleet.ingest.summary(&d, &model(1), TimeRange::new(t(0), t(180))).expect("query");
    assert_eq!((sum.windows, sum.frames, sum.drops, sum.flagged), (18, 180, 18, 18));
    assert!((sum.latency_ms.p95 - 20.0).abs() < 1e-9 && (sum.latency_ms.p99_max - 30.0).abs() < 1e-9);
    // Without raw windows, a range starting inside an hour is rounded to the hours that start in it.
    assert_eq!(fleet.ingest.summary(&d, &model(1), TimeRange::new(t(30), t(180))).expect("query").windows, 12);

    // A late window for an expired hour still counts, once, in its hour's roll-up.
    assert!(stored(&fleet.send(&d, &simple_window(100, 1, 5), t(2 * DAY)).outcome));
    assert_eq!(fleet.send(&d, &simple_window(100, 1, 5), t(2 * DAY)).dropped(), Some(DropReason::Duplicate));
    let first_hour = fleet.ingest.hourly(&d, &model(1), TimeRange::new(t(0), t(60))).expect("query");
    assert_eq!(first_hour[0].rollup.windows, 7);
    assert_eq!(fleet.ingest.compact(t(2 * DAY + 1)).expect("compacts").windows_deleted, 1);

    // Past the roll-up retention everything goes, the series' index entry too; the device's totals stay.
    let report = fleet.ingest.compact(t(5 * DAY)).expect("compacts");
    assert_eq!((report.windows_deleted, report.rollups_deleted, report.series_deleted), (0, 3, 1));
    assert!(fleet.ingest.hourly(&d, &model(1), all_time()).expect("query").is_empty());
    assert!(fleet.ingest.aggregate(all_time(), &AggregateFilter::default()).expect("query").is_empty());
    assert_eq!(fleet.ingest.device(&d).expect("query").expect("known").totals.windows, 19);
    // A second compaction finds nothing left to do.
    let again = fleet.ingest.compact(t(5 * DAY)).expect("compacts");
    assert_eq!((again.windows_deleted, again.rollups_deleted, again.series_deleted), (0, 0, 0));

    // The device reports again on the same version: its series is back in the index, so aggregates see it.
    assert!(stored(&fleet.send(&d, &simple_window(101, 1, 5 * DAY), t(5 * DAY + 2)).outcome));
    let aggregates = fleet.ingest.aggregate(all_time(), &AggregateFilter::default()).expect("query");
    assert_eq!(aggregates.iter().map(|a| (a.devices, a.rollup.windows)).collect::<Vec<_>>(), [(1, 1)]);
}

#[test]
fn the_same_messages_delivered_by_several_threads_at_once_are_stored_and_counted_once() {
    let fleet = Fleet::new(IngestConfig::default());
    let devices: Vec<_> = (0..3).map(|i| fleet.enroll(&format!("cam-{i}"), &[])).collect();
    // Per device 40 messages: every fifth an event, the others one-minute windows.
    let mut messages = Vec::new();
    for d in &devices {
        for seq in 1..=40u64 {
            let (topic, payload) = if seq % 5 == 0 {
                (topics::topic(d, Channel::Events), sealed_with(&key(d), d, &event(seq, t(seq as i64))))
            } else {
                let window = simple_window(seq, 1, seq as i64);
                (topics::topic(d, Channel::Telemetry), sealed_with(&key(d), d, &window))
            };
            messages.push((topic, payload));
        }
    }
    // Four deliveries of everything, at once, each in its own order.
    std::thread::scope(|scope| {
        for k in 0..4 {
            let (fleet, messages) = (&fleet, &messages);
            scope.spawn(move || {
                let n = messages.len();
                for i in 0..n {
                    // Rotated by a quarter per thread, odd threads backwards: a permutation each.
                    let at = (i + k * n / 4) % n;
                    let (topic, payload) = &messages[if k % 2 == 0 { at } else { n - 1 - at }];
                    fleet.publish(topic, payload, t(60));
                }
            });
        }
    });
    for d in &devices {
        let totals = fleet.ingest.device(d).expect("query").expect("known").totals;
        assert_eq!((totals.windows, totals.frames, totals.events), (32, 320, 8), "{d}");
        assert_eq!(fleet.ingest.windows(d, &model(1), all_time(), 100).expect("query").len(), 32);
        let hours = fleet.ingest.hourly(d, &model(1), all_time()).expect("query");
        assert_eq!(hours.iter().map(|h| h.rollup.windows).sum::<u64>(), 32, "each window added to its hour once");
        assert_eq!(fleet.ingest.events(d, None, 100).expect("query").len(), 8);
    }
    assert_eq!(fleet.ingest.drop_counts()[&DropReason::Duplicate], 3 * 3 * 40);
}

#[test]
fn events_are_kept_in_a_bounded_log_per_device() {
    let fleet = Fleet::new(IngestConfig { event_log: 5, ..IngestConfig::default() });
    let d = fleet.enroll("cam-1", &[]);
    let other = fleet.enroll("cam-2", &[]);
    for seq in 1..=8 {
        let got = fleet.send(&d, &event(seq, t(seq as i64)), t(10));
        assert!(matches!(got.outcome, Outcome::Event(ref e) if e.seq == seq && e.device == d), "{got:?}");
    }
    assert!(stored(&fleet.send(&other, &event(1, t(1)), t(10)).outcome));
    let seqs = |after, limit| -> Vec<u64> {
        fleet.ingest.events(&d, after, limit).expect("query").into_iter().map(|e| e.seq).collect()
    };
    assert_eq!(seqs(None, 100), [4, 5, 6, 7, 8], "the newest five");
    assert_eq!(seqs(Some(5), 2), [6, 7]);
    // Trimmed from the log is not forgotten: seq 2 is still a duplicate. Telemetry shares the seq.
    assert_eq!(fleet.send(&d, &event(2, t(2)), t(11)).dropped(), Some(DropReason::Duplicate));
    assert_eq!(fleet.send(&d, &simple_window(8, 1, 8), t(11)).dropped(), Some(DropReason::Duplicate));
    assert_eq!(fleet.ingest.device(&d).expect("query").expect("known").totals.events, 8);
    assert_eq!(fleet.ingest.events(&other, None, 100).expect("query").len(), 1);
}

#[test]
fn hostile_but_authentic_messages_never_panic() {
    let fleet = Fleet::new(IngestConfig::default());
    let d = fleet.enroll("cam-1", &[("site", "north")]);
    let topic = topics::topic(&d, Channel::Telemetry);
    let seal = |bytes: &[u8]| outpost_common::protocol::auth::seal(&key(&d), &d, bytes);

    // Every truncation of a valid message, sealed with the right key: refused as malformed, never a panic.
    let valid = protocol::encode(&simple_window(1, 1, 0)).expect("encodes");
    for len in 0..valid.len() {
        assert_eq!(fleet.publish(&topic, &seal(&valid[..len]), t(1)).dropped(), Some(DropReason::Malformed), "{len}");
    }

    // Extreme values: saturating counts, the ends of time and of seq, a flood of labels.
    let mut huge = simple_window(u64::MAX, 1, 0);
    let mut many_labels = simple_window(2, 1, 0);
    let mut ancient = simple_window(3, 1, 0);
    let mut future = simple_window(4, 1, 0);
    if let (
        protocol::TelemetryBody::Window(h),
        protocol::TelemetryBody::Window(m),
        protocol::TelemetryBody::Window(a),
        protocol::TelemetryBody::Window(f),
    ) = (&mut huge.body, &mut many_labels.body, &mut ancient.body, &mut future.body)
    {
        h.frames = u64::MAX;
        h.drops = u64::MAX;
        h.flagged = u64::MAX;
        h.confidence.0 = [u64::MAX; 20];
        h.classes.insert("dent".into(), u64::MAX);
        h.latency_ms = protocol::Latency { p50: f32::MAX, p95: f32::MAX, p99: f32::MAX };
        m.classes = (0..2000).map(|i| (format!("label-{i}"), 1)).collect();
        a.start = time::macros::datetime!(0000-01-01 00:00 UTC);
        a.end = a.start;
        f.start = time::macros::datetime!(9999-12-31 23:00 UTC);
        f.end = f.start;
    }
    for (message, expected) in [
        (&many_labels, None),
        (&ancient, None),
        (&future, Some(DropReason::FutureWindow)),
        (&huge, None),
        (&huge, Some(DropReason::Duplicate)),
    ] {
        assert_eq!(fleet.send(&d, message, t(1)).dropped(), expected);
    }
    assert_eq!(fleet.send(&d, &simple_window(0, 1, 0), t(1)).dropped(), Some(DropReason::Stale), "far below u64::MAX");

    // Everything is still queryable and compactable.
    let totals = fleet.ingest.device(&d).expect("query").expect("known").totals;
    assert_eq!((totals.windows, totals.frames), (3, u64::MAX));
    let sum = fleet.ingest.summary(&d, &model(1), all_time()).expect("query");
    assert!(sum.classes.len() <= outpost_fleet::ingest::MAX_CLASSES + 1 && sum.frames == u64::MAX);
    let old = fleet.ingest.summary(&d, &model(1), TimeRange::new(t(-3_000_000 * DAY), t(1))).expect("query");
    assert_eq!(old.windows, 3);
    assert!(!fleet.ingest.drift_status(None).is_empty());
    let report = fleet.ingest.compact(t(10)).expect("compacts");
    assert_eq!(report.windows_deleted, 1, "the window from year 0");
}

/// Set in the child process of the crash test: the store directory it ingests into before it aborts.
const CRASH_CHILD: &str = "OUTPOST_INGEST_CRASH_STORE";

#[test]
fn a_crash_loses_only_what_arrived_since_the_last_flush_and_the_store_stays_consistent() {
    if let Ok(dir) = std::env::var(CRASH_CHILD) {
        // The child: five windows and an event made durable, three more windows only ingested, then a crash (no
        // destructor runs, so nothing more is written).
        let fleet = Fleet::at(std::path::Path::new(&dir), IngestConfig::default());
        let d = fleet.enroll("cam-1", &[]);
        for seq in 1..=5 {
            assert!(stored(&fleet.send(&d, &simple_window(seq, 1, seq as i64), t(10)).outcome));
        }
        assert!(stored(&fleet.send(&d, &event(6, t(6)), t(10)).outcome));
        fleet.ingest.flush().expect("flush");
        for seq in 7..=9 {
            assert!(stored(&fleet.send(&d, &simple_window(seq, 1, seq as i64), t(10)).outcome));
        }
        std::process::abort();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let test = "a_crash_loses_only_what_arrived_since_the_last_flush_and_the_store_stays_consistent";
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--test-threads=1"])
        .env(CRASH_CHILD, dir.path())
        .output()
        .expect("child runs");
    assert!(!child.status.success(), "the child was to crash: {}", String::from_utf8_lossy(&child.stdout));
    assert!(String::from_utf8_lossy(&child.stdout).contains("running 1 test"), "the child ran the test");

    // The restarted fleet has the flushed windows, counted once everywhere, and none of the others.
    let fleet = Fleet::at(dir.path(), IngestConfig::default());
    let d = fleet.enroll("cam-1", &[]);
    let counts = |fleet: &Fleet| {
        let totals = fleet.ingest.device(&d).expect("query").expect("known").totals;
        let windows = fleet.ingest.windows(&d, &model(1), all_time(), 100).expect("query");
        let hours = fleet.ingest.hourly(&d, &model(1), all_time()).expect("query");
        (totals.windows, windows.len() as u64, hours.iter().map(|h| h.rollup.windows).sum::<u64>(), totals.events)
    };
    assert_eq!(counts(&fleet), (5, 5, 5, 1));
    // Redelivered, the lost windows are new and the kept ones (and the event's seq, 6) duplicates.
    for seq in 1..=9 {
        let got = fleet.send(&d, &simple_window(seq, 1, seq as i64), t(11));
        assert_eq!(got.dropped(), (seq <= 6).then_some(DropReason::Duplicate), "seq {seq}");
    }
    assert_eq!(counts(&fleet), (8, 8, 8, 1));
}
