//! ImageNet-style class folders for classifiers; pure.
//!
//! ```text
//! train/<class>/<sample>.jpg
//! val/<class>/<sample>.jpg
//! ```
//!
//! This is what Ultralytics' classification trainer and torchvision's `ImageFolder` read. Both number classes by the
//! sorted folder names of each split separately, and `ImageFolder` refuses empty class folders, so no empty folder
//! is written; a class present in only one split is reported as a warning (its indices would differ between the
//! splits).

use std::collections::BTreeSet;

use crate::annotate::Label;

use super::dataset::{Item, Output};
use super::{ExportError, Split};

/// A class name as a folder name: path separators, NUL and control characters become `_`, and `.`/`..`/empty
/// become `_`-prefixed.
pub(crate) fn folder(name: &str) -> String {
    let cleaned: String = name.chars().map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c }).collect();
    match cleaned.as_str() {
        "" | "." | ".." => format!("_{cleaned}"),
        _ => cleaned,
    }
}

/// The files of an ImageNet-style export; fails when two class names share a folder.
pub(crate) fn plan(items: &[Item], names: &[String], warnings: &mut Vec<String>) -> Result<Vec<Output>, ExportError> {
    let mut folders = std::collections::HashMap::new();
    for name in names {
        if let Some(other) = folders.insert(folder(name), name) {
            return Err(ExportError::Invalid(format!("classes `{other}` and `{name}` would share a folder")));
        }
    }
    let mut out = Vec::with_capacity(items.len());
    let mut present: [BTreeSet<String>; 2] = [BTreeSet::new(), BTreeSet::new()];
    for (index, item) in items.iter().enumerate() {
        let Some(Label::Classify { class }) = &item.label else { continue };
        let dir = folder(class);
        out.push(Output::Image { path: format!("{}/{dir}/{}", item.split.as_str(), item.file_name()), index });
        present[usize::from(item.split == Split::Val)].insert(dir);
    }
    let [train, val] = &present;
    for class in train.symmetric_difference(val) {
        let only = if train.contains(class) { "train" } else { "val" };
        warnings.push(format!("class `{class}` has images in {only} only"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_become_safe_folder_names() {
        let check = |name: &str, expected: &str| assert_eq!(folder(name), expected, "{name:?}");
        check("dent", "dent");
        check("traffic light", "traffic light");
        check("a/b", "a_b");
        check("..", "_..");
        check("", "_");
        check("x\u{0}y", "x_y");
    }
}
