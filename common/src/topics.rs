//! MQTT topics of protocol v1: `outpost/v1/devices/{id}/{status|telemetry|events|commands}`.
//!
//! Design: a [`DeviceId`] is validated once, when it is made, so a topic built from one can never contain a
//! wildcard or an extra level; [`parse`] is the inverse of [`topic`] and accepts nothing else. The fleet still never
//! trusts the topic alone: payloads are authenticated with the device's key (see [`crate::protocol::auth`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Every v1 topic starts with this.
pub const ROOT: &str = "outpost/v1/devices";
/// The longest device id; it is also the MQTT username and appears in file names.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Why a device id or a topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("the device id is empty")]
    EmptyDeviceId,
    #[error("the device id is {0} bytes; at most {MAX_DEVICE_ID_LEN} are allowed")]
    DeviceIdTooLong(usize),
    #[error("the device id `{0}` may only contain A-Z a-z 0-9 . _ - and must start with a letter or digit")]
    DeviceIdChars(String),
    #[error("`{0}` is not an outpost/v1 device topic")]
    NotDeviceTopic(String),
    #[error("unknown channel `{0}` (expected status, telemetry, events or commands)")]
    UnknownChannel(String),
}

/// A device's id: 1 to 64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit. No MQTT wildcard
/// (`+`, `#`), no level separator (`/`), no `$`, no whitespace.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn new(id: impl Into<String>) -> Result<DeviceId, TopicError> {
        let id = id.into();
        let Some(first) = id.bytes().next() else {
            return Err(TopicError::EmptyDeviceId);
        };
        if id.len() > MAX_DEVICE_ID_LEN {
            return Err(TopicError::DeviceIdTooLong(id.len()));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-';
        if !first.is_ascii_alphanumeric() || !id.bytes().all(allowed) {
            return Err(TopicError::DeviceIdChars(id.escape_debug().to_string()));
        }
        Ok(DeviceId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

impl FromStr for DeviceId {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceId::new(s)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DeviceId::new(text).map_err(serde::de::Error::custom)
    }
}

/// The four per-device channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// agent → fleet; QoS 1, retained; the last will sets it offline.
    Status,
    /// agent → fleet; QoS 1; window summaries or per-frame results, each with `seq`.
    Telemetry,
    /// agent → fleet; QoS 1; flagged samples, update progress, swaps, command acknowledgements, errors.
    Events,
    /// fleet → agent; QoS 1, persistent session.
    Commands,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Status, Channel::Telemetry, Channel::Events, Channel::Commands];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Status => "status",
            Channel::Telemetry => "telemetry",
            Channel::Events => "events",
            Channel::Commands => "commands",
        }
    }

    /// Every channel is QoS 1: at least once, duplicates removed by `seq` or command id.
    pub fn qos(self) -> u8 {
        1
    }

    /// Only status is retained, so the fleet learns every device's state when it (re)subscribes.
    pub fn retain(self) -> bool {
        self == Channel::Status
    }

    /// True for the channels an agent publishes on.
    pub fn from_agent(self) -> bool {
        self != Channel::Commands
    }
}

impl FromStr for Channel {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| TopicError::UnknownChannel(s.to_string()))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `outpost/v1/devices/{id}/{channel}`.
pub fn topic(device: &DeviceId, channel: Channel) -> String {
    format!("{ROOT}/{device}/{channel}")
}

/// The device and channel of a v1 device topic; anything else is refused.
pub fn parse(topic: &str) -> Result<(DeviceId, Channel), TopicError> {
    let not_ours = || TopicError::NotDeviceTopic(topic.chars().take(200).collect());
    let rest = topic.strip_prefix(ROOT).and_then(|r| r.strip_prefix('/')).ok_or_else(not_ours)?;
    let (id, channel) = rest.split_once('/').ok_or_else(not_ours)?;
    Ok((DeviceId::new(id)?, channel.parse()?))
}

/// The filter matching `channel` for every device: `outpost/v1/devices/+/{channel}`.
pub fn all_devices(channel: Channel) -> String {
    format!("{ROOT}/+/{channel}")
}

/// An MQTT 5 shared subscription, so replicas in `group` split the messages: `$share/{group}/{filter}`.
pub fn shared(group: &str, filter: &str) -> String {
    format!("$share/{group}/{filter}")
}

/// Mosquitto ACL lines confining each device (username = device id) to its own topics.
pub fn mosquitto_acl_patterns() -> Vec<String> {
    Channel::ALL
        .into_iter()
        .map(|c| {
            let access = if c.from_agent() { "write" } else { "read" };
            format!("pattern {access} {ROOT}/%u/{c}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_id(id: &str, expected: Result<(), TopicError>) {
        assert_eq!(DeviceId::new(id).map(|_| ()), expected, "{id:?}");
    }

    #[test]
    fn device_ids() {
        check_id("cam-01", Ok(()));
        check_id("line3.station_7", Ok(()));
        check_id(&"a".repeat(64), Ok(()));
        check_id("", Err(TopicError::EmptyDeviceId));
        check_id(&"a".repeat(65), Err(TopicError::DeviceIdTooLong(65)));
        for bad in ["a+b", "a#", "a/b", "+", "#", "/", "-lead", ".hidden", "$SYS", "a b", "caf\u{e9}", "a\0"] {
            assert!(matches!(DeviceId::new(bad), Err(TopicError::DeviceIdChars(_))), "{bad:?} accepted");
        }
    }

    fn check_parse(topic: &str, expected: Result<(&str, Channel), ()>) {
        let got = parse(topic);
        match (got, expected) {
            (Ok((id, channel)), Ok((eid, echannel))) => {
                assert_eq!((id.as_str(), channel), (eid, echannel))
            }
            (Err(_), Err(())) => {}
            (got, expected) => panic!("{topic:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn topics_round_trip_and_reject_the_rest() {
        for channel in Channel::ALL {
            let id = DeviceId::new("cam-01").expect("valid id");
            let t = topic(&id, channel);
            assert_eq!(t, format!("outpost/v1/devices/cam-01/{channel}"));
            check_parse(&t, Ok(("cam-01", channel)));
        }
        check_parse("outpost/v1/devices/cam-01/telemetry/extra", Err(()));
        check_parse("outpost/v1/devices/+/telemetry", Err(()));
        check_parse("outpost/v1/devices/#", Err(()));
        check_parse("outpost/v1/devices//status", Err(()));
        check_parse("outpost/v2/devices/cam-01/status", Err(()));
        check_parse("outpost/v1/devices/cam-01/logs", Err(()));
        check_parse("outpost/v1/devicescam-01/status", Err(()));
        check_parse("", Err(()));
    }

    #[test]
    fn qos_retain_and_filters() {
        assert!(Channel::ALL.iter().all(|c| c.qos() == 1));
        assert_eq!(Channel::ALL.map(Channel::retain), [true, false, false, false]);
        assert_eq!(all_devices(Channel::Events), "outpost/v1/devices/+/events");
        assert_eq!(shared("fleet", &all_devices(Channel::Telemetry)), "$share/fleet/outpost/v1/devices/+/telemetry");
        assert_eq!(mosquitto_acl_patterns()[3], "pattern read outpost/v1/devices/%u/commands");
    }
}
