//! The engine's loop: a tick at every interval, then the commands it made due, sent through the fleet's MQTT client
//! and recorded in batches.

use std::time::Duration;

use outpost_common::topics::DeviceId;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::engine::Engine;

/// Ticks until `shutdown`: evaluates, persists, then sends what is due through `commands`.
pub async fn run(engine: Engine, commands: crate::mqtt::Commands, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(engine.config().tick_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let e = engine.clone();
        let outgoing = match tokio::task::spawn_blocking(move || e.tick(OffsetDateTime::now_utc())).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rollout tick failed");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "rollout tick panicked");
                continue;
            }
        };
        // Sent commands are recorded in batches: a blocking hop and a lock per command made the fan-out of a
        // big stage take ~5 ms per device at 10,000 devices (docs/BENCHMARKS.md).
        let mut sent = Vec::new();
        for o in outgoing {
            let Ok(device) = DeviceId::new(&o.device) else { continue };
            let Some(key) = engine.device_key(&device) else {
                tracing::warn!(device = %o.device, "device revoked; rollout command not sent");
                continue;
            };
            match commands.send(&device, &key, &o.command).await {
                Ok(()) => {
                    tracing::info!(rollout = %o.rollout, device = %o.device, version = o.version, "model assigned");
                    sent.push((o.rollout, o.device, o.version, OffsetDateTime::now_utc()));
                    if sent.len() >= SENT_BATCH {
                        record_sent(&engine, std::mem::take(&mut sent)).await;
                    }
                }
                Err(e) => tracing::warn!(device = %o.device, error = %e, "rollout command not sent"),
            }
        }
        record_sent(&engine, sent).await;
    }
}

/// Sent commands recorded per store write.
const SENT_BATCH: usize = 256;

async fn record_sent(engine: &Engine, sent: Vec<(String, String, u64, OffsetDateTime)>) {
    if sent.is_empty() {
        return;
    }
    let e = engine.clone();
    let count = sent.len();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || e.sent_all(&sent)).await {
        tracing::warn!(error = %e, commands = count, "rollout commands sent but not recorded");
    }
}
