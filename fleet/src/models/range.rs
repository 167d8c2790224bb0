//! The `Range` header of an artifact download, decided from the header and the artifact's length alone.
//!
//! One byte range is served (`bytes=a-b`, `bytes=a-`, `bytes=-n`, RFC 9110 §14.1.2): that is what resuming
//! downloaders send. Anything else — several ranges, another unit, a malformed or unsatisfiable range — is answered
//! `416` with `Content-Range: bytes */<length>`, so a client learns the length and never gets bytes it did not ask
//! for.

/// What to send for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// `200`, the whole artifact.
    Full,
    /// `206`, bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// `416`.
    Unsatisfiable,
}

/// Decides the answer for a `Range` header value (`None`: no header) on an artifact of `length` bytes.
pub fn decide(header: Option<&str>, length: u64) -> Ranged {
    let Some(value) = header else { return Ranged::Full };
    parse(value.trim(), length).unwrap_or(Ranged::Unsatisfiable)
}

fn number(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse(value: &str, length: u64) -> Option<Ranged> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') || length == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let last_byte = length - 1;
    let (start, end) = if first.trim().is_empty() {
        // A suffix: the last n bytes.
        let n = number(last)?;
        if n == 0 {
            return None;
        }
        (length.saturating_sub(n), last_byte)
    } else {
        let start = number(first)?;
        let end = if last.trim().is_empty() { last_byte } else { number(last)?.min(last_byte) };
        (start, end)
    };
    (start <= end && start < length).then_some(Ranged::Partial { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: Option<&str>, length: u64, expected: Ranged) {
        assert_eq!(decide(header, length), expected, "{header:?} of {length}");
    }

    #[test]
    fn ranges_are_decided() {
        use Ranged::*;
        check(None, 10, Full);
        check(Some("bytes=0-9"), 10, Partial { start: 0, end: 9 });
        check(Some("bytes=0-"), 10, Partial { start: 0, end: 9 });
        check(Some("bytes=4-"), 10, Partial { start: 4, end: 9 });
        check(Some("bytes=2-5"), 10, Partial { start: 2, end: 5 });
        check(Some("bytes=2-500"), 10, Partial { start: 2, end: 9 });
        check(Some("bytes=-3"), 10, Partial { start: 7, end: 9 });
        check(Some("bytes=-30"), 10, Partial { start: 0, end: 9 });
        check(Some(" bytes=9-9 "), 10, Partial { start: 9, end: 9 });
        check(Some("bytes=10-"), 10, Unsatisfiable);
        check(Some("bytes=5-4"), 10, Unsatisfiable);
        check(Some("bytes=-0"), 10, Unsatisfiable);
        check(Some("bytes=0-1,4-5"), 10, Unsatisfiable);
        check(Some("items=0-1"), 10, Unsatisfiable);
        check(Some("bytes=a-b"), 10, Unsatisfiable);
        check(Some("bytes=+1-2"), 10, Unsatisfiable);
        check(Some("bytes="), 10, Unsatisfiable);
        check(Some("bytes=-"), 10, Unsatisfiable);
        check(Some("bytes=99999999999999999999999-"), 10, Unsatisfiable);
        check(Some(""), 10, Unsatisfiable);
    }
}
