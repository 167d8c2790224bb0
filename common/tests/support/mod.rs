//! Fixtures shared by the manifest and protocol tests: test keys and the reference manifest.

use outpost_common::manifest::{self, Manifest, SecretKey, Sha256Sum};
use outpost_common::vision::spec::{ColorOrder, InputSpec, Layout, Normalization, ResizeMode, Task};
use time::macros::datetime;

/// The device family the reference manifest is built for.
pub const FAMILY: &str = "x86_64-cpu";

/// TEST-ONLY signing keys from fixed seeds: public in this file, never to be trusted by a real device.
pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

/// The reference manifest: the `defect` detector v7 (320×320 letterbox, three labels) for `artifact`, without a
/// confidence baseline.
pub fn manifest_for(artifact: &[u8]) -> Manifest {
    Manifest {
        schema: manifest::MANIFEST_SCHEMA,
        name: "defect".into(),
        version: 7,
        label: Some("2.1.0".into()),
        artifact: manifest::Artifact { sha256: Sha256Sum::of(artifact), length: artifact.len() as u64 },
        task: Task::Detect,
        input: InputSpec {
            width: 320,
            height: 320,
            layout: Layout::Nchw,
            color: ColorOrder::Rgb,
            resize: ResizeMode::Letterbox { pad: 114 },
            normalization: Normalization::UNIT,
        },
        labels: vec!["scratch".into(), "dent".into(), "stain".into()],
        family: Some(FAMILY.into()),
        created_at: datetime!(2026-11-20 12:00:00 UTC),
        expires_at: datetime!(2027-02-18 12:00:00 UTC),
        min_version: Some(5),
        baseline: None,
    }
}
