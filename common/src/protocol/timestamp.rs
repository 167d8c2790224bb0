//! Serde for the timestamps of window summaries: RFC 3339 text in human-readable formats (the wire's JSON, the
//! API), `(unix seconds, nanoseconds)` in binary ones (the fleet's packed storage of raw windows), read back in UTC.
//!
//! Use as `#[serde(with = "timestamp")]`. JSON is unchanged by it: it is `time::serde::rfc3339` there. The binary
//! form keeps the instant exactly and costs a fraction of formatting and parsing the text.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use time::OffsetDateTime;

pub fn serialize<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        return time::serde::rfc3339::serialize(at, serializer);
    }
    (at.unix_timestamp(), at.nanosecond()).serialize(serializer)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OffsetDateTime, D::Error> {
    if deserializer.is_human_readable() {
        return time::serde::rfc3339::deserialize(deserializer);
    }
    let (seconds, nanos) = <(i64, u32)>::deserialize(deserializer)?;
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|at| at.replace_nanosecond(nanos).ok())
        .ok_or_else(|| de::Error::custom(format_args!("not a timestamp: {seconds} s + {nanos} ns")))
}
