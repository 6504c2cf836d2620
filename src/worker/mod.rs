//! The node agent: runs the pods the master assigns to this node.
//!
//! Owns: the node's own redb (assignment, service table, pod records: what it
//! needs to keep its pods running without the master), the pod sync loop,
//! status reports and heartbeats, log streams, and driving the pod network and
//! the Service proxy.
//!
//! Must not touch: the master's store. Everything arrives signed over MQTT and
//! is checked before use; stopping the agent never stops the pods (they
//! outlive it, as the design asks).

pub mod containers;
pub mod facts;
pub mod faults;
pub mod images;
pub mod join;
pub mod podsync;
pub mod probes;
pub mod status;
pub mod streams;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};

use crate::api::routing::{Protocol, RoutePort, ServiceRoute};
use crate::config::Layout;
use crate::net::dns::DnsServer;
use crate::net::{NetConfig, PodNetwork};
use crate::proxy::{Proxy, ProxyConfig, ProxyError};
use crate::runtime::log_times::LogClock;
use crate::runtime::{ContainerState, Runtime, RuntimeError};
use crate::store::{LocalOp, LocalStore, SeenId, StoreError};
use crate::transport::envelope::{self, Clock, DropLog, EnvelopeError, MASTER_ID, TO_ANYONE};
use crate::transport::messages::{
    Assignment, ContainerUsage, EventSubject, NodeFacts, NodeReport, ObjectEvent, Online, PodEvent,
    PodReport, ServiceTable, StreamMsg,
};
use crate::transport::seal;
use crate::transport::stream::MqttLink;
use crate::transport::{
    KeyPair, Mqtt, MqttEvent, MqttOptions, PublicKey, Sealer, Topics, TransportError, Verifier,
};
use podsync::{Happening, PodRecord, Step};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("worker state: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub struct WorkerConfig {
    pub node_name: String,
    pub node_key: KeyPair,
    pub master_key: PublicKey,
    pub topics: Topics,
    /// The broker and how to reach it (TLS CA, MQTT version).
    pub broker: crate::transport::BrokerConfig,
    pub layout: Layout,
    pub runtime: Arc<dyn Runtime>,
    /// The pod bridge (`bramble0`); `None` runs pods without a pod network and
    /// without the proxy (only for the fake runtime in scale tests).
    pub bridge: Option<String>,
    /// Where NodePorts listen.
    pub node_port_addr: IpAddr,
    /// The address reported to the master (else the default route's).
    pub node_ip: Option<Ipv4Addr>,
    /// The node's resolv.conf: upstreams of the cluster DNS, and what
    /// `dnsPolicy: Default` pods get.
    pub resolv_conf: PathBuf,
    pub heartbeat: Duration,
    /// Log files are rotated (copy-truncate, one old copy kept) beyond this.
    pub log_max_bytes: u64,
    pub clock_window: Duration,
    /// Kept back from pods for the system and the agent (capacity minus
    /// this is allocatable).
    pub reserved: facts::Reserved,
    /// Per-container pids limit; `None` for none.
    pub pids_limit: Option<i64>,
}

/// How often the agent looks at log sizes for their times.
const LOG_CLOCK_INTERVAL: Duration = Duration::from_millis(250);

const T_ASSIGNMENT: &str = "assignment";
const T_SERVICES: &str = "services";
const T_PODS: &str = "pods";
const CURRENT: &str = "current";

fn now_ms() -> i64 {
    envelope::now_ms()
}

fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec cannot fail");
    out
}

fn uncbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    ciborium::from_reader(bytes).ok()
}

fn pod_event(rec: &PodRecord, h: podsync::Happening, now: i64) -> PodEvent {
    PodEvent {
        pod_uid: rec.uid.clone(),
        namespace: rec.namespace.clone(),
        pod: rec.name.clone(),
        type_: if h.warning { "Warning" } else { "Normal" }.into(),
        reason: h.reason,
        message: h.message,
        at: now,
    }
}

/// What a background probe or hook reports back to the sync loop.
enum TaskDone {
    Probe {
        uid: String,
        container: String,
        kind: podsync::ProbeKind,
        probe: Box<k8s_openapi::api::core::v1::Probe>,
        result: Result<(), String>,
    },
    PostStart {
        uid: String,
        container: String,
        result: Result<(), String>,
    },
    /// A preStop hook failed (the container is stopped all the same).
    PreStopFailed {
        uid: String,
        container: String,
        message: String,
    },
}

struct StreamHandle {
    control: mpsc::Sender<StreamMsg>,
    client_id: String,
    task: tokio::task::JoinHandle<()>,
}

struct Agent {
    /// This run's random id (reports and the Last Will carry it).
    session: u64,
    cfg: WorkerConfig,
    db: LocalStore,
    mqtt: Mqtt,
    sealer: Arc<Sealer>,
    verifier: Verifier,
    drops: DropLog,
    facts: NodeFacts,
    assignment: Option<Assignment>,
    services: ServiceTable,
    records: BTreeMap<String, PodRecord>,
    /// What each record looked like when last written, to write only changes.
    persisted: HashMap<String, Vec<u8>>,
    net: Option<PodNetwork>,
    /// Shared with stopping pods' tasks, which wait for it to drain them.
    proxy: Option<Arc<Proxy>>,
    /// The cluster DNS server, once the Service table names its address.
    dns: Option<DnsServer>,
    /// The routes the proxy runs now (applied only once the network is up).
    applied_routes: Option<u64>,
    /// The hostPort forwards the proxy runs now.
    applied_host_ports: Vec<ServiceRoute>,
    /// What failed when the routes were last applied, and when to retry.
    route_faults: faults::Faults,
    /// Events about Services and this node not yet sent to the master.
    object_events: Vec<ObjectEvent>,
    last_report: Option<Vec<PodReport>>,
    /// Events not yet sent to the master.
    events: Vec<PodEvent>,
    /// Where background probes and hooks report.
    tasks: mpsc::UnboundedSender<TaskDone>,
    streams: HashMap<String, StreamHandle>,
    /// Image pulls running in the background, and their results.
    pulls: images::ImagePulls,
    log_clock: LogClock,
    /// The cluster's time, as envelopes are stamped and checked.
    clock: Clock,
    /// Our recent reports (sequence number, monotonic time sent): the
    /// master names one when it sends us its time.
    sent_reports: VecDeque<(u64, Duration)>,
}

/// A master's answer to a report older than this is not taken as its time.
const CLOCK_ECHO_MAX_AGE: Duration = Duration::from_secs(30);

/// Runs the agent until `shutdown` flips. Pods keep running afterwards.
pub async fn run(cfg: WorkerConfig, shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
    run_with_clock(cfg, Clock::system(), shutdown).await
}

/// [`run`], stamping and checking envelopes with `clock`, which the agent
/// syncs to the master's time when the master answers a report of ours that
/// was off its clock (tests give it a clock hours off).
pub async fn run_with_clock(
    cfg: WorkerConfig,
    clock: Clock,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let db = LocalStore::open(&cfg.layout.worker_db())?;
    let assignment = db
        .get(T_ASSIGNMENT, CURRENT)?
        .and_then(|b| uncbor::<Assignment>(&b))
        .map(|mut a| {
            // Stored as it came, Secrets sealed to our key. One that no
            // longer opens (a new node key) still runs the pods it names;
            // only containers needing a Secret wait for the next assignment.
            if let Err(e) = seal::open_secrets(&mut a, &cfg.node_key) {
                tracing::error!(error = %e, "stored assignment");
            }
            a
        });
    let services: ServiceTable = db
        .get(T_SERVICES, CURRENT)?
        .and_then(|b| uncbor(&b))
        .unwrap_or_default();
    let mut records = BTreeMap::new();
    let mut persisted = HashMap::new();
    for (uid, bytes) in db.list(T_PODS)? {
        if let Some(r) = uncbor::<PodRecord>(&bytes) {
            records.insert(uid.clone(), r);
            persisted.insert(uid, bytes);
        }
    }
    let node = cfg.node_name.clone();
    let online = cfg.topics.online(&node);
    let me = envelope::node_id(&node);
    let sealer = Arc::new(Sealer::new(cfg.node_key.clone(), me.clone()).with_clock(clock.clone()));
    // The Last Will is sealed now and published by the broker whenever the
    // connection dies; the session ties it to this run of the agent.
    let session: u64 = rand::random();
    let online_msg = |online: bool| {
        sealer.seal(
            &cfg.topics.online(&node),
            TO_ANYONE,
            &Online { online, session },
        )
    };
    let mut opts = MqttOptions::for_broker(&cfg.broker, &format!("bramble-node-{node}"));
    opts.last_will = Some((online.clone(), online_msg(false)));
    let (online_true, online_false) = (online_msg(true), online_msg(false));
    let (mqtt, mut events) = Mqtt::connect(opts, None).await?;
    mqtt.subscribe(&cfg.topics.assign(&node)).await?;
    mqtt.subscribe(&cfg.topics.services()).await?;
    mqtt.subscribe(&cfg.topics.stream_in_filter(&node)).await?;
    let mut verifier = Verifier::new(&[me.as_str()], cfg.clock_window).with_clock(clock.clone());
    verifier.trust(MASTER_ID, cfg.master_key);
    let facts = facts::gather(cfg.node_ip, &cfg.layout.data_dir, cfg.reserved);
    let proxy = cfg.bridge.as_ref().map(|_| {
        Arc::new(Proxy::new(ProxyConfig {
            node_port_addr: cfg.node_port_addr,
            load_balancer_addrs: load_balancer_addrs(cfg.node_port_addr, &facts),
            node_name: cfg.node_name.clone(),
        }))
    });
    let mut runtime_events = cfg.runtime.events();
    let (task_tx, mut task_rx) = mpsc::unbounded_channel();
    let (pulls, mut pull_done) = images::ImagePulls::new();
    let mut agent = Agent {
        session,
        cfg,
        db,
        mqtt,
        sealer,
        verifier,
        drops: DropLog::new(10),
        facts,
        assignment,
        services,
        records,
        persisted,
        net: None,
        proxy,
        dns: None,
        applied_routes: None,
        applied_host_ports: Vec::new(),
        route_faults: faults::Faults::default(),
        object_events: Vec::new(),
        last_report: None,
        events: Vec::new(),
        tasks: task_tx,
        streams: HashMap::new(),
        pulls,
        log_clock: LogClock::new(),
        clock,
        sent_reports: VecDeque::new(),
    };
    agent.ensure_network().await;
    agent.apply_services().await;

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(agent.cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rotate = tokio::time::interval(Duration::from_secs(30));
    let mut image_gc = tokio::time::interval(Duration::from_secs(60));
    image_gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut log_clock = tokio::time::interval(LOG_CLOCK_INTERVAL);
    log_clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    tracing::info!(node = %node, "worker running");
    loop {
        if dirty {
            dirty = false;
            // A pass that changed a record may have unblocked the next step
            // (network up → start the containers): run again at once rather
            // than at the next tick, a few times at most.
            for _ in 0..8 {
                let progressed = agent.sync().await;
                agent.report(false).await;
                if !progressed || *shutdown.borrow() {
                    break;
                }
            }
        }
        tokio::select! {
            // Stop the agent, not the pods.
            _ = shutdown.changed() => break,
            // From the broker: our assignment, the service table, stream control.
            ev = events.recv() => match ev {
                Some(MqttEvent::Message { topic, payload }) => {
                    dirty |= agent.on_message(&topic, &payload).await;
                }
                Some(MqttEvent::Connected) => {
                    // Tell the master where we are: it republishes what we lack.
                    let _ = agent.mqtt.publish(&online, online_true.clone(), true).await;
                    agent.report(true).await;
                }
                Some(MqttEvent::Subscribed) => {}
                None => break,
            },
            // A container exited.
            _ = runtime_events.changed() => dirty = true,
            // A probe or hook finished.
            Some(done) = task_rx.recv() => {
                agent.on_task(done);
                dirty = true;
            }
            // A background image pull ended: its containers start or back off.
            Some(done) = pull_done.recv() => {
                agent.on_pull_done(done, now_ms());
                dirty = true;
            }
            // Unused images go when the disk fills up.
            _ = image_gc.tick() => agent.collect_images(),
            // Back-off timers and grace deadlines.
            _ = tick.tick() => {
                dirty = true;
                // The count of drops the log kept quiet, once their minute is over.
                agent.drops.flush();
            }
            // Liveness for the master, even when nothing changed.
            _ = heartbeat.tick() => agent.report(true).await,
            // Keep log files bounded.
            _ = rotate.tick() => agent.rotate_logs(),
            // Note when logs grew (`logs --since`).
            _ = log_clock.tick() => agent.observe_logs(),
        }
    }
    agent.stop_streams().await;
    if let Some(p) = &agent.proxy {
        p.shutdown().await;
    }
    let _ = agent.mqtt.publish(&online, online_false, true).await;
    agent.mqtt.disconnect().await;
    tracing::info!(node = %node, "worker stopped; pods keep running");
    Ok(())
}

/// The namespace of the proxy routes that serve pods' hostPorts.
const HOST_PORT_NAMESPACE: &str = "hostport";

/// How often a stopping pod's drain looks at the proxy.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The longest a stopping pod waits for the proxy to let go of it.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Waits (at most `limit`, and never beyond [`DRAIN_LIMIT`]) until this
/// node's proxy neither lists `ip` as an endpoint nor holds a connection to
/// it, so that signalling the pod cuts no request. The master publishes the
/// Service table without a deleted pod before the assignment that stops it,
/// but the broker may deliver the two in either order, and a connection may
/// be under way when the table changes.
async fn drain(proxy: &Proxy, ip: Ipv4Addr, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit.min(DRAIN_LIMIT);
    while proxy.routes_to(ip) {
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!(%ip, "pod still routed after the drain limit; stopping it anyway");
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Where LoadBalancer Services listen: every node address (the one reported
/// and loopback) when NodePorts listen on all addresses, else that one address.
fn load_balancer_addrs(node_port_addr: IpAddr, facts: &NodeFacts) -> Vec<IpAddr> {
    if !node_port_addr.is_unspecified() {
        return vec![node_port_addr];
    }
    let mut addrs: Vec<IpAddr> = facts
        .addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    addrs.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    addrs.sort();
    addrs.dedup();
    addrs
}

impl Agent {
    fn desired(&self) -> BTreeMap<String, &Pod> {
        self.assignment
            .iter()
            .flat_map(|a| a.pods.iter())
            .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
            .collect()
    }

    fn pod_cidr(&self) -> Option<Ipv4Net> {
        self.assignment.as_ref()?.pod_cidr.parse().ok()
    }

    fn host_ip(&self) -> String {
        self.facts.addresses.first().cloned().unwrap_or_default()
    }

    /// Brings up the bridge once the pod CIDR is known.
    async fn ensure_network(&mut self) {
        if self.net.is_some() {
            return;
        }
        let (Some(bridge), Some(cidr)) = (self.cfg.bridge.clone(), self.pod_cidr()) else {
            return;
        };
        let config = NetConfig {
            bridge,
            pod_cidr: cidr,
            netns_dir: self.cfg.layout.netns_dir(),
        };
        match PodNetwork::new(config).await {
            Ok(n) => {
                tracing::info!(%cidr, "pod network up");
                self.net = Some(n);
                self.applied_routes = None;
            }
            Err(e) => tracing::error!(error = %e, "cannot set up the pod network; retrying"),
        }
    }

    async fn apply_services(&mut self) {
        self.apply_registry_mirror();
        let host_ports = self.host_port_routes();
        let (Some(net), Some(proxy)) = (&self.net, &self.proxy) else {
            return;
        };
        let now = tokio::time::Instant::now();
        if self.applied_routes == Some(self.services.generation)
            && self.applied_host_ports == host_ports
            && !self.route_faults.due(now)
        {
            return;
        }
        let mut found: Vec<(faults::Fault, String)> = Vec::new();
        let mut ips: BTreeSet<Ipv4Addr> = self
            .services
            .routes
            .iter()
            .filter_map(|r| r.cluster_ip)
            .collect();
        ips.extend(self.services.network.dns_ip);
        if let Err(e) = net.set_service_ips(&ips).await {
            tracing::warn!(error = %e, "cannot bind Service addresses; retrying");
            return;
        }
        let mut routes = self.services.routes.clone();
        routes.extend(host_ports.iter().cloned());
        for e in proxy.apply(&routes).await {
            tracing::warn!(error = %e, "proxy");
            // A port the host holds may be released: retried. A conflict
            // between Services only changes with the table.
            if let ProxyError::Bind { service, addr, .. } = &e
                && let Some((namespace, name)) = service
                    .split_once('/')
                    .and_then(|(ns, rest)| Some((ns, rest.split_once(':')?.0)))
            {
                // A pod's hostPort is the node's business, not a Service's.
                let (subject, reason) = if namespace == HOST_PORT_NAMESPACE {
                    (EventSubject::Node, "FailedBindHostPort")
                } else {
                    (
                        EventSubject::Service {
                            namespace: namespace.to_string(),
                            name: name.to_string(),
                        },
                        "FailedBindPort",
                    )
                };
                found.push((
                    faults::Fault {
                        subject,
                        reason,
                        part: addr.to_string(),
                    },
                    e.to_string(),
                ));
            }
        }
        // host-gw: the other nodes' pods are behind the other nodes.
        let own_pod_cidr = net.config().pod_cidr;
        let node_routes: BTreeMap<ipnet::Ipv4Net, Ipv4Addr> = self
            .services
            .network
            .nodes
            .iter()
            .filter(|n| n.name != self.cfg.node_name && n.pod_cidr != own_pod_cidr)
            .filter(|n| !self.facts.addresses.contains(&n.address.to_string()))
            .map(|n| (n.pod_cidr, n.address))
            .collect();
        let node_fault = |reason: &'static str, part: String, message: String| {
            (
                faults::Fault {
                    subject: EventSubject::Node,
                    reason,
                    part,
                },
                message,
            )
        };
        if let Err(e) = net.set_node_routes(&node_routes).await {
            tracing::warn!(error = %e, "pods cannot reach other nodes' pods");
            found.push(node_fault(
                "FailedNodeRoutes",
                String::new(),
                format!("pods cannot reach other nodes' pods: {e}"),
            ));
        }
        // Egress failing (no `nft`) must not keep Services and DNS down; it
        // is retried with back-off.
        if let Some(cidr) = self.services.network.cluster_cidr
            && let Err(e) = net.ensure_masquerade(cidr).await
        {
            tracing::warn!(error = %e, "pods have no egress to outside the cluster");
            found.push(node_fault(
                "FailedMasquerade",
                cidr.to_string(),
                format!("pods have no egress to outside the cluster: {e}"),
            ));
        }
        if let Err(e) = net
            .set_service_nat(&self.services.routes, &self.cfg.node_name)
            .await
        {
            tracing::warn!(error = %e, "Services in kernel mode go through the proxy");
            found.push(node_fault(
                "FailedServiceNAT",
                String::new(),
                format!("Services in kernel mode go through the proxy: {e}"),
            ));
        }
        let (dns, dns_error) = crate::net::dns::serve(
            self.dns.take(),
            &self.services.routes,
            &self.services.network,
            &self.cfg.resolv_conf,
        );
        self.dns = dns;
        if let Some(e) = dns_error {
            found.push(node_fault(
                "FailedClusterDNS",
                String::new(),
                format!("the cluster DNS is not running: {e}"),
            ));
        }
        let at = now_ms();
        for (fault, message) in self.route_faults.after_attempt(now, found) {
            self.object_events.push(ObjectEvent {
                subject: fault.subject,
                type_: "Warning".into(),
                reason: fault.reason.into(),
                message,
                at,
            });
        }
        if !self.route_faults.any() {
            tracing::debug!("Services and networking applied");
        }
        self.applied_routes = Some(self.services.generation);
        self.applied_host_ports = host_ports;
    }

    /// `ports[].hostPort` of pods in a network namespace, as proxy routes:
    /// a listener on the node's port forwarding to the pod's IP and
    /// container port (the proxy's NodePort machinery; TCP as the proxy is).
    /// Host-network pods bind their ports themselves.
    fn host_port_routes(&self) -> Vec<ServiceRoute> {
        let mut out = Vec::new();
        for (uid, pod) in self.desired() {
            let Some(spec) = pod.spec.as_ref() else {
                continue;
            };
            if spec.host_network == Some(true) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(ip) = self
                .records
                .get(&uid)
                .filter(|r| r.network_ready)
                .and_then(|r| r.ip)
            else {
                continue;
            };
            let mut ports = Vec::new();
            for c in &spec.containers {
                for p in c.ports.iter().flatten() {
                    let (Some(host), Ok(target)) = (
                        p.host_port
                            .and_then(|h| u16::try_from(h).ok())
                            .filter(|h| *h != 0),
                        u16::try_from(p.container_port),
                    ) else {
                        continue;
                    };
                    ports.push(RoutePort {
                        name: format!("{}-{host}", c.name),
                        protocol: if p.protocol.as_deref() == Some("UDP") {
                            Protocol::Udp
                        } else {
                            Protocol::Tcp
                        },
                        port: host,
                        node_port: Some(host),
                        endpoints: vec![std::net::SocketAddrV4::new(ip, target)],
                    });
                }
            }
            if !ports.is_empty() {
                out.push(ServiceRoute {
                    namespace: HOST_PORT_NAMESPACE.into(),
                    name: format!(
                        "{}.{}",
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        uid
                    ),
                    cluster_ip: None,
                    ports,
                    ..Default::default()
                });
            }
        }
        out
    }

    /// What container configuration needs from this node.
    fn node_context(&self) -> containers::NodeContext<'_> {
        let (configmaps, secrets) = match &self.assignment {
            Some(a) => (a.configmaps.as_slice(), a.secrets.as_slice()),
            None => (&[][..], &[][..]),
        };
        containers::NodeContext {
            node_name: &self.cfg.node_name,
            node_hostname: &self.facts.hostname,
            host_ip: self.facts.addresses.first().map_or("", |a| a.as_str()),
            configmaps,
            secrets,
            allocatable_cpu_millis: self.facts.allocatable_cpu_millis(),
            allocatable_memory_bytes: self.facts.allocatable_memory_bytes(),
            pids_limit: self.cfg.pids_limit,
        }
    }

    fn pods_root(&self) -> PathBuf {
        self.cfg.layout.data_dir.join("pods")
    }

    /// Brings the volumes of running pods up to date with the assignment
    /// (ConfigMap and Secret changes, labels for the downward API). Pods
    /// whose volumes were never made are left to their first start.
    fn refresh_volumes(&self) {
        let root = self.pods_root();
        let node = self.node_context();
        for (uid, pod) in self.desired() {
            let Some(rec) = self.records.get(&uid) else {
                continue;
            };
            if rec.released
                || pod.metadata.deletion_timestamp.is_some()
                || !volumes::pod_dir(&root, &uid).exists()
            {
                continue;
            }
            if let Err(e) = volumes::prepare(&root, pod, rec, &node) {
                // The previous content stays, as the kubelet keeps it.
                tracing::warn!(%uid, error = %e, "cannot update volumes");
            }
        }
    }

    /// Returns whether the pods may need syncing.
    async fn on_message(&mut self, topic: &str, payload: &[u8]) -> bool {
        let t = &self.cfg.topics;
        if topic == t.assign(&self.cfg.node_name) {
            let mut echoed = None;
            let opened = match self.verifier.open::<Assignment>(topic, payload) {
                // Off our clock but perhaps the master's answer to a report
                // of ours: then it is fresh whatever its timestamp says.
                Err(e @ EnvelopeError::Stale { .. }) => {
                    match self.verifier.open_any_age::<Assignment>(topic, payload) {
                        Ok(o) => {
                            echoed = self.echoed_report(&o.body);
                            if echoed.is_some() { Ok(o) } else { Err(e) }
                        }
                        Err(_) => Err(e),
                    }
                }
                other => other,
            };
            let a = match opened {
                Ok(o) if o.from == MASTER_ID => {
                    if let Some(sent_at) = echoed.or_else(|| self.echoed_report(&o.body))
                        && let Some(by) = self.clock.sync(o.ts, sent_at)
                    {
                        tracing::info!(
                            corrected_ms = by,
                            offset_ms = self.clock.offset_ms(),
                            "clock synced to the master's"
                        );
                    }
                    o.body
                }
                Ok(o) => {
                    self.drops
                        .dropped(topic, &format!("assignment signed by {}", o.from));
                    return false;
                }
                Err(e) => {
                    self.drops.dropped(topic, &e);
                    return false;
                }
            };
            if a.node != self.cfg.node_name
                || self
                    .assignment
                    .as_ref()
                    .is_some_and(|cur| cur.generation >= a.generation)
            {
                return false;
            }
            let mut a = a;
            if let Err(e) = seal::open_secrets(&mut a, &self.cfg.node_key) {
                // Keep running the previous assignment.
                self.drops.dropped(topic, &e);
                return false;
            }
            if let Err(e) = self
                .db
                .write(vec![LocalOp::put(T_ASSIGNMENT, CURRENT, cbor(&a))])
            {
                tracing::error!(error = %e, "cannot persist the assignment");
            }
            tracing::debug!(
                generation = a.generation,
                pods = a.pods.len(),
                "new assignment"
            );
            self.assignment = Some(a);
            self.refresh_volumes();
            self.ensure_network().await;
            self.apply_services().await;
            return true;
        }
        if topic == t.services() {
            match self.verifier.open::<ServiceTable>(topic, payload) {
                Ok(o) if o.from == MASTER_ID => {
                    if o.body.generation > self.services.generation {
                        if let Err(e) =
                            self.db
                                .write(vec![LocalOp::put(T_SERVICES, CURRENT, cbor(&o.body))])
                        {
                            tracing::error!(error = %e, "cannot persist the service table");
                        }
                        self.services = o.body;
                        self.apply_services().await;
                    }
                }
                Ok(o) => self
                    .drops
                    .dropped(topic, &format!("service table signed by {}", o.from)),
                Err(e) => self.drops.dropped(topic, &e),
            }
            return false;
        }
        if let Some(id) = t.stream_id_of(topic).map(str::to_string) {
            self.on_stream(&id, topic, payload).await;
        }
        false
    }

    async fn on_stream(&mut self, id: &str, topic: &str, payload: &[u8]) {
        let opened = match self.verifier.open::<StreamMsg>(topic, payload) {
            Ok(o) => o,
            Err(e) => return self.drops.dropped(topic, &e),
        };
        match opened.body {
            StreamMsg::Open(open) if opened.from == MASTER_ID && open.id == id => {
                let Ok(key) = open.client_key.parse::<PublicKey>() else {
                    return self
                        .drops
                        .dropped(topic, &"stream open with a bad client key");
                };
                self.streams.retain(|_, h| !h.control.is_closed());
                if self.streams.contains_key(id) {
                    return self.drops.dropped(topic, &"second open of a stream");
                }
                // The verifier remembers this run only: an open (an exec!)
                // captured off the broker and sent again after the agent
                // restarted is caught by the record in worker.redb.
                let seen = SeenId {
                    from: &opened.from,
                    seq: opened.seq,
                    ts_ms: opened.ts,
                };
                let window_ms = self.cfg.clock_window.as_millis() as i64;
                match self
                    .db
                    .record_envelope(&seen, self.clock.now_ms() - 2 * window_ms)
                {
                    Ok(true) => {}
                    Ok(false) => {
                        return self.drops.dropped(
                            topic,
                            &format!(
                                "replayed stream open {} from {:?} (seen before a restart)",
                                opened.seq, opened.from
                            ),
                        );
                    }
                    Err(e) => {
                        return self
                            .drops
                            .dropped(topic, &format!("stream open not recorded: {e}"));
                    }
                }
                self.verifier.trust(open.client_id.clone(), key);
                let rec = self.records.get(&open.pod_uid);
                let log_dir = rec.map(|r| self.log_dir(r));
                let netns = self.net.as_ref().map(|n| n.netns_path(&open.pod_uid));
                let target = streams::target(
                    &open.kind,
                    &open.pod,
                    rec,
                    log_dir.as_deref(),
                    netns,
                    &self.cfg.runtime,
                    now_ms(),
                );
                let link = MqttLink {
                    mqtt: self.mqtt.clone(),
                    sealer: self.sealer.clone(),
                    topic: self.cfg.topics.stream_out(&self.cfg.node_name, id),
                    peer: open.client_id.clone(),
                };
                // Room for a window of frames and the acks between them; a
                // message that finds it full is sent again by the client.
                let (tx, rx) = mpsc::channel(128);
                let task = tokio::spawn(streams::serve(rx, link, target));
                self.streams.insert(
                    id.to_string(),
                    StreamHandle {
                        control: tx,
                        client_id: open.client_id,
                        task,
                    },
                );
            }
            msg @ (StreamMsg::Ack { .. } | StreamMsg::Frame(_) | StreamMsg::Close) => {
                // Only the client the stream was opened for may steer it.
                match self.streams.get(id) {
                    Some(h) if h.client_id == opened.from => {
                        let _ = h.control.try_send(msg);
                    }
                    _ => self
                        .drops
                        .dropped(topic, &format!("stream control from {}", opened.from)),
                }
            }
            _ => self.drops.dropped(topic, &"unexpected stream message"),
        }
    }

    fn log_dir(&self, rec: &PodRecord) -> PathBuf {
        self.cfg
            .layout
            .logs()
            .join(format!("{}_{}_{}", rec.namespace, rec.name, rec.uid))
    }

    fn log_path(&self, rec: &PodRecord, container: &str, attempt: u32) -> PathBuf {
        self.log_dir(rec)
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// The log of each container's current (or last) attempt.
    fn current_logs(&self) -> Vec<PathBuf> {
        self.records
            .values()
            .flat_map(|rec| {
                rec.containers
                    .values()
                    .filter(|c| c.attempt > 0)
                    .map(|c| self.log_path(rec, &c.name, c.attempt - 1))
            })
            .collect()
    }

    fn rotate_logs(&mut self) {
        let now = now_ms();
        for path in self.current_logs() {
            if let Err(e) = self
                .log_clock
                .rotate_if_needed(&path, self.cfg.log_max_bytes, now)
            {
                tracing::debug!(path = %path.display(), error = %e, "log rotation failed");
            }
        }
    }

    fn observe_logs(&mut self) {
        let logs = self.current_logs();
        self.log_clock
            .observe(logs.iter().map(PathBuf::as_path), now_ms());
    }

    /// Ends every stream (each tells its client the agent is stopping),
    /// giving them a moment to say so before the connection goes.
    async fn stop_streams(&mut self) {
        let tasks: Vec<_> = self.streams.drain().map(|(_, h)| h.task).collect();
        let all = futures::future::join_all(tasks);
        let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
    }

    async fn runtime_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Runtime) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let rt = self.cfg.runtime.clone();
        tokio::task::spawn_blocking(move || f(&*rt))
            .await
            .unwrap_or_else(|e| {
                Err(RuntimeError::Operation {
                    op: "run",
                    id: String::new(),
                    reason: format!("runtime task failed: {e}"),
                })
            })
    }

    /// One pass of the pod sync loop; returns whether any pod record changed.
    async fn sync(&mut self) -> bool {
        let now = now_ms();
        let listed = match self.runtime_call(|rt| rt.list_containers()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                return false;
            }
        };
        let actual: HashMap<String, ContainerState> = listed
            .iter()
            .map(|c| (c.id.clone(), c.state.clone()))
            .collect();
        let desired: BTreeMap<String, Pod> = self
            .desired()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        for (uid, pod) in &desired {
            self.records
                .entry(uid.clone())
                .or_insert_with(|| PodRecord::new(pod, now))
                .sync_spec(pod);
        }
        let uids: Vec<String> = self.records.keys().cloned().collect();
        for uid in &uids {
            let pod = desired.get(uid);
            let Some(rec) = self.records.get_mut(uid) else {
                continue;
            };
            let happened = rec.observe(pod, &actual, now);
            let events: Vec<PodEvent> = happened
                .into_iter()
                .map(|h| pod_event(rec, h, now))
                .collect();
            self.events.extend(events);
            let Some(rec) = self.records.get_mut(uid) else {
                continue;
            };
            let steps = rec.next_steps(pod, &actual, now);
            for step in steps {
                self.execute(uid, pod, step, now).await;
            }
        }
        self.apply_services().await;
        // Forget pods that are released and that the master has let go of.
        self.records
            .retain(|uid, r| !r.released || desired.contains_key(uid));
        // Containers nobody asked for (left by a crash between create and
        // record, or by a pod forgotten while the agent was down) are removed.
        let known: BTreeSet<&str> = self
            .records
            .values()
            .flat_map(|r| r.containers.values())
            .filter_map(|c| c.runtime_id.as_deref())
            .collect();
        for c in listed.iter().filter(|c| !known.contains(c.id.as_str())) {
            let id = c.id.clone();
            let running = matches!(
                c.state,
                ContainerState::Running { .. } | ContainerState::Created
            );
            tracing::info!(%id, "removing a container no pod claims");
            let r = self
                .runtime_call(move |rt| {
                    if running {
                        rt.kill_container(&id, libc::SIGKILL)
                    } else {
                        rt.remove_container(&id)
                    }
                })
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "orphan cleanup failed; retried next pass");
            }
        }
        self.launch_probes(&desired, now);
        self.persist()
    }

    /// Writes the records that changed; returns whether any did.
    fn persist(&mut self) -> bool {
        let mut batch = Vec::new();
        for (uid, rec) in &self.records {
            let bytes = cbor(rec);
            if self.persisted.get(uid) != Some(&bytes) {
                self.persisted.insert(uid.clone(), bytes.clone());
                batch.push(LocalOp::put(T_PODS, uid.clone(), bytes));
            }
        }
        let gone: Vec<String> = self
            .persisted
            .keys()
            .filter(|k| !self.records.contains_key(*k))
            .cloned()
            .collect();
        for uid in gone {
            self.persisted.remove(&uid);
            batch.push(LocalOp::delete(T_PODS, uid));
        }
        let changed = !batch.is_empty();
        if changed && let Err(e) = self.db.write(batch) {
            tracing::error!(error = %e, "cannot persist pod records");
            self.persisted.clear();
        }
        changed
    }

    async fn execute(&mut self, uid: &str, pod: Option<&Pod>, step: Step, now: i64) {
        match step {
            Step::SetupNetwork => self.setup_network(uid, now).await,
            Step::Start { container } => {
                if let Some(pod) = pod {
                    self.start(uid, pod, &container, now).await;
                }
            }
            Step::Remove { runtime_id } => {
                let id = runtime_id.clone();
                match self.runtime_call(move |rt| rt.remove_container(&id)).await {
                    Ok(()) => {
                        if let Some(r) = self.records.get_mut(uid) {
                            r.on_removed(&runtime_id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(id = %runtime_id, error = %e, "cannot remove container")
                    }
                }
            }
            Step::Stop {
                container,
                grace_ms,
                reason,
            } => self.stop(uid, pod, &container, grace_ms, &reason, now),
            Step::Kill { runtime_id } => {
                let id = runtime_id.clone();
                match self
                    .runtime_call(move |rt| rt.kill_container(&id, libc::SIGKILL))
                    .await
                {
                    Ok(()) => {
                        if let Some(r) = self.records.get_mut(uid) {
                            r.on_killed(&runtime_id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(id = %runtime_id, error = %e, "cannot kill container")
                    }
                }
            }
            Step::PostStart { container } => self.post_start(uid, pod, &container),
            Step::Release => {
                if let Some(net) = &self.net
                    && let Err(e) = net.teardown_pod(uid).await
                {
                    tracing::warn!(%uid, error = %e, "cannot tear down pod network; retrying");
                    return;
                }
                if let Err(e) = volumes::teardown(&self.pods_root(), uid) {
                    tracing::warn!(%uid, error = %e, "cannot remove pod volumes; retrying");
                    return;
                }
                if let Some(rec) = self.records.get(uid) {
                    let dir = self.log_dir(rec);
                    let _ = std::fs::remove_dir_all(dir);
                }
                if let Some(r) = self.records.get_mut(uid) {
                    r.on_released();
                }
            }
        }
    }

    async fn setup_network(&mut self, uid: &str, now: i64) {
        let host_network = self
            .desired()
            .get(uid)
            .and_then(|p| p.spec.as_ref()?.host_network)
            == Some(true);
        if host_network {
            // No namespace of its own: the pod's IP is the node's.
            let ip = self.host_ip().parse().ok();
            if let Some(r) = self.records.get_mut(uid) {
                r.on_network_ready(ip);
            }
            return;
        }
        let Some(cidr) = self.pod_cidr() else { return };
        let used: BTreeSet<Ipv4Addr> = self.records.values().filter_map(|r| r.ip).collect();
        let Some(rec) = self.records.get(uid) else {
            return;
        };
        let ip = match rec.ip.or_else(|| crate::net::allocate_ip(cidr, &used)) {
            Some(ip) => ip,
            None => {
                tracing::warn!(%cidr, "no free pod IP");
                self.network_failed(uid, None, &format!("no free pod IP in {cidr}"), now);
                return;
            }
        };
        if let Some(net) = &self.net {
            if let Err(e) = net.setup_pod(uid, ip).await {
                tracing::warn!(%uid, error = %e, "cannot set up pod network; retrying");
                self.network_failed(uid, Some(ip), &e.to_string(), now);
                return;
            }
        } else if self.cfg.bridge.is_some() {
            // The bridge is not up yet; the next pass tries again.
            self.ensure_network().await;
            return;
        }
        if let Some(r) = self.records.get_mut(uid) {
            r.on_network_ready(Some(ip));
        }
    }

    fn network_failed(&mut self, uid: &str, ip: Option<Ipv4Addr>, message: &str, now: i64) {
        if let Some(r) = self.records.get_mut(uid) {
            let h = r.on_network_failed(ip, message, now);
            self.emit(uid, h, now);
        }
    }

    async fn start(&mut self, uid: &str, pod: &Pod, container: &str, now: i64) {
        let Some(rec) = self.records.get(uid) else {
            return;
        };
        let Some(spec) = podsync::container_spec(pod, container) else {
            return;
        };
        // After a reboot the netns (on tmpfs) is gone: set it up again first.
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        let netns = self
            .net
            .as_ref()
            .filter(|_| !host_network)
            .map(|n| n.netns_path(uid));
        if let Some(path) = &netns
            && !path.exists()
        {
            if let Some(r) = self.records.get_mut(uid) {
                r.on_network_lost();
            }
            return;
        }
        let attempt = rec.containers.get(container).map_or(0, |c| c.attempt);
        let log_path = self.log_path(rec, container, attempt);
        if let Some(dir) = log_path.parent() {
            let _ = std::fs::create_dir_all(dir);
            // This attempt and the one before (`logs --previous`) stay, as
            // the kubelet keeps them; older ones go.
            if let Some(keep_from) = attempt.checked_sub(1)
                && let Err(e) = crate::runtime::logs::remove_attempts_before(dir, keep_from)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove old attempts' logs");
            }
        }
        let node = self.node_context();
        let volume_paths = match volumes::prepare(&self.pods_root(), pod, rec, &node) {
            Ok(v) => v,
            Err(e) => {
                // The kubelet's way: the container stays ContainerCreating,
                // with the reason in its status and a FailedMount event.
                let message = e.to_string();
                self.emit(uid, Happening::warning("FailedMount", message.clone()), now);
                if let Some(r) = self.records.get_mut(uid) {
                    r.on_start_failed(container, "ContainerCreating", message, now);
                }
                return;
            }
        };
        let service_env = if pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false) {
            crate::api::routing::service_env(&self.services.routes, &rec.namespace)
        } else {
            Vec::new()
        };
        let config = containers::container_config(
            pod,
            rec,
            spec,
            containers::Placement {
                runtime_id: rec.next_runtime_id(container),
                netns,
                log_path,
                volumes: volume_paths.clone(),
            },
            &node,
            &service_env,
        )
        .map_err(|e| e.to_string())
        .and_then(|mut c| {
            volumes::resolve_sub_paths(&mut c.mounts, &volume_paths)
                .map(|_| c)
                .map_err(|e| e.to_string())
        });
        let config = match config {
            Ok(c) => c,
            Err(message) => {
                self.config_error(uid, container, message, now);
                return;
            }
        };
        // Cluster DNS and Service links need the Service table (as the kubelet
        // sees the Services that exist when a pod starts): wait for the first.
        if self.cfg.bridge.is_some() && self.services.generation == 0 {
            tracing::debug!(%uid, "waiting for the Service table before starting");
            return;
        }
        let mut config = config;
        let node_resolv = crate::net::dns::resolv::read_for_pods(
            &self.cfg.resolv_conf,
            crate::net::dns::resolv::fallback_for(&self.cfg.resolv_conf),
        );
        config.resolv_conf = Some(crate::net::dns::resolv::pod_resolv_conf(
            pod,
            &self.services.network,
            &node_resolv,
        ));
        if let Some(h) = pod.spec.as_ref().and_then(|s| s.hostname.clone()) {
            config.hostname = h;
        }
        // Pulls run in the background; a later pass starts the container.
        if !self.image_ready(uid, pod, spec, now).await {
            return;
        }
        let id = config.id.clone();
        match self.runtime_call(move |rt| rt.run_container(&config)).await {
            Ok(info) => {
                let started = match info.state {
                    ContainerState::Running { started_at, .. } => started_at,
                    _ => now,
                };
                tracing::info!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or("")), %container, %id, "container started");
                self.emit(
                    uid,
                    Happening::normal("Created", format!("Created container {container}")),
                    now,
                );
                self.emit(
                    uid,
                    Happening::normal("Started", format!("Started container {container}")),
                    now,
                );
                if let Some(r) = self.records.get_mut(uid) {
                    r.on_started(container, id, started);
                }
            }
            Err(RuntimeError::Config { reason, .. }) => {
                let rid = id.clone();
                let _ = self.runtime_call(move |rt| rt.remove_container(&rid)).await;
                self.config_error(uid, container, reason, now);
            }
            Err(e) => {
                tracing::warn!(%id, error = %e, "container failed to start");
                // Whatever half-exists is removed before the next attempt.
                let rid = id.clone();
                let _ = self.runtime_call(move |rt| rt.remove_container(&rid)).await;
                self.emit(
                    uid,
                    Happening::warning("Failed", format!("Error: {e}")),
                    now,
                );
                if let Some(r) = self.records.get_mut(uid) {
                    r.on_start_failed(container, "RunContainerError", e.to_string(), now);
                }
            }
        }
    }

    /// Begins stopping a container: preStop hook then SIGTERM, in the
    /// background (a hook may take the whole grace period); the sync loop
    /// sends SIGKILL at the deadline.
    fn stop(
        &mut self,
        uid: &str,
        pod: Option<&Pod>,
        container: &str,
        grace_ms: i64,
        reason: &str,
        now: i64,
    ) {
        let Some(rec) = self.records.get(uid) else {
            return;
        };
        let Some(id) = rec
            .containers
            .get(container)
            .and_then(|c| c.runtime_id.clone())
        else {
            return;
        };
        let pod_ip = rec.ip;
        let target = probes::Target {
            pod_ip: pod_ip.map(IpAddr::V4),
            runtime: self.cfg.runtime.clone(),
            container_id: id.clone(),
        };
        if reason == "Stopping" {
            self.emit(
                uid,
                Happening::normal("Killing", format!("Stopping container {container}")),
                now,
            );
        }
        if let Some(r) = self.records.get_mut(uid) {
            r.on_stop_begun(container, grace_ms, now);
        }
        let spec = pod
            .and_then(|p| podsync::container_spec(p, container))
            .cloned();
        let runtime = self.cfg.runtime.clone();
        let limit = Duration::from_millis(grace_ms.max(0) as u64);
        let done = self.tasks.clone();
        let uid = uid.to_string();
        // A deleted pod leaves the Services first (see `drain`); a restart
        // (liveness) does not wait.
        let draining = self
            .proxy
            .clone()
            .filter(|_| reason == "Stopping")
            .zip(pod_ip);
        tokio::spawn(async move {
            if let Some((proxy, ip)) = draining {
                drain(&proxy, ip, limit / 2).await;
            }
            if let Some(spec) = &spec
                && let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
                && let Err(e) = probes::run_hook(hook, spec, &target, limit).await
            {
                tracing::info!(container = %spec.name, error = %e, "preStop hook failed");
                let _ = done.send(TaskDone::PreStopFailed {
                    uid,
                    container: spec.name.clone(),
                    message: e,
                });
            }
            let _ = tokio::task::spawn_blocking(move || runtime.kill_container(&id, libc::SIGTERM))
                .await;
        });
    }

    /// Runs a container's postStart hook in the background.
    fn post_start(&mut self, uid: &str, pod: Option<&Pod>, container: &str) {
        let Some(rec) = self.records.get_mut(uid) else {
            return;
        };
        rec.on_post_started(container);
        let Some(spec) = pod
            .and_then(|p| podsync::container_spec(p, container))
            .cloned()
        else {
            return;
        };
        let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.post_start.clone()) else {
            return;
        };
        let Some(container_id) = rec
            .containers
            .get(container)
            .and_then(|c| c.runtime_id.clone())
        else {
            return;
        };
        let target = probes::Target {
            pod_ip: rec.ip.map(IpAddr::V4),
            runtime: self.cfg.runtime.clone(),
            container_id,
        };
        let done = self.tasks.clone();
        let uid = uid.to_string();
        tokio::spawn(async move {
            let result = probes::run_hook(&hook, &spec, &target, Duration::from_secs(30)).await;
            let _ = done.send(TaskDone::PostStart {
                uid,
                container: spec.name.clone(),
                result,
            });
        });
    }

    /// Starts the probes that are due, each in its own task.
    fn launch_probes(&mut self, desired: &BTreeMap<String, Pod>, now: i64) {
        for (uid, pod) in desired {
            let Some(rec) = self.records.get_mut(uid) else {
                continue;
            };
            let Some(ip) = rec.ip else { continue };
            for task in rec.due_probes(pod, now) {
                let Some(spec) = podsync::container_spec(pod, &task.container).cloned() else {
                    continue;
                };
                let Some(container_id) = rec
                    .containers
                    .get(&task.container)
                    .and_then(|c| c.runtime_id.clone())
                else {
                    continue;
                };
                let target = probes::Target {
                    pod_ip: Some(IpAddr::V4(ip)),
                    runtime: self.cfg.runtime.clone(),
                    container_id,
                };
                rec.on_probe_started(&task.container, task.kind);
                let done = self.tasks.clone();
                let uid = uid.clone();
                tokio::spawn(async move {
                    let result = probes::check(&task.probe, &spec, &target).await;
                    let _ = done.send(TaskDone::Probe {
                        uid,
                        container: task.container,
                        kind: task.kind,
                        probe: Box::new(task.probe),
                        result,
                    });
                });
            }
        }
    }

    /// A probe or hook finished.
    fn on_task(&mut self, done: TaskDone) {
        let now = now_ms();
        match done {
            TaskDone::Probe {
                uid,
                container,
                kind,
                probe,
                result,
            } => {
                let Some(rec) = self.records.get_mut(&uid) else {
                    return;
                };
                for h in rec.on_probe_result(&container, kind, &probe, result, now) {
                    self.emit(&uid, h, now);
                }
            }
            TaskDone::PostStart {
                uid,
                container,
                result: Err(message),
            } => {
                let Some(rec) = self.records.get_mut(&uid) else {
                    return;
                };
                let h = rec.on_post_start_failed(&container, message);
                self.emit(&uid, h, now);
            }
            TaskDone::PostStart { .. } => {}
            TaskDone::PreStopFailed {
                uid,
                container,
                message,
            } => {
                let h = Happening::warning(
                    "FailedPreStopHook",
                    format!("PreStopHook failed for container {container}: {message}"),
                );
                self.emit(&uid, h, now);
            }
        }
    }

    /// A container that cannot be configured (a missing ConfigMap key,
    /// runAsNonRoot with a root image…) waits as `CreateContainerConfigError`
    /// and is retried with back-off, as the kubelet does.
    fn config_error(&mut self, uid: &str, container: &str, message: String, now: i64) {
        tracing::info!(%uid, %container, %message, "container configuration error");
        self.emit(
            uid,
            Happening::warning("Failed", format!("Error: {message}")),
            now,
        );
        if let Some(r) = self.records.get_mut(uid) {
            r.on_start_failed(container, "CreateContainerConfigError", message, now);
        }
    }

    /// Reads each running container's cgroup use into the heartbeat (for
    /// `top` and the autoscaler); a container whose stats cannot be read is
    /// left out.
    async fn attach_usage(&self, pods: &mut [PodReport]) {
        let wanted: Vec<(usize, String, String)> = pods
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, self.records.get(&p.uid)?)))
            .flat_map(|(i, rec)| {
                rec.containers.values().filter_map(move |c| {
                    matches!(c.state, podsync::CState::Running { .. })
                        .then(|| Some((i, c.name.clone(), c.runtime_id.clone()?)))
                        .flatten()
                })
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let read = self
            .runtime_call(move |rt| {
                Ok(wanted
                    .into_iter()
                    .filter_map(|(i, name, id)| Some((i, name, rt.stats(&id).ok()?)))
                    .collect::<Vec<_>>())
            })
            .await
            .unwrap_or_default();
        let at_ms = now_ms();
        for (i, container, st) in read {
            pods[i].usage.push(ContainerUsage {
                container,
                cpu_nanos: st.cpu_nanos,
                memory_bytes: st.memory_bytes,
                at_ms,
            });
        }
    }

    /// Queues an Event about a pod for the next report.
    fn emit(&mut self, uid: &str, h: Happening, now: i64) {
        if let Some(rec) = self.records.get(uid) {
            let ev = pod_event(rec, h, now);
            self.events.push(ev);
        }
    }

    /// When the report `a` answers (its clock echo) was sent, if it is
    /// one of ours from this run and recent; each is answered once.
    fn echoed_report(&mut self, a: &Assignment) -> Option<Duration> {
        let echo = a.clock_echo.filter(|e| e.session == self.session)?;
        let now = self.clock.monotonic();
        self.sent_reports
            .retain(|(_, at)| now.saturating_sub(*at) <= CLOCK_ECHO_MAX_AGE);
        let i = self
            .sent_reports
            .iter()
            .position(|(seq, _)| *seq == echo.seq)?;
        self.sent_reports.remove(i).map(|(_, at)| at)
    }

    /// Sends a status report when something changed, or always with `force`
    /// (the heartbeat).
    async fn report(&mut self, force: bool) {
        let desired = self.desired();
        let host_ip = self.host_ip();
        let pods: Vec<PodReport> = self
            .records
            .values()
            .map(|rec| {
                let status = match desired.get(&rec.uid) {
                    Some(pod) => status::pod_status(pod, rec, &host_ip),
                    None => Default::default(),
                };
                PodReport {
                    uid: rec.uid.clone(),
                    namespace: rec.namespace.clone(),
                    name: rec.name.clone(),
                    status,
                    terminated: rec.released,
                    usage: Vec::new(),
                }
            })
            .collect();
        if !force
            && self.events.is_empty()
            && self.object_events.is_empty()
            && self.last_report.as_ref() == Some(&pods)
        {
            return;
        }
        let mut sent = pods.clone();
        if force {
            self.attach_usage(&mut sent).await;
        }
        let report = NodeReport {
            node: self.cfg.node_name.clone(),
            assignment_generation: self.assignment.as_ref().map_or(0, |a| a.generation),
            services_generation: self.services.generation,
            info: NodeFacts {
                temperature_millicelsius: facts::temperature_millicelsius(std::path::Path::new(
                    facts::THERMAL_ZONE,
                )),
                ..self.facts.clone()
            },
            pods: sent,
            events: self.events.clone(),
            object_events: self.object_events.clone(),
            session: self.session,
        };
        let topic = self.cfg.topics.status(&self.cfg.node_name);
        let (seq, bytes) = self.sealer.seal_numbered(&topic, MASTER_ID, &report);
        let now = self.clock.monotonic();
        self.sent_reports
            .retain(|(_, at)| now.saturating_sub(*at) <= CLOCK_ECHO_MAX_AGE);
        self.sent_reports.push_back((seq, now));
        // Never waits: without a broker the client's queue fills, and a
        // blocked loop would stop restarting containers. A report that does
        // not fit is dropped; its events go with the next one.
        if self.mqtt.try_publish(&topic, bytes, false).is_ok() {
            self.last_report = Some(pods);
            self.events.clear();
            self.object_events.clear();
        }
    }
}
