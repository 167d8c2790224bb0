//! An incremental parser for `multipart/x-mixed-replace` (Motion JPEG over HTTP). Pure: feed it byte chunks as they
//! arrive with [`MultipartParser::push`], take complete parts out with [`MultipartParser::next_event`].
//!
//! `Design:` cameras bend the multipart rules, so the parser is lenient where they differ and strict where memory is
//! at stake:
//! - the boundary is matched without its leading dashes, at the start of a line, with any number of dashes before it:
//!   `boundary=foo` on the wire as `--foo` (the standard), `foo` or `----foo`, and `boundary=--foo` sent as `--foo`
//!   (a common quirk) all work;
//! - a part with `Content-Length` is read by count (its bytes may contain anything); without one, it ends at the
//!   next boundary line (the CRLF before the boundary belongs to the boundary). Bytes between a counted body and the
//!   next boundary are skipped, which resynchronises on cameras that send a wrong length;
//! - a part whose headers are missing and which starts straight with a JPEG start-of-image marker is a body;
//! - a part larger than the cap is skipped without being buffered ([`Event::Oversized`]) and parsing resumes at the
//!   next boundary; header blocks are capped too ([`Event::Malformed`]).

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

/// The most header bytes one part may have.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A boundary line's text after the boundary itself (`--`, transport padding) longer than this is not a boundary.
const MAX_BOUNDARY_TAIL: usize = 256;

/// What the parser found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// One complete part's body (a JPEG image, normally).
    Part(Bytes),
    /// A part larger than the cap was skipped.
    Oversized,
    /// A part's headers were unusable (too long); it was skipped.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for a boundary line; whatever comes before it is preamble or garbage.
    Seek,
    /// Reading header lines; `len` is the Content-Length seen so far, `bytes` the header bytes read.
    Headers { len: Option<usize>, bytes: usize },
    /// Reading a body, by count or up to the next boundary.
    Body(Option<usize>),
    /// Dropping the given number of bytes of an oversized counted body.
    Discard(usize),
}

/// See the module documentation.
#[derive(Debug)]
pub struct MultipartParser {
    core: Vec<u8>,
    max_part: usize,
    buf: BytesMut,
    /// The byte just before `buf[0]`; `None` at the start of the stream, which counts as the start of a line.
    prev: Option<u8>,
    /// Where the next boundary search starts; bytes before it were already searched.
    scan_from: usize,
    state: State,
}

enum Search {
    /// A boundary line from `start` (its first dash) to `end` (after its newline); `close` for `--boundary--`.
    Line {
        start: usize,
        end: usize,
        close: bool,
    },
    /// A boundary may begin at this offset, but its line is not complete yet.
    Partial(usize),
    None,
}

impl MultipartParser {
    /// `boundary` as given in the `Content-Type` header (leading dashes are ignored); `max_part` caps one body.
    /// `None` if the boundary is empty once its dashes are removed.
    pub fn new(boundary: &str, max_part: usize) -> Option<Self> {
        let core = boundary.trim().trim_start_matches('-');
        if core.is_empty() {
            return None;
        }
        let core = core.as_bytes().to_vec();
        Some(Self { core, max_part, buf: BytesMut::new(), prev: None, scan_from: 0, state: State::Seek })
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes held, waiting for the rest of a part (bounded by the cap plus a boundary's length).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.state {
                State::Seek => match self.search() {
                    Search::Line { end, close, .. } => {
                        self.consume(end);
                        if !close {
                            self.state = State::Headers { len: None, bytes: 0 };
                        }
                    }
                    Search::Partial(start) => {
                        self.consume(start);
                        return None;
                    }
                    Search::None => {
                        self.keep_tail();
                        return None;
                    }
                },
                State::Headers { len, bytes } => {
                    if self.buf.starts_with(&[0xFF, 0xD8]) {
                        self.state = State::Body(None);
                        continue;
                    }
                    let Some(nl) = memchr::memchr(b'\n', &self.buf) else {
                        if bytes + self.buf.len() > MAX_HEADER_BYTES {
                            self.state = State::Seek;
                            return Some(Event::Malformed);
                        }
                        return None;
                    };
                    let line = trim_cr(&self.buf[..nl]);
                    let next_len = if line.is_empty() { None } else { header_len(line).or(len) };
                    let empty = line.is_empty();
                    self.consume(nl + 1);
                    let bytes = bytes + nl + 1;
                    if empty {
                        self.state = State::Body(len);
                    } else if bytes > MAX_HEADER_BYTES {
                        self.state = State::Seek;
                        return Some(Event::Malformed);
                    } else {
                        self.state = State::Headers { len: next_len, bytes };
                    }
                }
                State::Body(Some(n)) => {
                    if n > self.max_part {
                        self.state = State::Discard(n);
                        return Some(Event::Oversized);
                    }
                    if self.buf.len() < n {
                        return None;
                    }
                    let body = self.buf.split_to(n).freeze();
                    if let Some(&last) = body.last() {
                        self.prev = Some(last);
                    }
                    self.state = State::Seek;
                    if !body.is_empty() {
                        return Some(Event::Part(body));
                    }
                }
                State::Body(None) => match self.search() {
                    Search::Line { start, end, close } => {
                        let body_end = strip_line_end(&self.buf[..start]);
                        let body = self.buf.split_to(body_end).freeze();
                        self.consume(end - body_end);
                        self.state = if close { State::Seek } else { State::Headers { len: None, bytes: 0 } };
                        if body.len() > self.max_part {
                            return Some(Event::Oversized);
                        }
                        if !body.is_empty() {
                            return Some(Event::Part(body));
                        }
                    }
                    Search::Partial(start) => {
                        self.scan_from = start;
                        if start > self.max_part.saturating_add(2) {
                            self.state = State::Seek;
                            return Some(Event::Oversized);
                        }
                        return None;
                    }
                    Search::None => {
                        self.scan_from = self.buf.len().saturating_sub(self.core.len());
                        if self.buf.len() > self.max_part.saturating_add(self.core.len() + 8) {
                            self.state = State::Seek;
                            return Some(Event::Oversized);
                        }
                        return None;
                    }
                },
                State::Discard(n) => {
                    let d = n.min(self.buf.len());
                    self.consume(d);
                    if d == n {
                        self.state = State::Seek;
                    } else {
                        self.state = State::Discard(n - d);
                        return None;
                    }
                }
            }
        }
    }

    /// Drops `n` bytes from the front, remembering the last one.
    fn consume(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.prev = Some(self.buf[n - 1]);
        self.buf.advance(n);
        self.scan_from = 0;
    }

    /// In `Seek`, nothing before the last few bytes can still start a boundary: drop the rest.
    fn keep_tail(&mut self) {
        let keep = self.core.len() + 4;
        let drop = self.buf.len().saturating_sub(keep);
        self.consume(drop);
    }

    fn search(&self) -> Search {
        let buf = &self.buf[..];
        let mut pos = self.scan_from.min(buf.len());
        while let Some(found) = memmem::find(&buf[pos..], &self.core) {
            let i = pos + found;
            pos = i + 1;
            let mut start = i;
            while start > 0 && buf[start - 1] == b'-' {
                start -= 1;
            }
            let line_start = match start.checked_sub(1) {
                Some(b) => buf[b] == b'\n',
                // Dashes at the very front may continue ones already dropped (`prev == '-'`).
                None => matches!(self.prev, None | Some(b'\n') | Some(b'-')),
            };
            if !line_start {
                continue;
            }
            let after = i + self.core.len();
            let Some(&next) = buf.get(after) else { return Search::Partial(start) };
            if !matches!(next, b'\r' | b'\n' | b'-' | b' ' | b'\t') {
                continue;
            }
            match memchr::memchr(b'\n', &buf[after..]) {
                Some(k) if k <= MAX_BOUNDARY_TAIL => {
                    let close = buf[after..].starts_with(b"--");
                    return Search::Line { start, end: after + k + 1, close };
                }
                Some(_) => continue,
                None if buf.len() - after > MAX_BOUNDARY_TAIL => continue,
                None => return Search::Partial(start),
            }
        }
        Search::None
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The end of a body that is followed by a boundary line: without the line break that belongs to the boundary.
fn strip_line_end(body: &[u8]) -> usize {
    match body {
        [.., b'\r', b'\n'] => body.len() - 2,
        [.., b'\n'] => body.len() - 1,
        _ => body.len(),
    }
}

/// The value of a `Content-Length` header line, if this is one and it is a number.
fn header_len(line: &[u8]) -> Option<usize> {
    let line = std::str::from_utf8(line).ok()?;
    let (name, value) = line.split_once(':')?;
    if !name.trim().eq_ignore_ascii_case("content-length") {
        return None;
    }
    value.trim().parse().ok()
}

/// The boundary of a `multipart/*` content type (`multipart/x-mixed-replace; boundary="abc"`), unquoted.
pub fn boundary_from_content_type(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let media = parts.next()?.trim();
    if !media.get(..10).is_some_and(|m| m.eq_ignore_ascii_case("multipart/")) {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"').trim();
        (!v.is_empty()).then(|| v.to_owned())
    })
}

#[cfg(test)]
#[path = "multipart_tests.rs"]
mod tests;
