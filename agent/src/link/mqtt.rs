//! rumqttc behind one small surface for MQTT 3.1.1 and 5: build a client and event loop, send requests without
//! blocking, and turn the event loop's events into the few [`Wire`] events the link acts on.
//!
//! Design: a fresh client and event loop are built for every connection attempt, so rumqttc never retransmits
//! anything on its own (its in-memory retry queue would otherwise replay publishes the link also replays from the
//! outbox, and break the order in which publishes are matched to packet ids). Within one connection, requests are
//! handled in the order they are sent, so the n-th `Outgoing::Publish(pkid)` event belongs to the n-th publish sent.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5;

use super::ConnectFailure;

/// The largest packet either way: a sealed command carrying a manifest is up to ~350 KB.
const MAX_PACKET_BYTES: usize = 512 * 1024;

/// Everything needed to (re)build a connection.
#[derive(Clone)]
pub struct Options {
    pub v5: bool,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: String,
    pub password: Option<String>,
    pub keepalive: Duration,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub inflight: u16,
    pub session_expiry_secs: u32,
    pub connect_timeout_secs: u64,
    /// Topic and payload of the retained last will.
    pub will: (String, Vec<u8>),
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("v5", &self.v5)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// What the link needs to know from the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    Connected {
        session_present: bool,
    },
    /// A publish was written; publishes are written in the order they were sent to the client.
    PublishSent(u16),
    /// The broker acknowledged a publish; `accepted` is false for an MQTT 5 error reason code.
    PubAck {
        pkid: u16,
        accepted: bool,
    },
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    DisconnectSent,
    Other,
}

/// The request side of one connection. Every call returns at once; a full or closed queue is an error.
#[derive(Debug, Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The event loop of one connection attempt.
pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventLoop::V4(_) => "EventLoop::V4",
            EventLoop::V5(_) => "EventLoop::V5",
        })
    }
}

/// Builds the client and event loop for one connection attempt.
pub fn connect(o: &Options) -> (Client, EventLoop) {
    // Room for a full window of publishes plus status, subscribe and disconnect.
    let capacity = usize::from(o.inflight) * 2 + 16;
    if o.v5 {
        let mut m = v5::MqttOptions::new(&o.client_id, &o.host, o.port);
        m.set_keep_alive(o.keepalive)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(o.session_expiry_secs))
            .set_outgoing_inflight_upper_limit(o.inflight)
            .set_request_channel_capacity(capacity)
            .set_connection_timeout(o.connect_timeout_secs)
            .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
            .set_last_will(v5::mqttbytes::v5::LastWill::new(
                &o.will.0,
                o.will.1.clone(),
                v5::mqttbytes::QoS::AtLeastOnce,
                true,
                None,
            ));
        match &o.password {
            Some(p) => m.set_credentials(&o.username, p),
            None => m.set_credentials(&o.username, ""),
        };
        if let Some(tls) = &o.tls {
            m.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())));
        }
        let (client, eventloop) = v5::AsyncClient::new(m, capacity);
        (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
    } else {
        let mut m = rumqttc::MqttOptions::new(&o.client_id, &o.host, o.port);
        m.set_keep_alive(o.keepalive)
            .set_clean_session(false)
            .set_inflight(o.inflight)
            .set_request_channel_capacity(capacity)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_last_will(rumqttc::LastWill::new(&o.will.0, o.will.1.clone(), rumqttc::QoS::AtLeastOnce, true));
        if let Some(p) = &o.password {
            m.set_credentials(&o.username, p);
        } else {
            m.set_credentials(&o.username, "");
        }
        if let Some(tls) = &o.tls {
            m.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())));
        }
        let (client, mut eventloop) = rumqttc::AsyncClient::new(m, capacity);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(o.connect_timeout_secs);
        eventloop.set_network_options(network);
        (Client::V4(client), EventLoop::V4(Box::new(eventloop)))
    }
}

impl Client {
    pub fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) -> bool {
        match self {
            Client::V4(c) => c.try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload).is_ok(),
            Client::V5(c) => c.try_publish(topic, v5::mqttbytes::QoS::AtLeastOnce, retain, payload).is_ok(),
        }
    }

    pub fn subscribe(&self, filter: &str) -> bool {
        match self {
            Client::V4(c) => c.try_subscribe(filter, rumqttc::QoS::AtLeastOnce).is_ok(),
            Client::V5(c) => c.try_subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce).is_ok(),
        }
    }

    pub fn disconnect(&self) -> bool {
        match self {
            Client::V4(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        }
    }
}

/// Why a connection attempt failed or a connection ended: the kind and rumqttc's words for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Down {
    pub failure: ConnectFailure,
    pub detail: String,
}

impl EventLoop {
    /// The next event; an error ends this connection (build a new one to reconnect).
    pub async fn poll(&mut self) -> Result<Wire, Down> {
        match self {
            EventLoop::V4(el) => el.poll().await.map(v4_event).map_err(|e| down(v4_failure(&e), &e)),
            EventLoop::V5(el) => el.poll().await.map(v5_event).map_err(|e| down(v5_failure(&e), &e)),
        }
    }
}

fn down(failure: ConnectFailure, error: &(dyn std::error::Error + 'static)) -> Down {
    // rumqttc wraps a TLS failure seen after the handshake (a fatal alert such as "certificate required") in I/O
    // and state errors whose text is a Debug dump; name the TLS error itself instead.
    let detail = match tls_error(error) {
        Some(tls) => format!("TLS: {tls}"),
        None => error.to_string(),
    };
    Down { failure, detail }
}

fn v4_failure(error: &rumqttc::ConnectionError) -> ConnectFailure {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E};
    match error {
        E::ConnectionRefused(Code::BadUserNamePassword | Code::NotAuthorized) => ConnectFailure::NotAuthorized,
        E::ConnectionRefused(_) => ConnectFailure::Refused,
        E::Tls(_) => ConnectFailure::Tls,
        e if tls_error(e).is_some() => ConnectFailure::Tls,
        E::Io(_) | E::NetworkTimeout => ConnectFailure::Unreachable,
        _ => ConnectFailure::Closed,
    }
}

fn v5_failure(error: &v5::ConnectionError) -> ConnectFailure {
    use v5::ConnectionError as E;
    use v5::mqttbytes::v5::ConnectReturnCode as Code;
    match error {
        E::ConnectionRefused(
            Code::BadUserNamePassword | Code::NotAuthorized | Code::Banned | Code::BadAuthenticationMethod,
        ) => ConnectFailure::NotAuthorized,
        E::ConnectionRefused(_) => ConnectFailure::Refused,
        E::Tls(_) => ConnectFailure::Tls,
        e if tls_error(e).is_some() => ConnectFailure::Tls,
        E::Io(_) | E::Timeout(_) => ConnectFailure::Unreachable,
        _ => ConnectFailure::Closed,
    }
}

/// The rustls error somewhere in `error`'s chain, looking inside I/O errors too (their `source` skips the error
/// they wrap).
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            if let Some(tls) = tls_error(inner) {
                return Some(tls);
            }
        }
        next = e.source();
    }
    None
}

fn v4_event(event: rumqttc::Event) -> Wire {
    use rumqttc::{Event, Outgoing, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(c)) => Wire::Connected { session_present: c.session_present },
        Event::Incoming(Packet::PubAck(a)) => Wire::PubAck { pkid: a.pkid, accepted: true },
        Event::Incoming(Packet::Publish(p)) => Wire::Message { topic: p.topic, payload: p.payload.to_vec() },
        Event::Outgoing(Outgoing::Publish(pkid)) => Wire::PublishSent(pkid),
        Event::Outgoing(Outgoing::Disconnect) => Wire::DisconnectSent,
        _ => Wire::Other,
    }
}

fn v5_event(event: v5::Event) -> Wire {
    use rumqttc::Outgoing;
    use v5::mqttbytes::v5::{Packet, PubAckReason};
    match event {
        v5::Event::Incoming(Packet::ConnAck(c)) => Wire::Connected { session_present: c.session_present },
        v5::Event::Incoming(Packet::PubAck(a)) => Wire::PubAck {
            pkid: a.pkid,
            accepted: matches!(a.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers),
        },
        v5::Event::Incoming(Packet::Publish(p)) => {
            Wire::Message { topic: String::from_utf8_lossy(&p.topic).into_owned(), payload: p.payload.to_vec() }
        }
        v5::Event::Outgoing(Outgoing::Publish(pkid)) => Wire::PublishSent(pkid),
        v5::Event::Outgoing(Outgoing::Disconnect) => Wire::DisconnectSent,
        _ => Wire::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use rumqttc::{ConnectReturnCode, ConnectionError, StateError};
    use v5::mqttbytes::v5::ConnectReturnCode as V5Code;

    use super::*;

    fn check(error: ConnectionError, failure: ConnectFailure, detail: &str) {
        let down = down(v4_failure(&error), &error);
        assert_eq!(down.failure, failure, "{error:?}");
        assert!(down.detail.contains(detail), "{error:?}: `{}` lacks `{detail}`", down.detail);
    }

    #[test]
    fn connection_errors_are_classified_by_what_to_check() {
        use ConnectFailure::*;
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        // A fatal alert read after the handshake: rumqttc wraps it in a state error around an I/O error.
        let after_handshake = StateError::Io(io::Error::new(io::ErrorKind::InvalidData, alert.clone()));
        check(ConnectionError::MqttState(after_handshake), Tls, "TLS: received fatal alert: CertificateRequired");
        let during_handshake = rumqttc::TlsError::Io(io::Error::new(io::ErrorKind::InvalidData, alert));
        check(ConnectionError::Tls(during_handshake), Tls, "CertificateRequired");
        check(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized), NotAuthorized, "NotAuthorized");
        check(ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword), NotAuthorized, "BadUser");
        check(ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId), Refused, "BadClientId");
        check(ConnectionError::Io(io::ErrorKind::ConnectionRefused.into()), Unreachable, "refused");
        check(ConnectionError::NetworkTimeout, Unreachable, "timeout");
        check(ConnectionError::MqttState(StateError::ConnectionAborted), Closed, "closed by peer");

        let v5_refused = |code| v5_failure(&v5::ConnectionError::ConnectionRefused(code));
        assert_eq!(v5_refused(V5Code::BadUserNamePassword), NotAuthorized);
        assert_eq!(v5_refused(V5Code::Banned), NotAuthorized);
        assert_eq!(v5_refused(V5Code::ServerBusy), Refused);
        let v5_io = v5::ConnectionError::Io(io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError));
        assert_eq!(v5_failure(&v5_io), Tls);
    }
}
