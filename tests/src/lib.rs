//! Helpers shared by the end-to-end tests: real brokers (embedded rumqttd, a Mosquitto process), a plain MQTT
//! subscriber and test certificates.

pub mod broker;
pub mod pki;
pub mod subscriber;
