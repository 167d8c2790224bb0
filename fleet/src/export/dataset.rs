//! What an export contains: the samples, their labels and splits, the class names; and the files a format writer
//! plans (pure: writers return [`Output`]s, `write.rs` puts them on disk).

use std::collections::HashMap;

use crate::annotate::{Label, Queue, StateName};
use crate::samples::{SampleRecord, Task};

use super::{ExportError, ExportQuery, Split};

/// One exported sample.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub record: SampleRecord,
    /// `None` for an unlabelled sample (Label Studio exports with `include_unlabelled`).
    pub label: Option<Label>,
    pub split: Split,
}

impl Item {
    /// `<sha256>.<jpg|png>`: unique, and traceable back to the sample.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.record.sample(), self.record.extension())
    }

    pub fn stem(&self) -> String {
        self.record.sample().to_string()
    }
}

/// A file an export writes, relative to its output folder (`/`-separated, built from ids and sanitised names only).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    Dir(String),
    File {
        path: String,
        bytes: Vec<u8>,
    },
    /// The image of `items[index]`, copied as uploaded (never re-encoded).
    Image {
        path: String,
        index: usize,
    },
}

/// The samples of the query's model to export, in sample-id order: labelled and accepted ones (labels in review
/// wait for their verdict), plus queued and claimed ones when `include_unlabelled` is set.
pub(crate) fn collect(queue: &Queue, query: &ExportQuery) -> Result<Vec<Item>, ExportError> {
    let mut chosen = Vec::new();
    queue.for_each_state(|sample, state| {
        if state.model != query.model {
            return Ok(());
        }
        // Time only matters for leases; any instant tells claimed and queued apart from the rest.
        let label = match state.name(time::OffsetDateTime::UNIX_EPOCH) {
            StateName::Labelled | StateName::Accepted => match state.label {
                Some(record) => Some(record.label),
                None => return Ok(()),
            },
            StateName::Queued | StateName::Claimed if query.include_unlabelled => None,
            _ => return Ok(()),
        };
        chosen.push((sample, label));
        Ok(())
    })?;
    chosen
        .into_iter()
        .map(|(sample, label)| {
            let record = queue.samples().require(&sample)?;
            Ok(Item { split: Split::of(&sample, query.val_ratio), record, label })
        })
        .collect()
}

/// The class names of an export: the query's when given (every label's classes must be among them), else the
/// model's recorded names with any class the labels use but the names lack appended in sorted order.
pub(crate) fn names(
    query: &ExportQuery,
    recorded: Vec<String>,
    items: &[Item],
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, ExportError> {
    let used = {
        let mut used: Vec<&str> = items.iter().filter_map(|i| i.label.as_ref()).flat_map(Label::classes).collect();
        used.sort_unstable();
        used.dedup();
        used
    };
    if let Some(given) = &query.names {
        if let Some(missing) = used.iter().find(|c| !given.iter().any(|n| n == *c)) {
            return Err(ExportError::Invalid(format!(
                "class `{}` is labelled but not in `names`",
                missing.escape_debug()
            )));
        }
        return Ok(given.clone());
    }
    let mut names = recorded;
    for class in used {
        if !names.iter().any(|n| n == class) {
            warnings.push(format!("class `{class}` is not among the model's recorded classes; appended"));
            names.push(class.to_string());
        }
    }
    Ok(names)
}

/// Name → class index.
pub(crate) fn index(names: &[String]) -> HashMap<&str, usize> {
    names.iter().enumerate().rev().map(|(i, n)| (n.as_str(), i)).collect()
}

/// Keeps the items of `task`; refuses when none is left but some were there (a format for the other task).
pub(crate) fn of_task(items: Vec<Item>, task: Task, query: &ExportQuery) -> Result<(Vec<Item>, usize), ExportError> {
    let before = items.len();
    let kept: Vec<Item> = items.into_iter().filter(|i| i.record.task() == task).collect();
    if kept.is_empty() && before > 0 {
        return Err(ExportError::Invalid(format!(
            "{} exports {} data; model `{}` is not a {} model",
            query.format,
            task.as_str(),
            query.model,
            task.as_str()
        )));
    }
    let skipped = before - kept.len();
    Ok((kept, skipped))
}

/// `names` with duplicates refused: exports need a name to mean one class.
pub(crate) fn check_unique(names: &[String]) -> Result<(), ExportError> {
    let mut seen = std::collections::HashSet::new();
    match names.iter().find(|n| !seen.insert(n.as_str())) {
        Some(dup) => Err(ExportError::Invalid(format!("class `{}` appears twice in the names", dup.escape_debug()))),
        None => Ok(()),
    }
}

/// Pretty JSON for a file of an export.
pub(crate) fn json_bytes(value: &serde_json::Value, path: &str) -> Result<Vec<u8>, ExportError> {
    serde_json::to_vec_pretty(value).map_err(|e| ExportError::io(std::path::Path::new(path), std::io::Error::other(e)))
}

/// An `f32` as the `f64` of its shortest decimal form (`0.4`, not `0.4000000059604645`), for JSON outputs.
pub(crate) fn tidy(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_keeps_the_shortest_decimal() {
        assert_eq!(tidy(0.4), 0.4);
        assert_eq!(tidy(60.092163), 60.092163);
        assert!(tidy(f32::NAN).is_nan());
        let names: Vec<String> = vec!["a".into(), "b".into(), "a".into()];
        assert!(check_unique(&names).is_err());
        assert_eq!(index(&names[..2]).get("b"), Some(&1));
    }
}
