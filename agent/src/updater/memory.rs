//! Will a second model fit? The process's resident memory and the system's available memory from /proc, against
//! an estimate of what one more ONNX Runtime session costs.

/// Resident memory of this process, in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS:")
}

/// Memory the system can give without swapping, in bytes (`MemAvailable`).
pub fn available_bytes() -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable:")
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// What loading one session of a model file of `len` bytes adds: ONNX Runtime keeps its own copy of the weights,
/// the file's bytes are held while loading, plus working buffers and the input tensor.
pub fn session_estimate(len: u64) -> u64 {
    len.saturating_mul(2).saturating_add(32 << 20)
}

/// Checks that `extra` more bytes fit: under the budget (when one is set, with the process at `rss` now) and in
/// what the system has available.
pub fn check_room(extra: u64, rss: Option<u64>, budget: Option<u64>, available: Option<u64>) -> Result<(), String> {
    let mib = |b: u64| b >> 20;
    if let (Some(budget), Some(rss)) = (budget, rss)
        && rss.saturating_add(extra) > budget
    {
        return Err(format!(
            "the new model needs about {} MiB beside the {} MiB in use; the budget is {} MiB",
            mib(extra),
            mib(rss),
            mib(budget)
        ));
    }
    if let Some(available) = available
        && extra > available
    {
        return Err(format!(
            "the new model needs about {} MiB; the system has {} MiB free",
            mib(extra),
            mib(available)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc() {
        assert!(rss_bytes().is_some_and(|b| b > 1 << 20));
        assert!(available_bytes().is_some_and(|b| b > 0));
        assert_eq!(kib_field("VmRSS:\t  2048 kB\n", "VmRSS:"), Some(2 << 20));
        assert_eq!(kib_field("garbage", "VmRSS:"), None);
    }

    #[test]
    fn room_is_checked_against_budget_and_system() {
        let mib = |n: u64| n << 20;
        assert!(check_room(mib(50), Some(mib(100)), Some(mib(200)), Some(mib(1000))).is_ok());
        let err = check_room(mib(150), Some(mib(100)), Some(mib(200)), Some(mib(1000))).expect_err("over budget");
        assert!(err.contains("budget is 200 MiB"), "{err}");
        assert!(check_room(mib(150), Some(mib(100)), None, Some(mib(100))).is_err_and(|e| e.contains("100 MiB free")));
        assert!(check_room(mib(150), None, None, None).is_ok(), "nothing known: no refusal");
    }
}
