//! A plain rumqttc client for tests: a persistent-session QoS 1 subscriber that records every message it receives
//! and resubscribes after each reconnect, plus a way to publish (e.g. commands to a device).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

#[derive(Debug)]
pub struct Subscriber {
    client: AsyncClient,
    received: Arc<Mutex<Vec<Received>>>,
    subscribed: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects to `127.0.0.1:port` as `client_id` (clean_session = false) and subscribes to `filter` at QoS 1;
    /// returns once the first SUBACK arrived (or after 10 s).
    pub async fn start(port: u16, client_id: &str, filter: &str) -> Subscriber {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_clean_session(false).set_keep_alive(Duration::from_secs(5)).set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let received = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let task = {
            let (client, received, subscribed, filter) =
                (client.clone(), received.clone(), subscribed.clone(), filter.to_string());
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.store(true, Ordering::Release),
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let message = Received { topic: p.topic, payload: p.payload.to_vec(), retain: p.retain };
                            received.lock().unwrap_or_else(|e| e.into_inner()).push(message);
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        };
        let subscriber = Subscriber { client, received, subscribed, task };
        subscriber.wait_until(Duration::from_secs(10), |_| subscriber.subscribed.load(Ordering::Acquire)).await;
        subscriber
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Polls `condition` over what was received until it holds or `timeout` passes; returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, condition: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(&self.received()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes at QoS 1.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        let _ = self.client.publish(topic, QoS::AtLeastOnce, false, payload).await;
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
