//! The node's side of joining: prove the join token, get the node's key
//! registered, learn (and pin) the cluster key.
//!
//! Owns: the exchange on `join/<node>` and what a joined node remembers
//! (`<data dir>/cluster.toml`: the cluster key, so later starts need no token).
//! Must not touch: pods, the network, the node's own key file (the caller
//! loads or creates it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, write_atomic};
use crate::master::tokens::{JoinToken, TokenError, join_proof};
use crate::transport::envelope::{self, MASTER_ID};
use crate::transport::messages::{JoinReply, JoinRequest};
use crate::transport::{
    KeyPair, Mqtt, MqttEvent, MqttOptions, PublicKey, Sealer, Topics, TransportError, Verifier,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    #[error("join token: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the master refused the join: {0}")]
    Refused(String),
    #[error(
        "the answer came from a master whose key ({got}) is not the one the token pins ({pinned}): \
         wrong broker or cluster"
    )]
    WrongMaster { pinned: String, got: String },
    #[error(
        "no answer from a master within {0:?}: is the broker URL right and the master running?"
    )]
    Timeout(Duration),
    #[error("{path}: {reason}")]
    State { path: PathBuf, reason: String },
}

/// What a joined node keeps about its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub node_name: String,
    /// The cluster key, hex.
    pub master_key: String,
    pub pod_cidr: String,
}

pub fn membership_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster.toml")
}

/// The membership this data dir holds, if it joined before.
pub fn load(data_dir: &Path) -> Result<Option<Membership>, JoinError> {
    let path = membership_path(data_dir);
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JoinError::State {
            path,
            reason: e.to_string(),
        }),
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| JoinError::State {
                path,
                reason: e.to_string(),
            }),
    }
}

impl Membership {
    pub fn master_key(&self, data_dir: &Path) -> Result<PublicKey, JoinError> {
        self.master_key.parse().map_err(|_| JoinError::State {
            path: membership_path(data_dir),
            reason: "master_key is not a public key".into(),
        })
    }
}

/// How long one join attempt waits for the master.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// The request is sent again this often (the master may be starting).
const RESEND: Duration = Duration::from_secs(3);

/// Joins the cluster behind `broker` with `token`; on success the
/// membership is written to the data dir and returned.
pub async fn join(
    broker: &crate::transport::BrokerConfig,
    topics: &Topics,
    node: &str,
    node_key: &KeyPair,
    token: &str,
    labels: BTreeMap<String, String>,
    data_dir: &Path,
) -> Result<Membership, JoinError> {
    let token = JoinToken::parse(token)?;
    let key_hex = node_key.public().to_hex();
    let nonce: u64 = rand::random();
    let request = JoinRequest {
        node: node.to_string(),
        proof: join_proof(&token.secret, node, &key_hex, nonce),
        key: key_hex,
        token_id: token.id.clone(),
        nonce,
        labels,
    };
    let me = envelope::node_id(node);
    let sealer = Sealer::new(node_key.clone(), me.clone());
    let client_id = format!(
        "bramble-join-{node}-{:06x}",
        rand::random::<u32>() & 0xff_ffff
    );
    let (mqtt, mut events) =
        Mqtt::connect(MqttOptions::for_broker(broker, &client_id), None).await?;
    let reply_topic = topics.join_reply(node);
    mqtt.subscribe(&reply_topic).await?;
    let join_topic = topics.join(node);
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    let mut resend = tokio::time::interval(RESEND);
    let mut verifier = Verifier::new(&[me.as_str()], Duration::from_secs(600));
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break Err(JoinError::Timeout(ANSWER_WAIT)),
            _ = resend.tick() => {
                // Each send is a fresh envelope (new sequence number), so the
                // master's replay check does not drop a resend.
                let bytes = sealer.seal(&join_topic, MASTER_ID, &request);
                if let Err(e) = mqtt.publish(&join_topic, bytes, false).await {
                    tracing::debug!(error = %e, "join request not sent yet");
                }
            }
            ev = events.recv() => match ev {
                Some(MqttEvent::Message { topic, payload }) if topic == reply_topic => {
                    match check_reply(&mut verifier, &token, &topic, &payload, nonce) {
                        Ok(Some(r)) => break r,
                        Ok(None) => {}
                        Err(e) => break Err(e),
                    }
                }
                Some(_) => {}
                None => break Err(JoinError::Timeout(ANSWER_WAIT)),
            },
        }
    };
    mqtt.disconnect().await;
    let (master_key, joined) = outcome?;
    let membership = Membership {
        node_name: node.to_string(),
        master_key,
        pod_cidr: joined.pod_cidr,
    };
    let text = toml::to_string(&membership).map_err(|e| JoinError::State {
        path: membership_path(data_dir),
        reason: e.to_string(),
    })?;
    write_atomic(&membership_path(data_dir), text.as_bytes())?;
    Ok(membership)
}

type Answer = Result<(String, crate::transport::messages::Joined), JoinError>;

/// `Ok(None)`: not an answer to this request (someone else's, or a forgery:
/// logged and ignored, the wait goes on).
fn check_reply(
    verifier: &mut Verifier,
    token: &JoinToken,
    topic: &str,
    payload: &[u8],
    nonce: u64,
) -> Result<Option<Answer>, JoinError> {
    let Ok((from, reply)) = envelope::peek::<JoinReply>(payload) else {
        tracing::warn!(%topic, "dropped a malformed join reply");
        return Ok(None);
    };
    let Ok(key) = reply.master_key.parse::<PublicKey>() else {
        tracing::warn!(%topic, "dropped a join reply with a malformed key");
        return Ok(None);
    };
    if from != MASTER_ID || reply.nonce != nonce {
        return Ok(None);
    }
    if key.fingerprint() != token.fingerprint {
        return Err(JoinError::WrongMaster {
            pinned: token.fingerprint.clone(),
            got: key.fingerprint(),
        });
    }
    verifier.trust(MASTER_ID, key);
    let reply = match verifier.open::<JoinReply>(topic, payload) {
        Ok(o) => o.body,
        Err(e) => {
            tracing::warn!(%topic, error = %e, "dropped a join reply");
            return Ok(None);
        }
    };
    Ok(Some(match reply.result {
        Ok(joined) => Ok((reply.master_key, joined)),
        Err(why) => Err(JoinError::Refused(why)),
    }))
}
