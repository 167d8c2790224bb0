//! Sample intake against real fixture JPEGs and real `SampleMeta` values: what is stored, what is refused and with
//! which kind (HTTP status), and that repeats store nothing new.

mod support;

use outpost_common::manifest::Sha256Sum;
use outpost_common::store::Store;
use outpost_fleet::annotate::{Counts, QueueConfig};
use outpost_fleet::error::ErrorKind;
use outpost_fleet::samples::{IntakeLimits, SampleError, Stored};
use support::{Fleet, T0, detector_meta, files_under, frames};

#[tokio::test]
async fn a_valid_sample_is_stored_once_and_queued() {
    let fleet = Fleet::new();
    let frame = &frames(1)[0];
    let meta = detector_meta(frame, "press-1", 0.41);
    let first = fleet.upload(frame, &meta).await;
    assert_eq!((first, first.http_status()), (Stored::New, 201));

    let record = fleet.samples.get(&frame.sha()).expect("get").expect("stored");
    assert_eq!(record.meta, meta);
    assert_eq!(record.bytes, frame.bytes.len() as u64);
    let image = fleet.samples.image(&frame.sha()).await.expect("image");
    assert_eq!((image.bytes.as_ref(), image.content_type.as_str()), (frame.bytes.as_slice(), "image/jpeg"));
    let sha = frame.sha().to_string();
    assert_eq!(files_under(&fleet.blob_dir()), [format!("samples/{}/{sha}.jpg", &sha[..2])]);
    let queued = Counts { queued: 1, ..Counts::default() };
    assert_eq!(fleet.queue.counts(None, T0).expect("counts"), queued);

    // A repeat (the agent retrying after a lost answer) stores nothing new and says so.
    let blob = std::fs::metadata(fleet.blob_dir().join(&files_under(&fleet.blob_dir())[0])).expect("blob");
    let again = fleet.upload(frame, &meta).await;
    assert_eq!((again, again.http_status()), (Stored::Already, 200));
    assert_eq!(fleet.samples.list(None, 10).expect("list").len(), 1);
    assert_eq!(files_under(&fleet.blob_dir()).len(), 1);
    let blob_again = std::fs::metadata(fleet.blob_dir().join(&files_under(&fleet.blob_dir())[0])).expect("blob");
    assert_eq!(blob.modified().ok(), blob_again.modified().ok(), "the image was not rewritten");
    assert_eq!(fleet.queue.counts(None, T0).expect("counts"), queued);
}

#[tokio::test]
async fn a_repeat_with_another_meta_keeps_the_first() {
    let fleet = Fleet::new();
    let frame = &frames(1)[0];
    let first = detector_meta(frame, "press-1", 0.41);
    fleet.upload(frame, &first).await;
    let mut second = first.clone();
    second.camera = "line-9".into();
    assert_eq!(fleet.upload(frame, &second).await, Stored::Already);
    assert_eq!(fleet.samples.require(&frame.sha()).expect("record").meta.camera, "line-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_repeats_store_one_sample() {
    let fleet = std::sync::Arc::new(Fleet::new());
    let frame = frames(1).remove(0);
    let meta = detector_meta(&frame, "press-1", 0.41);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (fleet, frame, meta) = (fleet.clone(), frame.clone(), meta.clone());
            tokio::spawn(async move { fleet.upload(&frame, &meta).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("task"));
    }
    assert_eq!(outcomes.iter().filter(|s| **s == Stored::New).count(), 1, "{outcomes:?}");
    assert_eq!(fleet.queue.counts(None, T0).expect("counts").queued, 1);
}

#[tokio::test]
async fn a_repeat_after_a_cut_off_intake_finishes_queueing() {
    let fleet = Fleet::new();
    let frame = &frames(1)[0];
    let meta = detector_meta(frame, "press-1", 0.41);
    fleet.upload(frame, &meta).await;
    // As if the fleet died between storing the record and queueing it.
    fleet.store.remove("annotate.state", &frame.sha().0).expect("remove");
    assert_eq!(fleet.queue.counts(None, T0).expect("counts"), Counts::default());
    assert_eq!(fleet.upload(frame, &meta).await, Stored::Already);
    assert_eq!(fleet.queue.counts(None, T0).expect("counts").queued, 1);
}

/// The ways an upload is refused, each with its code and HTTP status; none of them stores anything.
#[tokio::test]
async fn invalid_uploads_are_refused_with_their_kind() {
    let limits = IntakeLimits { max_image_bytes: 64 << 10, max_width: 4096, max_height: 4096 };
    let fleet = Fleet::with(limits, QueueConfig::default());
    let all = frames(2);
    let (frame, other) = (&all[0], &all[1]);
    let sha = frame.sha().to_string();
    let good = detector_meta(frame, "press-1", 0.41);

    struct Case {
        what: &'static str,
        path: String,
        device: &'static str,
        meta: Vec<u8>,
        image: Vec<u8>,
        code: &'static str,
        status: u16,
    }
    let json = |m: &outpost_common::protocol::SampleMeta| serde_json::to_vec(m).expect("json");
    let with = |f: &dyn Fn(&mut outpost_common::protocol::SampleMeta)| {
        let mut m = good.clone();
        f(&mut m);
        json(&m)
    };
    let case = |what, path: &str, device, meta: Vec<u8>, image: &[u8], code, status| Case {
        what,
        path: path.to_string(),
        device,
        meta,
        image: image.to_vec(),
        code,
        status,
    };
    // A PNG header claiming 60000×60000 pixels: tiny file, huge image.
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut bomb = b"\x89PNG\r\n\x1a\n\0\0\0\x0d".to_vec();
    bomb.extend_from_slice(&ihdr);
    bomb.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    for empty_chunk in [b"IDAT", b"IEND"] {
        bomb.extend_from_slice(&[0, 0, 0, 0]);
        bomb.extend_from_slice(empty_chunk);
        bomb.extend_from_slice(&crc32(empty_chunk).to_be_bytes());
    }
    let bomb_sha = Sha256Sum::of(&bomb).to_string();
    let truncated = &frame.bytes[..frame.bytes.len() / 2];
    let truncated_sha = Sha256Sum::of(truncated).to_string();
    let text = b"this is not an image at all".to_vec();
    let text_sha = Sha256Sum::of(&text).to_string();
    let mut unknown_field = serde_json::to_value(&good).expect("value");
    unknown_field["firmware"] = serde_json::json!("1.2.3");
    let big = vec![0u8; (64 << 10) + 1];

    let cases = [
        case("not a sha", "cafe", "press-1", json(&good), &frame.bytes, "bad_sample_id", 422),
        case("uppercase sha", &sha.to_uppercase(), "press-1", json(&good), &frame.bytes, "bad_sample_id", 422),
        case(
            "path names another image",
            &other.sha().to_string(),
            "press-1",
            with(&|m| m.sample = other.sha()),
            &frame.bytes,
            "hash_mismatch",
            422,
        ),
        case(
            "meta names another image",
            &sha,
            "press-1",
            with(&|m| m.sample = other.sha()),
            &frame.bytes,
            "hash_mismatch",
            422,
        ),
        case("meta of another device", &sha, "press-2", json(&good), &frame.bytes, "device_mismatch", 422),
        case(
            "unknown meta field",
            &sha,
            "press-1",
            serde_json::to_vec(&unknown_field).expect("json"),
            &frame.bytes,
            "unknown_field",
            422,
        ),
        case("unsupported schema", &sha, "press-1", with(&|m| m.schema = 2), &frame.bytes, "bad_meta", 422),
        case("meta too large", &sha, "press-1", vec![b' '; (64 << 10) + 1], &frame.bytes, "meta_too_large", 413),
        case(
            "image too large",
            &Sha256Sum::of(&big).to_string(),
            "press-1",
            with(&|m| m.sample = Sha256Sum::of(&big)),
            &big,
            "image_too_large",
            413,
        ),
        case(
            "not an image",
            &text_sha,
            "press-1",
            with(&|m| m.sample = Sha256Sum::of(&text)),
            &text,
            "not_an_image",
            422,
        ),
        case(
            "truncated jpeg",
            &truncated_sha,
            "press-1",
            with(&|m| m.sample = Sha256Sum::of(truncated)),
            truncated,
            "bad_image",
            422,
        ),
        case(
            "pixel bomb",
            &bomb_sha,
            "press-1",
            with(&|m| {
                m.sample = Sha256Sum::of(&bomb);
                m.content_type = "image/png".into()
            }),
            &bomb,
            "image_too_large",
            413,
        ),
        case(
            "dimension mismatch",
            &sha,
            "press-1",
            with(&|m| {
                m.width = 1280;
                m.height = 720
            }),
            &frame.bytes,
            "dimension_mismatch",
            422,
        ),
        case(
            "content type mismatch",
            &sha,
            "press-1",
            with(&|m| m.content_type = "image/png".into()),
            &frame.bytes,
            "content_type_mismatch",
            422,
        ),
        case(
            "content type not an image",
            &sha,
            "press-1",
            with(&|m| m.content_type = "text/plain".into()),
            &frame.bytes,
            "bad_meta",
            422,
        ),
        case(
            "empty image",
            &Sha256Sum::of(b"").to_string(),
            "press-1",
            with(&|m| m.sample = Sha256Sum::of(b"")),
            b"",
            "not_an_image",
            422,
        ),
    ];
    for c in cases {
        let upload =
            outpost_fleet::samples::Upload { sample: &c.path, device: c.device, meta: &c.meta, image: &c.image };
        let err: SampleError = fleet.samples.ingest(upload, T0).await.expect_err(c.what);
        assert_eq!((err.code(), err.kind().http_status()), (c.code, c.status), "{}: {err}", c.what);
    }
    assert!(fleet.samples.list(None, 10).expect("list").is_empty());
    assert!(files_under(&fleet.blob_dir()).is_empty());
    assert_eq!(fleet.queue.counts(None, T0).expect("counts"), Counts::default());
}

#[tokio::test]
async fn reading_an_unknown_sample_is_not_found() {
    let fleet = Fleet::new();
    let err = fleet.samples.image(&Sha256Sum([1; 32])).await.expect_err("absent");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.kind().http_status(), 404);
}

/// PNG's chunk checksum (CRC-32, IEEE), so the bomb's header is otherwise valid.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
