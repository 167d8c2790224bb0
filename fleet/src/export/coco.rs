//! COCO detection JSON; pure.
//!
//! ```text
//! images/{train,val}/<sample>.jpg
//! annotations/instances_{train,val}.json   images, annotations (bbox [x, y, w, h] in pixels, area), categories
//! ```
//!
//! Category ids are the class index + 1 (COCO keeps 0 for the background); image and annotation ids count from 1
//! across both splits, in sample-id order, so two exports of the same data are byte-identical.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::annotate::Label;

use super::dataset::{Item, Output, json_bytes, tidy};
use super::{ExportError, Split};

/// The COCO document of one split.
pub(crate) fn document(
    items: &[(usize, &Item)],
    names: &[String],
    classes: &HashMap<&str, usize>,
    description: &str,
    next_annotation: &mut u64,
) -> (Value, usize) {
    let mut images = Vec::with_capacity(items.len());
    let mut annotations = Vec::new();
    for (image_id, item) in items {
        let meta = &item.record.meta;
        images.push(json!({
            "id": image_id,
            "file_name": item.file_name(),
            "width": meta.width,
            "height": meta.height,
        }));
        let Some(Label::Detect { boxes }) = &item.label else { continue };
        for b in boxes {
            let Some(&class) = classes.get(b.class.as_str()) else { continue };
            let [x1, y1, x2, y2] = b.bbox;
            let (x, y, w, h) = (tidy(x1), tidy(y1), tidy(x2 - x1), tidy(y2 - y1));
            annotations.push(json!({
                "id": *next_annotation,
                "image_id": image_id,
                "category_id": class + 1,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "segmentation": [],
            }));
            *next_annotation += 1;
        }
    }
    let categories: Vec<Value> =
        names.iter().enumerate().map(|(i, n)| json!({"id": i + 1, "name": n, "supercategory": "none"})).collect();
    let boxes = annotations.len();
    let doc = json!({
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    });
    (doc, boxes)
}

/// The files of a COCO export. Returns the outputs and the box count.
pub(crate) fn plan(
    items: &[Item],
    names: &[String],
    classes: &HashMap<&str, usize>,
    model: &str,
) -> Result<(Vec<Output>, usize), ExportError> {
    let mut out = Vec::with_capacity(items.len() + 4);
    let description = format!("Outpost samples of model `{model}`");
    let mut next_annotation = 1u64;
    let mut boxes = 0;
    let mut image_id = 0usize;
    for split in [Split::Train, Split::Val] {
        out.push(Output::Dir(format!("images/{}", split.as_str())));
        let mut members = Vec::new();
        for (index, item) in items.iter().enumerate().filter(|(_, i)| i.split == split) {
            image_id += 1;
            members.push((image_id, item));
            out.push(Output::Image { path: format!("images/{}/{}", split.as_str(), item.file_name()), index });
        }
        let (doc, n) = document(&members, names, classes, &description, &mut next_annotation);
        boxes += n;
        let path = format!("annotations/instances_{}.json", split.as_str());
        out.push(Output::File { bytes: json_bytes(&doc, &path)?, path });
    }
    Ok((out, boxes))
}
