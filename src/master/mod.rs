//! The master: command handler, controllers, scheduler and the publisher of
//! node assignments and the Service table.
//!
//! Owns: the reconcile loop over the store, the verification of every command
//! and status report it receives, and what it tells the workers.
//!
//! Must not touch: containers, network namespaces or the proxy (the workers'
//! business). Heartbeats stay in memory; only changes reach the store.

pub mod allocate;
pub mod api_json;
pub mod commands;
pub mod controllers;
pub mod discovery;
pub mod join;
pub mod mirror;
pub mod publish;
pub mod scheduler;
pub mod services;
pub mod status;
pub mod tokens;
pub mod usage;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, NodeSpec, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::api::routing::{ClusterNetwork, ServiceRoute};
use crate::api::{Kind, NODE_KEY_ANNOTATION, Object, ObjectKey};
use crate::store::{Mode, Op, SeenId, Store, StoreError};
use crate::transport::envelope::{self, DropLog, MASTER_ID, TO_ANYONE};
use crate::transport::messages::{
    ApiError, Assignment, ClockEcho, Command, ErrorCode, EventSubject, JoinReply, JoinRequest,
    Joined, NodeReport, ObjectEvent, Online, Reply, ServiceTable, StreamMsg,
};
use crate::transport::seal;
use crate::transport::{
    KeyPair, Mqtt, MqttEvent, MqttOptions, PublicKey, Sealer, Topics, TransportError, Verifier,
};
use commands::{Caller, Ctx, Effect, Settings};
use controllers::Snapshot;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MasterError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no free pod CIDR left in {0}")]
    NoPodCidr(Ipv4Net),
}

pub struct MasterConfig {
    pub store: Store,
    pub cluster_key: KeyPair,
    pub admin_keys: Vec<PublicKey>,
    pub topics: Topics,
    pub settings: Settings,
    /// The broker and how to reach it (TLS CA, MQTT version).
    pub broker: crate::transport::BrokerConfig,
    /// How long a silent node stays Ready.
    pub node_grace: Duration,
    /// How long a node is NotReady before its pods are evicted.
    pub pod_eviction: Duration,
    /// Period of the full reconcile pass that runs even when nothing changed.
    pub resync: Duration,
    /// How far a message's timestamp may be from our clock.
    pub clock_window: Duration,
    /// Home Assistant's discovery prefix (`homeassistant`); `None` turns
    /// discovery off.
    pub home_assistant_prefix: Option<String>,
    /// The registry mirror's address as workers are told it (`mirror.rs`);
    /// `None` when the master serves none.
    pub registry_mirror: Option<String>,
}

/// Namespaces every cluster has: `default` for users, `kube-system` for what
/// the cluster keeps for itself (tokens).
pub const SYSTEM_NAMESPACES: [&str; 2] = [crate::api::DEFAULT_NAMESPACE, tokens::NAMESPACE];

/// Creates what a fresh cluster needs (its namespaces).
pub fn bootstrap(store: &Store) -> Result<(), StoreError> {
    for name in SYSTEM_NAMESPACES {
        let key = ObjectKey::new(Kind::Namespace, "", name);
        if store.get(&key).is_some() {
            continue;
        }
        let mut ns = Object::Namespace(Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        });
        crate::api::defaults::apply(&mut ns);
        if let Object::Namespace(n) = &mut ns {
            n.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
                phase: Some("Active".into()),
                ..Default::default()
            });
        }
        store.commit(vec![Op::Create(ns)], Mode::Commit)?;
    }
    Ok(())
}

/// Registers (or re-keys) a node and gives it a pod CIDR; returns the CIDR.
pub fn register_node(
    store: &Store,
    name: &str,
    key: &PublicKey,
    cluster_cidr: Ipv4Net,
    labels: BTreeMap<String, String>,
) -> Result<Ipv4Net, MasterError> {
    let existing = store.get(&ObjectKey::new(Kind::Node, "", name));
    let mut node = match existing.as_deref() {
        Some(Object::Node(n)) => n.clone(),
        _ => Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        },
    };
    node.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(NODE_KEY_ANNOTATION.into(), key.to_hex());
    node.metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend(labels);
    let spec = node.spec.get_or_insert_with(NodeSpec::default);
    let cidr = match spec
        .pod_cidr
        .as_deref()
        .and_then(|c| c.parse::<Ipv4Net>().ok())
    {
        Some(c) => c,
        None => {
            let used: HashSet<Ipv4Net> = store
                .list(Kind::Node, None)
                .iter()
                .filter_map(|n| match &**n {
                    Object::Node(n) => n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok(),
                    _ => None,
                })
                .collect();
            allocate::pod_cidr(cluster_cidr, &used).ok_or(MasterError::NoPodCidr(cluster_cidr))?
        }
    };
    spec.pod_cidr = Some(cidr.to_string());
    spec.pod_cidrs = Some(vec![cidr.to_string()]);
    store.commit(vec![Op::Put(Object::Node(node))], Mode::Commit)?;
    Ok(cidr)
}

/// What an assignment carries besides its generation and pod CIDR.
type AssignedContent = (Vec<Pod>, Vec<ConfigMap>, Vec<Secret>);

/// What the master last published, to publish only changes.
#[derive(Default)]
struct Published {
    /// Per node: the generation, and the assignment's content (pods,
    /// ConfigMaps, Secrets) it was published with.
    assignments: HashMap<String, (u64, AssignedContent)>,
    services: Option<(u64, Vec<ServiceRoute>, ClusterNetwork)>,
    /// Last time a lagging worker got a republish, to not answer every heartbeat.
    republished: HashMap<String, Instant>,
}

struct Master {
    cfg: MasterConfig,
    mqtt: Mqtt,
    sealer: Sealer,
    verifier: Verifier,
    /// Checks join requests (signed by keys not trusted yet).
    join_verifier: Verifier,
    drops: DropLog,
    last_seen: HashMap<String, jiff::Timestamp>,
    /// Each node's current agent session (from its reports).
    sessions: HashMap<String, u64>,
    terminated: HashMap<String, HashSet<String>>,
    /// Resource use per pod uid, from heartbeats (memory only).
    usage: usage::Usage,
    published: Published,
    dirty: bool,
    /// JSON commands from automation tools (`api/<verb>`).
    api: api_json::JsonApi,
    discovery: Option<discovery::Discovery>,
    /// Nodes whose clock is off ours: the report to answer (attached to
    /// their assignments until their reports come in on time), and when an
    /// assignment was last sent for it.
    clock_echoes: HashMap<String, (ClockEcho, Option<Instant>)>,
}

/// A node report further than this from our clock gets the master's time
/// back (well inside the envelope window, so the node never drifts out).
const CLOCK_ECHO_SKEW_MS: i64 = 30_000;

/// At most one assignment sent per node this often to carry the time.
const CLOCK_ECHO_EVERY: Duration = Duration::from_secs(5);

pub async fn run(
    cfg: MasterConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), MasterError> {
    bootstrap(&cfg.store)?;
    let client_id = format!("bramble-master-{:08x}", rand::random::<u32>());
    let mut opts = MqttOptions::for_broker(&cfg.broker, &client_id);
    opts.last_will = Some((cfg.topics.master_online(), b"false".to_vec()));
    opts.ignore_retained = vec![format!("{}/api/", cfg.topics.prefix())];
    let (mqtt, mut events) = Mqtt::connect(opts, None).await?;
    mqtt.subscribe(&cfg.topics.cmd_filter()).await?;
    mqtt.subscribe(&cfg.topics.status_filter()).await?;
    mqtt.subscribe(&cfg.topics.online_filter()).await?;
    mqtt.subscribe(&cfg.topics.join_filter()).await?;
    let m_window = cfg.clock_window;
    mqtt.subscribe(&cfg.topics.api_filter()).await?;
    let discovery = cfg.home_assistant_prefix.as_deref().map(|prefix| {
        discovery::Discovery::new(discovery::Ids::new(
            cfg.topics.clone(),
            prefix,
            &cfg.settings.master_key,
        ))
    });
    for filter in discovery.iter().flat_map(|d| d.ids.filters()) {
        mqtt.subscribe(&filter).await?;
    }
    let mut verifier = Verifier::new(&[MASTER_ID], cfg.clock_window);
    for key in &cfg.admin_keys {
        verifier.trust(envelope::admin_id(key), *key);
    }
    let sealer = Sealer::new(cfg.cluster_key.clone(), MASTER_ID);
    let mut watch_rx = cfg.store.watch();
    let mut m = Master {
        cfg,
        mqtt,
        sealer,
        verifier,
        join_verifier: Verifier::new(&[MASTER_ID], m_window),
        drops: DropLog::new(10),
        last_seen: HashMap::new(),
        sessions: HashMap::new(),
        terminated: HashMap::new(),
        usage: usage::Usage::default(),
        published: Published::default(),
        dirty: true,
        api: api_json::JsonApi::default(),
        discovery,
        clock_echoes: HashMap::new(),
    };
    // A restarted master has heard from nobody yet: the nodes that were
    // Ready get a full grace period to report, instead of being declared
    // lost (and their pods evicted) on the first pass. The period counts
    // from when they can have found the broker back: a worker that has been
    // retrying through a long outage tries again only every few seconds.
    let started = jiff::Timestamp::now() + crate::transport::client::MAX_RECONNECT_BACKOFF;
    for node in m.cfg.store.list(Kind::Node, None) {
        if let Object::Node(n) = &*node
            && controllers::node_ready(n)
            && let Some(name) = &n.metadata.name
        {
            m.last_seen.insert(name.clone(), started);
        }
    }
    let mut resync = tokio::time::interval(m.cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(broker = %m.cfg.settings.broker_url, "master running");
    loop {
        if m.dirty {
            m.dirty = false;
            m.pass().await;
        }
        tokio::select! {
            // Shutdown: stop taking commands; everything acknowledged is already durable.
            _ = shutdown.changed() => break,
            // A message from the broker: a command, a status report, or our own reconnect.
            ev = events.recv() => match ev {
                Some(MqttEvent::Message { topic, payload }) => m.on_message(&topic, &payload).await,
                Some(MqttEvent::Connected) => {
                    // The broker may have restarted and lost our retained
                    // messages: publish everything again.
                    m.published = Published::default();
                    if let Some(d) = &mut m.discovery {
                        d.reset();
                    }
                    let online = m.cfg.topics.master_online();
                    if let Err(e) = m.mqtt.publish(&online, b"true".to_vec(), true).await {
                        tracing::warn!(error = %e, "could not publish the master's online state");
                    }
                    m.dirty = true;
                }
                Some(MqttEvent::Subscribed) => {}
                None => break,
            },
            // The store changed (a command or our own actions): reconcile.
            ev = watch_rx.recv() => match ev {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Coalesce a burst of changes into one pass.
                    while watch_rx.try_recv().is_ok() {}
                    m.dirty = true;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            // Level-triggered safety net, and what notices silent nodes.
            _ = resync.tick() => {
                m.dirty = true;
                // The count of drops the log kept quiet, once their minute is over.
                m.drops.flush();
            }
        }
    }
    let _ = m
        .mqtt
        .publish(&m.cfg.topics.master_online(), b"false".to_vec(), true)
        .await;
    m.mqtt.disconnect().await;
    tracing::info!("master stopped");
    Ok(())
}

impl Master {
    fn snapshot(&self) -> Snapshot {
        let mut objects = BTreeMap::new();
        for &kind in Kind::ALL {
            objects.insert(kind, self.cfg.store.list(kind, None));
        }
        Snapshot {
            now: jiff::Timestamp::now(),
            objects,
            last_seen: self.last_seen.clone(),
            terminated: self.terminated.values().flatten().cloned().collect(),
            node_grace: self.cfg.node_grace,
            pod_eviction: self.cfg.pod_eviction,
            usage: self.usage.pods(),
        }
    }

    async fn pass(&mut self) {
        let mut snap = self.snapshot();
        let actions =
            controllers::reconcile_all(&snap, &mut controllers::replicaset::random_suffix);
        if !actions.is_empty() {
            self.commit_actions(actions);
            // Publish what was just decided (a pod bound, an endpoint added)
            // now; the watch brings the next pass for what follows from it.
            snap = self.snapshot();
        }
        self.sync_node_keys(&snap);
        self.publish(&snap).await;
        self.publish_discovery(&snap).await;
    }

    /// Home Assistant discovery configs and state topics, changes only.
    async fn publish_discovery(&mut self, snap: &Snapshot) {
        let Some(d) = &mut self.discovery else {
            return;
        };
        let token = if discovery::wants_token(snap) {
            match discovery::ensure_token(&self.cfg.store, snap.now.as_second()) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "could not create the Home Assistant token");
                    None
                }
            }
        } else {
            None
        };
        for (topic, payload) in d.plan(snap, token.as_deref()) {
            if let Err(e) = self.mqtt.publish(&topic, payload, true).await {
                tracing::warn!(%topic, error = %e, "could not publish discovery");
            }
        }
    }

    /// A JSON command from an automation tool: answered on its reply topic.
    async fn on_api(&mut self, topic: &str, payload: &[u8]) {
        let usage = self.usage.pods();
        let env = api_json::Env {
            store: &self.cfg.store,
            settings: &self.cfg.settings,
            topics: &self.cfg.topics,
            usage: &usage,
            now: jiff::Timestamp::now(),
        };
        if let Some(answer) = self.api.handle(&env, topic, payload)
            && let Err(e) = self
                .mqtt
                .publish(&answer.topic, answer.body.to_string().into_bytes(), false)
                .await
        {
            tracing::warn!(error = %e, "could not send a JSON reply");
        }
    }

    fn commit_actions(&self, actions: Vec<controllers::Action>) {
        let descriptions: Vec<String> = actions.iter().map(|a| a.describe()).collect();
        let ops: Vec<Op> = actions.iter().cloned().map(commands::to_op).collect();
        match self.cfg.store.commit(ops, Mode::Commit) {
            Ok(_) => tracing::debug!(actions = ?descriptions, "reconciled"),
            Err(_) => {
                // One stale action must not hold back the others.
                for a in actions {
                    let what = a.describe();
                    if let Err(e) = self
                        .cfg
                        .store
                        .commit(vec![commands::to_op(a)], Mode::Commit)
                    {
                        tracing::debug!(%what, error = %e, "action failed; retried next pass");
                    }
                }
            }
        }
    }

    fn sync_node_keys(&mut self, snap: &Snapshot) {
        for node in snap.nodes() {
            let (Some(name), Some(key)) = (
                node.metadata.name.as_deref(),
                node.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(NODE_KEY_ANNOTATION)),
            ) else {
                continue;
            };
            if let Ok(key) = key.parse::<PublicKey>() {
                self.verifier.trust(envelope::node_id(name), key);
            }
        }
    }

    async fn publish(&mut self, snap: &Snapshot) {
        let rv = self.cfg.store.resource_version();
        // Routes first: a pod being deleted leaves the Service table before
        // its node hears to stop it.
        let routes = publish::service_routes(snap);
        let mut network = services::cluster_network(&self.cfg.settings);
        network.nodes = publish::node_routes(snap);
        network.registry_mirror = self.cfg.registry_mirror.clone();
        if self
            .published
            .services
            .as_ref()
            .is_none_or(|(_, r, n)| *r != routes || *n != network)
        {
            let table = ServiceTable {
                generation: rv,
                routes: routes.clone(),
                network: network.clone(),
            };
            if self.send_services(&table).await {
                self.published.services = Some((rv, routes, network));
            }
        }
        for node in snap.nodes() {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            let pods = publish::assignment_pods(snap, &name);
            let (configmaps, secrets) = publish::referenced_objects(snap, &pods);
            let content = (pods, configmaps, secrets);
            if self
                .published
                .assignments
                .get(&name)
                .is_some_and(|(_, c)| *c == content)
            {
                continue;
            }
            let assignment = Assignment {
                node: name.clone(),
                generation: rv,
                pod_cidr: node
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.clone())
                    .unwrap_or_default(),
                pods: content.0.clone(),
                configmaps: content.1.clone(),
                secrets: content.2.clone(),
                sealed_secrets: None,
                clock_echo: None,
            };
            if self.send_assignment(assignment).await {
                self.published.assignments.insert(name, (rv, content));
            }
        }
    }

    /// Publishes `a` with its Secrets sealed to the node's own key, so no
    /// other client of the broker reads them; without a usable node key
    /// nothing is sent.
    async fn send_assignment(&self, mut a: Assignment) -> bool {
        let topic = self.cfg.topics.assign(&a.node);
        let to = envelope::node_id(&a.node);
        if !a.secrets.is_empty() {
            let sealed = match self.verifier.trusted(&to) {
                Some(key) => seal::seal_secrets(&mut a, key),
                None => {
                    tracing::warn!(node = %a.node, "no key registered for the node: its assignment, which names Secrets, is not sent");
                    return false;
                }
            };
            if let Err(e) = sealed {
                tracing::warn!(node = %a.node, error = %e, "assignment not sent");
                return false;
            }
        }
        a.clock_echo = self.clock_echoes.get(&a.node).map(|(e, _)| *e);
        let bytes = self.sealer.seal(&topic, &to, &a);
        match self.mqtt.publish(&topic, bytes, true).await {
            Ok(()) => {
                tracing::debug!(node = %a.node, generation = a.generation, pods = a.pods.len(), "assignment published");
                true
            }
            Err(e) => {
                tracing::warn!(node = %a.node, error = %e, "could not publish assignment");
                false
            }
        }
    }

    async fn send_services(&self, t: &ServiceTable) -> bool {
        let topic = self.cfg.topics.services();
        let bytes = self.sealer.seal(&topic, TO_ANYONE, t);
        match self.mqtt.publish(&topic, bytes, true).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not publish the service table");
                false
            }
        }
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if self.cfg.topics.api_verb_of(topic).is_some() {
            self.on_api(topic, payload).await;
        } else if let Some(d) = self.discovery.as_mut().filter(|d| d.ids.owns(topic)) {
            if d.on_retained(topic, payload) {
                self.dirty = true;
            }
        } else if self.cfg.topics.verb_of(topic).is_some() {
            self.on_command(topic, payload).await;
        } else if let Some(node) = self.cfg.topics.joining_node(topic).map(str::to_string) {
            self.on_join(&node, topic, payload).await;
        } else if let Some(node) = self.cfg.topics.node_of(topic).map(str::to_string) {
            if topic == self.cfg.topics.online(&node) {
                self.on_online(&node, topic, payload);
            } else {
                self.on_status(&node, topic, payload).await;
            }
        }
    }

    /// A node asks to join: verify it is signed by the key it presents,
    /// admit it (token, name), trust its key, answer signed by the cluster key.
    async fn on_join(&mut self, node: &str, topic: &str, payload: &[u8]) {
        let (from, req) = match envelope::peek::<JoinRequest>(payload) {
            Ok(x) => x,
            Err(e) => return self.drops.dropped(topic, &e),
        };
        let Ok(key) = req.key.parse::<PublicKey>() else {
            return self
                .drops
                .dropped(topic, &"join request with a malformed key");
        };
        if from != envelope::node_id(node) || req.node != node {
            return self
                .drops
                .dropped(topic, &format!("{from} asking to join as {node}"));
        }
        // A verifier of its own: the node is not trusted for anything else
        // until it is admitted, and its replay window is separate.
        self.join_verifier.trust(from.clone(), key);
        let opened = self.join_verifier.open::<JoinRequest>(topic, payload);
        self.join_verifier.untrust(&from);
        let req = match opened {
            Ok(o) => o.body,
            // Authentic but stamped by a clock far from ours (a Pi without
            // a real-time clock): admit nothing, answer with our time; the
            // nonce binds the answer to this request, and the node asks
            // again with its clock synced.
            Err(envelope::EnvelopeError::Stale { skew_ms }) => {
                tracing::info!(%node, skew_ms, "join request stamped off our clock; sending the time");
                let reply = JoinReply {
                    nonce: req.nonce,
                    master_key: self.cfg.cluster_key.public().to_hex(),
                    result: Err(format!(
                        "the node's clock is {skew_ms} ms off the master's; nothing was admitted"
                    )),
                    clock_skew_ms: Some(skew_ms),
                };
                return self.send_join_reply(node, &reply).await;
            }
            Err(e) => return self.drops.dropped(topic, &e),
        };
        let result = join::admit(
            &self.cfg.store,
            &req,
            self.cfg.settings.cluster_cidr,
            jiff::Timestamp::now().as_second(),
        );
        match &result {
            Ok(cidr) => {
                tracing::info!(%node, pod_cidr = %cidr, "node joined");
                self.verifier.trust(envelope::node_id(node), key);
                self.dirty = true;
            }
            Err(e) => tracing::warn!(%node, error = %e, "join refused"),
        }
        let reply = JoinReply {
            nonce: req.nonce,
            master_key: self.cfg.cluster_key.public().to_hex(),
            result: result.map(|cidr| Joined {
                pod_cidr: cidr.to_string(),
            }),
            clock_skew_ms: None,
        };
        self.send_join_reply(node, &reply).await;
    }

    async fn send_join_reply(&self, node: &str, reply: &JoinReply) {
        let t = self.cfg.topics.join_reply(node);
        let bytes = self.sealer.seal(&t, &envelope::node_id(node), reply);
        if let Err(e) = self.mqtt.publish(&t, bytes, false).await {
            tracing::warn!(%node, error = %e, "could not answer a join");
        }
    }

    /// Sends `node` our time in an answer to its report `echo` (its clock
    /// is `skew_ms` off ours): the last assignment again, naming the report.
    async fn echo_clock(&mut self, node: &str, echo: ClockEcho, skew_ms: i64) {
        let last = self.clock_echoes.get(node).and_then(|(_, at)| *at);
        self.clock_echoes.insert(node.to_string(), (echo, last));
        if last.is_some_and(|t| t.elapsed() < CLOCK_ECHO_EVERY) {
            return;
        }
        tracing::info!(%node, skew_ms, "node's clock is off ours; sending the time");
        if self.resend_assignment(node).await
            && let Some(e) = self.clock_echoes.get_mut(node)
        {
            e.1 = Some(Instant::now());
        }
    }

    /// Publishes again the assignment last published for `node`, if any
    /// (else the next pass publishes one).
    async fn resend_assignment(&mut self, node: &str) -> bool {
        let Some((g, (pods, configmaps, secrets))) = self.published.assignments.get(node).cloned()
        else {
            self.dirty = true;
            return false;
        };
        let pod_cidr = self
            .cfg
            .store
            .get(&ObjectKey::new(Kind::Node, "", node))
            .and_then(|n| match &*n {
                Object::Node(n) => n.spec.as_ref()?.pod_cidr.clone(),
                _ => None,
            })
            .unwrap_or_default();
        self.send_assignment(Assignment {
            node: node.to_string(),
            generation: g,
            pod_cidr,
            pods,
            configmaps,
            secrets,
            sealed_secrets: None,
            clock_echo: None,
        })
        .await
    }

    /// A node's retained online flag or its Last Will. Only a `false` for
    /// the session the node last reported counts: the node is gone now, not
    /// at the end of the grace period.
    fn on_online(&mut self, node: &str, topic: &str, payload: &[u8]) {
        let opened = match self.verifier.open_any_age::<Online>(topic, payload) {
            Ok(o) => o,
            Err(e) => return self.drops.dropped(topic, &e),
        };
        if opened.from != envelope::node_id(node) {
            return self
                .drops
                .dropped(topic, &format!("{} speaking for node {node}", opened.from));
        }
        let Online { online, session } = opened.body;
        if !online && self.sessions.get(node) == Some(&session) {
            tracing::info!(%node, "node disconnected (last will)");
            self.last_seen.remove(node);
            self.sessions.remove(node);
            self.dirty = true;
        }
    }

    async fn on_command(&mut self, topic: &str, payload: &[u8]) {
        let opened = match self.verifier.open::<Command>(topic, payload) {
            Ok(o) => o,
            Err(e) => return self.drops.dropped(topic, &e),
        };
        let Some(caller_key) = opened
            .from
            .starts_with("admin:")
            .then(|| self.verifier.trusted(&opened.from).copied())
            .flatten()
        else {
            return self
                .drops
                .dropped(topic, &format!("{} may not issue commands", opened.from));
        };
        let cmd = opened.body;
        let reply_prefix = format!("{}/reply/", self.cfg.topics.prefix());
        if cmd.request.verb() != self.cfg.topics.verb_of(topic).unwrap_or("")
            || !cmd.reply_to.starts_with(&reply_prefix)
            || !crate::transport::topics::valid_level(&cmd.reply_to[reply_prefix.len()..])
        {
            return self
                .drops
                .dropped(topic, &"command does not match its topic or reply topic");
        }
        // The verifier remembers what this run saw; the store remembers it
        // across restarts, so a command captured off the broker and sent
        // again after a restart (within the window) is not run twice. Reads
        // are not recorded: replaying one changes nothing, and recording
        // would cost a disk write per `get`.
        let seen = SeenId {
            from: &opened.from,
            seq: opened.seq,
            ts_ms: opened.ts,
        };
        let window_ms = self.cfg.clock_window.as_millis() as i64;
        let recorded = if cmd.request.changes_state() {
            self.cfg
                .store
                .record_envelope(&seen, envelope::now_ms() - 2 * window_ms)
        } else {
            Ok(true)
        };
        match recorded {
            Ok(true) => {}
            Ok(false) => {
                let e = envelope::EnvelopeError::Replay {
                    from: opened.from.clone(),
                    seq: opened.seq,
                };
                return self
                    .drops
                    .dropped(topic, &format!("{e} (seen before a restart)"));
            }
            Err(e) => {
                // Not recorded, so not run: answering keeps the client from waiting.
                tracing::warn!(error = %e, "could not record a command; refused");
                let reply = Reply {
                    id: cmd.id,
                    result: Err(ApiError::new(
                        ErrorCode::Unavailable,
                        format!("the master could not record the command: {e}"),
                    )),
                };
                let bytes = self.sealer.seal(&cmd.reply_to, &cmd.reply_as, &reply);
                if let Err(e) = self.mqtt.publish(&cmd.reply_to, bytes, false).await {
                    tracing::warn!(error = %e, "could not send reply");
                }
                return;
            }
        }
        let caller = Caller {
            id: opened.from.clone(),
            key: caller_key.to_hex(),
        };
        let verb = cmd.request.verb();
        let usage = self.usage.pods();
        let ctx = Ctx {
            store: &self.cfg.store,
            settings: &self.cfg.settings,
            caller: &caller,
            now: jiff::Timestamp::now(),
            usage: &usage,
        };
        let (result, effects) = commands::handle(&ctx, cmd.request);
        if let Err(e) = &result {
            tracing::info!(%verb, from = %caller.id, error = %e, "command refused");
        } else {
            tracing::debug!(%verb, from = %caller.id, "command done");
        }
        for effect in effects {
            match effect {
                Effect::OpenStream { node, open } => {
                    let t = self.cfg.topics.stream_in(&node, &open.id);
                    let bytes =
                        self.sealer
                            .seal(&t, &envelope::node_id(&node), &StreamMsg::Open(open));
                    if let Err(e) = self.mqtt.publish(&t, bytes, false).await {
                        tracing::warn!(%node, error = %e, "could not open stream");
                    }
                }
            }
        }
        let reply = Reply { id: cmd.id, result };
        let bytes = self.sealer.seal(&cmd.reply_to, &cmd.reply_as, &reply);
        if let Err(e) = self.mqtt.publish(&cmd.reply_to, bytes, false).await {
            tracing::warn!(error = %e, "could not send reply");
        }
    }

    /// The op recording `ev` from `node`: about a Service that exists, or
    /// about the reporting node itself (a node speaks for no other). Events
    /// already in `ops` (the same happening twice in one report) are skipped.
    fn object_event(
        &self,
        node: &str,
        ev: &ObjectEvent,
        at: jiff::Timestamp,
        ops: &[Op],
    ) -> Option<Op> {
        let (key, component) = match &ev.subject {
            EventSubject::Service { namespace, name } => {
                (ObjectKey::new(Kind::Service, namespace, name), "kube-proxy")
            }
            EventSubject::Node => (ObjectKey::new(Kind::Node, "", node), "kubelet"),
        };
        let obj = self.cfg.store.get(&key)?;
        let mut involved = controllers::events::Involved::of(&obj);
        // Events about cluster-scoped objects live in `default`, as in
        // Kubernetes.
        let cluster_scoped = involved.namespace.is_empty();
        if cluster_scoped {
            involved.namespace = crate::api::DEFAULT_NAMESPACE.to_string();
        }
        let ekey = controllers::events::key(&involved, &ev.reason, &ev.message);
        if ops
            .iter()
            .any(|op| matches!(op, Op::Update(o) | Op::Create(o) if o.key() == ekey))
        {
            return None;
        }
        let existing = self.cfg.store.get(&ekey);
        let existing = existing.as_deref().and_then(|o| match o {
            Object::Event(e) => Some(e),
            _ => None,
        });
        let mut action = controllers::events::record(
            existing,
            &involved,
            &ev.type_,
            &ev.reason,
            &ev.message,
            component,
            at,
        );
        if cluster_scoped && let controllers::Action::Create(Object::Event(e)) = &mut action {
            e.involved_object.namespace = None;
        }
        Some(commands::to_op(action))
    }

    async fn on_status(&mut self, node: &str, topic: &str, payload: &[u8]) {
        let opened = match self.verifier.open::<NodeReport>(topic, payload) {
            Ok(o) => o,
            Err(e @ envelope::EnvelopeError::Stale { skew_ms }) => {
                // Authentic, from a node whose clock is off ours: not
                // believed, but answered with our time.
                if let Ok(o) = self.verifier.open_any_age::<NodeReport>(topic, payload)
                    && o.from == envelope::node_id(node)
                    && o.body.node == node
                {
                    let echo = ClockEcho {
                        session: o.body.session,
                        seq: o.seq,
                    };
                    self.echo_clock(node, echo, skew_ms).await;
                }
                return self.drops.dropped(topic, &e);
            }
            Err(e) => return self.drops.dropped(topic, &e),
        };
        // A node's key speaks only for that node.
        if opened.from != envelope::node_id(node) || opened.body.node != node {
            return self
                .drops
                .dropped(topic, &format!("{} reporting for node {node}", opened.from));
        }
        let skew_ms = opened.ts - envelope::now_ms();
        if skew_ms.abs() > CLOCK_ECHO_SKEW_MS {
            let echo = ClockEcho {
                session: opened.body.session,
                seq: opened.seq,
            };
            self.echo_clock(node, echo, skew_ms).await;
        } else {
            self.clock_echoes.remove(node);
        }
        let report = opened.body;
        self.sessions.insert(node.to_string(), report.session);
        if let Some(d) = &mut self.discovery {
            d.observe_temperature(node, report.info.temperature_millicelsius);
        }
        let now = jiff::Timestamp::now();
        let was_fresh = self
            .last_seen
            .get(node)
            .is_some_and(|t| now.duration_since(*t).unsigned_abs() <= self.cfg.node_grace);
        self.last_seen.insert(node.to_string(), now);
        if !was_fresh {
            self.dirty = true;
        }

        let mut ops = Vec::new();
        if let Some(Object::Node(n)) = self
            .cfg
            .store
            .get(&ObjectKey::new(Kind::Node, "", node))
            .as_deref()
            && let Some(updated) = status::node_with_facts(n, &report.info)
        {
            ops.push(Op::Update(Object::Node(updated)));
        }
        let mut terminated = HashSet::new();
        for pr in &report.pods {
            let key = ObjectKey::new(Kind::Pod, &pr.namespace, &pr.name);
            let Some(obj) = self.cfg.store.get(&key) else {
                continue;
            };
            let Object::Pod(pod) = &*obj else { continue };
            let bound_here = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
            if !bound_here || pod.metadata.uid.as_deref() != Some(pr.uid.as_str()) {
                continue;
            }
            if pr.terminated {
                terminated.insert(pr.uid.clone());
            }
            self.usage.record(&pr.uid, &pr.usage);
            if let Some(updated) = status::pod_with_report(pod, pr) {
                ops.push(Op::Update(Object::Pod(updated)));
            }
        }
        let at = jiff::Timestamp::now();
        for ev in &report.events {
            let key = ObjectKey::new(Kind::Pod, &ev.namespace, &ev.pod);
            let Some(obj) = self.cfg.store.get(&key) else {
                continue;
            };
            let bound_here = match &*obj {
                Object::Pod(p) => {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                }
                _ => false,
            };
            if !bound_here || obj.meta().uid.as_deref() != Some(ev.pod_uid.as_str()) {
                continue;
            }
            let involved = controllers::events::Involved::of(&obj);
            let ekey = controllers::events::key(&involved, &ev.reason, &ev.message);
            let existing = self.cfg.store.get(&ekey);
            let existing = existing.as_deref().and_then(|o| match o {
                Object::Event(e) => Some(e),
                _ => None,
            });
            // Several happenings of one kind in one report fold into one op.
            if let Some(pos) = ops
                .iter()
                .position(|op| matches!(op, Op::Update(o) | Op::Create(o) if o.key() == ekey))
            {
                if let Op::Update(Object::Event(e)) | Op::Create(Object::Event(e)) = &mut ops[pos] {
                    e.count = Some(e.count.unwrap_or(1) + 1);
                }
                continue;
            }
            let action = controllers::events::record(
                existing,
                &involved,
                &ev.type_,
                &ev.reason,
                &ev.message,
                "kubelet",
                at,
            );
            ops.push(commands::to_op(action));
        }
        for ev in &report.object_events {
            if let Some(op) = self.object_event(node, ev, at, &ops) {
                ops.push(op);
            }
        }
        let live: HashSet<&str> = report.pods.iter().map(|p| p.uid.as_str()).collect();
        self.usage.forget_missing(node, &live);
        if self.terminated.get(node) != Some(&terminated) {
            self.terminated.insert(node.to_string(), terminated);
            self.dirty = true;
        }
        if !ops.is_empty() && self.cfg.store.commit(ops.clone(), Mode::Commit).is_err() {
            // One stale op (a pod changed since we read it) must not cost the
            // others, events above all: the worker does not send them twice.
            for op in ops {
                if let Err(e) = self.cfg.store.commit(vec![op], Mode::Commit) {
                    tracing::debug!(%node, error = %e, "status not stored; the next report retries");
                }
            }
        }

        // A worker behind on what we published (it restarted, or the broker
        // lost the retained message) gets it again.
        let behind_assign = self
            .published
            .assignments
            .get(node)
            .is_some_and(|(g, _)| report.assignment_generation < *g);
        let behind_services = self
            .published
            .services
            .as_ref()
            .is_some_and(|(g, _, _)| report.services_generation < *g);
        let recently = self
            .published
            .republished
            .get(node)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2));
        if (behind_assign || behind_services) && !recently {
            self.published
                .republished
                .insert(node.to_string(), Instant::now());
            if behind_assign {
                self.resend_assignment(node).await;
            }
            if behind_services && let Some((g, routes, network)) = self.published.services.clone() {
                self.send_services(&ServiceTable {
                    generation: g,
                    routes,
                    network,
                })
                .await;
            }
        }
    }
}
