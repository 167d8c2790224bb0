//! Exports of labelled fixture samples in every format, checked against each format's spec, and the Label Studio
//! round trip. The YOLO checker here is what CI runs (Ultralytics is not installed there, nor on the dev machine).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use outpost_common::manifest::Sha256Sum;
use outpost_fleet::annotate::{Label, QueueConfig, ReviewDecision, StateName};
use outpost_fleet::export::{ExportError, ExportQuery, Format, Split, export, import_label_studio};
use outpost_fleet::samples::IntakeLimits;
use serde_json::Value;
use support::{CLASSIFIER, DETECTOR, Fleet, Frame, NAMES, T0, classifier_meta, detector_meta, files_under, frames};

const RATIO: f64 = 0.3;

/// A YOLO label line: class and normalised `[cx, cy, w, h]`.
type YoloBox = (usize, [f64; 4]);

/// A fleet with `frames` uploaded by three devices, claimed by one annotator, and the first `labelled` of them
/// labelled with their ground truth.
async fn labelled_fleet(frames: &[Frame], labelled: usize, config: QueueConfig) -> Fleet {
    let fleet = Fleet::with(IntakeLimits::default(), config);
    for (i, f) in frames.iter().enumerate() {
        fleet.upload(f, &detector_meta(f, &format!("press-{}", i % 3 + 1), 0.3 + 0.01 * i as f32)).await;
    }
    fleet.queue.claim(DETECTOR, "ann", frames.len(), T0).expect("claim");
    for f in &frames[..labelled] {
        fleet.queue.submit(&f.sha(), "ann", f.label(), T0).expect("submit");
    }
    fleet
}

fn query(format: Format, out: &Path) -> ExportQuery {
    ExportQuery { val_ratio: RATIO, ..ExportQuery::new(DETECTOR, format, out) }
}

/// Checks a YOLO detection dataset against the format: `data.yaml` (absolute `path`, `train`, `val`, `names`),
/// every image with a label file and every label file with an image, every line `class cx cy w h` with the class
/// in range and the box inside 0..1. Returns each split's label lines by file stem.
fn check_yolo(root: &Path, names: &[&str]) -> BTreeMap<(Split, String), Vec<YoloBox>> {
    let text = std::fs::read_to_string(root.join("data.yaml")).expect("data.yaml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("data.yaml is YAML");
    let doc = &docs[0];
    assert_eq!(doc["path"].as_str(), Some(root.to_str().expect("utf-8")), "path is the export's absolute path");
    assert_eq!((doc["train"].as_str(), doc["val"].as_str()), (Some("images/train"), Some("images/val")));
    assert_eq!(doc["nc"].as_i64(), Some(names.len() as i64));
    let yaml_names: Vec<&str> =
        (0..names.len()).map(|i| doc["names"][i].as_str().expect("names[i] is a string")).collect();
    assert_eq!(yaml_names, names);

    let mut labels = BTreeMap::new();
    for split in [Split::Train, Split::Val] {
        let images = root.join("images").join(split.as_str());
        let label_dir = root.join("labels").join(split.as_str());
        assert!(images.is_dir() && label_dir.is_dir(), "{split:?} folders");
        let stems = |dir: &Path, ext: &[&str]| -> Vec<String> {
            let mut out: Vec<String> = files_under(dir)
                .into_iter()
                .map(|f| {
                    let (stem, e) = f.rsplit_once('.').expect("extension");
                    assert!(ext.contains(&e), "unexpected file {f}");
                    stem.to_string()
                })
                .collect();
            out.sort();
            out
        };
        let image_stems = stems(&images, &["jpg", "png"]);
        assert_eq!(image_stems, stems(&label_dir, &["txt"]), "every image has a label file and vice versa");
        for stem in image_stems {
            let text = std::fs::read_to_string(label_dir.join(format!("{stem}.txt"))).expect("labels");
            let mut lines = Vec::new();
            for line in text.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                assert_eq!(fields.len(), 5, "`{line}` has 5 fields");
                let class: usize = fields[0].parse().expect("class is an integer");
                assert!(class < names.len(), "class {class} in range");
                let v: Vec<f64> = fields[1..].iter().map(|x| x.parse().expect("number")).collect();
                assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "`{line}` normalised");
                let (cx, cy, w, h) = (v[0], v[1], v[2], v[3]);
                assert!(w > 0.0 && h > 0.0, "`{line}` has a size");
                let eps = 1e-6;
                assert!(cx - w / 2.0 >= -eps && cx + w / 2.0 <= 1.0 + eps, "`{line}` inside horizontally");
                assert!(cy - h / 2.0 >= -eps && cy + h / 2.0 <= 1.0 + eps, "`{line}` inside vertically");
                lines.push((class, [cx, cy, w, h]));
            }
            labels.insert((split, stem), lines);
        }
    }
    labels
}

/// The fixture's own YOLO label lines for `frame` (the ground truth the labels were made from).
fn fixture_lines(frame: &Frame) -> Vec<YoloBox> {
    frame
        .truth
        .iter()
        .map(|(c, [x1, y1, x2, y2])| {
            let (w, h) = (f64::from(frame.width), f64::from(frame.height));
            let [x1, y1, x2, y2] = [*x1, *y1, *x2, *y2].map(f64::from);
            (*c, [(x1 + x2) / 2.0 / w, (y1 + y2) / 2.0 / h, (x2 - x1) / w, (y2 - y1) / h])
        })
        .collect()
}

fn close(a: &[f64], b: &[f64], eps: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= eps)
}

#[tokio::test]
async fn yolo_export_passes_the_format_check_and_keeps_the_labels() {
    let all = frames(20);
    let fleet = labelled_fleet(&all, 18, QueueConfig::default()).await;
    let out = fleet.dir.path().join("exports/yolo");
    let report = export(&fleet.queue, &query(Format::Yolo, &out)).await.expect("export");
    assert_eq!(report.out_dir, std::fs::canonicalize(&out).expect("exists"));
    assert_eq!((report.train + report.val, report.names.as_slice()), (18, NAMES.map(String::from).as_slice()));
    assert!(report.train > 0 && report.val > 0, "{report:?}");
    assert_eq!(report.boxes, all[..18].iter().map(|f| f.truth.len()).sum::<usize>());

    let labels = check_yolo(&report.out_dir, &NAMES);
    assert_eq!(labels.len(), 18, "only labelled samples are exported");
    for frame in &all[..18] {
        let sha = frame.sha();
        let split = Split::of(&sha, RATIO);
        let lines = &labels[&(split, sha.to_string())];
        let expected = fixture_lines(frame);
        assert_eq!(lines.len(), expected.len());
        for ((c, v), (ec, ev)) in lines.iter().zip(&expected) {
            assert!(c == ec && close(v, ev, 2e-6), "{}: {v:?} vs {ev:?}", frame.name);
        }
        let image = report.out_dir.join(format!("images/{}/{sha}.jpg", split.as_str()));
        assert_eq!(std::fs::read(image).expect("image"), frame.bytes, "images are copied as uploaded");
    }

    // The same query again gives the same dataset (only `path` differs), and no staging folder is left behind.
    let again =
        export(&fleet.queue, &query(Format::Yolo, &fleet.dir.path().join("exports/yolo-2"))).await.expect("export");
    assert_eq!(files_under(&report.out_dir), files_under(&again.out_dir));
    for file in files_under(&report.out_dir).iter().filter(|f| f.ends_with(".txt")) {
        assert_eq!(std::fs::read(report.out_dir.join(file)).ok(), std::fs::read(again.out_dir.join(file)).ok());
    }
    let siblings = files_under(&fleet.dir.path().join("exports"));
    assert!(siblings.iter().all(|f| f.starts_with("yolo/") || f.starts_with("yolo-2/")), "{siblings:?}");
}

#[tokio::test]
async fn coco_export_has_pixel_boxes_areas_and_categories() {
    let all = frames(12);
    let fleet = labelled_fleet(&all, 12, QueueConfig::default()).await;
    let report = export(&fleet.queue, &query(Format::Coco, &fleet.dir.path().join("coco"))).await.expect("export");
    let truth: HashMap<String, &Frame> = all.iter().map(|f| (format!("{}.jpg", f.sha()), f)).collect();
    let mut image_ids = std::collections::HashSet::new();
    let mut annotation_ids = std::collections::HashSet::new();
    let mut images_seen = 0;
    for split in [Split::Train, Split::Val] {
        let path = report.out_dir.join(format!("annotations/instances_{}.json", split.as_str()));
        let doc: Value = serde_json::from_slice(&std::fs::read(path).expect("json")).expect("COCO JSON");
        let categories: Vec<(u64, &str)> = doc["categories"]
            .as_array()
            .expect("categories")
            .iter()
            .map(|c| (c["id"].as_u64().expect("id"), c["name"].as_str().expect("name")))
            .collect();
        assert_eq!(categories, [(1, "scratch"), (2, "dent"), (3, "stain")]);
        let mut by_image: HashMap<u64, &Frame> = HashMap::new();
        for image in doc["images"].as_array().expect("images") {
            let id = image["id"].as_u64().expect("id");
            assert!(image_ids.insert(id), "image ids are unique across splits");
            let name = image["file_name"].as_str().expect("file_name");
            let frame = truth[name];
            assert_eq!(Split::of(&frame.sha(), RATIO), split);
            assert_eq!((image["width"].as_u64(), image["height"].as_u64()), (Some(320), Some(320)));
            assert!(report.out_dir.join("images").join(split.as_str()).join(name).is_file());
            by_image.insert(id, frame);
            images_seen += 1;
        }
        let mut boxes: HashMap<u64, Vec<(u64, Vec<f64>)>> = HashMap::new();
        for a in doc["annotations"].as_array().expect("annotations") {
            assert!(annotation_ids.insert(a["id"].as_u64().expect("id")));
            let bbox: Vec<f64> = a["bbox"].as_array().expect("bbox").iter().map(|v| v.as_f64().expect("num")).collect();
            let area = a["area"].as_f64().expect("area");
            assert!((area - bbox[2] * bbox[3]).abs() < 1e-6, "area is w × h");
            assert_eq!(a["iscrowd"].as_u64(), Some(0));
            let image = a["image_id"].as_u64().expect("image_id");
            boxes.entry(image).or_default().push((a["category_id"].as_u64().expect("category"), bbox));
        }
        for (id, frame) in by_image {
            let got = boxes.remove(&id).unwrap_or_default();
            let expected: Vec<(u64, Vec<f64>)> = frame
                .truth
                .iter()
                .map(|(c, [x1, y1, x2, y2])| {
                    (*c as u64 + 1, vec![f64::from(*x1), f64::from(*y1), f64::from(x2 - x1), f64::from(y2 - y1)])
                })
                .collect();
            assert_eq!(got.len(), expected.len(), "{}", frame.name);
            for ((c, b), (ec, eb)) in got.iter().zip(&expected) {
                assert!(c == ec && close(b, eb, 1e-3), "{}: {b:?} vs {eb:?}", frame.name);
            }
        }
        assert!(boxes.is_empty(), "every annotation points at an image of its split");
    }
    assert_eq!(images_seen, 12);
}

#[tokio::test]
async fn imagenet_export_sorts_classifier_samples_into_class_folders() {
    let all = frames(9);
    let fleet = Fleet::new();
    for (i, f) in all.iter().enumerate() {
        fleet.upload(f, &classifier_meta(f, "press-1", i % 3, 0.5)).await;
    }
    fleet.queue.claim(CLASSIFIER, "ann", 9, T0).expect("claim");
    for (i, f) in all.iter().enumerate() {
        // The annotator corrects every third prediction.
        let class = NAMES[(i + usize::from(i % 3 == 0)) % 3];
        fleet.queue.submit(&f.sha(), "ann", Label::Classify { class: class.into() }, T0).expect("submit");
    }
    let q = ExportQuery {
        val_ratio: RATIO,
        ..ExportQuery::new(CLASSIFIER, Format::Imagenet, fleet.dir.path().join("cls"))
    };
    let report = export(&fleet.queue, &q).await.expect("export");
    let mut expected: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let class = NAMES[(i + usize::from(i % 3 == 0)) % 3];
            format!("{}/{class}/{}.jpg", Split::of(&f.sha(), RATIO).as_str(), f.sha())
        })
        .collect();
    expected.sort();
    assert_eq!(files_under(&report.out_dir), expected);
    assert_eq!(report.train + report.val, 9);

    // A classifier's samples do not make a detection dataset, and the reverse.
    let err = export(&fleet.queue, &ExportQuery::new(CLASSIFIER, Format::Yolo, fleet.dir.path().join("no"))).await;
    assert_eq!(err.expect_err("wrong task").kind().http_status(), 422);
    let det = labelled_fleet(&frames(2), 2, QueueConfig::default()).await;
    let err = export(&det.queue, &ExportQuery::new(DETECTOR, Format::Imagenet, det.dir.path().join("no"))).await;
    assert_eq!(err.expect_err("wrong task").kind().http_status(), 422);
}

fn tasks_of(dir: &Path) -> Vec<Value> {
    serde_json::from_slice(&std::fs::read(dir.join("tasks.json")).expect("tasks.json")).expect("JSON array")
}

#[tokio::test]
async fn label_studio_round_trip_keeps_the_labels() {
    let all = frames(12);
    let source = labelled_fleet(&all, 10, QueueConfig::default()).await;
    let q = ExportQuery {
        image_base_url: Some("https://fleet.example/ls/images/".into()),
        include_unlabelled: true,
        ..query(Format::LabelStudio, &source.dir.path().join("ls"))
    };
    let report = export(&source.queue, &q).await.expect("export");
    assert_eq!((report.train + report.val, report.unlabelled), (12, 2));
    let tasks = tasks_of(&report.out_dir);
    assert_eq!(tasks.len(), 12);
    let config = std::fs::read_to_string(report.out_dir.join("label_config.xml")).expect("config");
    assert!(
        config.contains(r#"<RectangleLabels name="label" toName="image">"#)
            && config.contains(r#"<Label value="stain"/>"#)
    );

    for task in &tasks {
        let sha: Sha256Sum = task["data"]["sample"].as_str().expect("sample").parse().expect("sha");
        let frame = all.iter().find(|f| f.sha() == sha).expect("a fixture");
        assert_eq!(task["data"]["image"], format!("https://fleet.example/ls/images/{sha}.jpg"));
        assert!(report.out_dir.join(format!("images/{sha}.jpg")).is_file());
        // The agent's predictions, as percent rectangles.
        let prediction = &task["predictions"][0];
        assert_eq!(prediction["model_version"], "defect@7");
        let regions = prediction["result"].as_array().expect("result");
        assert_eq!(regions.len(), frame.truth.len());
        for (region, (class, [x1, y1, x2, y2])) in regions.iter().zip(&frame.truth) {
            let v = &region["value"];
            assert_eq!(
                (region["type"].as_str(), region["from_name"].as_str()),
                (Some("rectanglelabels"), Some("label"))
            );
            assert_eq!(v["rectanglelabels"][0], NAMES[*class]);
            let pct = |key: &str| v[key].as_f64().expect("number");
            let expected = [x1 / 3.2, y1 / 3.2, (x2 - x1) / 3.2, (y2 - y1) / 3.2].map(f64::from);
            assert!(close(&[pct("x"), pct("y"), pct("width"), pct("height")], &expected, 1e-3), "{v}");
            assert!(region["score"].as_f64().is_some());
        }
        let labelled = all[..10].iter().any(|f| f.sha() == sha);
        assert_eq!(task.get("annotations").is_some(), labelled, "annotations only for labelled samples");
    }

    // A second fleet has the same samples, unlabelled; importing the export gives it the same labels.
    let target = labelled_fleet(&all, 0, QueueConfig::default()).await;
    let bytes = std::fs::read(report.out_dir.join("tasks.json")).expect("tasks");
    let imported = import_label_studio(&target.queue, &bytes, "admin", T0).expect("import");
    assert_eq!((imported.imported, imported.without_annotation, imported.refused.len()), (10, 2, 0), "{imported:?}");
    for frame in &all[..10] {
        let view = target.queue.view(&frame.sha(), T0).expect("view");
        assert_eq!(view.state, StateName::Labelled);
        let Some(Label::Detect { boxes }) = view.label.map(|l| l.label) else { panic!("a detector label") };
        let Label::Detect { boxes: expected } = frame.label() else { unreachable!() };
        assert_eq!(boxes.len(), expected.len());
        for (b, e) in boxes.iter().zip(&expected) {
            let (b4, e4) = (b.bbox.map(f64::from), e.bbox.map(f64::from));
            assert!(b.class == e.class && close(&b4, &e4, 1e-3), "{}: {b:?} vs {e:?}", frame.name);
        }
    }
    for frame in &all[10..] {
        assert_eq!(target.queue.view(&frame.sha(), T0).expect("view").state, StateName::Claimed, "untouched");
    }
}

#[tokio::test]
async fn label_studio_round_trip_for_a_classifier() {
    let all = frames(4);
    let fleet = Fleet::new();
    for f in &all {
        fleet.upload(f, &classifier_meta(f, "press-2", 0, 0.4)).await;
    }
    fleet.queue.claim(CLASSIFIER, "ann", 4, T0).expect("claim");
    for (f, class) in all.iter().zip(["dent", "stain", "scratch", "dent"]) {
        fleet.queue.submit(&f.sha(), "ann", Label::Classify { class: class.into() }, T0).expect("submit");
    }
    let q = ExportQuery {
        image_base_url: Some("/data/local-files".into()),
        ..ExportQuery::new(CLASSIFIER, Format::LabelStudio, fleet.dir.path().join("ls"))
    };
    let report = export(&fleet.queue, &q).await.expect("export");
    let tasks = tasks_of(&report.out_dir);
    assert_eq!(tasks[0]["predictions"][0]["result"][0]["value"]["choices"][0], "scratch");
    let config = std::fs::read_to_string(report.out_dir.join("label_config.xml")).expect("config");
    assert!(config.contains(r#"<Choices name="choice" toName="image" choice="single">"#), "{config}");

    let target = Fleet::new();
    for f in &all {
        target.upload(f, &classifier_meta(f, "press-2", 0, 0.4)).await;
    }
    let bytes = std::fs::read(report.out_dir.join("tasks.json")).expect("tasks");
    assert_eq!(import_label_studio(&target.queue, &bytes, "admin", T0).expect("import").imported, 4);
    for (f, class) in all.iter().zip(["dent", "stain", "scratch", "dent"]) {
        let label = target.queue.view(&f.sha(), T0).expect("view").label.map(|l| l.label);
        assert_eq!(label, Some(Label::Classify { class: class.into() }));
    }
}

#[tokio::test]
async fn label_studio_imports_report_what_they_could_not_apply() {
    let all = frames(4);
    let fleet = labelled_fleet(&all, 0, QueueConfig { review: true, ..QueueConfig::default() }).await;
    let sha = |i: usize| all[i].sha().to_string();
    let rect = |label: &str| {
        serde_json::json!({"type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": [label]}})
    };
    let body = serde_json::json!([
        {"id": 1, "data": {"image": format!("https://x/images/{}.jpg", sha(0))}, "annotations": [{"result": [rect("dent")]}]},
        {"id": 2, "data": {"sample": sha(1)}, "annotations": [{"result": [rect("dent")], "was_cancelled": true}]},
        {"id": 3, "data": {"sample": sha(2)}, "annotations": [{"result": [rect("hole")]}]},
        {"id": 4, "data": {"sample": Sha256Sum([9; 32]).to_string()}, "annotations": [{"result": []}]},
        {"id": 5, "data": {"image": "https://x/cat.jpg"}, "annotations": [{"result": []}]},
        {"id": 6, "data": {"sample": sha(3)}, "annotations": [{"result": [rect("stain")]}, {"result": [rect("scratch")]}]},
        "not a task",
    ]);
    let report = import_label_studio(&fleet.queue, body.to_string().as_bytes(), "admin", T0).expect("import");
    assert_eq!((report.imported, report.without_annotation), (2, 1), "{report:?}");
    let refused: Vec<&str> = report.refused.iter().map(|r| r.task.as_str()).collect();
    assert_eq!(refused, ["3", "4", "5", "#6"]);
    // With review on, imported labels wait for a reviewer too; the last annotation wins.
    let view = fleet.queue.view(&all[3].sha(), T0).expect("view");
    assert_eq!(view.state, StateName::Review);
    let Some(Label::Detect { boxes }) = view.label.map(|l| l.label) else { panic!("label") };
    assert_eq!((boxes[0].class.as_str(), boxes[0].bbox), ("scratch", [32.0, 32.0, 96.0, 96.0]));

    fleet.queue.review(&all[3].sha(), "rita", &ReviewDecision::Accept, T0).expect("accept");
    let again = import_label_studio(&fleet.queue, body.to_string().as_bytes(), "admin", T0).expect("import");
    assert!(again.refused.iter().any(|r| r.task == "6" && r.reason.contains("accepted")), "{again:?}");

    for bad in [&b"{\"tasks\": []}"[..], b"not json", b""] {
        let err = import_label_studio(&fleet.queue, bad, "admin", T0).expect_err("refused");
        assert_eq!((err.code(), err.kind().http_status()), ("bad_import", 422));
    }
}

#[tokio::test]
async fn with_review_on_only_accepted_labels_are_exported() {
    let all = frames(4);
    let fleet = labelled_fleet(&all, 4, QueueConfig { review: true, ..QueueConfig::default() }).await;
    let out = fleet.dir.path().join("none");
    let err = export(&fleet.queue, &query(Format::Yolo, &out)).await.expect_err("nothing accepted yet");
    assert_eq!((err.code(), err.kind().http_status()), ("nothing_to_export", 404));
    fleet.queue.review(&all[1].sha(), "rita", &ReviewDecision::Accept, T0).expect("accept");
    let report = export(&fleet.queue, &query(Format::Yolo, &out)).await.expect("export");
    assert_eq!(report.train + report.val, 1);
    let labels = check_yolo(&report.out_dir, &NAMES);
    assert_eq!(labels.keys().map(|(_, s)| s.clone()).collect::<Vec<_>>(), [all[1].sha().to_string()]);
}

#[tokio::test]
async fn bad_queries_and_occupied_folders_are_refused() {
    let all = frames(3);
    let fleet = labelled_fleet(&all, 3, QueueConfig::default()).await;
    let dir = fleet.dir.path();
    let check = |result: Result<_, ExportError>, code: &str, status: u16| {
        let err = result.expect_err(code);
        assert_eq!((err.code(), err.kind().http_status()), (code, status), "{err}");
    };
    let occupied = dir.join("occupied");
    std::fs::create_dir_all(&occupied).expect("mkdir");
    std::fs::write(occupied.join("keep.txt"), "mine").expect("write");
    check(export(&fleet.queue, &query(Format::Yolo, &occupied)).await, "output_not_empty", 409);
    assert_eq!(std::fs::read_to_string(occupied.join("keep.txt")).ok().as_deref(), Some("mine"));

    let fresh = dir.join("fresh");
    check(export(&fleet.queue, &ExportQuery { val_ratio: 1.5, ..query(Format::Yolo, &fresh) }).await, "invalid", 422);
    check(export(&fleet.queue, &query(Format::LabelStudio, &fresh)).await, "invalid", 422);
    check(
        export(&fleet.queue, &ExportQuery { include_unlabelled: true, ..query(Format::Coco, &fresh) }).await,
        "invalid",
        422,
    );
    let only_two = Some(vec!["scratch".to_string(), "dent".to_string()]);
    assert!(all.iter().any(|f| f.truth.iter().any(|(c, _)| *c == 2)), "the fixtures label a stain");
    check(export(&fleet.queue, &ExportQuery { names: only_two, ..query(Format::Yolo, &fresh) }).await, "invalid", 422);
    let twice = Some(vec!["dent".to_string(), "dent".to_string()]);
    check(export(&fleet.queue, &ExportQuery { names: twice, ..query(Format::Yolo, &fresh) }).await, "invalid", 422);
    check(export(&fleet.queue, &ExportQuery::new("nobody", Format::Yolo, &fresh)).await, "nothing_to_export", 404);
    assert!(!fresh.exists(), "refused exports write nothing");
    assert_eq!(files_under(dir).iter().filter(|f| f.contains(".partial")).count(), 0);

    // An empty folder is fine to export into.
    std::fs::create_dir_all(&fresh).expect("mkdir");
    assert!(export(&fleet.queue, &query(Format::Yolo, &fresh)).await.is_ok());
}
