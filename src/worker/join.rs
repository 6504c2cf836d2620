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
use crate::transport::envelope::{self, Clock, MASTER_ID};
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
    let clock = Clock::system();
    join_with_clock(
        broker, topics, node, node_key, token, labels, data_dir, &clock,
    )
    .await
}

/// [`join`] with the request stamped by `clock`. A master that finds the
/// stamp off its clock answers with its time, which `clock` takes (the
/// nonce binds the answer to this request) before the request goes again.
#[allow(clippy::too_many_arguments)]
pub async fn join_with_clock(
    broker: &crate::transport::BrokerConfig,
    topics: &Topics,
    node: &str,
    node_key: &KeyPair,
    token: &str,
    labels: BTreeMap<String, String>,
    data_dir: &Path,
    clock: &Clock,
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
    let sealer = Sealer::new(node_key.clone(), me.clone()).with_clock(clock.clone());
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
    // Every answer names the nonce, so none predates the first send.
    let first_sent = clock.monotonic();
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
                        Ok(Reply::Answer(r)) => break r,
                        Ok(Reply::Ignored) => {}
                        Ok(Reply::ClockOff { master_ms, skew_ms }) => {
                            let by = clock.sync(master_ms, first_sent);
                            tracing::info!(skew_ms, corrected_ms = ?by, "our clock is off the master's; asking again in its time");
                            resend.reset_immediately();
                        }
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

/// What a message on the reply topic means for this request.
#[derive(Debug)]
enum Reply {
    Answer(Answer),
    /// Not an answer to this request (someone else's, or a forgery: logged
    /// and ignored, the wait goes on).
    Ignored,
    /// The master found our stamp `skew_ms` off its clock and admitted
    /// nothing; its time was `master_ms` when it answered.
    ClockOff {
        master_ms: i64,
        skew_ms: i64,
    },
}

/// The reply must name our nonce and come from the cluster key the token
/// pins; its age does not matter (the nonce is new for this join), so a
/// node whose clock is hours off still understands the answer.
fn check_reply(
    verifier: &mut Verifier,
    token: &JoinToken,
    topic: &str,
    payload: &[u8],
    nonce: u64,
) -> Result<Reply, JoinError> {
    let Ok((from, reply)) = envelope::peek::<JoinReply>(payload) else {
        tracing::warn!(%topic, "dropped a malformed join reply");
        return Ok(Reply::Ignored);
    };
    let Ok(key) = reply.master_key.parse::<PublicKey>() else {
        tracing::warn!(%topic, "dropped a join reply with a malformed key");
        return Ok(Reply::Ignored);
    };
    if from != MASTER_ID || reply.nonce != nonce {
        return Ok(Reply::Ignored);
    }
    if key.fingerprint() != token.fingerprint {
        return Err(JoinError::WrongMaster {
            pinned: token.fingerprint.clone(),
            got: key.fingerprint(),
        });
    }
    verifier.trust(MASTER_ID, key);
    let opened = match verifier.open_any_age::<JoinReply>(topic, payload) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(%topic, error = %e, "dropped a join reply");
            return Ok(Reply::Ignored);
        }
    };
    let reply = opened.body;
    if let Some(skew_ms) = reply.clock_skew_ms {
        return Ok(Reply::ClockOff {
            master_ms: opened.ts,
            skew_ms,
        });
    }
    Ok(Reply::Answer(match reply.result {
        Ok(joined) => Ok((reply.master_key, joined)),
        Err(why) => Err(JoinError::Refused(why)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::envelope::TimeSource;
    use crate::transport::messages::Joined;
    use std::sync::Arc;

    /// The wall clock this many ms off.
    struct Off(i64);

    impl TimeSource for Off {
        fn wall_ms(&self) -> i64 {
            envelope::now_ms() + self.0
        }
        fn monotonic(&self) -> Duration {
            Duration::ZERO
        }
    }

    fn reply(cluster: &KeyPair, clock_off_ms: i64, nonce: u64, skew: Option<i64>) -> Vec<u8> {
        let sealer = Sealer::new(cluster.clone(), MASTER_ID)
            .with_clock(Clock::with_source(Arc::new(Off(clock_off_ms))));
        let body = JoinReply {
            nonce,
            master_key: cluster.public().to_hex(),
            result: Ok(Joined {
                pod_cidr: "10.88.1.0/24".into(),
            }),
            clock_skew_ms: skew,
        };
        sealer.seal("j/reply", &envelope::node_id("pi"), &body)
    }

    #[test]
    fn replies_are_taken_whatever_their_age_when_they_name_our_nonce() {
        let cluster = KeyPair::generate();
        let token = JoinToken {
            fingerprint: cluster.public().fingerprint(),
            id: "abc".into(),
            secret: "s".into(),
        };
        let mut v = Verifier::new(
            &[envelope::node_id("pi").as_str()],
            Duration::from_secs(600),
        );
        const HOURS_5: i64 = 5 * 3_600_000;
        // The master's clock is 5 h from ours: its answer still counts.
        let got = check_reply(
            &mut v,
            &token,
            "j/reply",
            &reply(&cluster, HOURS_5, 7, None),
            7,
        );
        assert!(matches!(got, Ok(Reply::Answer(Ok(_)))), "{got:?}");
        // Its "your clock is off" answer carries its time.
        let got = check_reply(
            &mut v,
            &token,
            "j/reply",
            &reply(&cluster, HOURS_5, 7, Some(-HOURS_5)),
            7,
        );
        let Ok(Reply::ClockOff { master_ms, skew_ms }) = got else {
            panic!("{got:?}");
        };
        assert_eq!(skew_ms, -HOURS_5);
        assert!(master_ms > envelope::now_ms() + HOURS_5 - 60_000);
        // Another request's answer, or another cluster's, is not ours.
        let got = check_reply(&mut v, &token, "j/reply", &reply(&cluster, 0, 8, None), 7);
        assert!(matches!(got, Ok(Reply::Ignored)), "{got:?}");
        let stranger = KeyPair::generate();
        let got = check_reply(&mut v, &token, "j/reply", &reply(&stranger, 0, 7, None), 7);
        assert!(matches!(got, Err(JoinError::WrongMaster { .. })), "{got:?}");
    }
}
