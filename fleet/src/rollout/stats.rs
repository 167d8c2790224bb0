//! The statistics behind the quality gate: a one-sided Welch t-test of "worse by more than a margin", with the
//! quantiles it needs. Pure.
//!
//! The units are telemetry windows (each window's mean confidence, or its share of flagged frames), not frames:
//! frames of one camera are strongly correlated, windows much less, so a test over windows does not mistake a long
//! run of similar frames for evidence.

/// Mean and unbiased sample variance; `None` for fewer than two values.
pub fn mean_var(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    Some((mean, var))
}

/// The outcome of testing "`worse` is below `reference` by more than `margin`".
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shift {
    /// reference mean − worse mean.
    pub difference: f64,
    /// (difference − margin) ÷ its standard error; ±`f64::MAX` when both sides are constant (not infinite: the
    /// report is stored as JSON, which has no infinity, and serde_json would write `null` and then refuse to read it).
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// The one-sided critical value at the test's level.
    pub critical: f64,
    /// Whether the drop beyond the margin is significant.
    pub significant: bool,
}

/// One-sided Welch t-test of H0: mean(reference) − mean(worse) ≤ margin, against H1: it is larger. `None` when a
/// side has fewer than two values or a value is not finite.
pub fn drop_beyond_margin(reference: &[f64], worse: &[f64], margin: f64, alpha: f64) -> Option<Shift> {
    if reference.iter().chain(worse).any(|v| !v.is_finite()) {
        return None;
    }
    let (ma, va) = mean_var(reference)?;
    let (mb, vb) = mean_var(worse)?;
    let (na, nb) = (reference.len() as f64, worse.len() as f64);
    let difference = ma - mb;
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    let df = if se2 > 0.0 {
        let denom = sa * sa / (na - 1.0) + sb * sb / (nb - 1.0);
        if denom > 0.0 { se2 * se2 / denom } else { na + nb - 2.0 }
    } else {
        na + nb - 2.0
    };
    let critical = t_quantile(1.0 - alpha, df);
    let excess = difference - margin;
    let t = if se2 > 0.0 {
        excess / se2.sqrt()
    } else if excess > 0.0 {
        f64::MAX
    } else if excess < 0.0 {
        f64::MIN
    } else {
        0.0
    };
    Some(Shift { difference, t, df, critical, significant: t > critical })
}

/// The standard normal quantile (Acklam's rational approximation, relative error below 1.2e-9), for 0 < p < 1.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let low = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < low {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - low {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Student's t quantile for 0.5 ≤ p < 1. Fractional degrees of freedom are rounded down (the conservative side).
/// Exact for 1 and 2 degrees of freedom; from 3 on, the Cornish–Fisher expansion in Abramowitz & Stegun 26.7.5
/// (within 0.5% of the tables for p ≤ 0.999).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let nu = df.floor().max(1.0);
    if nu <= 1.0 {
        return (std::f64::consts::PI * (p - 0.5)).tan();
    }
    if nu <= 2.0 {
        return (2.0 * p - 1.0) / (2.0 * p * (1.0 - p)).sqrt();
    }
    let z = normal_quantile(p);
    let z2 = z * z;
    let g1 = (z2 + 1.0) * z / 4.0;
    let g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0;
    let g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0;
    let g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0;
    z + g1 / nu + g2 / (nu * nu) + g3 / nu.powi(3) + g4 / nu.powi(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        ((a - b) / b).abs() < rel
    }

    #[test]
    fn quantiles_match_the_tables() {
        assert!(close(normal_quantile(0.975), 1.959964, 1e-6));
        assert!(close(normal_quantile(0.99), 2.326348, 1e-6));
        assert!(close(normal_quantile(0.001), -3.090232, 1e-6));
        // Student t, one-sided 0.99 and 0.95 (standard tables).
        for (df, t99, t95) in [
            (1.0, 31.821, 6.314),
            (2.0, 6.965, 2.920),
            (3.0, 4.541, 2.353),
            (5.0, 3.365, 2.015),
            (10.0, 2.764, 1.812),
            (30.0, 2.457, 1.697),
        ] {
            assert!(close(t_quantile(0.99, df), t99, 0.006), "df {df}: {} vs {t99}", t_quantile(0.99, df));
            assert!(close(t_quantile(0.95, df), t95, 0.006), "df {df}: {} vs {t95}", t_quantile(0.95, df));
        }
        // Fractional degrees of freedom round down: never a smaller critical value than the table's.
        assert!(t_quantile(0.99, 2.9) >= t_quantile(0.99, 3.0));
    }

    #[test]
    fn a_drop_within_the_margin_is_not_significant_however_many_windows() {
        // Canary 0.02 below control, margin 0.05: never significant, even with little noise and many windows.
        let control: Vec<f64> = (0..500).map(|i| 0.80 + 0.001 * f64::from(i % 7)).collect();
        let canary: Vec<f64> = control.iter().map(|v| v - 0.02).collect();
        let s = drop_beyond_margin(&control, &canary, 0.05, 0.01).expect("enough data");
        assert!(!s.significant, "{s:?}");
        assert!((s.difference - 0.02).abs() < 1e-9);
    }

    #[test]
    fn a_real_drop_is_significant_and_a_noisy_small_sample_is_not() {
        let control = [0.81, 0.79, 0.80, 0.82, 0.78, 0.80];
        let canary = [0.61, 0.60, 0.63, 0.58, 0.62, 0.59];
        assert!(drop_beyond_margin(&control, &canary, 0.05, 0.01).expect("data").significant);
        // The same mean drop with huge spread: not evidence enough.
        let noisy = [0.95, 0.20, 0.90, 0.30, 0.85, 0.40];
        assert!(!drop_beyond_margin(&control, &noisy, 0.05, 0.01).expect("data").significant);
    }

    #[test]
    fn constant_sides_and_bad_values_are_handled() {
        let s = drop_beyond_margin(&[0.8, 0.8], &[0.5, 0.5], 0.05, 0.01).expect("data");
        assert!(s.significant && s.t == f64::MAX);
        assert!(!drop_beyond_margin(&[0.8, 0.8], &[0.79, 0.79], 0.05, 0.01).expect("data").significant);
        assert!(drop_beyond_margin(&[0.8], &[0.5, 0.5], 0.05, 0.01).is_none());
        assert!(drop_beyond_margin(&[0.8, f64::NAN], &[0.5, 0.5], 0.05, 0.01).is_none());
    }

    #[test]
    fn a_shift_from_constant_sides_survives_the_store() {
        // Flagging off on every device: every flagged share is 0 on both sides, as in most rollouts.
        for (reference, worse) in [([0.0, 0.0], [0.0, 0.0]), ([0.8, 0.8], [0.1, 0.1])] {
            let shift = drop_beyond_margin(&reference, &worse, 0.05, 0.01).expect("data");
            let json = serde_json::to_string(&shift).expect("serialises");
            let back: Shift = serde_json::from_str(&json).expect("reads back what it wrote");
            assert_eq!(back, shift, "{json}");
        }
    }
}
