//! Drift alerts to an optional webhook: each alert POSTed as JSON, retried with backoff, never blocking ingest.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::drift::DriftAlert;

/// How many alerts may wait for delivery; beyond it new ones are dropped (and logged): the store keeps them all.
const QUEUE: usize = 1024;

/// A sender for alerts; `send` never waits.
#[derive(Debug, Clone)]
pub struct Alerts {
    tx: Option<mpsc::Sender<DriftAlert>>,
}

impl Alerts {
    /// No webhook: alerts are only stored and logged.
    pub fn none() -> Alerts {
        Alerts { tx: None }
    }

    pub fn send(&self, alert: DriftAlert) {
        if let Some(tx) = &self.tx
            && tx.try_send(alert).is_err()
        {
            tracing::warn!("drift alert not queued for the webhook (queue full or stopped)");
        }
    }
}

/// Starts delivery to `url` until `shutdown`.
pub fn start(url: String, client: reqwest::Client, shutdown: CancellationToken) -> Alerts {
    let (tx, mut rx) = mpsc::channel::<DriftAlert>(QUEUE);
    tokio::spawn(async move {
        loop {
            let alert = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = rx.recv() => match a { Some(a) => a, None => return },
            };
            let mut wait = Duration::from_millis(500);
            for attempt in 1..=5u32 {
                match client.post(&url).json(&alert).send().await {
                    Ok(r) if r.status().is_success() => break,
                    Ok(r) => tracing::warn!(status = r.status().as_u16(), attempt, "drift webhook refused the alert"),
                    Err(e) => tracing::warn!(error = %e, attempt, "drift webhook unreachable"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    });
    Alerts { tx: Some(tx) }
}
