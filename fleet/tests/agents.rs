//! The fleet with three enrolled agents on its embedded broker: devices show online, their windows are stored with
//! frame counts equal to what they processed, a stopped agent shows offline, flagged samples arrive in the
//! annotators' queue, two annotators never get the same sample, and labels come out in an export.
//!
//! The fleet is the real `outpost-fleet serve` process; the agents are `outpost_agent::app::run` (the code behind
//! `outpost-agent run`) in this test process, each with the config enrollment wrote for it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outpost_agent::config::AgentConfig;
use outpost_tests::broker::{Mosquitto, MosquittoOptions};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "processes/fleet.rs"]
mod fleet;

use fleet::{Fleet, FleetOptions, defect_images, device, frames, root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_report_to_the_fleet_and_their_samples_reach_annotators() {
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_through_mosquitto_as_the_external_broker() {
    let broker = Mosquitto::start(MosquittoOptions::default()).expect("mosquitto starts");
    scenario(Some(&broker.url())).await;
}

async fn scenario(external: Option<&str>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let fleet = Fleet::start(tmp.path(), &FleetOptions { external, ..FleetOptions::default() }).await;
    let images = defect_images("val");
    let feeds = [
        ("line-a", "plant-a", &images[..10]),
        ("line-b", "plant-a", &images[10..25]),
        ("line-c", "plant-b", &images[25..45]),
    ];

    let stops: Vec<CancellationToken> = feeds.iter().map(|_| CancellationToken::new()).collect();
    let mut agents = Vec::new();
    for ((name, site, files), stop) in feeds.iter().zip(&stops) {
        let (status, enrolled) = fleet
            .call(reqwest::Method::POST, "/devices", &fleet.admin, Some(json!({"name": name, "tags": {"site": site}})))
            .await;
        assert_eq!(status, 200, "{enrolled}");
        let folder = tmp.path().join(name).join("frames");
        std::fs::create_dir_all(&folder).expect("folder");
        for f in files.iter() {
            std::fs::copy(f, folder.join(f.file_name().expect("name"))).expect("copy");
        }
        let mut toml = enrolled["agent_config"].as_str().expect("config").to_string();
        toml = toml.replace("/var/lib/outpost-agent", &tmp.path().join(name).join("state").display().to_string());
        toml.push_str(&format!(
            "\n[telemetry]\nwindow_secs = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n[runtime]\nthreads = 1\n\
             [[models]]\nname = \"defect\"\nversion = 1\npath = {:?}\n\
             [[cameras]]\nname = \"cam\"\nmodel = \"defect\"\nsource = {{ kind = \"dir\", path = {folder:?}, settle_ms = 0 }}\n\
             [cameras.flagging]\nband = {{ low = 0.25, high = 0.5 }}\nrate = {{}}\ndedup = {{ enabled = false }}\n",
            root().join("models/zoo/defect-yolo11n-320.onnx")
        ));
        let config = AgentConfig::parse(&toml, Path::new("agent.toml")).expect("parses").validate().expect("valid");
        agents.push(tokio::spawn(outpost_agent::app::run(config, stop.clone())));
    }

    // Online, and every frame counted once in the stored windows.
    let devices = fleet
        .wait_for("all frames in stored windows", "/fleet/devices", |d| {
            feeds
                .iter()
                .all(|(name, _, files)| device(d, name)["online"] == true && frames(d, name) == files.len() as u64)
        })
        .await;
    assert_eq!(devices.as_array().map(Vec::len), Some(3));
    let (_, windows) = fleet
        .call(reqwest::Method::GET, "/fleet/devices/line-b/windows?model=defect&version=1", &fleet.admin, None)
        .await;
    let stored: u64 =
        windows.as_array().expect("windows").iter().map(|w| w["window"]["frames"].as_u64().unwrap_or(0)).sum();
    assert_eq!(stored, 15, "line-b's windows add up to its 15 frames: {windows}");

    let metrics = fleet.metrics().await;
    assert!(metrics.contains("outpost_fleet_devices{state=\"online\"} 3"), "{metrics}");
    assert!(metrics.contains("outpost_fleet_messages_accepted_total"), "{metrics}");

    // Stopping an agent shows it offline (its clean shutdown publishes the offline status).
    stops[0].cancel();
    fleet.wait_for("line-a offline", "/fleet/devices", |d| device(d, "line-a")["online"] == false).await;

    // Flagged samples arrive; two annotators claiming at once never share one.
    let counts = fleet
        .wait_for("samples in the queue", "/annotate/counts?model=defect", |c| c["queued"].as_u64().unwrap_or(0) >= 4)
        .await;
    let queued = counts["queued"].as_u64().unwrap_or(0);
    let mut tokens = Vec::new();
    for who in ["ann-1", "ann-2"] {
        let (_, t) = fleet
            .call(reqwest::Method::POST, "/users", &fleet.admin, Some(json!({"name": who, "role": "annotator"})))
            .await;
        tokens.push(t["token"].as_str().expect("token").to_string());
    }
    let claim = |token: String| {
        let base = fleet.base.clone();
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/api/v1/annotate/claim"))
                .bearer_auth(token)
                .json(&json!({"model": "defect", "count": 100}))
                .send()
                .await
                .expect("answer");
            r.json::<Value>().await.expect("json")
        })
    };
    let (a, b) = (claim(tokens[0].clone()), claim(tokens[1].clone()));
    let (a, b) = (a.await.expect("claim"), b.await.expect("claim"));
    let ids = |v: &Value| -> BTreeSet<String> {
        v.as_array().expect("claimed").iter().map(|s| s["sample"].as_str().expect("id").to_string()).collect()
    };
    let (ia, ib) = (ids(&a), ids(&b));
    assert!(ia.is_disjoint(&ib), "no sample handed to both annotators");
    assert_eq!(ia.len() + ib.len(), queued as usize, "every queued sample claimed once");

    // A label through the API comes out in a YOLO export.
    let (first, token) =
        if ia.is_empty() { (ib.iter().next().cloned(), &tokens[1]) } else { (ia.iter().next().cloned(), &tokens[0]) };
    let first = first.expect("a claimed sample");
    let label = json!({"kind": "detect", "boxes": [{"class": "scratch", "bbox": [10.0, 10.0, 60.0, 50.0]}]});
    let (status, body) =
        fleet.call(reqwest::Method::POST, &format!("/annotate/samples/{first}/label"), token, Some(label)).await;
    assert_eq!(status, 200, "{body}");
    let out = tmp.path().join("export-yolo");
    let (status, report) = fleet
        .call(
            reqwest::Method::POST,
            "/exports",
            &fleet.admin,
            Some(json!({"model": "defect", "format": "yolo", "out_dir": out})),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    let yaml = std::fs::read_to_string(out.join("data.yaml")).expect("data.yaml");
    assert!(yaml.contains("scratch"), "{yaml}");
    let labels: Vec<PathBuf> = ["train", "val"]
        .iter()
        .flat_map(|s| std::fs::read_dir(out.join("labels").join(s)).into_iter().flatten().flatten().map(|e| e.path()))
        .collect();
    assert_eq!(labels.len(), 1, "one labelled sample");
    let line = std::fs::read_to_string(&labels[0]).expect("label file");
    assert!(line.starts_with("0 "), "class 0 = scratch: {line}");

    // The same labels through the operator's CLI, as COCO.
    let coco = tmp.path().join("export-coco");
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["samples", "export", "--model", "defect", "--format", "coco", "--out"])
        .arg(&coco)
        .env("OUTPOST_FLEET_URL", &fleet.base)
        .env("OUTPOST_TOKEN", &fleet.admin)
        .output()
        .expect("outpost runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("exported"), "{}", String::from_utf8_lossy(&out.stdout));
    let annotations: Vec<Value> = ["train", "val"]
        .iter()
        .filter_map(|s| std::fs::read(coco.join(format!("annotations/instances_{s}.json"))).ok())
        .map(|b| serde_json::from_slice(&b).expect("COCO JSON"))
        .collect();
    let boxes: usize = annotations.iter().map(|a| a["annotations"].as_array().map_or(0, Vec::len)).sum();
    assert_eq!(boxes, 1, "the one labelled box, in COCO: {annotations:?}");

    for stop in &stops {
        stop.cancel();
    }
    for a in agents {
        tokio::time::timeout(Duration::from_secs(20), a)
            .await
            .expect("agent stops")
            .expect("no panic")
            .expect("clean exit");
    }
}
