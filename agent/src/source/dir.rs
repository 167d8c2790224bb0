//! A folder that a camera fills with image files, typically over FTP.
//!
//! `Design:` the folder is polled (robust on network filesystems, where change notifications are unreliable). A file
//! is handed out once its size and modification time have been stable for the settle time ([`dir_scan::Settle`]),
//! oldest first. Each file is handed out once per run; it is recorded as processed, and kept, moved or deleted, only
//! when the pipeline acknowledges its frame ([`super::Ack`]). The processed set is persisted atomically
//! ([`dir_state`]) and pruned to the files still present, so a restart processes nothing twice that was acknowledged
//! — and everything that was not (at-least-once across crashes).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{After, DirConfig, SourceContext, extension_matches, ms};
use super::dir_scan::{self, Entry, Fingerprint, Settle};
use super::dir_state;
use super::{Ack, AckKey, AckMsg, Backoff, BoxFuture, Frame, FrameSource, Outcome, SourceError};

#[derive(Debug, Clone)]
enum Disposal {
    Keep,
    Move(PathBuf),
    Delete,
}

/// See the module documentation.
#[derive(Debug)]
pub struct DirSource {
    folder: PathBuf,
    extensions: Vec<String>,
    disposal: Disposal,
    poll: Duration,
    settle_time: Duration,
    max_frame_bytes: usize,
    state_path: PathBuf,
    processed: HashMap<String, Fingerprint>,
    dirty: bool,
    in_flight: HashMap<String, Fingerprint>,
    settle: Settle,
    queue: VecDeque<Entry>,
    next_scan: Instant,
    backoff: Backoff,
    ack_tx: mpsc::UnboundedSender<AckMsg>,
    ack_rx: mpsc::UnboundedReceiver<AckMsg>,
    seq: u64,
}

impl DirSource {
    /// Validates the configuration and loads the processed set. Blocking (small file reads).
    pub fn new(c: &DirConfig, ctx: &SourceContext) -> Result<Self, SourceError> {
        let err = |r: String| SourceError::config("dir", r);
        if !c.path.is_dir() {
            return Err(err(format!("{} is not a folder", c.path.display())));
        }
        if c.extensions.iter().any(|e| e.trim_start_matches('.').is_empty()) {
            return Err(err("extensions must not be empty strings".into()));
        }
        if c.poll_interval_ms == 0 {
            return Err(err("poll_interval_ms must be at least 1".into()));
        }
        if c.max_frame_bytes == 0 {
            return Err(err("max_frame_bytes must be at least 1".into()));
        }
        let disposal = match (c.after, &c.move_to) {
            (After::Move, Some(to)) => {
                std::fs::create_dir_all(to).map_err(|e| SourceError::io(to, e))?;
                if same_dir(to, &c.path) {
                    return Err(err("move_to must be another folder than path".into()));
                }
                Disposal::Move(to.clone())
            }
            (After::Move, None) => return Err(err("after = \"move\" needs move_to".into())),
            (_, Some(_)) => return Err(err("move_to is only used with after = \"move\"".into())),
            (After::Keep, None) => Disposal::Keep,
            (After::Delete, None) => Disposal::Delete,
        };
        let state_path = dir_state::path_for(&ctx.state_dir, &ctx.camera);
        let processed = dir_state::load(&state_path, &c.path)?;
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let poll = ms(c.poll_interval_ms);
        Ok(Self {
            folder: c.path.clone(),
            extensions: c.extensions.clone(),
            disposal,
            poll,
            settle_time: ms(c.settle_ms),
            max_frame_bytes: c.max_frame_bytes,
            state_path,
            processed,
            dirty: false,
            in_flight: HashMap::new(),
            settle: Settle::default(),
            queue: VecDeque::new(),
            next_scan: Instant::now(),
            backoff: Backoff::new(poll, Duration::from_secs(30)),
            ack_tx,
            ack_rx,
            seq: 0,
        })
    }

    async fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            while let Ok(msg) = self.ack_rx.try_recv() {
                self.handle_ack(msg).await;
            }
            self.persist().await?;
            if let Some(entry) = self.queue.front().cloned() {
                let read = self.read(&entry).await;
                self.queue.pop_front();
                match read {
                    Ok(Some(frame)) => return Ok(Some(frame)),
                    Ok(None) => continue,
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= self.next_scan {
                self.scan().await?;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep_until(self.next_scan) => {}
                Some(msg) = self.ack_rx.recv() => self.handle_ack(msg).await,
            }
        }
    }

    /// Lists the folder and queues the files that have settled.
    async fn scan(&mut self) -> Result<(), SourceError> {
        let folder = self.folder.clone();
        let extensions = self.extensions.clone();
        let listing = tokio::task::spawn_blocking(move || list(&folder, &extensions))
            .await
            .unwrap_or_else(|e| Err(SourceError::io(&self.folder, io::Error::other(e))));
        let listing = match listing {
            Ok(l) => l,
            Err(e) => {
                self.next_scan = Instant::now() + self.backoff.fail();
                return Err(e);
            }
        };
        self.backoff.succeed();
        self.next_scan = Instant::now() + self.poll;
        if dir_scan::prune(&mut self.processed, &listing) > 0 {
            self.dirty = true;
        }
        let candidates: Vec<Entry> = listing
            .into_iter()
            .filter(|e| self.processed.get(&e.name) != Some(&e.fp) && !self.in_flight.contains_key(&e.name))
            .collect();
        let ready = self.settle.observe(candidates, Instant::now().into_std(), self.settle_time);
        if !ready.is_empty() {
            tracing::debug!(folder = %self.folder.display(), ready = ready.len(), waiting = self.settle.waiting(),
                "files ready");
        }
        self.queue.extend(ready);
        Ok(())
    }

    /// Reads a settled file. `Ok(None)` when it vanished or changed since it settled (it is then seen afresh).
    async fn read(&mut self, entry: &Entry) -> Result<Option<Frame>, SourceError> {
        let path = self.folder.join(&entry.name);
        if entry.fp.len > self.max_frame_bytes as u64 {
            self.dispose(entry.clone(), Outcome::Rejected).await;
            return Err(SourceError::TooLarge { origin: path.display().to_string(), limit: self.max_frame_bytes });
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                // An unreadable file (permissions) would otherwise fail again on every scan.
                self.dispose(entry.clone(), Outcome::Rejected).await;
                return Err(SourceError::io(path, e));
            }
        };
        if bytes.len() as u64 != entry.fp.len {
            tracing::debug!(file = %entry.name, "file changed after it settled; waiting again");
            return Ok(None);
        }
        self.in_flight.insert(entry.name.clone(), entry.fp);
        let captured_at = UNIX_EPOCH + Duration::from_nanos(entry.fp.mtime_ns);
        let ack = Ack::new(AckKey { name: entry.name.clone(), fingerprint: entry.fp }, self.ack_tx.clone());
        let frame = Frame::new(Bytes::from(bytes), captured_at, entry.name.clone(), self.seq).with_ack(ack);
        self.seq += 1;
        Ok(Some(frame))
    }

    async fn handle_ack(&mut self, msg: AckMsg) {
        match msg {
            AckMsg::Released(key) => {
                tracing::debug!(file = %key.name, "frame released without acknowledgement; will be read again");
                self.in_flight.remove(&key.name);
            }
            AckMsg::Done(key, outcome) => {
                self.in_flight.remove(&key.name);
                self.dispose(Entry { name: key.name, fp: key.fingerprint }, outcome).await;
            }
        }
    }

    /// Keeps (and remembers), moves or deletes a processed file. A file that cannot be moved or deleted is
    /// remembered instead, so it is not processed again.
    async fn dispose(&mut self, entry: Entry, outcome: Outcome) {
        let from = self.folder.join(&entry.name);
        let result = match &self.disposal {
            Disposal::Keep => {
                self.processed.insert(entry.name, entry.fp);
                self.dirty = true;
                return;
            }
            Disposal::Move(to) => move_file(&from, &to.join(&entry.name)).await,
            Disposal::Delete => match tokio::fs::remove_file(&from).await {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        match result {
            Ok(()) => tracing::debug!(file = %entry.name, ?outcome, "file disposed of"),
            Err(e) => {
                tracing::warn!(file = %from.display(), error = %e, "could not move or delete a processed file; \
                    remembering it as processed instead");
                self.processed.insert(entry.name, entry.fp);
                self.dirty = true;
            }
        }
    }

    async fn persist(&mut self) -> Result<(), SourceError> {
        if !self.dirty {
            return Ok(());
        }
        let (path, folder, processed) = (self.state_path.clone(), self.folder.clone(), self.processed.clone());
        tokio::task::spawn_blocking(move || dir_state::save(&path, &folder, &processed))
            .await
            .unwrap_or_else(|e| Err(SourceError::io(&self.state_path, io::Error::other(e))))?;
        self.dirty = false;
        Ok(())
    }

    async fn close_inner(&mut self) -> Result<(), SourceError> {
        while let Ok(msg) = self.ack_rx.try_recv() {
            self.handle_ack(msg).await;
        }
        self.persist().await
    }
}

impl FrameSource for DirSource {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Frame>, SourceError>> {
        Box::pin(self.next_frame())
    }

    fn is_live(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("dir {}", self.folder.display())
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(self.close_inner())
    }
}

/// The folder's regular files that are candidates: not hidden, with an accepted extension, UTF-8 names.
fn list(folder: &Path, extensions: &[String]) -> Result<Vec<Entry>, SourceError> {
    let read = std::fs::read_dir(folder).map_err(|e| SourceError::io(folder, e))?;
    let mut entries = Vec::new();
    for item in read {
        let item = item.map_err(|e| SourceError::io(folder, e))?;
        let Ok(name) = item.file_name().into_string() else { continue };
        if dir_scan::is_hidden(&name) || !extension_matches(extensions, &name) {
            continue;
        }
        // Follows symbolic links; a file that vanished since the listing is simply skipped.
        let Ok(meta) = std::fs::metadata(item.path()) else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        entries.push(Entry { name, fp: Fingerprint { len: meta.len(), mtime_ns } });
    }
    Ok(entries)
}

/// Renames, or copies and removes when the target is on another filesystem.
async fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    match tokio::fs::rename(from, to).await {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            tokio::fs::copy(from, to).await?;
            tokio::fs::remove_file(from).await
        }
        r => r,
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
