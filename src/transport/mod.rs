//! Transport: everything that crosses the MQTT broker.
//!
//! Owns: topic names ([`topics`]), the signed CBOR envelope and replay
//! protection ([`envelope`]), ed25519 keys on disk ([`keys`]), the message
//! bodies every role exchanges ([`messages`]), what is sealed to one node's
//! key ([`seal`]), the flow control of byte streams ([`stream`]), the
//! embedded rumqttd broker ([`broker`]), the rumqttc client wrapper
//! ([`client`]), and the tokens nodes show the master's registry mirror
//! ([`mirror_token`]).
//!
//! Must not touch: the store, the runtime, the network. The broker is untrusted:
//! nothing here treats a message as authentic until [`envelope::Verifier`] says
//! so, and nothing relies on the broker keeping retained messages or sessions.

pub mod broker;
pub mod client;
pub mod envelope;
pub mod keys;
pub mod messages;
pub mod mirror_token;
pub mod seal;
pub mod stream;
pub mod topics;

pub use client::{BrokerConfig, Mqtt, MqttEvent, MqttOptions, MqttVersion};
pub use envelope::{Envelope, EnvelopeError, Sealer, Verifier};
pub use keys::{KeyError, KeyPair, PublicKey};
pub use topics::Topics;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("broker URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("embedded broker: {0}")]
    Broker(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("no connection to the broker at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("broker CA file {path}: {reason}")]
    CaFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("TLS to the broker: {0}")]
    Tls(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, &'static str),
}
