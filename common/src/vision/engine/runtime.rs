//! Finding and loading the ONNX Runtime shared library.
//!
//! Design: the library is loaded once per process (ONNX Runtime's API table is global). The lookup order is the one
//! DESIGN.md fixes: an explicit path (config or flag) → `ORT_DYLIB_PATH` → `lib/` next to the executable → the
//! build-time cache the build script provisioned. The first candidate that exists is loaded; if it cannot be loaded,
//! or none exists, the error names every path tried and how to fix it. Nothing here panics: `ort`'s own fallback
//! (which panics when the library is missing) is never reached because no `ort` API is used before [`Runtime::init`]
//! succeeds.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The ONNX Runtime library version this build was provisioned with.
pub const PROVISIONED_VERSION: &str = env!("OUTPOST_ORT_VERSION");
const BUILD_CACHE: &str = env!("OUTPOST_ORT_BUILD_CACHE");

/// Where a candidate library path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibrarySource {
    Explicit,
    Environment,
    NextToExecutable,
    BuildCache,
}

impl std::fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LibrarySource::Explicit => "configured path",
            LibrarySource::Environment => "ORT_DYLIB_PATH",
            LibrarySource::NextToExecutable => "lib/ next to the executable",
            LibrarySource::BuildCache => "build-time cache",
        })
    }
}

const FIX: &str = "fix: run `cargo build` with python3 and pip available (it provisions the library into \
                   target/onnxruntime/), or set ORT_DYLIB_PATH to a libonnxruntime.so of version 1.22 or newer";

/// Why ONNX Runtime could not be made ready.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found; tried: {tried}; {FIX}")]
    NotFound { tried: String },
    #[error("ONNX Runtime library at {path} ({source_kind}) could not be loaded: {reason}; {FIX}")]
    Unloadable { path: PathBuf, source_kind: LibrarySource, reason: String },
    #[error("ONNX Runtime environment could not be created: {0}")]
    Environment(String),
}

/// A loaded ONNX Runtime: the process-wide environment every session is created in.
#[derive(Debug)]
pub struct Runtime {
    pub(crate) env: ort::environment::Environment,
    library: PathBuf,
    source: LibrarySource,
}

static RUNTIME: Mutex<Option<&'static Runtime>> = Mutex::new(None);

impl Runtime {
    /// Loads ONNX Runtime, once per process. Later calls return the same runtime (an explicit path given after the
    /// first successful load is ignored, as the library cannot be swapped in a running process).
    pub fn init(explicit: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
        let mut slot = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(rt) = *slot {
            return Ok(rt);
        }
        let candidates = candidates(explicit, std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
        let (path, source) = pick(&candidates)?;
        let env = ort::init_from(&path)
            .map_err(|e| RuntimeError::Unloadable { path: path.clone(), source_kind: source, reason: e.to_string() })?
            .with_name("outpost")
            .with_telemetry(false)
            .build()
            .map_err(|e| RuntimeError::Environment(e.to_string()))?;
        tracing::debug!(library = %path.display(), source = %source, "ONNX Runtime loaded");
        let rt: &'static Runtime = Box::leak(Box::new(Runtime { env, library: path, source }));
        *slot = Some(rt);
        Ok(rt)
    }

    /// The library file that was loaded.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// How the library was found.
    pub fn source(&self) -> LibrarySource {
        self.source
    }
}

/// The lookup order, with the paths each step names. Pure, for testing.
pub fn candidates(explicit: Option<&Path>, env: Option<PathBuf>) -> Vec<(PathBuf, LibrarySource)> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push((p.to_path_buf(), LibrarySource::Explicit));
    }
    if let Some(p) = env.filter(|p| !p.as_os_str().is_empty()) {
        out.push((p, LibrarySource::Environment));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("lib"))) {
        out.push((dir.join(format!("libonnxruntime.so.{PROVISIONED_VERSION}")), LibrarySource::NextToExecutable));
        out.push((dir.join("libonnxruntime.so"), LibrarySource::NextToExecutable));
    }
    out.push((PathBuf::from(BUILD_CACHE), LibrarySource::BuildCache));
    out
}

/// The first candidate that exists. An explicit or environment path that does not exist is an error of its own:
/// the operator asked for that file, and silently using another would hide the mistake.
fn pick(candidates: &[(PathBuf, LibrarySource)]) -> Result<(PathBuf, LibrarySource), RuntimeError> {
    for (path, source) in candidates {
        if path.is_file() {
            return Ok((path.clone(), *source));
        }
        if matches!(source, LibrarySource::Explicit | LibrarySource::Environment) {
            return Err(RuntimeError::Unloadable {
                path: path.clone(),
                source_kind: *source,
                reason: "no such file".into(),
            });
        }
    }
    let tried: Vec<String> = candidates.iter().map(|(p, s)| format!("{} ({s})", p.display())).collect();
    Err(RuntimeError::NotFound { tried: tried.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order() {
        let got = candidates(Some(Path::new("/opt/ort.so")), Some(PathBuf::from("/env/ort.so")));
        let sources: Vec<LibrarySource> = got.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            sources,
            [
                LibrarySource::Explicit,
                LibrarySource::Environment,
                LibrarySource::NextToExecutable,
                LibrarySource::NextToExecutable,
                LibrarySource::BuildCache
            ]
        );
        assert_eq!(got[0].0, Path::new("/opt/ort.so"));
        // An empty ORT_DYLIB_PATH is the same as none.
        assert_eq!(candidates(None, Some(PathBuf::new()))[0].1, LibrarySource::NextToExecutable);
    }

    #[test]
    fn missing_paths_are_named() {
        let err = pick(&[(PathBuf::from("/nowhere/a.so"), LibrarySource::BuildCache)]).expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("/nowhere/a.so (build-time cache)") && msg.contains("ORT_DYLIB_PATH"), "{msg}");
        let err = pick(&[
            (PathBuf::from("/nowhere/explicit.so"), LibrarySource::Explicit),
            (PathBuf::from(BUILD_CACHE), LibrarySource::BuildCache),
        ])
        .expect_err("explicit path missing");
        assert!(err.to_string().contains("/nowhere/explicit.so (configured path)"), "{err}");
    }
}
