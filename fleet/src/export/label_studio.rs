//! Label Studio: tasks out (with the agent's predictions as pre-annotations and our labels as annotations), and a
//! Label Studio JSON export back in as labels; pure.
//!
//! ```text
//! tasks.json          [{"data": {"image": "<base>/<sample>.jpg", "sample": "<sha256>", ...},
//!                       "predictions": [{"model_version": "defect@7", "score": .., "result": [...]}],
//!                       "annotations": [{"result": [...]}]}]        (annotations only for labelled samples)
//! label_config.xml    a labelling config matching the result names (`image`, `label` or `choice`)
//! images/<sample>.jpg the images, for serving under the base URL
//! ```
//!
//! Regions are Label Studio's: `rectanglelabels` with `x, y, width, height` in percent of the image (top-left
//! corner) for detectors, `choices` for classifiers. On import, a task names its sample by `data.sample`, else by the
//! file name at the end of `data.image`; its last annotation that was not cancelled is the label.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::annotate::{BoxLabel, Label};
use crate::samples::Task;
use outpost_common::manifest::Sha256Sum;
use outpost_common::protocol::Prediction;

use super::dataset::{Item, tidy};

/// The control names the results and `label_config.xml` share.
pub const IMAGE: &str = "image";
pub const RECTANGLES: &str = "label";
pub const CHOICES: &str = "choice";

/// Pixels as percent of `of`, kept to 6 decimals (under 0.0001 px at 8K).
fn percent(v: f64, of: u32) -> f64 {
    ((v / f64::from(of.max(1)) * 100.0).clamp(0.0, 100.0) * 1e6).round() / 1e6
}

fn rectangle(id: String, class: &str, bbox: &[f32; 4], width: u32, height: u32, score: Option<f32>) -> Value {
    let [x1, y1, x2, y2] = bbox.map(f64::from);
    let mut region = json!({
        "id": id,
        "type": "rectanglelabels",
        "from_name": RECTANGLES,
        "to_name": IMAGE,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": percent(x1, width),
            "y": percent(y1, height),
            "width": percent(x2 - x1, width),
            "height": percent(y2 - y1, height),
            "rotation": 0,
            "rectanglelabels": [class],
        },
    });
    if let (Some(score), Some(map)) = (score, region.as_object_mut()) {
        map.insert("score".into(), json!(tidy(score)));
    }
    region
}

fn choice(id: String, class: &str, score: Option<f32>) -> Value {
    let mut region = json!({
        "id": id,
        "type": "choices",
        "from_name": CHOICES,
        "to_name": IMAGE,
        "value": {"choices": [class]},
    });
    if let (Some(score), Some(map)) = (score, region.as_object_mut()) {
        map.insert("score".into(), json!(tidy(score)));
    }
    region
}

fn label_result(label: &Label, width: u32, height: u32) -> Vec<Value> {
    match label {
        Label::Classify { class } => vec![choice("a0".into(), class, None)],
        Label::Detect { boxes } => boxes
            .iter()
            .enumerate()
            .map(|(i, b)| rectangle(format!("a{i}"), &b.class, &b.bbox, width, height, None))
            .collect(),
    }
}

fn prediction_result(task: Task, predictions: &[Prediction], width: u32, height: u32) -> Vec<Value> {
    match task {
        // A classifier's predictions are its top classes: the first choice is the prediction.
        Task::Classify => predictions
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score))
            .map(|p| vec![choice("p0".into(), &p.label, Some(p.score))])
            .unwrap_or_default(),
        Task::Detect => predictions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.bbox.map(|bbox| rectangle(format!("p{i}"), &p.label, &bbox, width, height, Some(p.score)))
            })
            .collect(),
    }
}

/// One task per item. `base_url` is where `images/` is served from.
pub(crate) fn tasks(items: &[Item], base_url: &str) -> Value {
    let base = base_url.trim_end_matches('/');
    let tasks: Vec<Value> = items
        .iter()
        .map(|item| {
            let record = &item.record;
            let meta = &record.meta;
            let mut prediction = json!({
                "model_version": format!("{}@{}", meta.model.name, meta.model.version),
                "result": prediction_result(record.task(), &meta.predictions, meta.width, meta.height),
            });
            if let (Some(score), Some(map)) = (meta.confidence.headline(), prediction.as_object_mut()) {
                map.insert("score".into(), json!(tidy(score)));
            }
            let mut task = json!({
                "data": {
                    IMAGE: format!("{base}/{}", item.file_name()),
                    "sample": meta.sample.to_string(),
                    "model": meta.model.name,
                    "model_version": meta.model.version,
                    "device": meta.device,
                    "camera": meta.camera,
                    "split": item.split.as_str(),
                },
                "predictions": [prediction],
            });
            if let (Some(label), Some(map)) = (&item.label, task.as_object_mut()) {
                let result = label_result(label, meta.width, meta.height);
                map.insert("annotations".into(), json!([{"result": result, "was_cancelled": false}]));
            }
            task
        })
        .collect();
    Value::Array(tasks)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// A labelling config whose control names match the tasks' results.
pub(crate) fn label_config(task: Task, names: &[String]) -> String {
    let (open, item, close) = match task {
        Task::Detect => {
            (format!("  <RectangleLabels name=\"{RECTANGLES}\" toName=\"{IMAGE}\">"), "Label", "  </RectangleLabels>")
        }
        Task::Classify => {
            (format!("  <Choices name=\"{CHOICES}\" toName=\"{IMAGE}\" choice=\"single\">"), "Choice", "  </Choices>")
        }
    };
    let mut xml = format!("<View>\n  <Image name=\"{IMAGE}\" value=\"${IMAGE}\"/>\n{open}\n");
    for name in names {
        xml.push_str(&format!("    <{item} value=\"{}\"/>\n", xml_escape(name)));
    }
    xml.push_str(close);
    xml.push_str("\n</View>\n");
    xml
}

/// A task of a Label Studio export, as far as an import needs it (everything else is ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct LsTask {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub data: serde_json::Map<String, Value>,
    #[serde(default)]
    pub annotations: Vec<LsAnnotation>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LsAnnotation {
    #[serde(default)]
    pub result: Vec<LsRegion>,
    #[serde(default)]
    pub was_cancelled: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LsRegion {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Deserialize)]
struct RectangleValue {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    #[serde(default)]
    rotation: f64,
    rectanglelabels: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ChoicesValue {
    choices: Vec<String>,
}

impl LsTask {
    /// How the task is named in an import report: its id, else its position.
    pub fn name(&self, position: usize) -> String {
        match &self.id {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.chars().take(80).collect(),
            _ => format!("#{position}"),
        }
    }

    /// The sample the task is about.
    pub fn sample(&self) -> Result<Sha256Sum, String> {
        if let Some(Value::String(s)) = self.data.get("sample") {
            return s.parse();
        }
        let Some(Value::String(url)) = self.data.get(IMAGE) else {
            return Err("the task has neither `data.sample` nor `data.image`".into());
        };
        let path = url.split(['?', '#']).next().unwrap_or_default();
        let file = path.rsplit('/').next().unwrap_or_default();
        let stem = file.split('.').next().unwrap_or_default();
        stem.parse().map_err(|_| format!("`{}` does not name a sample", url.chars().take(120).collect::<String>()))
    }

    /// The last annotation that was not cancelled.
    pub fn annotation(&self) -> Option<&LsAnnotation> {
        self.annotations.iter().rev().find(|a| !a.was_cancelled)
    }
}

/// An annotation's result as a label for a sample of `task`, `width`×`height` pixels. Regions of other types (a
/// second control in the config) are ignored.
pub(crate) fn to_label(annotation: &LsAnnotation, task: Task, width: u32, height: u32) -> Result<Label, String> {
    match task {
        Task::Detect => {
            let mut boxes = Vec::new();
            for region in annotation.result.iter().filter(|r| r.kind == "rectanglelabels") {
                let v: RectangleValue = serde_json::from_value(region.value.clone())
                    .map_err(|e| format!("a rectangle is unreadable: {e}"))?;
                if v.rotation.abs() > 1e-6 {
                    return Err("rotated rectangles cannot be represented".into());
                }
                let [class] = v.rectanglelabels.as_slice() else {
                    return Err(format!("a rectangle has {} labels; exactly one is needed", v.rectanglelabels.len()));
                };
                let px = |pct: f64, of: u32| (pct.clamp(0.0, 100.0) / 100.0 * f64::from(of)) as f32;
                let bbox = [px(v.x, width), px(v.y, height), px(v.x + v.width, width), px(v.y + v.height, height)];
                boxes.push(BoxLabel { class: class.clone(), bbox });
            }
            Ok(Label::Detect { boxes })
        }
        Task::Classify => {
            let mut chosen = Vec::new();
            for region in annotation.result.iter().filter(|r| r.kind == "choices") {
                let v: ChoicesValue =
                    serde_json::from_value(region.value.clone()).map_err(|e| format!("a choice is unreadable: {e}"))?;
                chosen.extend(v.choices);
            }
            match <[String; 1]>::try_from(chosen) {
                Ok([class]) => Ok(Label::Classify { class }),
                Err(list) => Err(format!("{} classes chosen; exactly one is needed", list.len())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotation(result: Value) -> LsAnnotation {
        serde_json::from_value(json!({"result": result})).expect("annotation")
    }

    #[test]
    fn rectangles_convert_from_percent() {
        let a = annotation(json!([
            {"type": "rectanglelabels", "value": {"x": 10, "y": 20, "width": 50, "height": 25, "rectanglelabels": ["dent"]}},
            {"type": "choices", "value": {"choices": ["blurry"]}},
        ]));
        let label = to_label(&a, Task::Detect, 200, 100).expect("label");
        assert_eq!(
            label,
            Label::Detect { boxes: vec![BoxLabel { class: "dent".into(), bbox: [20.0, 20.0, 120.0, 45.0] }] }
        );
    }

    #[test]
    fn unusable_annotations_are_refused_with_a_reason() {
        let check = |result: Value, task: Task, fragment: &str| {
            let err = to_label(&annotation(result), task, 100, 100).expect_err("refused");
            assert!(err.contains(fragment), "`{err}` should mention `{fragment}`");
        };
        check(
            json!([{"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 30, "rectanglelabels": ["a"]}}]),
            Task::Detect,
            "rotated",
        );
        check(
            json!([{"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": []}}]),
            Task::Detect,
            "0 labels",
        );
        check(json!([{"type": "rectanglelabels", "value": {"x": "a"}}]), Task::Detect, "unreadable");
        check(json!([]), Task::Classify, "0 classes");
        check(json!([{"type": "choices", "value": {"choices": ["a", "b"]}}]), Task::Classify, "2 classes");
    }

    #[test]
    fn tasks_name_their_sample_by_field_or_file_name() {
        let sha = Sha256Sum([0xcd; 32]);
        let task = |data: Value| -> LsTask { serde_json::from_value(json!({"data": data})).expect("task") };
        assert_eq!(task(json!({"sample": sha.to_string()})).sample(), Ok(sha));
        assert_eq!(task(json!({"image": format!("https://x/images/{sha}.jpg?token=1")})).sample(), Ok(sha));
        assert!(task(json!({"image": "https://x/images/cat.jpg"})).sample().is_err());
        assert!(task(json!({})).sample().is_err());
    }

    #[test]
    fn the_config_escapes_names() {
        let xml = label_config(Task::Classify, &["a<b".into(), "ok".into()]);
        assert!(
            xml.contains("<Choice value=\"a&lt;b\"/>") && xml.contains("name=\"choice\" toName=\"image\""),
            "{xml}"
        );
    }
}
