//! Provisions the ONNX Runtime shared library into `target/onnxruntime/<version>/<target>/` so that a fresh clone
//! builds, tests and runs with no manual step. The wheel is pinned by sha256 in `cross/onnxruntime.lock`; the work is
//! done by `cross/provision_ort.py` (pip is the one client that reaches PyPI here). The path of the provisioned
//! library is baked in as `OUTPOST_ORT_BUILD_CACHE`, the last place the run-time lookup tries.
//!
//! Set `OUTPOST_ORT_SKIP=1` to skip provisioning (the run-time lookup then needs `ORT_DYLIB_PATH` or a `lib/` folder
//! next to the executable), or `OUTPOST_ORT_WHEEL=/path/to/wheel` to use a wheel copied in by hand (still hash-checked).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let cross = manifest_dir.join("../cross");
    println!("cargo::rerun-if-changed={}", cross.join("onnxruntime.lock").display());
    println!("cargo::rerun-if-changed={}", cross.join("provision_ort.py").display());
    println!("cargo::rerun-if-env-changed=OUTPOST_ORT_SKIP");
    println!("cargo::rerun-if-env-changed=OUTPOST_ORT_WHEEL");

    let target = env("TARGET");
    let version = lock_version(&cross.join("onnxruntime.lock")).unwrap_or_else(|| "unknown".into());
    let dest = target_dir().join("onnxruntime").join(&version).join(&target);
    let lib = dest.join(format!("libonnxruntime.so.{version}"));
    println!("cargo::rustc-env=OUTPOST_ORT_BUILD_CACHE={}", lib.display());
    println!("cargo::rustc-env=OUTPOST_ORT_VERSION={version}");

    if std::env::var_os("OUTPOST_ORT_SKIP").is_some() {
        return;
    }
    let status = Command::new("python3")
        .arg(cross.join("provision_ort.py"))
        .args(["--target", &target, "--dest"])
        .arg(&dest)
        .status();
    match status {
        Ok(s) if s.success() => {}
        // Not fatal for the build: the binaries still build, and at run time the library lookup reports every path
        // it tried and how to fix it.
        Ok(s) => {
            println!("cargo::warning=ONNX Runtime provisioning failed ({s}); see the output above")
        }
        Err(e) => println!("cargo::warning=ONNX Runtime provisioning needs python3 with pip: {e}"),
    }
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("cargo sets {key} for build scripts"))
}

fn lock_version(lock: &Path) -> Option<String> {
    let text = std::fs::read_to_string(lock).ok()?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find_map(|l| l.strip_prefix("version ").map(|v| v.trim().to_string()))
}

/// The Cargo target directory: `CARGO_TARGET_DIR` when set, otherwise derived from `OUT_DIR`
/// (`<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let out = PathBuf::from(env("OUT_DIR"));
    let build = out
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .expect("OUT_DIR lies under a build/ folder");
    let mut dir = build.parent().and_then(Path::parent).expect("profile folder has a parent");
    if dir.file_name().is_some_and(|n| n.to_string_lossy() == env("TARGET")) {
        dir = dir.parent().expect("target triple folder has a parent");
    }
    dir.to_path_buf()
}
