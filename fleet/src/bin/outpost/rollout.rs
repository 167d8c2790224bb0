//! `outpost rollout create|list|status|pause|resume|approve|abort`: staged rollouts, through the fleet's API
//! (operator token).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Subcommand};
use outpost_fleet::api::rollouts::{ActRequest, RolloutStatus};
use outpost_fleet::rollout::{GateReport, Header, RolloutPlan, StagePlan, State, Target, Verdict};

use crate::Outcome;
use crate::fleet::{Fleet, FleetArgs};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a rollout of a registry version to the devices with the given tags (and/or listed devices).
    Create(CreateArgs),
    /// Every rollout, newest first.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// A rollout's stages, their devices and states, and the gate figures (canary against control).
    Status {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Stop promoting stages (devices already assigned still converge).
    Pause(ActArgs),
    /// Continue a paused rollout.
    Resume(ActArgs),
    /// Promote a stage that passed its gates and waits for approval.
    Approve(ActArgs),
    /// Stop the rollout and send every device that got the new version back to its previous one.
    Abort(AbortArgs),
}

#[derive(Debug, ClapArgs)]
pub struct ActArgs {
    id: String,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Debug, ClapArgs)]
pub struct AbortArgs {
    id: String,
    /// Why (kept in the rollout's history).
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Debug, ClapArgs)]
pub struct CreateArgs {
    /// A whole plan as JSON (the API's format); the other flags are then not used.
    #[arg(long, conflicts_with_all = ["model", "version"])]
    plan: Option<PathBuf>,
    /// The model name.
    #[arg(long, required_unless_present = "plan")]
    model: Option<String>,
    /// The registry version to roll out.
    #[arg(long, required_unless_present = "plan")]
    version: Option<u64>,
    /// Target the devices carrying this `key=value` tag (repeat: all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Target this device too (repeat for several).
    #[arg(long = "device", value_name = "ID")]
    devices: Vec<String>,
    /// Cumulative stage sizes: device counts or percentages, ending at 100%.
    #[arg(long, default_value = "1,5%,25%,100%")]
    stages: String,
    /// The minimum time each stage runs before it may be promoted (e.g. 30m, 2h).
    #[arg(long, default_value = "10m")]
    dwell: String,
    /// Devices of a stage that must report on the new version before it is judged.
    #[arg(long, default_value_t = 1)]
    min_reporting: u32,
    /// Wait for `outpost rollout approve` after each stage passes its gates.
    #[arg(long)]
    approval: bool,
    /// Abort when the canary's mean confidence is more than this below control's (significantly).
    #[arg(long)]
    max_confidence_drop: Option<f64>,
    /// Windows each side needs before the quality gate judges.
    #[arg(long)]
    min_windows: Option<u32>,
    /// Print the created rollout as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fleet: FleetArgs,
}

fn plan(args: &CreateArgs) -> anyhow::Result<RolloutPlan> {
    if let Some(path) = &args.plan {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_slice(&bytes).with_context(|| format!("{} is not a rollout plan", path.display()));
    }
    let dwell = crate::duration::parse(&args.dwell).map_err(anyhow::Error::msg)?;
    let stages = args
        .stages
        .split(',')
        .map(|s| {
            Ok(StagePlan {
                size: s.parse().map_err(anyhow::Error::msg)?,
                min_dwell_secs: u64::try_from(dwell.whole_seconds()).unwrap_or(0),
                min_reporting: args.min_reporting,
                approval: args.approval,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut plan = RolloutPlan {
        model: args.model.clone().unwrap_or_default(),
        version: args.version.unwrap_or_default(),
        target: Target { tags: outpost_fleet::registry::parse_tags(&args.tags)?, devices: args.devices.clone() },
        stages,
        gates: Default::default(),
        spread_tag: "site".into(),
    };
    if let Some(m) = args.max_confidence_drop {
        plan.gates.quality.max_confidence_drop = m;
    }
    if let Some(m) = args.min_windows {
        plan.gates.quality.min_windows = m;
    }
    plan.validate().map_err(anyhow::Error::msg)?;
    Ok(plan)
}

fn state_line(h: &Header) -> String {
    match &h.state {
        State::Aborted { reason, by, .. } => format!("aborted by {by}: {reason}"),
        State::Completed { at } => format!("completed at {at}"),
        other => format!("{}, stage {} of {}", other.name(), h.stage + 1, h.plan.stages.len()),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn print_gates(g: &GateReport) {
    let verdict = match &g.verdict {
        Verdict::Pass => "pass".to_string(),
        Verdict::Wait(why) => format!("waiting: {why}"),
        Verdict::Fail(why) => format!("FAIL: {why}"),
    };
    println!("gates: {verdict}");
    println!("  install    {} of {} committed, {} failed", g.install.committed, g.install.devices, g.install.failed);
    println!("  {:<10} {:>8} {:>8} {:>10} {:>9} {:>9}", "", "devices", "windows", "confidence", "flagged", "p95 ms");
    for (name, s) in [("canary", &g.canary), ("control", &g.control)] {
        println!(
            "  {:<10} {:>8} {:>8} {:>10} {:>9} {:>9}",
            name,
            s.devices,
            s.windows,
            opt(s.mean_confidence, 3),
            opt(s.flagged_share, 3),
            opt(s.p95_ms, 1)
        );
    }
    if let Some(c) = &g.confidence {
        println!(
            "  confidence drop {:.3} (t = {:.2}, critical {:.2}, df {:.1}){}",
            c.difference,
            c.t,
            c.critical,
            c.df,
            if c.significant { ": significant" } else { "" }
        );
    }
    if let Some(f) = g.latency_factor {
        println!("  latency p95 factor {f:.2}");
    }
    for w in g.waiting_for.iter().skip(1) {
        println!("  also waiting for: {w}");
    }
}

pub fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Create(args) => {
            let plan = plan(&args)?;
            let h: Header = Fleet::new(&args.fleet)?.post("/api/v1/rollouts", &plan)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                println!("rollout {} created: {} v{}, {}", h.id, h.plan.model, h.plan.version, state_line(&h));
                let sizes: Vec<String> = h.cutoffs.iter().map(ToString::to_string).collect();
                println!("devices per stage (cumulative): {}", sizes.join(", "));
            }
            Ok(Outcome::Done)
        }
        Command::List { json, fleet } => {
            let list: Vec<Header> = Fleet::new(&fleet)?.get("/api/v1/rollouts")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for h in list {
                    println!("{:<8} {:<24} v{:<6} {}", h.id, h.plan.model, h.plan.version, state_line(&h));
                }
            }
            Ok(Outcome::Done)
        }
        Command::Status { id, json, fleet } => {
            let s: RolloutStatus = Fleet::new(&fleet)?.get(&format!("/api/v1/rollouts/{id}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(Outcome::Done);
            }
            let h = &s.header;
            println!("rollout {}: {} v{} — {}", h.id, h.plan.model, h.plan.version, state_line(h));
            for stage in &s.stages {
                println!("stage {} ({}, {} devices in total): {}", stage.stage, stage.size, stage.cutoff, stage.state);
                for d in &stage.devices {
                    let r = &d.rollout;
                    println!(
                        "  {:<32} {:<12} {:<8} runs {:<6} target {:<6} {}",
                        d.device,
                        format!("{:?}", r.phase).to_lowercase(),
                        if r.online { "online" } else { "offline" },
                        r.active.map_or("-".into(), |v| format!("v{v}")),
                        d.target.map_or("-".into(), |v| format!("v{v}")),
                        r.detail.as_deref().unwrap_or("")
                    );
                }
            }
            if let Some(g) = &h.gates {
                print_gates(g);
            }
            for line in h.history.iter().rev().take(10).rev() {
                println!("{}  {}", crate::registry::time(line.at), line.what);
            }
            Ok(Outcome::Done)
        }
        Command::Pause(a) => act(&a.fleet, &a.id, "pause", ""),
        Command::Resume(a) => act(&a.fleet, &a.id, "resume", ""),
        Command::Approve(a) => act(&a.fleet, &a.id, "approve", ""),
        Command::Abort(a) => act(&a.fleet, &a.id, "abort", &a.reason),
    }
}

fn act(fleet: &FleetArgs, id: &str, action: &str, reason: &str) -> anyhow::Result<Outcome> {
    let h: Header =
        Fleet::new(fleet)?.post(&format!("/api/v1/rollouts/{id}/{action}"), &ActRequest { reason: reason.into() })?;
    println!("rollout {}: {}", h.id, state_line(&h));
    Ok(Outcome::Done)
}
