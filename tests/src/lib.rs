//! Helpers shared by the end-to-end tests: real brokers (embedded rumqttd, a Mosquitto process), a plain MQTT
//! subscriber, test certificates, the defect fixtures, daemons under test (process.rs), and a TCP proxy that can lose what a server answers.

pub mod broker;
pub mod fixtures;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod subscriber;
