//! Durations on the command line: `90d`, `12h`, `2w`, `30m`, `45s`.

use time::Duration;

/// Parses a positive whole number followed by one unit letter (s, m, h, d, w).
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration like 90d, 12h, 2w, 30m or 45s");
    let split = text.len().checked_sub(1).filter(|&i| text.is_char_boundary(i)).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?;
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds_per).filter(|s| *s <= 100 * 366 * 86_400).map(Duration::seconds).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<i64>) {
        assert_eq!(parse(text).ok().map(|d| d.whole_seconds()), expected, "{text:?}");
    }

    #[test]
    fn durations() {
        check("90d", Some(90 * 86_400));
        check("12h", Some(43_200));
        check("2w", Some(1_209_600));
        check("30m", Some(1800));
        check("45s", Some(45));
        check("0d", None);
        check("-1d", None);
        check("d", None);
        check("", None);
        check("90", None);
        check("90y", None);
        check("9é", None);
        check("99999999999999d", None);
    }
}
