//! Putting an export on disk: built in a hidden sibling folder and renamed into place last, so a failed export
//! leaves no half dataset where a trainer would find it.

use std::path::{Path, PathBuf};

use super::ExportError;
use super::dataset::{Item, Output};
use crate::samples::Samples;

#[derive(Debug)]
pub(crate) struct Staging {
    staging: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staging {
    /// Prepares to write `out`, which must not exist or be an empty folder.
    pub fn create(out: &Path) -> Result<Staging, ExportError> {
        match std::fs::read_dir(out).map(|mut entries| entries.next().is_none()) {
            Ok(true) => {}
            Ok(false) => return Err(ExportError::OutputNotEmpty(out.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) if out.exists() => return Err(ExportError::OutputNotEmpty(out.to_path_buf())),
            Err(e) => return Err(ExportError::io(out, e)),
        }
        let name = out
            .file_name()
            .ok_or_else(|| ExportError::Invalid(format!("{} does not name a folder", out.display())))?
            .to_string_lossy()
            .to_string();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| ExportError::io(&parent, e))?;
        let parent = std::fs::canonicalize(&parent).map_err(|e| ExportError::io(&parent, e))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| ExportError::io(&staging, e))?;
        }
        std::fs::create_dir(&staging).map_err(|e| ExportError::io(&staging, e))?;
        Ok(Staging { staging, target: parent.join(name), committed: false })
    }

    /// The absolute path the export will have.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes every output; images are read from the object store one at a time.
    pub async fn write_all(&self, outputs: &[Output], items: &[Item], samples: &Samples) -> Result<(), ExportError> {
        for output in outputs {
            match output {
                Output::Dir(path) => {
                    let dir = self.staging.join(path);
                    tokio::fs::create_dir_all(&dir).await.map_err(|e| ExportError::io(&dir, e))?;
                }
                Output::File { path, bytes } => self.write(path, bytes).await?,
                Output::Image { path, index } => {
                    let Some(item) = items.get(*index) else { continue };
                    let image = samples.image_of(&item.record).await?;
                    self.write(path, &image.bytes).await?;
                }
            }
        }
        Ok(())
    }

    async fn write(&self, relative: &str, bytes: &[u8]) -> Result<(), ExportError> {
        let path = self.staging.join(relative);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| ExportError::io(dir, e))?;
        }
        tokio::fs::write(&path, bytes).await.map_err(|e| ExportError::io(&path, e))
    }

    /// Moves the finished export into place.
    pub fn commit(mut self) -> Result<PathBuf, ExportError> {
        if self.target.is_dir() {
            // Checked empty at the start; `remove_dir` refuses if something appeared since.
            std::fs::remove_dir(&self.target).map_err(|_| ExportError::OutputNotEmpty(self.target.clone()))?;
        }
        std::fs::rename(&self.staging, &self.target).map_err(|e| ExportError::io(&self.target, e))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}
