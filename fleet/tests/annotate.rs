//! The annotators' queue over real stored samples: claims never shared, leases that expire (time passed in, no
//! sleeps), ordering by uncertainty with balancing, labels, skips, rejections and the review step.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::{Prediction, SampleMeta};
use outpost_common::store::Store;
use outpost_common::vision::confidence::{self, UncertaintyBand};
use outpost_common::vision::postprocess::Detection;
use outpost_fleet::annotate::{BoxLabel, Counts, Label, QueueConfig, QueueError, ReviewDecision, StateName};
use outpost_fleet::error::ErrorKind;
use outpost_fleet::samples::IntakeLimits;
use support::{CLASSIFIER, DETECTOR, Fleet, Frame, NAMES, T0, classifier_meta, detector_meta, frames, meta};
use time::Duration;

/// A detector's meta with one prediction of `class` scored `score` (so its bucket and rank are known).
fn single(frame: &Frame, device: &str, class: usize, score: f32) -> SampleMeta {
    let bbox = [10.0, 20.0, 110.0, 90.0];
    let d = [Detection { class, score, bbox }];
    let prediction = Prediction { class: class as u32, label: NAMES[class].into(), score, bbox: Some(bbox) };
    meta(frame, device, DETECTOR, confidence::of_detections(&d, &UncertaintyBand::default()), vec![prediction])
}

async fn fleet_with(config: QueueConfig, samples: &[(&Frame, SampleMeta)]) -> Fleet {
    let fleet = Fleet::with(IntakeLimits::default(), config);
    for (frame, meta) in samples {
        fleet.upload(frame, meta).await;
    }
    fleet
}

fn ids(views: &[outpost_fleet::annotate::SampleView]) -> Vec<Sha256Sum> {
    views.iter().map(|v| v.sample).collect()
}

fn assert_kind(result: Result<impl std::fmt::Debug, QueueError>, code: &str, status: u16) {
    let err = result.expect_err(code);
    assert_eq!((err.code(), err.kind().http_status()), (code, status), "{err}");
}

#[tokio::test]
async fn concurrent_claims_never_share_a_sample() {
    let all = frames(80);
    let metas: Vec<_> =
        all.iter().enumerate().map(|(i, f)| (f, detector_meta(f, &format!("press-{}", i % 3 + 1), 0.3))).collect();
    let fleet = fleet_with(QueueConfig::default(), &metas).await;
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let queue = fleet.queue.clone();
    let got: Vec<(String, Vec<Sha256Sum>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (queue, barrier) = (queue.clone(), barrier.clone());
                scope.spawn(move || {
                    let me = format!("annotator-{t}");
                    barrier.wait();
                    let mut mine = Vec::new();
                    loop {
                        let claimed = queue.claim(DETECTOR, &me, 2, T0).expect("claim");
                        if claimed.is_empty() {
                            return (me, mine);
                        }
                        mine.extend(ids(&claimed));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut seen = HashSet::new();
    for (annotator, samples) in &got {
        for sample in samples {
            assert!(seen.insert(*sample), "{sample} handed out twice");
            let view = fleet.queue.view(sample, T0).expect("view");
            assert_eq!(view.lease.map(|l| l.annotator).as_deref(), Some(annotator.as_str()));
        }
    }
    assert_eq!(
        seen.len(),
        all.len(),
        "every sample claimed once: {:?}",
        got.iter().map(|(_, s)| s.len()).collect::<Vec<_>>()
    );
    assert_eq!(fleet.queue.counts(Some(DETECTOR), T0).expect("counts"), Counts { claimed: 80, ..Counts::default() });
}

#[tokio::test]
async fn an_expired_lease_returns_the_sample_to_the_queue() {
    let all = frames(3);
    let metas: Vec<_> = all.iter().map(|f| (f, detector_meta(f, "press-1", 0.4))).collect();
    let fleet = fleet_with(QueueConfig { lease_secs: 600, ..QueueConfig::default() }, &metas).await;
    let q = &fleet.queue;
    let ann = q.claim(DETECTOR, "ann", 10, T0).expect("claim");
    assert_eq!(ann.len(), 3);
    assert_eq!(ann[0].lease.as_ref().map(|l| l.until), Some(T0 + Duration::minutes(10)));

    let before = T0 + Duration::minutes(9);
    assert!(q.claim(DETECTOR, "bob", 10, before).expect("claim").is_empty(), "leases still running");
    assert_eq!(q.counts(None, before).expect("counts"), Counts { claimed: 3, ..Counts::default() });

    let expired = T0 + Duration::minutes(10);
    assert_eq!(q.counts(None, expired).expect("counts"), Counts { queued: 3, ..Counts::default() });
    let bob = q.claim(DETECTOR, "bob", 10, expired).expect("claim");
    assert_eq!(ids(&bob).into_iter().collect::<HashSet<_>>(), ids(&ann).into_iter().collect::<HashSet<_>>());

    // Ann's lease was taken over: she can no longer work on it; Bob can.
    let sample = &all[0].sha();
    assert_kind(q.submit(sample, "ann", all[0].label(), expired), "lease_lost", 409);
    assert_kind(q.skip(sample, "ann", expired), "lease_lost", 409);
    let done = q.submit(sample, "bob", all[0].label(), expired).expect("bob submits");
    assert_eq!(done.state, StateName::Labelled);
}

#[tokio::test]
async fn a_holder_may_renew_and_finish_late_until_someone_takes_over() {
    let all = frames(2);
    let metas: Vec<_> = all.iter().map(|f| (f, detector_meta(f, "press-1", 0.4))).collect();
    let fleet = fleet_with(QueueConfig { lease_secs: 600, ..QueueConfig::default() }, &metas).await;
    let q = &fleet.queue;
    let claimed = q.claim(DETECTOR, "ann", 2, T0).expect("claim");
    let (a, b) = (claimed[0].sample, claimed[1].sample);
    let renewed = q.renew(&a, "ann", T0 + Duration::minutes(8)).expect("renew");
    assert_eq!(renewed.lease.map(|l| l.until), Some(T0 + Duration::minutes(18)));
    assert_kind(q.renew(&a, "bob", T0 + Duration::minutes(8)), "lease_lost", 409);
    let later = T0 + Duration::minutes(15);
    assert_eq!(
        ids(&q.claim(DETECTOR, "bob", 5, later).expect("claim")),
        [b],
        "only the lease that was not renewed expired"
    );
    // `a` expired at 18 minutes but nobody claimed it since: Ann may still submit.
    let frame = all.iter().find(|f| f.sha() == a).expect("frame");
    let late = T0 + Duration::minutes(30);
    assert_eq!(q.submit(&a, "ann", frame.label(), late).expect("late submit").state, StateName::Labelled);
}

#[tokio::test]
async fn claims_go_least_confident_first_balanced_over_classes_and_sites() {
    let all = frames(7);
    // (class, device → site, score); press-1/2 are at plant-a, press-3 at plant-b, press-9 has no site.
    let spec = [
        (0, "press-1", 0.30), // s0 scratch @ plant-a
        (0, "press-1", 0.35), // s1 scratch @ plant-a
        (0, "press-2", 0.40), // s2 scratch @ plant-a
        (1, "press-1", 0.45), // s3 dent @ plant-a
        (0, "press-3", 0.48), // s4 scratch @ plant-b
        (1, "press-3", 0.26), // s5 dent @ plant-b
        (2, "press-9", 0.49), // s6 stain, no site
    ];
    let metas: Vec<_> = all.iter().zip(spec).map(|(f, (c, d, s))| (f, single(f, d, c, s))).collect();
    let s: Vec<Sha256Sum> = all.iter().map(Frame::sha).collect();
    // Buckets by their least confident head: dent/b .26, scratch/a .30, dent/a .45, scratch/b .48, stain .49.
    // One from each per round, then the second round has only scratch/a left.
    let expected = vec![s[5], s[0], s[3], s[4], s[6], s[1], s[2]];

    let fleet = fleet_with(QueueConfig::default(), &metas).await;
    assert_eq!(ids(&fleet.queue.claim(DETECTOR, "ann", 10, T0).expect("claim")), expected);

    // The rotation carries over between claims of one sample each, by different annotators.
    let fleet = fleet_with(QueueConfig::default(), &metas).await;
    let one_by_one: Vec<Sha256Sum> = (0..7)
        .flat_map(|i| ids(&fleet.queue.claim(DETECTOR, &format!("annotator-{}", i % 2), 1, T0).expect("claim")))
        .collect();
    assert_eq!(one_by_one, expected);
    assert!(fleet.queue.claim(DETECTOR, "ann", 1, T0).expect("claim").is_empty());

    // Without predictions a sample has no headline and goes after every scored one of its bucket.
    let fleet = fleet_with(QueueConfig::default(), &metas[..1]).await;
    let empty = meta(&all[6], "press-1", DETECTOR, confidence::of_detections(&[], &UncertaintyBand::default()), vec![]);
    fleet.upload(&all[6], &empty).await;
    let order = ids(&fleet.queue.claim(DETECTOR, "ann", 10, T0).expect("claim"));
    assert_eq!(order, [s[0], s[6]]);
}

#[tokio::test]
async fn claim_requests_are_checked_and_scoped_to_a_model() {
    let all = frames(2);
    let metas =
        vec![(&all[0], detector_meta(&all[0], "press-1", 0.4)), (&all[1], classifier_meta(&all[1], "press-1", 1, 0.5))];
    let fleet = fleet_with(QueueConfig { max_claim: 1, ..QueueConfig::default() }, &metas).await;
    let q = &fleet.queue;
    assert_kind(q.claim(DETECTOR, "", 1, T0), "invalid", 422);
    assert_kind(q.claim(DETECTOR, &"x".repeat(200), 1, T0), "invalid", 422);
    assert!(q.claim(DETECTOR, "ann", 0, T0).expect("claim").is_empty());
    assert!(q.claim("other-model", "ann", 5, T0).expect("claim").is_empty());
    assert_eq!(ids(&q.claim(CLASSIFIER, "ann", 5, T0).expect("claim")), [all[1].sha()], "capped at max_claim");
    assert_eq!(q.counts(Some(DETECTOR), T0).expect("counts"), Counts { queued: 1, ..Counts::default() });
    assert_eq!(q.counts(Some(CLASSIFIER), T0).expect("counts"), Counts { claimed: 1, ..Counts::default() });
    assert_eq!(q.counts(None, T0).expect("counts"), Counts { queued: 1, claimed: 1, ..Counts::default() });
}

#[tokio::test]
async fn the_holder_fetches_the_image_and_its_pre_annotations() {
    let frame = &frames(1)[0];
    let m = detector_meta(frame, "press-1", 0.41);
    let fleet = fleet_with(QueueConfig::default(), &[(frame, m.clone())]).await;
    let q = &fleet.queue;
    q.claim(DETECTOR, "ann", 1, T0).expect("claim");
    let fetched = q.fetch(&frame.sha(), "ann", T0).await.expect("fetch");
    assert_eq!(fetched.image.bytes.as_ref(), frame.bytes.as_slice());
    assert_eq!(fetched.view.pre_annotations, m.predictions);
    assert_eq!((fetched.view.width, fetched.view.height, fetched.view.device.as_str()), (320, 320, "press-1"));
    assert_eq!(fetched.view.state, StateName::Claimed);
    assert!(!fetched.view.pre_annotations.is_empty());
    assert_kind(q.fetch(&frame.sha(), "bob", T0).await, "lease_lost", 409);
    assert_kind(q.fetch(&Sha256Sum([3; 32]), "ann", T0).await, "not_found", 404);
    // Reviewers and exports read images regardless of leases.
    assert_eq!(q.image(&frame.sha()).await.expect("image").bytes.as_ref(), frame.bytes.as_slice());
}

#[tokio::test]
async fn labels_are_checked_against_the_image_and_the_models_classes() {
    let all = frames(3);
    let mut mystery = detector_meta(&all[2], "press-1", 0.4);
    mystery.model.name = "mystery".into();
    let metas = vec![
        (&all[0], detector_meta(&all[0], "press-1", 0.4)),
        (&all[1], classifier_meta(&all[1], "press-1", 1, 0.5)),
        (&all[2], mystery),
    ];
    let fleet = fleet_with(QueueConfig::default(), &metas).await;
    let q = &fleet.queue;
    q.claim(DETECTOR, "ann", 1, T0).expect("claim");
    q.claim(CLASSIFIER, "ann", 1, T0).expect("claim");
    q.claim("mystery", "ann", 1, T0).expect("claim");
    let (det, cls) = (all[0].sha(), all[1].sha());
    let boxes = |class: &str, bbox: [f32; 4]| Label::Detect { boxes: vec![BoxLabel { class: class.into(), bbox }] };

    assert_kind(q.submit(&det, "ann", boxes("hole", [1.0, 1.0, 9.0, 9.0]), T0), "invalid_label", 422);
    assert_kind(q.submit(&det, "ann", boxes("dent", [1.0, 1.0, 321.0, 9.0]), T0), "invalid_label", 422);
    assert_kind(q.submit(&det, "ann", boxes("dent", [9.0, 1.0, 1.0, 9.0]), T0), "invalid_label", 422);
    assert_kind(q.submit(&det, "ann", Label::Classify { class: "dent".into() }, T0), "invalid_label", 422);
    assert_kind(q.submit(&cls, "ann", boxes("dent", [1.0, 1.0, 9.0, 9.0]), T0), "invalid_label", 422);
    assert_kind(q.submit(&all[2].sha(), "ann", all[2].label(), T0), "unknown_model", 422);
    assert_kind(q.submit(&Sha256Sum([4; 32]), "ann", all[0].label(), T0), "not_found", 404);
    assert_kind(q.submit(&det, "bob", all[0].label(), T0), "lease_lost", 409);

    // Refused labels changed nothing; good ones go through, once.
    assert_eq!(q.view(&det, T0).expect("view").state, StateName::Claimed);
    let labelled = q.submit(&det, "ann", all[0].label(), T0).expect("submit");
    assert_eq!((labelled.state, labelled.label.map(|l| l.label)), (StateName::Labelled, Some(all[0].label())));
    assert_kind(q.submit(&det, "ann", all[0].label(), T0), "wrong_state", 409);
    let empty = q.submit(&cls, "ann", Label::Classify { class: "stain".into() }, T0).expect("submit");
    assert_eq!(empty.state, StateName::Labelled);
    assert_eq!(q.class_names(DETECTOR).expect("names"), NAMES);
}

#[tokio::test]
async fn a_skip_returns_the_sample_but_not_to_the_same_annotator_soon() {
    let frame = &frames(1)[0];
    let config = QueueConfig { skip_cooldown_secs: 3600, ..QueueConfig::default() };
    let fleet = fleet_with(config, &[(frame, detector_meta(frame, "press-1", 0.4))]).await;
    let q = &fleet.queue;
    let sample = frame.sha();
    q.claim(DETECTOR, "ann", 1, T0).expect("claim");
    assert_eq!(q.skip(&sample, "ann", T0).expect("skip").state, StateName::Queued);
    assert!(q.claim(DETECTOR, "ann", 1, T0 + Duration::minutes(59)).expect("claim").is_empty());
    assert_eq!(ids(&q.claim(DETECTOR, "bob", 1, T0 + Duration::minutes(1)).expect("claim")), [sample]);
    q.skip(&sample, "bob", T0 + Duration::minutes(2)).expect("skip");
    assert_eq!(ids(&q.claim(DETECTOR, "ann", 1, T0 + Duration::hours(1)).expect("claim")), [sample]);
}

#[tokio::test]
async fn a_rejected_sample_leaves_the_queue_for_good() {
    let all = frames(2);
    let metas: Vec<_> = all.iter().map(|f| (f, detector_meta(f, "press-1", 0.4))).collect();
    let fleet = fleet_with(QueueConfig::default(), &metas).await;
    let q = &fleet.queue;
    let first = q.claim(DETECTOR, "ann", 1, T0).expect("claim")[0].sample;
    assert_kind(q.reject(&first, "ann", &"x".repeat(5000), T0), "invalid", 422);
    let rejected = q.reject(&first, "ann", "lens covered in oil", T0).expect("reject");
    assert_eq!((rejected.state, rejected.note.as_deref()), (StateName::Rejected, Some("lens covered in oil")));
    assert_kind(q.submit(&first, "ann", all[0].label(), T0), "wrong_state", 409);
    let later = T0 + Duration::days(3);
    let rest = ids(&q.claim(DETECTOR, "bob", 10, later).expect("claim"));
    assert!(!rest.contains(&first) && rest.len() == 1);
    assert_eq!(q.counts(None, later).expect("counts"), Counts { claimed: 1, rejected: 1, ..Counts::default() });
}

#[tokio::test]
async fn with_review_on_labels_wait_for_a_reviewer() {
    let all = frames(2);
    let metas: Vec<_> = all.iter().map(|f| (f, detector_meta(f, "press-1", 0.4))).collect();
    let fleet = fleet_with(QueueConfig { review: true, ..QueueConfig::default() }, &metas).await;
    let q = &fleet.queue;
    let (a, b) = (all[0].sha(), all[1].sha());
    q.claim(DETECTOR, "ann", 2, T0).expect("claim");
    assert_eq!(q.submit(&a, "ann", all[0].label(), T0).expect("submit").state, StateName::Review);
    assert_eq!(q.submit(&b, "ann", all[1].label(), T0).expect("submit").state, StateName::Review);
    assert_eq!(ids(&q.review_list(DETECTOR, None, 10, T0).expect("list")), {
        let mut both = vec![a, b];
        both.sort();
        both
    });

    assert_kind(q.review(&a, "ann", &ReviewDecision::Accept, T0), "self_review", 403);
    assert_eq!(q.review(&a, "rita", &ReviewDecision::Accept, T0).expect("accept").state, StateName::Accepted);
    assert_kind(q.review(&a, "rita", &ReviewDecision::Accept, T0), "wrong_state", 409);
    let note = "the second scratch is missing";
    let back = q.review(&b, "rita", &ReviewDecision::SendBack { note: note.into() }, T0).expect("send back");
    assert_eq!((back.state, back.note.as_deref()), (StateName::Queued, Some(note)));
    assert_eq!(ids(&q.review_list(DETECTOR, None, 10, T0).expect("list")), []);

    // The next annotator sees the previous attempt and the note, and labels again.
    let again = q.claim(DETECTOR, "bob", 5, T0).expect("claim");
    assert_eq!(ids(&again), [b]);
    assert_eq!((again[0].note.as_deref(), again[0].label.as_ref().map(|l| l.by.as_str())), (Some(note), Some("ann")));
    q.submit(&b, "bob", all[1].label(), T0).expect("submit");
    assert_eq!(q.counts(None, T0).expect("counts"), Counts { review: 1, accepted: 1, ..Counts::default() });
    assert_eq!(
        q.review(&b, "ann", &ReviewDecision::Accept, T0).expect("ann may review bob's").state,
        StateName::Accepted
    );
}

#[tokio::test]
async fn lost_index_entries_are_rebuilt_from_the_states() {
    let all = frames(3);
    let metas: Vec<_> = all.iter().map(|f| (f, detector_meta(f, "press-1", 0.4))).collect();
    let fleet = fleet_with(QueueConfig::default(), &metas).await;
    for (key, _) in fleet.store.scan("annotate.queue", None, 100).expect("scan") {
        fleet.store.remove("annotate.queue", &key).expect("remove");
    }
    assert!(fleet.queue.claim(DETECTOR, "ann", 5, T0).expect("claim").is_empty(), "the index is what claims read");
    assert_eq!(fleet.queue.rebuild_indexes(T0).expect("rebuild"), 3);
    assert_eq!(fleet.queue.claim(DETECTOR, "ann", 5, T0).expect("claim").len(), 3);
    assert_eq!(fleet.queue.rebuild_indexes(T0).expect("rebuild"), 0, "nothing missing any more");
}

#[test]
fn errors_map_to_http_statuses() {
    let check = |kind: ErrorKind, status: u16| assert_eq!(kind.http_status(), status, "{kind}");
    check(ErrorKind::Invalid, 422);
    check(ErrorKind::TooLarge, 413);
    check(ErrorKind::NotFound, 404);
    check(ErrorKind::Conflict, 409);
    check(ErrorKind::Forbidden, 403);
    check(ErrorKind::Internal, 500);
}
