//! Helpers shared by the end-to-end tests: real brokers (embedded rumqttd, a Mosquitto process) and a plain MQTT
//! subscriber.

pub mod broker;
pub mod subscriber;
