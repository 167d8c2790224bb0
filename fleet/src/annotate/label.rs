//! Labels: what an annotator submits, checked against the image and the model's classes; pure.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::samples::Task;

/// Most boxes one label may carry.
pub const MAX_BOXES: usize = 1000;

/// A label as submitted: one class for a classifier's sample, boxes with classes for a detector's.
///
/// ```json
/// {"kind": "classify", "class": "dent"}
/// {"kind": "detect", "boxes": [{"class": "scratch", "bbox": [12.0, 40.5, 88.0, 61.0]}]}
/// ```
///
/// Classes are named, not numbered: names survive a model version that reorders or adds classes. An empty `boxes`
/// is a valid detector label (the image shows nothing to detect).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Label {
    Classify { class: String },
    Detect { boxes: Vec<BoxLabel> },
}

/// One labelled box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxLabel {
    pub class: String,
    /// `[x1, y1, x2, y2]` in image pixels, `0 <= x1 < x2 <= width`, `0 <= y1 < y2 <= height`.
    pub bbox: [f32; 4],
}

/// Where a label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    /// Submitted by the lease holder.
    Annotator,
    /// Imported from an outside tool (a Label Studio export).
    Import,
}

/// A label as kept: who gave it, when, and against which model version's classes it was checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRecord {
    pub label: Label,
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub source: LabelSource,
}

impl Label {
    pub fn task(&self) -> Task {
        match self {
            Label::Classify { .. } => Task::Classify,
            Label::Detect { .. } => Task::Detect,
        }
    }

    /// The class names this label uses, in order of appearance.
    pub fn classes(&self) -> Vec<&str> {
        match self {
            Label::Classify { class } => vec![class.as_str()],
            Label::Detect { boxes } => boxes.iter().map(|b| b.class.as_str()).collect(),
        }
    }

    /// Checks the label against the sample's task and size and the model's class names.
    pub fn validate(&self, task: Task, width: u32, height: u32, names: &[String]) -> Result<(), String> {
        if self.task() != task {
            return Err(format!("a {} label for a {} model's sample", self.task().as_str(), task.as_str()));
        }
        let known = |class: &str| {
            if names.iter().any(|n| n == class) {
                Ok(())
            } else {
                Err(format!("class `{}` is not one of the model's classes", class.escape_debug()))
            }
        };
        match self {
            Label::Classify { class } => known(class),
            Label::Detect { boxes } => {
                if boxes.len() > MAX_BOXES {
                    return Err(format!("{} boxes; at most {MAX_BOXES}", boxes.len()));
                }
                boxes.iter().enumerate().try_for_each(|(i, b)| {
                    known(&b.class)?;
                    check_box(&b.bbox, width, height).map_err(|e| format!("box {i}: {e}"))
                })
            }
        }
    }
}

fn check_box(bbox: &[f32; 4], width: u32, height: u32) -> Result<(), String> {
    let [x1, y1, x2, y2] = *bbox;
    if !bbox.iter().all(|v| v.is_finite()) {
        return Err("coordinates must be finite numbers".into());
    }
    let (w, h) = (width as f32, height as f32);
    if !(0.0 <= x1 && x1 < x2 && x2 <= w && 0.0 <= y1 && y1 < y2 && y2 <= h) {
        return Err(format!("[{x1}, {y1}, {x2}, {y2}] is not a box inside the {width}×{height} image"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["scratch".into(), "dent".into()]
    }

    fn boxes(list: &[(&str, [f32; 4])]) -> Label {
        Label::Detect { boxes: list.iter().map(|(c, b)| BoxLabel { class: (*c).into(), bbox: *b }).collect() }
    }

    fn check(label: Label, task: Task, expected: Result<(), &str>) {
        let got = label.validate(task, 320, 240, &names());
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(fragment)) => assert!(e.contains(fragment), "`{e}` should mention `{fragment}`"),
            (got, expected) => panic!("{label:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn labels_are_checked_against_task_size_and_classes() {
        use Task::*;
        check(Label::Classify { class: "dent".into() }, Classify, Ok(()));
        check(Label::Classify { class: "hole".into() }, Classify, Err("`hole`"));
        check(Label::Classify { class: "dent".into() }, Detect, Err("classify label for a detect"));
        check(boxes(&[]), Detect, Ok(()));
        check(boxes(&[("scratch", [0.0, 0.0, 320.0, 240.0])]), Detect, Ok(()));
        check(boxes(&[("scratch", [10.0, 10.0, 20.0, 20.0]), ("hole", [1.0, 1.0, 2.0, 2.0])]), Detect, Err("`hole`"));
        check(boxes(&[("dent", [10.0, 10.0, 321.0, 20.0])]), Detect, Err("box 0"));
        check(boxes(&[("dent", [10.0, 10.0, 10.0, 20.0])]), Detect, Err("not a box"));
        check(boxes(&[("dent", [20.0, 10.0, 10.0, 20.0])]), Detect, Err("not a box"));
        check(boxes(&[("dent", [-1.0, 10.0, 10.0, 20.0])]), Detect, Err("not a box"));
        check(boxes(&[("dent", [f32::NAN, 10.0, 10.0, 20.0])]), Detect, Err("finite"));
        check(boxes(&[("dent", [0.0, 0.0, 1.0, 1.0]); MAX_BOXES + 1]), Detect, Err("at most"));
        check(boxes(&[("dent", [1.0, 1.0, 2.0, 2.0])]), Classify, Err("detect label"));
    }

    #[test]
    fn the_wire_form_is_strict() {
        let parsed: Label =
            serde_json::from_str(r#"{"kind":"detect","boxes":[{"class":"dent","bbox":[1,2,3,4]}]}"#).expect("parses");
        assert_eq!(parsed, boxes(&[("dent", [1.0, 2.0, 3.0, 4.0])]));
        for bad in [
            r#"{"kind":"classify","class":"dent","extra":1}"#,
            r#"{"kind":"detect","boxes":[{"class":"dent","bbox":[1,2,3]}]}"#,
            r#"{"kind":"segment"}"#,
            r#"{"class":"dent"}"#,
        ] {
            assert!(serde_json::from_str::<Label>(bad).is_err(), "{bad}");
        }
    }
}
