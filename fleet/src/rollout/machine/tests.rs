use super::*;
use crate::rollout::gates::{ControlKind, WindowPoint};
use crate::rollout::plan::{Gates, StagePlan, Target};

const T0: i64 = 1_800_000_000;

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(T0 + secs).expect("time")
}

fn plan(stages: &[&str], approval: bool) -> RolloutPlan {
    RolloutPlan {
        model: "defect".into(),
        version: 2,
        target: Target { tags: BTreeMap::from([("line".into(), "a".into())]), devices: vec![] },
        stages: stages
            .iter()
            .map(|s| StagePlan { size: s.parse().expect("size"), min_dwell_secs: 60, min_reporting: 1, approval })
            .collect(),
        gates: Gates::default(),
        spread_tag: "site".into(),
    }
}

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member { id: format!("d{i}"), site: Some(format!("s{}", i % 3)), version: 1, online: true })
        .collect()
}

/// Windows for every device in a phase, `mean` for canaries and 0.8 for control.
fn telemetry(r: &Rollout, canary_mean: f64) -> Telemetry {
    let points = |ids: Vec<&str>, mean: f64| -> Vec<WindowPoint> {
        ids.into_iter()
            .flat_map(|d| {
                (0..6).map(move |i| WindowPoint {
                    device: d.to_string(),
                    frames: 40,
                    mean_confidence: Some(mean + 0.01 * f64::from(i % 3)),
                    flagged_share: 0.05,
                    p95_ms: 20.0,
                })
            })
            .collect()
    };
    let control: Vec<&str> = r.controls().collect();
    let kind = if control.is_empty() { ControlKind::BeforeAfter } else { ControlKind::Concurrent };
    Telemetry {
        canary: points(r.canaries().collect(), canary_mean),
        control: points(if control.is_empty() { r.joined_this_stage().collect() } else { control }, 0.8),
        control_kind: kind,
        drift_alert: None,
    }
}

/// Sends what is due and has every device that got a version run and commit it.
fn devices_follow(r: &mut Rollout, now: OffsetDateTime) {
    for (id, version) in r.due(now, Duration::seconds(30)) {
        r.sent(&id, version, now);
        r.observe(&id, Report { online: true, served: Some((version, true)) }, now);
    }
}

fn assigned(r: &Rollout) -> usize {
    r.devices.values().filter(|d| d.phase != Phase::Control).count()
}

#[test]
fn a_good_version_goes_through_every_stage_and_completes() {
    let mut r = Rollout::start("r1".into(), plan(&["1", "5%", "25%", "100%"], false), &members(10), "op", at(0));
    assert_eq!(r.header.cutoffs, vec![1, 2, 3, 10]);
    let mut t = 0;
    let mut seen_stages = vec![];
    while r.header.state.is_active() && t < 3600 {
        devices_follow(&mut r, at(t));
        // No device ever runs ahead of its stage.
        assert_eq!(assigned(&r), r.header.cutoffs[r.header.stage]);
        seen_stages.push(r.header.stage);
        let tel = telemetry(&r, 0.8);
        r.tick(&tel, at(t));
        t += 10;
    }
    assert!(matches!(r.header.state, State::Completed { .. }), "{:?}", r.header.state);
    seen_stages.dedup();
    assert_eq!(seen_stages, vec![0, 1, 2, 3], "every stage, in order");
    assert!(r.devices.values().all(|d| d.phase == Phase::Committed && d.active == Some(2)));
    // Each stage dwelt at least its minimum.
    let starts: Vec<_> = r.header.history.iter().filter(|h| h.what.contains("started")).map(|h| h.at).collect();
    assert!(starts.windows(2).all(|w| w[1] - w[0] >= Duration::seconds(60)), "{starts:?}");
}

#[test]
fn a_less_confident_canary_aborts_and_only_the_canaries_go_back() {
    let mut r = Rollout::start("r1".into(), plan(&["2", "100%"], false), &members(10), "op", at(0));
    devices_follow(&mut r, at(0));
    let changes = r.tick(&telemetry(&r, 0.55), at(5));
    assert!(changes.header);
    let State::Aborted { reason, by, .. } = &r.header.state else { panic!("{:?}", r.header.state) };
    assert!(reason.contains("quality: mean confidence"), "{reason}");
    assert_eq!(by, "gates");
    let back: Vec<_> = r.devices.values().filter(|d| d.phase == Phase::RollingBack).collect();
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|d| d.target(2) == Some(1)));
    // The canaries are told to go back; nobody is told to install v2, then or later.
    let due = r.due(at(6), Duration::seconds(30));
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|(_, v)| *v == 1));
    for d in r.devices.values_mut() {
        d.online = true;
    }
    assert!(r.due(at(100), Duration::seconds(30)).iter().all(|(_, v)| *v == 1));
    assert_eq!(r.devices.values().filter(|d| d.phase == Phase::Control).count(), 8);
    // Once they report the previous version committed, they are rolled back.
    for (id, v) in r.due(at(6), Duration::seconds(30)) {
        r.observe(&id, Report { online: true, served: Some((v, true)) }, at(7));
    }
    assert_eq!(r.devices.values().filter(|d| d.phase == Phase::RolledBack).count(), 2);
    assert!(r.due(at(200), Duration::seconds(30)).is_empty());
    // Ticks after the end change nothing.
    assert!(r.tick(&telemetry(&r, 0.55), at(300)).is_empty());
}

#[test]
fn install_failures_abort_after_the_minimum_executed() {
    let mut p = plan(&["5", "100%"], false);
    p.gates.install.min_executed = 3;
    p.gates.install.min_committed = 0.4;
    p.gates.install.max_failed = 0.5;
    let mut r = Rollout::start("r1".into(), p, &members(10), "op", at(0));
    let stage: Vec<String> = r.canaries().map(String::from).collect();
    for (i, id) in stage.iter().enumerate().take(2) {
        r.sent(id, 2, at(0));
        r.failed(id, Some(2), "r1.v2", "load failed: bad graph", at(i64::try_from(i).expect("small")));
    }
    r.tick(&telemetry(&r, 0.8), at(10));
    assert_eq!(r.header.state, State::Running, "two failures: below the minimum executed");
    r.failed(&stage[2], None, "r1.v2", "unreadable manifest", at(11));
    // A failure for another command or version is not ours.
    r.failed(&stage[3], Some(3), "r9.v3", "other", at(11));
    r.failed(&stage[3], None, "check-defect-3", "other", at(11));
    r.tick(&telemetry(&r, 0.8), at(12));
    let State::Aborted { reason, .. } = &r.header.state else { panic!("{:?}", r.header.state) };
    assert!(reason.contains("install: 3 of 3"), "{reason}");
    assert_eq!(r.devices.values().filter(|d| d.phase == Phase::Failed).count(), 3);
    assert!(r.devices.values().filter(|d| d.phase == Phase::Failed).all(|d| d.target(2) == Some(1)));
}

#[test]
fn a_version_already_active_is_not_a_failure() {
    let mut r = Rollout::start("r1".into(), plan(&["1", "100%"], false), &members(3), "op", at(0));
    let canary = r.canaries().next().expect("a canary").to_string();
    r.sent(&canary, 2, at(0));
    // The device installed v2 through its own check; the command arriving after is refused as already active.
    let changes = r.rejected(&canary, Some(2), "r1.v2", "already_active", "defect v2 is already serving", at(1));
    assert!(changes.is_empty());
    assert_eq!(r.devices[&canary].phase, Phase::Assigned);
    r.observe(&canary, Report { online: true, served: Some((2, true)) }, at(2));
    assert_eq!(r.devices[&canary].phase, Phase::Committed);
    // Any other refusal is a failure.
    let other = r.devices.keys().find(|d| **d != canary).expect("another device").clone();
    r.devices.get_mut(&other).expect("device").phase = Phase::Assigned;
    r.rejected(&other, Some(2), "r1.v2", "load_failed", "bad graph", at(3));
    assert_eq!(r.devices[&other].phase, Phase::Failed);
    assert_eq!(r.devices[&other].detail.as_deref(), Some("rejected (load_failed): bad graph"));
}

#[test]
fn a_device_that_never_commits_times_out() {
    let mut p = plan(&["1", "100%"], false);
    p.gates.install.timeout_secs = 300;
    let mut r = Rollout::start("r1".into(), p, &members(3), "op", at(0));
    let (id, v) = r.due(at(0), Duration::seconds(30)).remove(0);
    r.sent(&id, v, at(0));
    r.sent(&id, v, at(200));
    assert_eq!(r.devices[&id].sent.map(|s| s.first_at), Some(at(0)), "a resend keeps the first time");
    r.tick(&telemetry(&r, 0.8), at(299));
    assert_eq!(r.devices[&id].phase, Phase::Assigned);
    r.tick(&telemetry(&r, 0.8), at(301));
    assert_eq!(r.devices[&id].phase, Phase::Failed);
    assert!(matches!(r.header.state, State::Aborted { .. }), "the only canary failed");
}

#[test]
fn resends_wait_and_offline_devices_get_nothing_until_they_return() {
    let mut m = members(2);
    m[0].online = false;
    m[1].online = false;
    let mut r = Rollout::start("r1".into(), plan(&["2", "100%"], false), &m, "op", at(0));
    assert!(r.due(at(0), Duration::seconds(30)).is_empty());
    r.observe("d0", Report { online: true, served: Some((1, true)) }, at(1));
    assert_eq!(r.due(at(1), Duration::seconds(30)), vec![("d0".to_string(), 2)]);
    r.sent("d0", 2, at(1));
    assert!(r.due(at(20), Duration::seconds(30)).is_empty());
    assert_eq!(r.due(at(40), Duration::seconds(30)).len(), 1);
    // Running it (even uncommitted, in its health window) is enough not to resend.
    r.observe("d0", Report { online: true, served: Some((2, false)) }, at(41));
    assert!(r.due(at(100), Duration::seconds(30)).is_empty());
    assert_eq!(r.devices["d0"].phase, Phase::Assigned);
    assert_eq!(r.command_id(2), "r1.v2");
}

#[test]
fn approval_pause_resume_and_abort_follow_the_state() {
    let mut r = Rollout::start("r1".into(), plan(&["1", "100%"], true), &members(4), "op", at(0));
    assert!(r.approve("op", at(1)).is_err(), "nothing awaits approval yet");
    devices_follow(&mut r, at(0));
    r.tick(&telemetry(&r, 0.8), at(61));
    assert_eq!(r.header.state, State::AwaitingApproval);
    assert_eq!(r.header.stage, 0);
    r.pause("op", at(62)).expect("pause");
    assert!(r.approve("op", at(63)).is_err(), "paused");
    assert!(r.tick(&telemetry(&r, 0.8), at(64)).is_empty());
    r.resume("op", at(65)).expect("resume");
    assert_eq!(r.header.state, State::AwaitingApproval);
    r.approve("lead", at(66)).expect("approve");
    assert_eq!((r.header.stage, &r.header.state), (1, &State::Running));
    assert_eq!(assigned(&r), 4);
    r.abort("operator saw smoke", "lead", at(70)).expect("abort");
    assert!(r.abort("again", "lead", at(71)).is_err());
    assert!(r.resume("lead", at(72)).is_err());
    assert!(r.header.history.iter().any(|h| h.what.contains("approved by lead")));
}

#[test]
fn a_restored_rollout_continues_the_same_stage_without_skipping() {
    let mut r = Rollout::start("r1".into(), plan(&["1", "50%", "100%"], false), &members(6), "op", at(0));
    devices_follow(&mut r, at(0));
    r.tick(&telemetry(&r, 0.8), at(61));
    assert_eq!(r.header.stage, 1);
    // Persist and restore (as the store does: the header and each device as JSON).
    let header: Header = serde_json::from_slice(&serde_json::to_vec(&r.header).expect("ser")).expect("de");
    let devices: BTreeMap<String, DeviceRollout> =
        serde_json::from_slice(&serde_json::to_vec(&r.devices).expect("ser")).expect("de");
    let mut restored = Rollout { header, devices };
    assert_eq!(restored, r);
    devices_follow(&mut restored, at(70));
    // The dwell counts from the persisted stage start: 30 s later it is still stage 2.
    restored.tick(&telemetry(&restored, 0.8), at(91));
    assert_eq!(restored.header.stage, 1);
    restored.tick(&telemetry(&restored, 0.8), at(122));
    assert_eq!(restored.header.stage, 2);
}
