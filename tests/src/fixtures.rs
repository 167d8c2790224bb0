//! The committed fixtures every end-to-end test uses: the defect detector from the zoo and its photos.

use std::path::PathBuf;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The defect detector from the zoo: small (320 px) and quick.
pub fn defect_model() -> PathBuf {
    root().join("models/zoo/defect-yolo11n-320.onnx")
}

/// The bundled defect photos, sorted by name: `val` (80, normal line) or `drift` (40, changed lighting).
pub fn defect_images(set: &str) -> Vec<PathBuf> {
    let dir = root().join(format!("tests/fixtures/images/defect-{set}/images"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
        .collect();
    files.sort();
    files
}
