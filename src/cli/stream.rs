//! The client's end of node streams (`logs`, `exec`, `port-forward`): one
//! MQTT connection shared by any number of streams and commands.
//!
//! [`Mux`] owns the connection's incoming messages: replies go to the command
//! that waits for them, stream messages to the stream they name. A stream is
//! opened by subscribing to `node/+/stream/<id>/out` (before asking, so no
//! frame is missed), asking the master, and trusting the node key the master
//! answers with; from then on [`transport::stream`](crate::transport::stream)
//! runs it.
//!
//! Must not touch: what the streams carry (the verbs do) or the terminal.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api::{Kind, Object};
use crate::transport::envelope::{self, MASTER_ID};
use crate::transport::messages::{ApiError, Command, Reply, Request, Response, StreamMsg};
use crate::transport::stream::{Engine, MqttLink, Outcome, Publish, Role};
use crate::transport::{Mqtt, MqttEvent, PublicKey, Sealer, Topics, Verifier};

use super::CliError;
use super::client::{CONNECT_TIMEOUT, Client, REPLY_TIMEOUT};

/// The pod a command-line argument names: `POD`, `pod/POD`, or a pod of a
/// Deployment or ReplicaSet (a running one first, then by name), as kubectl
/// picks one for `logs` and `exec`.
pub async fn resolve_pod(client: &mut Client, what: &str, ns: &str) -> Result<String, CliError> {
    let Some((kind, name)) = what.split_once('/') else {
        return Ok(what.to_string());
    };
    let kind = super::targets::kind(kind)?;
    if kind == Kind::Pod {
        return Ok(name.to_string());
    }
    let objs = super::get::fetch(client, &[(kind, Some(name.to_string()))], Some(ns), None).await?;
    let selector = match objs.first() {
        Some(Object::Deployment(d)) => d.spec.as_ref().map(|s| s.selector.clone()),
        Some(Object::ReplicaSet(r)) => r.spec.as_ref().map(|s| s.selector.clone()),
        _ => None,
    }
    .and_then(|s| s.match_labels)
    .ok_or_else(|| {
        CliError::Usage(format!(
            "cannot use {what}: not a pod, deployment or replicaset"
        ))
    })?;
    let sel = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = super::get::fetch(client, &[(Kind::Pod, None)], Some(ns), Some(&sel)).await?;
    pods.iter()
        .filter_map(|p| match p {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .map(|p| {
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            (!running, p.metadata.name.clone().unwrap_or_default())
        })
        .min()
        .map(|(_, name)| name)
        .ok_or_else(|| CliError::Usage(format!("{what} has no pods")))
}

#[derive(Default)]
struct Routes {
    replies: HashMap<u64, oneshot::Sender<Result<Response, ApiError>>>,
    /// Stream id → raw messages on its `out` topic.
    streams: HashMap<String, mpsc::Sender<(String, Bytes)>>,
    /// Waiting for the broker's next subscription acknowledgement, in order.
    subacks: VecDeque<oneshot::Sender<()>>,
}

struct Shared {
    mqtt: Mqtt,
    sealer: Arc<Sealer>,
    topics: Topics,
    client_id: String,
    reply_topic: String,
    routes: Mutex<Routes>,
}

/// One connection, many streams.
pub struct Mux {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Mux {
    pub fn new(client: Client) -> Mux {
        let Client {
            mqtt,
            mut events,
            sealer,
            mut verifier,
            topics,
            client_id,
            ..
        } = client;
        let shared = Arc::new(Shared {
            reply_topic: topics.reply(&client_id),
            mqtt,
            sealer: Arc::new(sealer),
            topics,
            client_id,
            routes: Mutex::default(),
        });
        let inner = shared.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    MqttEvent::Message { topic, payload } if topic == inner.reply_topic => {
                        match verifier.open::<Reply>(&topic, &payload) {
                            Ok(o) if o.from == MASTER_ID => {
                                let waiter = inner.lock().replies.remove(&o.body.id);
                                if let Some(w) = waiter {
                                    let _ = w.send(o.body.result);
                                }
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "dropped a reply"),
                        }
                    }
                    MqttEvent::Message { topic, payload } => {
                        let Some(id) = inner.topics.stream_id_of(&topic) else {
                            continue;
                        };
                        let route = inner.lock().streams.get(id).cloned();
                        // A full route drops the message: the node sends it again.
                        if let Some(r) = route {
                            let _ = r.try_send((topic, payload));
                        }
                    }
                    MqttEvent::Subscribed => {
                        if let Some(w) = inner.lock().subacks.pop_front() {
                            let _ = w.send(());
                        }
                    }
                    MqttEvent::Connected => {}
                }
            }
            // The connection is gone: every waiter learns it by its sender
            // being dropped.
            let mut routes = inner.lock();
            routes.replies.clear();
            routes.streams.clear();
            routes.subacks.clear();
        });
        Mux { shared, task }
    }

    /// Sends one command and waits for its reply.
    pub async fn call(&self, request: Request) -> Result<Response, CliError> {
        let s = &self.shared;
        let id = rand::random::<u64>();
        let (tx, rx) = oneshot::channel();
        s.lock().replies.insert(id, tx);
        let topic = s.topics.cmd(request.verb());
        let cmd = Command {
            id,
            reply_to: s.reply_topic.clone(),
            reply_as: format!("client:{}", s.client_id),
            request,
        };
        let bytes = s.sealer.seal(&topic, MASTER_ID, &cmd);
        s.mqtt.publish(&topic, bytes, false).await?;
        let answer = tokio::time::timeout(REPLY_TIMEOUT, rx).await;
        s.lock().replies.remove(&id);
        match answer {
            Ok(Ok(result)) => result.map_err(CliError::Api),
            _ => Err(CliError::Timeout(
                "no answer from the master (is `bramble up` or `bramble master` running?)".into(),
            )),
        }
    }

    async fn subscribe(&self, filter: &str) -> Result<(), CliError> {
        let (tx, rx) = oneshot::channel();
        self.shared.lock().subacks.push_back(tx);
        self.shared.mqtt.subscribe(filter).await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(CliError::Timeout(format!("subscribing to {filter}"))),
        }
    }

    /// Opens a stream: `request` builds the command from the stream id.
    pub async fn open(
        &self,
        request: impl FnOnce(String) -> Request,
    ) -> Result<StreamConn, CliError> {
        let s = &self.shared;
        let id = format!("{:016x}", rand::random::<u64>());
        let (raw_tx, mut raw_rx) = mpsc::channel::<(String, Bytes)>(256);
        s.lock().streams.insert(id.clone(), raw_tx);
        let filter = s.topics.stream_out_any_node(&id);
        let opened = async {
            self.subscribe(&filter).await?;
            match self.call(request(id.clone())).await? {
                Response::Stream {
                    node,
                    node_key,
                    container,
                } => Ok((node, node_key.parse::<PublicKey>()?, container)),
                other => Err(CliError::Unexpected(Box::new(other))),
            }
        }
        .await;
        let (node, key, container) = match opened {
            Ok(x) => x,
            Err(e) => {
                s.lock().streams.remove(&id);
                let _ = s.mqtt.unsubscribe(&filter).await;
                return Err(e);
            }
        };
        // The node's messages, verified: only from it, only on its topic.
        let node_id = envelope::node_id(&node);
        let me = s.sealer.id().to_string();
        let mut verifier = Verifier::new(&[me.as_str()], Duration::from_secs(600));
        verifier.trust(node_id.clone(), key);
        let out_topic = s.topics.stream_out(&node, &id);
        let (msg_tx, incoming) = mpsc::channel(256);
        let from = node_id.clone();
        let verify = tokio::spawn(async move {
            while let Some((topic, payload)) = raw_rx.recv().await {
                if topic != out_topic {
                    continue;
                }
                match verifier.open::<StreamMsg>(&topic, &payload) {
                    Ok(o) if o.from == from => {
                        if msg_tx.send(o.body).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "dropped a stream message"),
                }
            }
        });
        let link = |topic: String| MqttLink {
            mqtt: s.mqtt.clone(),
            sealer: s.sealer.clone(),
            topic,
            peer: node_id.clone(),
        };
        let in_topic = s.topics.stream_in(&node, &id);
        Ok(StreamConn {
            engine: Some(Engine::new(link(in_topic.clone()), Role::Client, incoming)),
            closer: link(in_topic),
            node,
            container,
            id,
            filter,
            shared: s.clone(),
            verify,
        })
    }

    /// Disconnects.
    pub async fn close(self) {
        self.shared.mqtt.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().expect("mux routes lock")
    }
}

/// An opened stream: its engine (taken once to run it) and what to tidy up.
pub struct StreamConn {
    pub engine: Option<Engine<MqttLink>>,
    /// For `Close`, which may be sent while the engine runs.
    closer: MqttLink,
    pub node: String,
    /// The container the master chose or confirmed.
    pub container: Option<String>,
    id: String,
    filter: String,
    shared: Arc<Shared>,
    verify: JoinHandle<()>,
}

impl StreamConn {
    /// Tells the node to stop at once (Ctrl-C, a local error).
    pub async fn close(&self) {
        let _ = self.closer.publish(&StreamMsg::Close).await;
    }

    /// Stops listening for this stream.
    pub async fn finish(self) {
        self.shared.lock().streams.remove(&self.id);
        let _ = self.shared.mqtt.unsubscribe(&self.filter).await;
        self.verify.abort();
    }
}

/// The CLI's words for an engine that stopped without an `End`.
pub fn outcome_error(node: &str, outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Ended => None,
        Outcome::Closed => Some("the stream was closed".into()),
        Outcome::LeaseExpired => Some(format!("lost contact with node {node}")),
        Outcome::Detached => Some("the connection to the broker closed".into()),
        Outcome::Transport(e) => Some(e.to_string()),
    }
}
