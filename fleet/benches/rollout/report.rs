//! The figures of one scenario and how they are printed.

/// One stage: times in seconds from the stage's start (the fleet's history entry).
#[derive(Debug, Clone, Default)]
pub struct StageFigures {
    pub stage: usize,
    /// Devices joining at this stage.
    pub devices: usize,
    /// Of them, how many received v2's command, and when (p50, last).
    pub received: usize,
    pub command_p50: Option<f64>,
    pub command_max: Option<f64>,
    /// How many committed v2, and when the last did.
    pub committed: usize,
    pub committed_max: Option<f64>,
    /// When the fleet passed (or aborted) the stage.
    pub passed: Option<f64>,
    /// Passed minus the moment the stage could pass at the earliest (dwell over and every device committed):
    /// status delivery, ticks, window requirements and gate evaluation.
    pub gate_lag: Option<f64>,
}

/// The figures of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub devices: usize,
    pub worse: bool,
    pub enroll_secs: f64,
    pub connect_secs: f64,
    pub connected: usize,
    pub outcome: String,
    /// The `POST /api/v1/rollouts` round trip (creation reads every targeted device and writes its record).
    pub create_secs: f64,
    pub rollout_secs: f64,
    pub converge_secs: f64,
    pub converged: usize,
    pub rolled_back: usize,
    pub rollback_max: Option<f64>,
    pub stages: Vec<StageFigures>,
    /// Fleet CPU (user + system) and wall time from creating the rollout to every device converged.
    pub fleet_cpu_secs: f64,
    pub wall_secs: f64,
    pub ticks: u64,
    pub tick_secs: f64,
    pub tick_max_secs: f64,
    /// Windows the ticks read from the store, and window points they judged (a tick reading the store for every
    /// judgement, as before the window cache, reads the latter).
    pub windows_read: u64,
    pub windows_judged: u64,
    pub commands: u64,
    pub max_commands: u64,
    pub events: u64,
    pub statuses: u64,
    pub windows: u64,
    pub windows_refused: u64,
    pub rss_idle: u64,
    pub rss_before: u64,
    pub rss_peak: u64,
    pub rss_after: u64,
    pub load_average: String,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} s"))
}

impl Report {
    fn name(&self) -> String {
        format!("{} devices{}", self.devices, if self.worse { ", worse v2" } else { "" })
    }

    fn per_device(&self, count: u64) -> f64 {
        if self.devices == 0 { 0.0 } else { count as f64 / self.devices as f64 }
    }

    pub fn print(&self) {
        println!("--- {} (load average {})", self.name(), self.load_average);
        println!(
            "  enrolled in {:.1} s, {} connected in {:.1} s; rollout created in {:.1} s, {} after {:.1} s; {} of {} \
             devices converged {:.1} s later",
            self.enroll_secs,
            self.connected,
            self.connect_secs,
            self.create_secs,
            self.outcome,
            self.rollout_secs,
            self.converged,
            self.devices,
            self.converge_secs
        );
        if self.worse {
            println!(
                "  rolled back: {} devices, the last on v1 again {} after the abort",
                self.rolled_back,
                secs(self.rollback_max)
            );
        }
        println!("  stage | joining | command p50 / last | committed (last) | passed at | gate lag");
        for s in &self.stages {
            println!(
                "  {} | {} | {} / {} ({} received) | {} ({}) | {} | {}",
                s.stage,
                s.devices,
                secs(s.command_p50),
                secs(s.command_max),
                s.received,
                s.committed,
                secs(s.committed_max),
                secs(s.passed),
                secs(s.gate_lag)
            );
        }
        println!(
            "  fleet: {:.1} s CPU over {:.1} s ({:.0}% of a core); {} ticks, {:.3} s in total, mean {:.1} ms, max {:.1} ms",
            self.fleet_cpu_secs,
            self.wall_secs,
            100.0 * self.fleet_cpu_secs / self.wall_secs.max(0.001),
            self.ticks,
            self.tick_secs,
            1000.0 * self.tick_secs / (self.ticks.max(1) as f64),
            1000.0 * self.tick_max_secs
        );
        println!(
            "  ticks judged {} window points and read {} windows from the store",
            self.windows_judged, self.windows_read
        );
        println!(
            "  per device: {:.2} commands received (max {}), {:.1} events, {:.1} statuses, {:.1} windows sent \
             ({} refused)",
            self.per_device(self.commands),
            self.max_commands,
            self.per_device(self.events),
            self.per_device(self.statuses),
            self.per_device(self.windows),
            self.windows_refused
        );
        println!(
            "  fleet RSS: {:.1} MiB with no device, {:.1} MiB before the rollout, {:.1} MiB peak, {:.1} MiB after \
             ({:.1} KiB per device at the peak)",
            mib(self.rss_idle),
            mib(self.rss_before),
            mib(self.rss_peak),
            mib(self.rss_after),
            self.rss_peak as f64 / 1024.0 / self.devices.max(1) as f64
        );
    }

    pub fn table(reports: &[Report]) {
        println!();
        println!(
            "| scenario | outcome | stage transitions (gate lag) | tick mean / max | fleet CPU | commands / events / statuses per device | RSS before / peak / after |"
        );
        println!("| --- | --- | --- | ---: | ---: | --- | --- |");
        for r in reports {
            let lags: Vec<String> = r.stages.iter().map(|s| secs(s.gate_lag)).collect();
            println!(
                "| {} | {} in {:.0} s | {} | {:.1} / {:.1} ms | {:.1} s | {:.2} / {:.1} / {:.1} | {:.0} / {:.0} / {:.0} MiB |",
                r.name(),
                r.outcome.split(':').next().unwrap_or(""),
                r.rollout_secs,
                lags.join(", "),
                1000.0 * r.tick_secs / (r.ticks.max(1) as f64),
                1000.0 * r.tick_max_secs,
                r.fleet_cpu_secs,
                r.per_device(r.commands),
                r.per_device(r.events),
                r.per_device(r.statuses),
                mib(r.rss_before),
                mib(r.rss_peak),
                mib(r.rss_after)
            );
        }
    }
}
