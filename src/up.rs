//! `bramble up`: a whole one-machine cluster in one process, the embedded
//! broker, the master and a worker for this machine; and `bramble down`,
//! which takes it apart again.
//!
//! On first start it creates the cluster, admin and node keys and the CLI
//! config, so the CLI works with no flags. Ctrl-C or SIGTERM stops the agent;
//! the pods keep running (a restarted `up` takes them back), and `down`
//! removes them with everything they held on the machine.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{ClientConfig, ConfigError, Layout, client_config_path, write_atomic};
use crate::master::commands::Settings;
use crate::master::{self, MasterConfig, MasterError};
use crate::net::{NetConfig, PodNetwork};
use crate::runtime::images::{GcPolicy, PullOptions, RegistryCa};
use crate::runtime::{
    ImageSettings, ImageStore, LibcontainerRuntime, Runtime, RuntimeConfig, RuntimeError,
};
use crate::store::{Store, StoreError};
use crate::transport::{BrokerConfig, KeyError, KeyPair, Topics, TransportError, broker};
use crate::worker::{self, WorkerConfig, WorkerError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error("an agent for {data_dir} is already running (pid {pid}); stop it first")]
    AlreadyRunning { data_dir: PathBuf, pid: i32 },
    #[error("demo: {0}")]
    Demo(String),
    #[error("cannot watch {0}")]
    Signal(String),
    #[error("network cleanup: {0}")]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Join(#[from] crate::worker::join::JoinError),
}

fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected FROM-TO, like 30000-32767")?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a port"))?;
    if a > b || a == 0 {
        return Err(format!("{s} is not a range of ports"));
    }
    Ok(a..=b)
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Build the demo image and apply the demo (two web pods behind a NodePort).
    #[arg(long)]
    pub demo: bool,
    /// NodePort of the demo Service.
    #[arg(long, default_value_t = 30080)]
    pub demo_node_port: u16,
    /// The static busybox the demo image is made of (Debian's busybox-static).
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    #[command(flatten)]
    pub master: MasterArgs,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// `bramble master`: the cluster's brain, with its embedded broker unless
/// `--broker` names another, and optionally a worker for its own machine.
#[derive(clap::Args, Debug, Clone)]
pub struct MasterRoleArgs {
    /// Also run a worker on this machine (as `bramble up` does).
    #[arg(long)]
    pub with_worker: bool,
    /// Settings file (master.toml); flags given on the command line win.
    #[arg(long = "config-file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    pub master: MasterArgs,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// What the master needs, shared by `up` and `master`.
#[derive(clap::Args, Debug, Clone)]
pub struct MasterArgs {
    /// Where the cluster's state lives.
    #[arg(long, default_value = ".bramble")]
    pub data_dir: PathBuf,
    /// Address the embedded MQTT broker listens on (default 127.0.0.1:1883
    /// for `up`, 0.0.0.0:1883 for `master`, which workers must reach).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Use this broker (`mqtt[s]://[user:pass@]host[:port]`, e.g.
    /// Mosquitto) instead of starting the embedded one.
    #[arg(long)]
    pub broker: Option<String>,
    #[command(flatten)]
    pub broker_options: BrokerArgs,
    #[arg(long, default_value = "10.88.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: Ipv4Net,
    #[arg(long, default_value = "30000-32767", value_parser = parse_range)]
    pub service_node_port_range: RangeInclusive<u16>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = crate::api::routing::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// Topic prefix on the broker.
    #[arg(long, default_value = crate::transport::topics::DEFAULT_PREFIX)]
    pub topic_prefix: String,
    /// How long a silent node stays Ready, in seconds (its Last Will ends it
    /// at once when its connection drops).
    #[arg(long, default_value_t = 5)]
    pub node_grace_seconds: u64,
    /// Home Assistant's MQTT discovery prefix: the master publishes nodes
    /// and opted-in Deployments under it (docs/automation.md).
    #[arg(long, default_value = crate::master::discovery::DEFAULT_PREFIX)]
    pub home_assistant_prefix: String,
    /// Publish no Home Assistant discovery.
    #[arg(long)]
    pub no_home_assistant: bool,
    /// How long a node stays NotReady before its pods are evicted and
    /// replaced elsewhere, in seconds (pods may tolerate longer).
    #[arg(long, default_value_t = 2)]
    pub pod_eviction_seconds: u64,
    /// Where the registry mirror serves the master's images to the nodes
    /// (`ADDR:PORT`, or `off`); default 0.0.0.0:5050 for `master`, off for
    /// `up`.
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub registry_mirror_listen: Option<String>,
    /// The registry mirror's address as workers reach it (default: the
    /// listen address, or the host workers reach the broker at).
    #[arg(long, value_name = "HOST:PORT")]
    pub registry_mirror_advertise: Option<String>,
}

/// What a worker needs, shared by `up`, `master --with-worker` and `worker`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// This node's name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The pod bridge.
    #[arg(long, default_value = "bramble0")]
    pub bridge: String,
    /// Address NodePorts listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub node_port_address: IpAddr,
    /// The address this node reports (default: the default route's).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// The node's resolver configuration: the cluster DNS forwards names
    /// outside the cluster to its nameservers, and `dnsPolicy: Default` pods
    /// get it.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// How often the node reports to the master, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Kept back from pods for the system and the agent, like the kubelet's
    /// `--system-reserved`: allocatable is capacity minus this.
    #[arg(long, default_value = "cpu=100m,memory=128Mi")]
    pub system_reserved: crate::worker::facts::Reserved,
    /// Most processes and threads one container may have (0: no limit).
    #[arg(long, default_value_t = 4096)]
    pub pod_pids_limit: i64,
    /// A registry (`HOST:PORT`, or `HOST` for any port) to pull from over
    /// plain HTTP; repeatable. Loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// A PEM file of CAs to trust for HTTPS registries, besides the
    /// system's roots (a home-lab registry's own CA).
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
    /// Collect unused images when the image store's disk is this full (percent).
    #[arg(long, default_value_t = 85)]
    pub image_gc_high_threshold: u8,
    /// Image collection stops once that disk is below this (percent).
    #[arg(long, default_value_t = 80)]
    pub image_gc_low_threshold: u8,
}

/// `bramble worker`: a node that joins a cluster through its broker.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerRoleArgs {
    /// The join token (`bramble token create` on the master, or the master's
    /// `<data dir>/join-token`); only needed the first time.
    #[arg(long, env = "BRAMBLE_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// The cluster's broker, `mqtt[s]://[user:pass@]host[:port]`.
    #[arg(long)]
    pub broker: Option<String>,
    #[command(flatten)]
    pub broker_options: BrokerArgs,
    /// Settings file (worker.toml); flags given on the command line win.
    #[arg(long = "config-file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Where the node's state lives.
    #[arg(long, default_value = ".bramble")]
    pub data_dir: PathBuf,
    /// Topic prefix on the broker.
    #[arg(long, default_value = crate::transport::topics::DEFAULT_PREFIX)]
    pub topic_prefix: String,
    /// A label for this node (`KEY=VALUE`), repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// How to speak to the broker, shared by every role.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BrokerArgs {
    /// The CA certificate(s), PEM, that an `mqtts://` broker's certificate
    /// must chain to (default: the system's trusted roots).
    #[arg(long, value_name = "FILE")]
    pub broker_ca: Option<PathBuf>,
    /// The MQTT version this process speaks: 3.1.1 (default) or 5. The
    /// embedded broker takes both on one port.
    #[arg(long, value_name = "3.1.1|5")]
    pub mqtt_version: Option<crate::transport::MqttVersion>,
}

impl BrokerArgs {
    /// Settings file values for what the command line did not give.
    fn or_file(&mut self, ca: Option<PathBuf>, version: Option<crate::transport::MqttVersion>) {
        self.broker_ca = self.broker_ca.take().or(ca);
        self.mqtt_version = self.mqtt_version.or(version);
    }

    /// The broker at `url` as these flags say to reach it, checked (URL, CA
    /// file) before anything starts; the CA path is made absolute, as it is
    /// written into the CLI's config.
    fn broker(&self, url: &str) -> Result<BrokerConfig, UpError> {
        let ca_file = match &self.broker_ca {
            Some(path) => {
                Some(
                    std::fs::canonicalize(path).map_err(|e| TransportError::CaFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let broker = BrokerConfig {
            url: url.to_string(),
            ca_file,
            version: self.mqtt_version.unwrap_or_default(),
        };
        broker.check()?;
        Ok(broker)
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

#[derive(clap::Args, Debug, Clone)]
pub struct DownArgs {
    #[arg(long, default_value = ".bramble")]
    pub data_dir: PathBuf,
    /// Also delete the data directory (state, keys, images, logs).
    #[arg(long)]
    pub purge: bool,
}

/// What `up` ran with, kept for `down` (which must find the bridge) and for
/// the next `up`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeSettings {
    bridge: String,
    node_name: String,
    pod_cidr: Ipv4Net,
}

fn settings_path(layout: &Layout) -> PathBuf {
    layout.data_dir.join("node.toml")
}

fn running_agent(layout: &Layout) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(layout.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (pid != std::process::id() as i32 && String::from_utf8_lossy(&cmdline).contains("bramble"))
        .then_some(pid)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

pub async fn up(args: UpArgs, config: Option<&Path>) -> Result<ExitCode, UpError> {
    let demo = args
        .demo
        .then(|| (args.demo_node_port, args.busybox.clone()));
    let listen = args
        .master
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1883)));
    let mut master_args = args.master;
    // One machine: its worker shares the master's image store.
    master_args
        .registry_mirror_listen
        .get_or_insert_with(|| "off".into());
    run_master(master_args, listen, Some(args.node), demo, config).await
}

/// `bramble master`.
pub async fn master(mut args: MasterRoleArgs, config: Option<&Path>) -> Result<ExitCode, UpError> {
    if let Some(path) = args.config_file.clone() {
        let file: crate::config::MasterFile = crate::config::load_toml(&path)?;
        apply_master_file(&mut args, file, &path)?;
    }
    let listen = args
        .master
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1883)));
    let node = args.with_worker.then_some(args.node);
    args.master.registry_mirror_listen.get_or_insert_with(|| {
        SocketAddr::from(([0, 0, 0, 0], master::mirror::DEFAULT_PORT)).to_string()
    });
    run_master(args.master, listen, node, None, config).await
}

/// Values from master.toml for what the command line left at its default.
fn apply_master_file(
    args: &mut MasterRoleArgs,
    file: crate::config::MasterFile,
    path: &Path,
) -> Result<(), UpError> {
    let bad = |field: &str, reason: String| {
        UpError::Config(ConfigError::Parse {
            path: path.to_path_buf(),
            reason: format!("{field}: {reason}"),
        })
    };
    let m = &mut args.master;
    if m.listen.is_none() {
        m.listen = file.listen;
    }
    if m.broker.is_none() {
        m.broker = file.broker;
    }
    m.broker_options.or_file(file.broker_ca, file.mqtt_version);
    if m.data_dir == Path::new(".bramble")
        && let Some(d) = file.data_dir
    {
        m.data_dir = d;
    }
    if let Some(c) = file.cluster_cidr {
        m.cluster_cidr = c
            .parse()
            .map_err(|e| bad("cluster_cidr", format!("{c:?}: {e}")))?;
    }
    if let Some(c) = file.service_cidr {
        m.service_cidr = c
            .parse()
            .map_err(|e| bad("service_cidr", format!("{c:?}: {e}")))?;
    }
    if let Some(t) = file.topic_prefix {
        m.topic_prefix = t;
    }
    if m.registry_mirror_listen.is_none() {
        m.registry_mirror_listen = file.registry_mirror_listen;
    }
    if m.registry_mirror_advertise.is_none() {
        m.registry_mirror_advertise = file.registry_mirror_advertise;
    }
    args.with_worker |= file.with_worker;
    Ok(())
}

fn check_node_args(node: &NodeArgs) -> Result<String, UpError> {
    if node.bridge.is_empty() || node.bridge.len() > 15 {
        return Err(UpError::Flag {
            flag: "bridge",
            reason: "an interface name has 1 to 15 characters".into(),
        });
    }
    let node_name = node.node_name.clone().unwrap_or_else(hostname);
    if !crate::transport::topics::valid_level(&node_name)
        || !crate::api::validate::dns1123_label_errors(&node_name).is_empty()
    {
        return Err(UpError::Flag {
            flag: "node-name",
            reason: format!(
                "{node_name:?} must be a DNS label (lower case letters, digits and '-')"
            ),
        });
    }
    Ok(node_name)
}

/// The master (with its embedded broker unless told otherwise) and, with
/// `node`, a worker for this machine, until SIGTERM or Ctrl-C.
async fn run_master(
    args: MasterArgs,
    listen: SocketAddr,
    node: Option<NodeArgs>,
    demo: Option<(u16, PathBuf)>,
    config: Option<&Path>,
) -> Result<ExitCode, UpError> {
    // Broker settings are checked before anything is created.
    let external_broker = match &args.broker {
        Some(url) => Some(args.broker_options.broker(url)?),
        None if args.broker_options.broker_ca.is_some() => {
            return Err(UpError::Flag {
                flag: "broker-ca",
                reason: "the embedded broker is plain MQTT: a CA file goes with --broker mqtts://…"
                    .into(),
            });
        }
        None => None,
    };
    let layout = Layout::new(&args.data_dir)?;
    if let Some(pid) = running_agent(&layout) {
        return Err(UpError::AlreadyRunning {
            data_dir: layout.data_dir.clone(),
            pid,
        });
    }
    let mut stop_signal = StopSignal::install()?;
    let node_name = node.as_ref().map(check_node_args).transpose()?;
    let domain = args.cluster_domain.trim_end_matches('.');
    if !crate::api::validate::dns1123_subdomain_errors(domain).is_empty() {
        return Err(UpError::Flag {
            flag: "cluster-domain",
            reason: format!("{domain:?} must be a DNS name, like cluster.local"),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Io { path, source }
    };
    std::fs::create_dir_all(&layout.run_dir).map_err(io(&layout.run_dir))?;
    let (cluster_key, created) = KeyPair::load_or_create(&layout.cluster_key())?;
    let (admin_key, _) = KeyPair::load_or_create(&layout.admin_key())?;
    if created {
        tracing::info!(data_dir = %layout.data_dir.display(), "created a new cluster");
    }

    let broker = match external_broker {
        Some(b) => b,
        None => {
            broker::start(listen)?;
            let host = if listen.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], listen.port()))
            } else {
                listen
            };
            args.broker_options.broker(&format!("mqtt://{host}"))?
        }
    };
    // What logs and messages show: never the password.
    let broker_url = broker.display_url();
    let store = Store::open_with_secret_key(
        &layout.master_db(),
        Some(cluster_key.derive_key("secrets-at-rest")),
    )?;
    master::bootstrap(&store)?;
    let token_file = initial_join_token(&store, &layout, &cluster_key)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let registry_mirror = start_registry_mirror(
        &args,
        &layout,
        &store,
        &cluster_key,
        admin_key.public(),
        &broker_url,
        stop_rx.clone(),
    )
    .await?;
    let topics = Topics::new(&args.topic_prefix);
    let mut node_line = String::new();
    let worker_task = match (&node, &node_name) {
        (Some(node), Some(node_name)) => {
            let (node_key, _) = KeyPair::load_or_create(&layout.node_key())?;
            let labels = BTreeMap::from([
                (
                    "node-role.kubernetes.io/control-plane".to_string(),
                    "true".to_string(),
                ),
                (
                    "node-role.kubernetes.io/master".to_string(),
                    "true".to_string(),
                ),
            ]);
            let pod_cidr = master::register_node(
                &store,
                node_name,
                &node_key.public(),
                args.cluster_cidr,
                labels,
            )?;
            tracing::info!(node = %node_name, %pod_cidr, broker = %broker_url, "node registered");
            save_node_settings(&layout, &node.bridge, node_name, pod_cidr)?;
            node_line = format!("node {node_name}, ");
            Some(start_worker(
                &layout,
                node,
                node_name,
                node_key,
                cluster_key.public(),
                &topics,
                &broker,
                stop_rx.clone(),
            )?)
        }
        _ => None,
    };
    let master_cfg = MasterConfig {
        store,
        cluster_key: cluster_key.clone(),
        admin_keys: vec![admin_key.public()],
        topics: topics.clone(),
        settings: Settings {
            cluster_domain: domain.to_string(),
            cluster_cidr: args.cluster_cidr,
            service_cidr: args.service_cidr,
            node_port_range: args.service_node_port_range.clone(),
            broker_url: broker_url.clone(),
            master_key: cluster_key.public().to_hex(),
        },
        broker: broker.clone(),
        node_grace: Duration::from_secs(args.node_grace_seconds),
        pod_eviction: Duration::from_secs(args.pod_eviction_seconds),
        resync: Duration::from_secs(1),
        clock_window: Duration::from_secs(600),
        home_assistant_prefix: (!args.no_home_assistant)
            .then(|| args.home_assistant_prefix.clone()),
        registry_mirror,
    };
    let master_task = tokio::spawn(master::run(master_cfg, stop_rx));

    let client_config = ClientConfig {
        broker: broker.url.clone(),
        broker_ca: broker.ca_file.clone(),
        mqtt_version: broker.version,
        topic_prefix: args.topic_prefix.clone(),
        admin_key: layout.admin_key(),
        master_key: cluster_key.public().to_hex(),
        data_dir: Some(layout.data_dir.clone()),
    };
    let config_path = client_config_path(config)?;
    client_config.save(&config_path)?;
    write_atomic(
        &layout.pid_file(),
        std::process::id().to_string().as_bytes(),
    )?;
    println!("Bramble is up: {node_line}broker {broker_url}");
    println!("CLI config written to {}", config_path.display());
    let worker_broker = match &args.broker {
        Some(_) => {
            let mut flags = broker_url.clone();
            if let Some(ca) = &broker.ca_file {
                flags.push_str(&format!(" --broker-ca {}", ca.display()));
            }
            flags
        }
        None => format!("mqtt://<this host>:{}", listen.port()),
    };
    let version_flag = match broker.version {
        crate::transport::MqttVersion::V311 => String::new(),
        v => format!(" --mqtt-version {v}"),
    };
    println!(
        "Workers join with: bramble worker --broker {worker_broker}{version_flag} --join \"$(cat {})\"",
        token_file.display()
    );

    if let Some((port, busybox)) = &demo {
        let images = ImageStore::open(&layout.images())?;
        tokio::select! {
            r = deploy_demo(*port, busybox, &images, &client_config) => match r {
                Ok(()) => {
                    println!("Demo applied: curl http://127.0.0.1:{port}/   (bramble get pods -o wide)")
                }
                Err(e) => eprintln!("error: {e}"),
            },
            // Stopped while the demo was being deployed: stop now, cleanly.
            _ = stop_signal.wait() => {}
        }
    }

    stop_signal.wait().await;
    tracing::info!("stopping the agent; pods keep running (`bramble down` removes them)");
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = master_task.await {
        tracing::error!(error = %e, "master");
    }
    if let Some(w) = worker_task
        && let Ok(Err(e)) = w.await
    {
        tracing::error!(error = %e, "worker");
    }
    let _ = std::fs::remove_file(layout.pid_file());
    Ok(ExitCode::SUCCESS)
}

/// The registry mirror over the master's image store, unless
/// `--registry-mirror-listen off`; returns the address workers are told.
async fn start_registry_mirror(
    args: &MasterArgs,
    layout: &Layout,
    store: &Store,
    cluster_key: &KeyPair,
    admin_key: crate::transport::PublicKey,
    broker_url: &str,
    stop: watch::Receiver<bool>,
) -> Result<Option<String>, UpError> {
    let flag = |reason: String| UpError::Flag {
        flag: "registry-mirror-listen",
        reason,
    };
    let images = ImageStore::open(&layout.images())?;
    let listen = match args.registry_mirror_listen.as_deref() {
        None | Some("off") => {
            // New imports stop keeping layer blobs; kept ones stay.
            images.set_keep_layer_blobs(false)?;
            return Ok(None);
        }
        Some(a) => a
            .parse::<SocketAddr>()
            .map_err(|_| flag(format!("{a:?} is not ADDR:PORT or off")))?,
    };
    if let Some(a) = &args.registry_mirror_advertise
        && crate::runtime::images::mirror::mirror_address(a, "master").is_none()
    {
        return Err(UpError::Flag {
            flag: "registry-mirror-advertise",
            reason: format!("{a:?} is not HOST:PORT"),
        });
    }
    let readers = master::mirror::Readers {
        store: store.clone(),
        admin_keys: vec![admin_key],
        clock_window: Duration::from_secs(600),
        cluster_key: cluster_key.clone(),
    };
    let bound = master::mirror::start(listen, images, readers, stop)
        .await
        .map_err(|e| flag(e.to_string()))?;
    let broker = crate::transport::client::parse_url(broker_url)?;
    let advertised = master::mirror::advertised(
        bound,
        args.registry_mirror_advertise.as_deref(),
        &broker.host,
        broker.port,
    );
    tracing::info!(listen = %bound, %advertised, "registry mirror serving the master's images");
    Ok(Some(advertised))
}

/// Ctrl-C or SIGTERM, watched from the moment [`StopSignal::install`] is
/// called: installed before anything starts, so a signal during startup (or
/// the demo's deployment) still ends in a clean stop instead of the default
/// action killing the process halfway.
struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    fn install() -> Result<StopSignal, UpError> {
        use tokio::signal::unix::{SignalKind, signal};
        let watch_err = |name: &str, e: std::io::Error| UpError::Signal(format!("{name}: {e}"));
        let mut term = signal(SignalKind::terminate()).map_err(|e| watch_err("SIGTERM", e))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| watch_err("SIGINT", e))?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        Ok(StopSignal(rx))
    }

    /// Returns once a signal came (at once if one already did).
    async fn wait(&mut self) {
        // The sender lives as long as the runtime; an error means no signal can come.
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// On a fresh cluster, a join token with no expiry, kept (0600) in the data
/// dir as k3s keeps its node token; `bramble token` makes and revokes others.
fn initial_join_token(
    store: &Store,
    layout: &Layout,
    cluster_key: &KeyPair,
) -> Result<PathBuf, UpError> {
    use std::os::unix::fs::PermissionsExt;
    let path = layout.data_dir.join("join-token");
    if path.exists() {
        return Ok(path);
    }
    let (secret, text, _) = master::tokens::create(
        master::tokens::TokenKind::Join,
        &cluster_key.public().fingerprint(),
        None,
        vec![],
        vec![],
        "the master's initial join token".into(),
        jiff::Timestamp::now().as_second(),
    );
    store.commit(
        vec![crate::store::Op::Create(crate::api::Object::Secret(secret))],
        crate::store::Mode::Commit,
    )?;
    write_atomic(&path, format!("{text}\n").as_bytes())?;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    Ok(path)
}

fn save_node_settings(
    layout: &Layout,
    bridge: &str,
    node_name: &str,
    pod_cidr: Ipv4Net,
) -> Result<(), UpError> {
    let settings = NodeSettings {
        bridge: bridge.to_string(),
        node_name: node_name.to_string(),
        pod_cidr,
    };
    write_atomic(
        &settings_path(layout),
        toml::to_string(&settings).unwrap_or_default().as_bytes(),
    )?;
    Ok(())
}

/// The worker agent for this machine, running until `stop` flips.
#[allow(clippy::too_many_arguments)]
fn start_worker(
    layout: &Layout,
    node: &NodeArgs,
    node_name: &str,
    node_key: KeyPair,
    master_key: crate::transport::PublicKey,
    topics: &Topics,
    broker: &BrokerConfig,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), WorkerError>>, UpError> {
    let images = ImageStore::open(&layout.images())?;
    let runtime = LibcontainerRuntime::new(RuntimeConfig {
        state_dir: layout.container_state(),
        containers_dir: layout.containers(),
        images,
        cgroup_prefix: layout.cgroup_prefix(),
        helper_exe: std::env::current_exe().map_err(|source| ConfigError::Io {
            path: "/proc/self/exe".into(),
            source,
        })?,
    })?
    .with_image_settings(image_settings(node)?);
    let worker_cfg = WorkerConfig {
        node_name: node_name.to_string(),
        node_key,
        master_key,
        topics: topics.clone(),
        broker: broker.clone(),
        layout: layout.clone(),
        runtime: Arc::new(runtime),
        bridge: Some(node.bridge.clone()),
        node_port_addr: node.node_port_address,
        node_ip: node.node_ip,
        resolv_conf: node.resolv_conf.clone(),
        heartbeat: Duration::from_millis(node.heartbeat_ms.max(100)),
        log_max_bytes: 10 * 1024 * 1024,
        clock_window: Duration::from_secs(600),
        reserved: node.system_reserved,
        pids_limit: Some(node.pod_pids_limit).filter(|l| *l > 0),
    };
    Ok(tokio::spawn(worker::run(worker_cfg, stop)))
}

/// `bramble worker`: join (the first time) and run the agent.
pub async fn worker(mut args: WorkerRoleArgs) -> Result<ExitCode, UpError> {
    let mut file_labels = BTreeMap::new();
    if let Some(path) = &args.config_file {
        let file: crate::config::WorkerFile = crate::config::load_toml(path)?;
        if args.broker.is_none() {
            args.broker = Some(file.broker);
        }
        args.broker_options
            .or_file(file.broker_ca, file.mqtt_version);
        if args.join.is_none() {
            args.join = file.join_token;
        }
        if args.node.node_name.is_none() {
            args.node.node_name = file.node_name;
        }
        if args.node.node_ip.is_none() {
            args.node.node_ip = file.node_ip;
        }
        if args.data_dir == Path::new(".bramble")
            && let Some(d) = file.data_dir
        {
            args.data_dir = d;
        }
        if let Some(t) = file.topic_prefix {
            args.topic_prefix = t;
        }
        args.node
            .insecure_registries
            .extend(file.insecure_registries);
        if args.node.registry_ca.is_none() {
            args.node.registry_ca = file.registry_ca;
        }
        file_labels = file.labels;
    }
    let broker_url = args.broker.clone().ok_or(UpError::Flag {
        flag: "broker",
        reason: "the cluster's broker is needed (mqtt://host:port or mqtts://host:port)".into(),
    })?;
    let broker = args.broker_options.broker(&broker_url)?;
    let broker_url = broker.display_url();
    let node_name = check_node_args(&args.node)?;
    let layout = Layout::new(&args.data_dir)?;
    if let Some(pid) = running_agent(&layout) {
        return Err(UpError::AlreadyRunning {
            data_dir: layout.data_dir.clone(),
            pid,
        });
    }
    let mut stop_signal = StopSignal::install()?;
    std::fs::create_dir_all(&layout.run_dir).map_err(|source| ConfigError::Io {
        path: layout.run_dir.clone(),
        source,
    })?;
    let (node_key, _) = KeyPair::load_or_create(&layout.node_key())?;
    let topics = Topics::new(&args.topic_prefix);
    let mut labels = file_labels;
    labels.extend(args.labels.iter().cloned());
    let membership = match (worker::join::load(&layout.data_dir)?, &args.join) {
        (Some(m), _) if m.node_name == node_name => m,
        (_, Some(token)) => {
            tracing::info!(node = %node_name, broker = %broker_url, "joining");
            let join = worker::join::join(
                &broker,
                &topics,
                &node_name,
                &node_key,
                token,
                labels,
                &layout.data_dir,
            );
            tokio::select! {
                m = join => m?,
                // Stopped while waiting for the master: nothing started yet.
                _ = stop_signal.wait() => return Ok(ExitCode::SUCCESS),
            }
        }
        (Some(m), None) => {
            return Err(UpError::Flag {
                flag: "node-name",
                reason: format!(
                    "this data dir joined as {:?}; a new name needs --join TOKEN",
                    m.node_name
                ),
            });
        }
        (None, None) => {
            return Err(UpError::Flag {
                flag: "join",
                reason: "this node has not joined a cluster yet: give --join TOKEN".into(),
            });
        }
    };
    let pod_cidr: Ipv4Net = membership.pod_cidr.parse().map_err(|_| UpError::Flag {
        flag: "join",
        reason: format!("the master gave a bad pod CIDR {:?}", membership.pod_cidr),
    })?;
    save_node_settings(&layout, &args.node.bridge, &node_name, pod_cidr)?;
    let master_key = membership.master_key(&layout.data_dir)?;
    write_atomic(
        &layout.pid_file(),
        std::process::id().to_string().as_bytes(),
    )?;
    println!("Bramble worker {node_name} is up (pod CIDR {pod_cidr}, broker {broker_url})");
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = start_worker(
        &layout, &args.node, &node_name, node_key, master_key, &topics, &broker, stop_rx,
    )?;
    tokio::select! {
        _ = stop_signal.wait() => {}
        // The agent ended by itself (its broker connection is gone for good).
        _ = async { while !task.is_finished() { tokio::time::sleep(Duration::from_millis(500)).await } } => {}
    }
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = task.await {
        tracing::error!(error = %e, "worker");
    }
    let _ = std::fs::remove_file(layout.pid_file());
    Ok(ExitCode::SUCCESS)
}

fn image_settings(args: &NodeArgs) -> Result<ImageSettings, UpError> {
    let (high, low) = (args.image_gc_high_threshold, args.image_gc_low_threshold);
    if high > 100 || low > high {
        return Err(UpError::Flag {
            flag: "image-gc-high-threshold",
            reason: format!(
                "need --image-gc-low-threshold ({low}) <= --image-gc-high-threshold ({high}) <= 100"
            ),
        });
    }
    for r in &args.insecure_registries {
        if r.is_empty() || r.contains('/') || r.contains("://") {
            return Err(UpError::Flag {
                flag: "insecure-registry",
                reason: format!("{r:?} is not HOST or HOST:PORT"),
            });
        }
    }
    let registry_ca = match &args.registry_ca {
        Some(path) => Some(RegistryCa::load(path).map_err(|e| UpError::Flag {
            flag: "registry-ca",
            reason: e.to_string(),
        })?),
        None => None,
    };
    Ok(ImageSettings {
        pull: PullOptions {
            insecure_registries: args.insecure_registries.clone(),
            registry_ca,
            ..PullOptions::default()
        },
        gc: GcPolicy {
            high_percent: high,
            low_percent: low,
            ..GcPolicy::default()
        },
    })
}

async fn deploy_demo(
    node_port: u16,
    busybox: &Path,
    images: &ImageStore,
    cfg: &ClientConfig,
) -> Result<(), UpError> {
    let busybox = busybox.to_path_buf();
    let store = images.clone();
    let image = tokio::task::spawn_blocking(move || {
        crate::runtime::demo::build_demo_image(&store, &busybox)
    })
    .await
    .map_err(|e| UpError::Demo(e.to_string()))??;
    tracing::info!(%image, "demo image ready");
    let manifest = include_str!("../examples/demo.yaml")
        .replace("nodePort: 30080", &format!("nodePort: {node_port}"));
    let parsed = crate::api::manifest::parse("demo.yaml", &manifest)
        .map_err(|e| UpError::Demo(e.to_string()))?;
    let objects = parsed.into_iter().map(|p| p.object).collect();
    let mut client = crate::cli::client::Client::connect(cfg)
        .await
        .map_err(|e| UpError::Demo(e.to_string()))?;
    let result = client
        .call(crate::transport::messages::Request::Apply(
            crate::transport::messages::ApplyRequest {
                objects,
                dry_run: false,
            },
        ))
        .await;
    client.close().await;
    result.map(|_| ()).map_err(|e| UpError::Demo(e.to_string()))
}

pub async fn down(args: DownArgs) -> Result<ExitCode, UpError> {
    let layout = Layout::new(&args.data_dir)?;
    if let Some(pid) = running_agent(&layout) {
        tracing::info!(pid, "stopping the running agent");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while running_agent(&layout).is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let settings: Option<NodeSettings> = std::fs::read_to_string(settings_path(&layout))
        .ok()
        .and_then(|t| toml::from_str(&t).ok());
    // Containers first: they hold mounts in the netns and the rootfs.
    let images = ImageStore::open(&layout.images())?;
    let runtime = LibcontainerRuntime::new(RuntimeConfig {
        state_dir: layout.container_state(),
        containers_dir: layout.containers(),
        images,
        cgroup_prefix: layout.cgroup_prefix(),
        helper_exe: std::env::current_exe().unwrap_or_else(|_| "bramble".into()),
    })?;
    let containers = runtime.list_containers()?;
    for c in &containers {
        let _ = runtime.kill_container(&c.id, libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for c in &containers {
        loop {
            match runtime.remove_container(&c.id) {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() > deadline => {
                    tracing::warn!(id = %c.id, error = %e, "cannot remove container");
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    runtime.cleanup_all()?;
    // Pod volumes hold tmpfs mounts (secrets, memory emptyDirs).
    if let Err(e) = crate::worker::volumes::teardown_all(&layout.data_dir.join("pods")) {
        tracing::warn!(error = %e, "pod volumes");
    }
    if let Some(s) = &settings {
        let net = PodNetwork::new(NetConfig {
            bridge: s.bridge.clone(),
            pod_cidr: s.pod_cidr,
            netns_dir: layout.netns_dir(),
        });
        match net.await {
            Ok(n) => n.teardown_all().await?,
            Err(e) => tracing::warn!(error = %e, "pod network"),
        }
    }
    let _ = std::fs::remove_dir_all(&layout.run_dir);
    if args.purge {
        let _ = std::fs::remove_dir_all(&layout.data_dir);
    }
    println!("Bramble is down ({} containers removed)", containers.len());
    Ok(ExitCode::SUCCESS)
}
