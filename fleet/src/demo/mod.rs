//! `outpost-fleet demo`: the fleet with its embedded broker and store, three agents enrolled automatically and run
//! in this process on the bundled frames (two on a normal line, one whose lighting drifts after its normal frames),
//! the API's URL and an admin token printed. Then a release: v1 and v2 of the model, signed with a key made for the
//! demo, are pushed to the registry, and v2 is rolled out to the three agents in stages while they keep processing
//! frames (`release.rs`). Until Ctrl-C (or `--seconds`), after which nothing keeps running and a summary is printed.

mod release;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use outpost_agent::config::AgentConfig;
use tokio_util::sync::CancellationToken;

use crate::api::devices::agent_config;
use crate::config::FleetConfig;
use crate::rollout::State;
use crate::serve::Running;
use outpost_common::vision::spec::ModelSpec;
use release::{Api, Release};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The detector the agents run.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/zoo/defect-yolo11n-320.onnx"))]
    pub model: PathBuf,
    /// Folder with `defect-val/images` (normal frames) and `defect-drift/images` (after a lighting change).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images"))]
    pub frames: PathBuf,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// The API's port (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Frames per second each agent replays.
    #[arg(long, default_value_t = 5.0)]
    pub fps: f64,
    /// Only push the two versions; do not roll v2 out.
    #[arg(long)]
    pub no_rollout: bool,
}

/// The three demo devices: name, site tag, frame sets played in turn (then looped). The third camera's lighting
/// changes after about a minute of normal frames (80 frames a set, 5 fps): by then the rollout is over, so its gates
/// compare the two versions on a normal line.
const DEVICES: [(&str, &str, &[&str]); 3] = [
    ("demo-cam-1", "plant-a", &["defect-val"]),
    ("demo-cam-2", "plant-a", &["defect-val"]),
    ("demo-cam-3", "plant-b", &["defect-val", "defect-val", "defect-val", "defect-val", "defect-drift"]),
];

/// A folder with the frames of `sets` in order (copied, prefixed so the replay's name order plays them in turn).
fn frames_folder(frames: &Path, sets: &[&str], dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (i, set) in sets.iter().enumerate() {
        for entry in std::fs::read_dir(frames.join(set).join("images"))? {
            let path = entry?.path();
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                std::fs::copy(&path, dir.join(format!("{i}-{name}")))?;
            }
        }
    }
    Ok(dir.to_path_buf())
}

fn free_addr(preferred: u16) -> Result<std::net::SocketAddr> {
    let try_bind = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).and_then(|l| l.local_addr());
    Ok(try_bind(preferred).or_else(|_| try_bind(0))?)
}

/// The agent config of one demo device: the enrolled identity plus a replay camera on the bundled frames.
fn demo_agent(
    running: &Running,
    (name, site): (&str, &str),
    frames: &Path,
    args: &DemoArgs,
    state: &Path,
    release_key: &str,
) -> Result<String> {
    let credentials = running.registry.enroll(name, [("site".to_string(), site.to_string())].into())?;
    let mut toml = agent_config(&credentials, &running.mqtt, &format!("http://{}", running.http));
    toml = toml.replace("state_dir = \"/var/lib/outpost-agent\"", &format!("state_dir = {:?}", state.join(name)));
    toml.push_str(&format!(
        "\n[telemetry]\nwindow_secs = 2\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nthreads = 1\n\n\
         [[models]]\nname = \"defect\"\nversion = 1\npath = {:?}\n\n\
         [[cameras]]\nname = \"line-1\"\nmodel = \"defect\"\nsource = {{ kind = \"replay\", path = {:?}, fps = {:.1} }}\n\n\
         [updates]\ntrusted_keys = [{release_key:?}]\ncheck_interval_secs = 10\n\n\
         [updates.trial]\nmin_frames = 10\nmin_secs = 2.0\nmax_secs = 60.0\n",
        args.model, frames, args.fps
    ));
    Ok(toml)
}

/// What the model is (task, input, class names), from its own metadata.
fn model_spec(path: &Path) -> Result<ModelSpec> {
    let rt = outpost_common::vision::engine::Runtime::init(None)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let vision = outpost_common::vision::Vision::load(rt, &bytes, Default::default())?;
    Ok(vision.spec().clone())
}

pub fn run(args: &DemoArgs) -> Result<()> {
    for set in DEVICES.iter().flat_map(|d| d.2.iter()) {
        let dir = args.frames.join(set).join("images");
        anyhow::ensure!(dir.is_dir(), "no bundled frames in {} (see --frames)", dir.display());
    }
    anyhow::ensure!(args.model.is_file(), "no model at {} (see --model)", args.model.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(demo(args))
}

async fn demo(args: &DemoArgs) -> Result<()> {
    let state = tempfile::Builder::new().prefix("outpost-demo-").tempdir()?;
    let spec = model_spec(&args.model)?;
    let release = Release::new(&args.model, spec.clone())?;
    let config = FleetConfig {
        state_dir: state.path().join("fleet"),
        shutdown_deadline_secs: 10,
        broker: crate::broker::BrokerConfig {
            listen: free_addr(1883)?,
            listen_v5: free_addr(0)?,
            ..Default::default()
        },
        http: crate::config::HttpConfig { listen: free_addr(args.port)?, ..Default::default() },
        ingest: Default::default(),
        annotation: crate::config::AnnotationConfig {
            labels: [(release::MODEL.to_string(), spec.labels.clone())].into(),
            ..Default::default()
        },
        alerts: Default::default(),
        models: crate::models::ModelsConfig { trusted_keys: vec![release.trusted_key()], ..Default::default() },
        rollouts: crate::rollout::RolloutConfig { tick_secs: 1, resend_secs: 10, ..Default::default() },
    };
    let fleet_stop = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let fleet = tokio::spawn(crate::serve::run(config, fleet_stop.clone(), move |running| {
        let _ = ready_tx.send(running);
    }));
    let running = match ready_rx.await {
        Ok(r) => r,
        Err(_) => return fleet.await?.context("the fleet did not start"),
    };

    // The registry holds both versions before any agent starts: a rollout can only target devices whose current
    // version it can roll back to.
    let api = Api::new(&running)?;
    for version in [1, 2] {
        release.push(&api, version).await?;
    }

    let agents_stop = CancellationToken::new();
    let mut agents = Vec::new();
    for (name, site, sets) in DEVICES {
        let frames = frames_folder(&args.frames, sets, &state.path().join("frames").join(name))?;
        let toml =
            demo_agent(&running, (name, site), &frames, args, &state.path().join("agents"), &release.trusted_key())?;
        let path = state.path().join(format!("{name}.agent.toml"));
        let config = AgentConfig::parse(&toml, &path)?.validate()?;
        agents.push((name, tokio::spawn(outpost_agent::app::run(config, agents_stop.clone()))));
    }
    println!("Outpost demo is running.");
    println!("  API:          http://{}/api/v1 (OpenAPI: /api/v1/openapi.json)", running.http);
    println!("  admin token:  {}", running.admin_token);
    println!("  MQTT broker:  {}", running.mqtt);
    println!("  devices:      {}", DEVICES.map(|d| d.0).join(", "));
    println!(
        "  models:       {} v1 and v2 in the registry, signed with a release key made for this demo",
        release::MODEL
    );
    println!("Try: curl -H 'Authorization: Bearer {}' http://{}/api/v1/devices", running.admin_token, running.http);
    let rollout = if args.no_rollout {
        None
    } else {
        let (running, stop) = (running.clone(), agents_stop.clone());
        Some(tokio::spawn(async move { roll_out(&running, &api, &stop).await }))
    };
    match args.seconds {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => {
            println!("Ctrl-C stops everything.");
            let _ = tokio::signal::ctrl_c().await;
        }
    }

    println!("Stopping the agents and the fleet…");
    agents_stop.cancel();
    if let Some(task) = rollout {
        match task.await {
            Ok(Err(e)) => eprintln!("rollout: {e:#}"),
            Err(e) => eprintln!("rollout: {e}"),
            Ok(Ok(())) => {}
        }
    }
    for (name, task) in agents {
        match tokio::time::timeout(Duration::from_secs(20), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("agent {name}: {e:#}"),
            _ => eprintln!("agent {name} did not stop in time"),
        }
    }
    let summary = summary(&running);
    fleet_stop.cancel();
    fleet.await??;
    println!("{summary}");
    Ok(())
}

/// Once every agent reports v1, rolls v2 out to them in stages and prints what happens until it ends.
async fn roll_out(running: &Running, api: &Api, stop: &CancellationToken) -> Result<()> {
    let devices = DEVICES.map(|d| d.0);
    if !release::reported(running, &devices, 1, stop).await {
        return Ok(());
    }
    let id = release::create(api, release::plan(&devices)).await?;
    println!(
        "Rolling out {} v2 in stages (1 device, 2, all). To watch it: \
         OUTPOST_FLEET_URL=http://{} OUTPOST_TOKEN={} outpost rollout status {id}",
        release::MODEL,
        running.http,
        running.admin_token
    );
    match release::follow(&running.rollouts, &id, stop).await {
        Some(State::Completed { .. }) => println!("Rollout {id} completed: every demo agent runs v2."),
        Some(State::Aborted { reason, .. }) => {
            println!("Rollout {id} aborted ({reason}); its canaries went back to v1.")
        }
        _ => {}
    }
    Ok(())
}

/// `defect-val×4 + defect-drift`: the frame sets in play order, repeats counted.
fn describe_sets(sets: &[&str]) -> String {
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for set in sets {
        match runs.last_mut() {
            Some((last, n)) if last == set => *n += 1,
            _ => runs.push((set, 1)),
        }
    }
    let runs = runs.into_iter().map(|(set, n)| if n > 1 { format!("{set}×{n}") } else { set.to_string() });
    runs.collect::<Vec<_>>().join(" + ")
}

/// What the fleet saw, for the last lines of the demo.
fn summary(running: &Running) -> String {
    let mut out = String::from("What the fleet saw:\n");
    for (name, site, sets) in DEVICES {
        let set = describe_sets(sets);
        let view =
            outpost_common::topics::DeviceId::new(name).ok().and_then(|id| running.ingest.device(&id).ok().flatten());
        let (frames, flagged) = view.as_ref().map_or((0, 0), |v| (v.totals.frames, v.totals.flagged));
        let served = view
            .as_ref()
            .and_then(|v| v.status.as_ref())
            .and_then(|s| s.models.iter().find(|m| m.name == release::MODEL))
            .map_or_else(|| "v?".to_string(), |m| format!("v{}", m.active));
        out.push_str(&format!(
            "  {name:<11} site={site:<8} {set:<28} {served:<3} {frames:>5} frames {flagged:>4} flagged\n"
        ));
    }
    for header in running.rollouts.list() {
        out.push_str(&format!(
            "  rollout {}: {} v{} {}\n",
            header.id,
            header.plan.model,
            header.plan.version,
            header.state.name()
        ));
    }
    let alerts = running.ingest.drift_alerts(None, 100).unwrap_or_default();
    if alerts.is_empty() {
        out.push_str(
            "  no drift alert yet (drift is judged against a baseline learned from each version's first frames)\n",
        );
    }
    for a in alerts {
        out.push_str(&format!("  drift alert: {}\n", serde_json::to_string(&a).unwrap_or_default()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn frame_sets_are_described_in_play_order_with_repeats_counted() {
        assert_eq!(super::describe_sets(&["defect-val"]), "defect-val");
        assert_eq!(super::describe_sets(&["a", "a", "a", "b", "a"]), "a×3 + b + a");
    }
}
