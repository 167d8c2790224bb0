//! The pure decision on an artifact response: append, start over, or fail, from the status and headers alone.

use super::DownloadError;

/// What to do with a response, decided from its status and headers before reading the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// `206` from the offset asked for: append to the part.
    Append,
    /// `200`: the whole artifact from byte 0; the part is truncated first.
    Restart,
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end).then_some((start, end, total))
}

/// The pure decision for one response. `done` bytes are on disk, `total` are declared. An `Err` that
/// [`DownloadError::is_retryable`] allows is retried; `BadRange` also discards the part first.
pub(super) fn plan(
    url: &str,
    status: u16,
    content_range: Option<&str>,
    content_length: Option<u64>,
    done: u64,
    total: u64,
) -> Result<Plan, DownloadError> {
    let too_long = |received: u64| DownloadError::TooLong { declared: total, received };
    match status {
        200 => match content_length {
            Some(len) if len > total => Err(too_long(len)),
            Some(len) if len < total => Err(DownloadError::LengthMismatch { declared: total, actual: len }),
            _ => Ok(Plan::Restart),
        },
        206 => {
            let Some((start, end, whole)) = content_range.and_then(parse_content_range) else {
                return Err(DownloadError::BadRange(format!("206 with Content-Range {content_range:?}")));
            };
            match whole {
                Some(whole) if whole > total => return Err(too_long(whole)),
                Some(whole) if whole < total => {
                    return Err(DownloadError::LengthMismatch { declared: total, actual: whole });
                }
                _ => {}
            }
            if end >= total {
                return Err(too_long(end.saturating_add(1)));
            }
            if start != done {
                return Err(DownloadError::BadRange(format!("asked for byte {done}, the server sent from {start}")));
            }
            match content_length {
                Some(len) if done.saturating_add(len) > total => Err(too_long(done.saturating_add(len))),
                _ => Ok(Plan::Append),
            }
        }
        416 => Err(DownloadError::BadRange(format!("range from byte {done} not satisfiable"))),
        status => Err(DownloadError::Status { url: url.to_string(), status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(result: Result<Plan, DownloadError>) -> Result<Plan, &'static str> {
        result.map_err(|e| e.kind())
    }

    #[test]
    fn responses_are_planned_from_status_and_headers() {
        // (what, status, Content-Range, Content-Length, bytes already on disk, plan) for a 100-byte artifact.
        type Case<'a> = (&'a str, u16, Option<&'a str>, Option<u64>, u64, Result<Plan, &'a str>);
        let cases: &[Case] = &[
            ("whole file", 200, None, Some(100), 0, Ok(Plan::Restart)),
            ("whole file, no length", 200, None, None, 0, Ok(Plan::Restart)),
            ("range ignored", 200, None, Some(100), 40, Ok(Plan::Restart)),
            ("declares more than the manifest", 200, None, Some(101), 0, Err("too_long")),
            ("declares less than the manifest", 200, None, Some(99), 0, Err("length_mismatch")),
            ("resumed where asked", 206, Some("bytes 40-99/100"), Some(60), 40, Ok(Plan::Append)),
            ("resumed, total unknown", 206, Some("bytes 40-99/*"), None, 40, Ok(Plan::Append)),
            ("resumed elsewhere", 206, Some("bytes 0-99/100"), Some(100), 40, Err("bad_range")),
            ("range past the artifact", 206, Some("bytes 40-150/*"), None, 40, Err("too_long")),
            ("bigger whole", 206, Some("bytes 40-99/200"), Some(60), 40, Err("too_long")),
            ("smaller whole", 206, Some("bytes 40-79/80"), Some(40), 40, Err("length_mismatch")),
            ("body longer than its range", 206, Some("bytes 40-99/100"), Some(61), 40, Err("too_long")),
            ("206 without Content-Range", 206, None, Some(60), 40, Err("bad_range")),
            ("garbled Content-Range", 206, Some("bytes x-y/z"), Some(60), 40, Err("bad_range")),
            ("not satisfiable", 416, Some("bytes */100"), None, 40, Err("bad_range")),
            ("not found", 404, None, None, 0, Err("status")),
        ];
        for (what, status, range, length, done, expected) in cases {
            assert_eq!(&kind(plan("u", *status, *range, *length, *done, 100)), expected, "{what}");
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, 9, Some(10))));
        assert_eq!(parse_content_range(" bytes 5-9/* "), Some((5, 9, None)));
        for bad in ["bytes */10", "bytes 9-5/10", "items 0-9/10", "bytes 0-9", "bytes -1-9/10", ""] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
