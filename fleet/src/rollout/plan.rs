//! What an operator asks for: which model version goes to which devices, in which stages, behind which gates.
//! Parsed strictly and validated once; pure.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A rollout plan, as `POST /api/v1/rollouts` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// The model name, and the registry version to roll out.
    pub model: String,
    pub version: u64,
    /// Which devices: those carrying every tag given, plus those listed. At least one of the two.
    #[serde(default)]
    pub target: Target,
    /// Cumulative stage sizes, e.g. `1`, `5%`, `25%`, `100%`; the last one must reach every targeted device.
    pub stages: Vec<StagePlan>,
    #[serde(default)]
    pub gates: Gates,
    /// Canaries are spread across the values of this tag (round-robin over sites).
    #[serde(default = "default_spread_tag")]
    pub spread_tag: String,
}

fn default_spread_tag() -> String {
    "site".into()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    pub tags: BTreeMap<String, String>,
    pub devices: Vec<String>,
}

impl Target {
    /// Whether a device with these tags is targeted by tag (the explicit list is checked by the caller).
    pub fn matches_tags(&self, tags: &BTreeMap<String, String>) -> bool {
        !self.tags.is_empty() && self.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagePlan {
    /// How many devices run the new version once this stage has started (cumulative).
    pub size: StageSize,
    /// The stage lasts at least this long before it may be promoted.
    #[serde(default = "default_dwell")]
    pub min_dwell_secs: u64,
    /// At least this many of the stage's devices must have reported windows on the new version.
    #[serde(default = "one")]
    pub min_reporting: u32,
    /// Wait for an operator's `approve` once the gates pass, instead of promoting automatically.
    #[serde(default)]
    pub approval: bool,
}

fn default_dwell() -> u64 {
    600
}

fn one() -> u32 {
    1
}

/// A stage size: a number of devices (`3`) or a share of the targeted devices (`25%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StageSize {
    Devices(u32),
    Percent(f64),
}

impl StageSize {
    /// The cumulative device count this size means out of `total`: percentages round up, so `5%` of 10 is 1.
    pub fn of(self, total: usize) -> usize {
        let n = match self {
            StageSize::Devices(n) => n as usize,
            // Percent is validated to 0 < p <= 100 and total is a device count, so the product is small and finite.
            StageSize::Percent(p) => ((p / 100.0) * total as f64 - 1e-9).ceil().max(0.0) as usize,
        };
        n.min(total)
    }
}

impl fmt::Display for StageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageSize::Devices(n) => write!(f, "{n}"),
            StageSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for StageSize {
    type Err = String;

    fn from_str(s: &str) -> Result<StageSize, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| format!("`{s}` is not a percentage"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("`{s}`: a stage is more than 0% and at most 100% of the devices"));
            }
            Ok(StageSize::Percent(p))
        } else {
            let n: u32 = s.parse().map_err(|_| format!("`{s}` is neither a device count nor a percentage"))?;
            if n == 0 {
                return Err("a stage has at least one device".into());
            }
            Ok(StageSize::Devices(n))
        }
    }
}

impl Serialize for StageSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for StageSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StageSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string().parse(),
            Raw::Text(t) => t.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// The gates every stage must pass, comparing the stage's devices on the new version (canary) with the targeted
/// devices still on their previous version (control) over the same period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    pub install: InstallGate,
    pub quality: QualityGate,
    pub latency: LatencyGate,
    /// Abort when the new version has an active drift alert.
    pub drift: bool,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            install: InstallGate::default(),
            quality: QualityGate::default(),
            latency: LatencyGate::default(),
            drift: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstallGate {
    /// A stage is promoted only when at least this share of its devices committed the new version.
    pub min_committed: f64,
    /// Abort when more than this share of the devices that finished (committed or failed) failed...
    pub max_failed: f64,
    /// ... once at least this many have finished (so one early failure in a big stage is not 100%).
    pub min_executed: u32,
    /// A device that has not committed this long after the version was sent to it counts as failed.
    pub timeout_secs: u64,
}

impl Default for InstallGate {
    fn default() -> Self {
        InstallGate { min_committed: 0.9, max_failed: 0.1, min_executed: 3, timeout_secs: 1800 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityGate {
    /// The canary's mean confidence may be at most this much below control's (absolute, 0..1)...
    pub max_confidence_drop: f64,
    /// ... and its share of flagged frames at most this much above control's (absolute, 0..1)...
    pub max_flagged_increase: f64,
    /// ... where "more than the margin" must also be significant at this level (one-sided Welch t-test over
    /// window means), so noise does not abort a rollout.
    pub alpha: f64,
    /// Each side needs at least this many windows before the gate judges.
    pub min_windows: u32,
}

impl Default for QualityGate {
    fn default() -> Self {
        QualityGate { max_confidence_drop: 0.05, max_flagged_increase: 0.05, alpha: 0.01, min_windows: 6 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyGate {
    /// The canary's p95 inference latency may be at most this many times control's.
    pub max_p95_factor: f64,
}

impl Default for LatencyGate {
    fn default() -> Self {
        LatencyGate { max_p95_factor: 1.5 }
    }
}

/// At most this many stages, and this many explicitly listed devices.
pub const MAX_STAGES: usize = 16;
pub const MAX_LISTED_DEVICES: usize = 100_000;

impl RolloutPlan {
    /// Checks everything that does not need the registry or the device list.
    pub fn validate(&self) -> Result<(), String> {
        if self.model.is_empty() || self.model.len() > 128 {
            return Err("model: 1-128 characters".into());
        }
        if self.target.tags.is_empty() && self.target.devices.is_empty() {
            return Err("target: give tags, devices, or both".into());
        }
        if self.target.devices.len() > MAX_LISTED_DEVICES {
            return Err(format!("target.devices: at most {MAX_LISTED_DEVICES}"));
        }
        if self.stages.is_empty() || self.stages.len() > MAX_STAGES {
            return Err(format!("stages: 1 to {MAX_STAGES}"));
        }
        match self.stages.last().map(|s| s.size) {
            Some(StageSize::Percent(p)) if p >= 100.0 => {}
            _ => return Err("the last stage must be `100%`, so the rollout reaches every targeted device".into()),
        }
        for pair in self.stages.windows(2) {
            let (a, b) = (pair[0].size, pair[1].size);
            let grows = match (a, b) {
                (StageSize::Devices(x), StageSize::Devices(y)) => y > x,
                (StageSize::Percent(x), StageSize::Percent(y)) => y > x,
                _ => true,
            };
            if !grows {
                return Err(format!("stages are cumulative and must grow: `{a}` then `{b}`"));
            }
        }
        if self.stages.iter().any(|s| s.min_reporting == 0) {
            return Err("min_reporting: at least 1".into());
        }
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(format!("{name}: {v} is outside 0..1")) }
        };
        let g = &self.gates;
        share("gates.install.min_committed", g.install.min_committed)?;
        share("gates.install.max_failed", g.install.max_failed)?;
        share("gates.quality.max_confidence_drop", g.quality.max_confidence_drop)?;
        share("gates.quality.max_flagged_increase", g.quality.max_flagged_increase)?;
        if !(g.quality.alpha > 0.0 && g.quality.alpha < 0.5) {
            return Err(format!("gates.quality.alpha: {} is outside (0, 0.5)", g.quality.alpha));
        }
        if g.quality.min_windows < 2 {
            return Err("gates.quality.min_windows: at least 2 (a variance needs two)".into());
        }
        if !(g.latency.max_p95_factor >= 1.0 && g.latency.max_p95_factor.is_finite()) {
            return Err("gates.latency.max_p95_factor: at least 1".into());
        }
        if g.install.timeout_secs == 0 {
            return Err("gates.install.timeout_secs: at least 1".into());
        }
        Ok(())
    }

    /// The cumulative device count at each stage for `total` targeted devices. Every stage adds at least one device
    /// while some remain (so `1, 5%` on 10 devices is 1 then 2), and the last reaches `total`.
    pub fn cutoffs(&self, total: usize) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let previous = out.last().copied().unwrap_or(0);
            out.push(stage.size.of(total).max((previous + 1).min(total)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(stages: &str) -> RolloutPlan {
        RolloutPlan {
            model: "defect".into(),
            version: 2,
            target: Target { tags: BTreeMap::from([("line".into(), "a".into())]), devices: vec![] },
            stages: stages
                .split(',')
                .map(|s| StagePlan {
                    size: s.parse().expect("size"),
                    min_dwell_secs: 60,
                    min_reporting: 1,
                    approval: false,
                })
                .collect(),
            gates: Gates::default(),
            spread_tag: "site".into(),
        }
    }

    #[test]
    fn sizes_parse_from_numbers_and_percentages() {
        assert_eq!("3".parse::<StageSize>(), Ok(StageSize::Devices(3)));
        assert_eq!(" 25% ".parse::<StageSize>(), Ok(StageSize::Percent(25.0)));
        assert!("0".parse::<StageSize>().is_err());
        assert!("0%".parse::<StageSize>().is_err());
        assert!("120%".parse::<StageSize>().is_err());
        assert!("many".parse::<StageSize>().is_err());
        let json: Vec<StageSize> = serde_json::from_str(r#"[1, "5%", "100%"]"#).expect("json");
        assert_eq!(json, vec![StageSize::Devices(1), StageSize::Percent(5.0), StageSize::Percent(100.0)]);
    }

    #[test]
    fn cutoffs_grow_by_at_least_one_and_end_at_every_device() {
        assert_eq!(plan("1,5%,25%,100%").cutoffs(10), vec![1, 2, 3, 10]);
        assert_eq!(plan("1,5%,25%,100%").cutoffs(1000), vec![1, 50, 250, 1000]);
        assert_eq!(plan("1,5%,25%,100%").cutoffs(1), vec![1, 1, 1, 1]);
        assert_eq!(plan("2,100%").cutoffs(3), vec![2, 3]);
        // 10% of 30 is exactly 3, not 4 from floating-point noise.
        assert_eq!(plan("10%,100%").cutoffs(30), vec![3, 30]);
    }

    #[test]
    fn plans_that_cannot_reach_everyone_or_shrink_are_refused() {
        assert!(plan("1,5%,25%,100%").validate().is_ok());
        assert!(plan("1,50%").validate().expect_err("refused").contains("100%"));
        assert!(plan("5,3,100%").validate().expect_err("refused").contains("grow"));
        let mut p = plan("1,100%");
        p.target = Target::default();
        assert!(p.validate().expect_err("refused").contains("target"));
        let mut p = plan("1,100%");
        p.gates.quality.alpha = 0.7;
        assert!(p.validate().is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<RolloutPlan>(
            r#"{"model":"m","version":2,"stages":[{"size":"100%"}],"target":{"tags":{"a":"b"}},"surprise":1}"#,
        )
        .expect_err("refused");
        assert!(err.to_string().contains("surprise"));
    }
}
