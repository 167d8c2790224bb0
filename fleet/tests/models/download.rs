//! Artifact downloads with `Range`, and the agent's own downloader resuming a part file.

use super::*;

#[test]
fn artifacts_download_with_ranges_and_the_agent_resumes_them() {
    let fleet = start("");
    let pushed = good_detector(3);
    let (status, answer) = fleet.push(&fleet.admin, &pushed);
    assert_eq!(status, 201, "{answer}");
    let device = fleet.device("press-1");
    let bytes = read(DETECTOR);
    let len = bytes.len();
    let sha = Sha256Sum::of(&bytes).to_string();

    let get = |range: Option<&str>| {
        let mut r = client().get(fleet.url("/models/defect/3/artifact")).bearer_auth(&device);
        if let Some(range) = range {
            r = r.header("range", range);
        }
        r.send().expect("get")
    };
    let header = |r: &reqwest::blocking::Response, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
    };
    let whole = get(None);
    assert_eq!(whole.status(), 200);
    assert_eq!(header(&whole, "accept-ranges"), "bytes");
    assert_eq!(header(&whole, "etag"), format!("\"{sha}\""));
    assert_eq!(header(&whole, "content-length"), len.to_string());
    assert_eq!(whole.bytes().expect("body").as_ref(), bytes.as_slice());

    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, len - 1),
        ("bytes=-10", len - 10, len - 1),
        (&*format!("bytes=5-{}", len + 100), 5, len - 1),
    ] {
        let r = get(Some(range));
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(header(&r, "content-range"), format!("bytes {start}-{end}/{len}"), "{range}");
        assert_eq!(header(&r, "content-length"), (end + 1 - start).to_string(), "{range}");
        assert_eq!(header(&r, "etag"), format!("\"{sha}\""));
        assert_eq!(r.bytes().expect("body").as_ref(), &bytes[start..=end], "{range}");
    }
    for range in [&*format!("bytes={len}-"), "bytes=5-2", "bytes=0-1,5-6", "lines=1-2", "bytes=x-", "bytes=-0"] {
        let r = get(Some(range));
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(header(&r, "content-range"), format!("bytes */{len}"), "{range}");
    }

    // The manifest, exactly the envelope pushed (the body bytes are the signed ones).
    let r = client().get(fleet.url("/models/defect/3/manifest")).bearer_auth(&device).send().expect("get");
    assert_eq!(r.status(), 200);
    let served = Envelope::from_slice(&r.bytes().expect("body")).expect("an envelope");
    let pushed = Envelope::from_slice(pushed.manifest.as_deref().expect("manifest")).expect("envelope");
    assert_eq!(served, pushed);
    for path in ["/models/defect/4/artifact", "/models/defect/x/artifact", "/models/nope/3/manifest"] {
        assert_eq!(fleet.get(&device, path).status(), 404, "{path}");
    }

    // The agent's downloader with the device's token: whole, then resuming a part file cut at 1 MB.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let downloads = tempfile::tempdir().expect("dir");
    let expected = Artifact { sha256: Sha256Sum::of(&bytes), length: len as u64 };
    let request = |dir: &Path| outpost_agent::update::DownloadRequest {
        url: fleet.url("/models/defect/3/artifact"),
        bearer_token: Some(device.clone()),
        expected: expected.clone(),
        dir: dir.to_path_buf(),
    };
    let downloader = outpost_agent::update::Downloader::new(outpost_agent::update::DownloadConfig {
        disk_margin: 0,
        ..Default::default()
    })
    .expect("downloader");
    let cancel = tokio_util::sync::CancellationToken::new();
    let fresh = request(&downloads.path().join("fresh"));
    let artifact = runtime.block_on(downloader.fetch(&fresh, &cancel, |_| {})).expect("downloaded");
    assert_eq!(std::fs::read(artifact.path()).expect("artifact"), bytes);

    let resumed = request(&downloads.path().join("resumed"));
    std::fs::create_dir_all(&resumed.dir).expect("dir");
    std::fs::write(resumed.part_path(), &bytes[..1 << 20]).expect("part");
    let mut seen = Vec::new();
    let artifact = runtime.block_on(downloader.fetch(&resumed, &cancel, |p| seen.push(p.done))).expect("resumed");
    assert_eq!(std::fs::read(artifact.path()).expect("artifact"), bytes);
    assert_eq!(seen.first(), Some(&(1 << 20)), "the download started from the part: {seen:?}");
}
