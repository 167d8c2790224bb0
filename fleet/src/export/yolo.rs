//! Ultralytics YOLO detection datasets; pure.
//!
//! ```text
//! data.yaml                  path (absolute), train, val, nc, names
//! images/{train,val}/<sample>.jpg
//! labels/{train,val}/<sample>.txt   one line per box: `class cx cy w h`, normalised to 0..1
//! ```
//!
//! Every image has a label file; an image labelled with no boxes has an empty one (a background image). `path`
//! is absolute because Ultralytics resolves a relative `path` against its own datasets folder, not the YAML's.
//! Strings in `data.yaml` are written as JSON strings, which are valid YAML double-quoted scalars.

use std::collections::HashMap;
use std::path::Path;

use crate::annotate::Label;

use super::Split;
use super::dataset::{Item, Output};

/// One label line: the box `[x1, y1, x2, y2]` in pixels of a `width`×`height` image, as `class cx cy w h`.
pub(crate) fn line(class: usize, bbox: &[f32; 4], width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    let [x1, y1, x2, y2] = bbox.map(f64::from);
    let unit = |v: f64| v.clamp(0.0, 1.0);
    let (cx, cy) = (unit((x1 + x2) / 2.0 / w), unit((y1 + y2) / 2.0 / h));
    let (bw, bh) = (unit((x2 - x1) / w), unit((y2 - y1) / h));
    format!("{class} {cx:.6} {cy:.6} {bw:.6} {bh:.6}")
}

pub(crate) fn data_yaml(root: &Path, names: &[String]) -> String {
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut yaml = format!(
        "# Written by outpost samples export (YOLO).\npath: {}\ntrain: images/train\nval: images/val\nnc: {}\nnames:\n",
        quote(&root.to_string_lossy()),
        names.len()
    );
    for (i, name) in names.iter().enumerate() {
        yaml.push_str(&format!("  {i}: {}\n", quote(name)));
    }
    yaml
}

/// The files of a YOLO export rooted at `root` (its final absolute path). Returns the outputs and the box count.
pub(crate) fn plan(
    items: &[Item],
    names: &[String],
    classes: &HashMap<&str, usize>,
    root: &Path,
) -> (Vec<Output>, usize) {
    let mut out = Vec::with_capacity(items.len() * 2 + 5);
    for split in [Split::Train, Split::Val] {
        out.push(Output::Dir(format!("images/{}", split.as_str())));
        out.push(Output::Dir(format!("labels/{}", split.as_str())));
    }
    let mut boxes = 0;
    for (index, item) in items.iter().enumerate() {
        let Some(Label::Detect { boxes: list }) = &item.label else { continue };
        let split = item.split.as_str();
        let (w, h) = (item.record.meta.width, item.record.meta.height);
        let mut text = String::new();
        for b in list {
            // `names` holds every labelled class (checked by the caller); a miss would be a bug, not an input.
            let Some(&class) = classes.get(b.class.as_str()) else { continue };
            text.push_str(&line(class, &b.bbox, w, h));
            text.push('\n');
            boxes += 1;
        }
        out.push(Output::Image { path: format!("images/{split}/{}", item.file_name()), index });
        out.push(Output::File { path: format!("labels/{split}/{}.txt", item.stem()), bytes: text.into_bytes() });
    }
    out.push(Output::File { path: "data.yaml".into(), bytes: data_yaml(root, names).into_bytes() });
    (out, boxes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_normalised_centre_and_size() {
        let check = |bbox: [f32; 4], expected: &str| assert_eq!(line(2, &bbox, 200, 100), expected);
        check([0.0, 0.0, 200.0, 100.0], "2 0.500000 0.500000 1.000000 1.000000");
        check([50.0, 25.0, 150.0, 75.0], "2 0.500000 0.500000 0.500000 0.500000");
        check([10.0, 10.0, 30.0, 20.0], "2 0.100000 0.150000 0.100000 0.100000");
    }

    #[test]
    fn data_yaml_quotes_what_it_must() {
        let yaml = data_yaml(Path::new("/data/out"), &["scratch".into(), "a: \"b\" # c".into()]);
        assert_eq!(
            yaml,
            "# Written by outpost samples export (YOLO).\npath: \"/data/out\"\ntrain: images/train\nval: images/val\n\
             nc: 2\nnames:\n  0: \"scratch\"\n  1: \"a: \\\"b\\\" # c\"\n"
        );
    }
}
