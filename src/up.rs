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
use crate::runtime::images::{GcPolicy, PullOptions};
use crate::runtime::{
    ImageSettings, ImageStore, LibcontainerRuntime, Runtime, RuntimeConfig, RuntimeError,
};
use crate::store::{Store, StoreError};
use crate::transport::{KeyError, KeyPair, Topics, TransportError, broker};
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
    #[error("network cleanup: {0}")]
    Net(#[from] crate::net::NetError),
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
    /// Where the cluster's state lives.
    #[arg(long, default_value = ".bramble")]
    pub data_dir: PathBuf,
    /// Address the embedded MQTT broker listens on.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub listen: SocketAddr,
    /// Use this broker (`mqtt://[user:pass@]host:port`, e.g. Mosquitto)
    /// instead of starting the embedded one.
    #[arg(long)]
    pub broker: Option<String>,
    /// This node's name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The pod bridge.
    #[arg(long, default_value = "bramble0")]
    pub bridge: String,
    #[arg(long, default_value = "10.88.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: Ipv4Net,
    #[arg(long, default_value = "30000-32767", value_parser = parse_range)]
    pub service_node_port_range: RangeInclusive<u16>,
    /// Address NodePorts listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub node_port_address: IpAddr,
    /// The address this node reports (default: the default route's).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = crate::api::routing::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// The node's resolver configuration: the cluster DNS forwards names
    /// outside the cluster to its nameservers, and `dnsPolicy: Default` pods
    /// get it.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Topic prefix on the broker.
    #[arg(long, default_value = crate::transport::topics::DEFAULT_PREFIX)]
    pub topic_prefix: String,
    /// Home Assistant's MQTT discovery prefix: the master publishes nodes
    /// and opted-in Deployments under it (docs/automation.md).
    #[arg(long, default_value = crate::master::discovery::DEFAULT_PREFIX)]
    pub home_assistant_prefix: String,
    /// Publish no Home Assistant discovery.
    #[arg(long)]
    pub no_home_assistant: bool,
    /// How long a silent node stays Ready, in seconds.
    #[arg(long, default_value_t = 15)]
    pub node_grace_seconds: u64,
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
    /// Collect unused images when the image store's disk is this full (percent).
    #[arg(long, default_value_t = 85)]
    pub image_gc_high_threshold: u8,
    /// Image collection stops once that disk is below this (percent).
    #[arg(long, default_value_t = 80)]
    pub image_gc_low_threshold: u8,
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
    let layout = Layout::new(&args.data_dir)?;
    if let Some(pid) = running_agent(&layout) {
        return Err(UpError::AlreadyRunning {
            data_dir: layout.data_dir.clone(),
            pid,
        });
    }
    let image_settings = image_settings(&args)?;
    if args.bridge.is_empty() || args.bridge.len() > 15 {
        return Err(UpError::Flag {
            flag: "bridge",
            reason: "an interface name has 1 to 15 characters".into(),
        });
    }
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
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
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
    let (cluster_key, created) = KeyPair::load_or_create(&layout.cluster_key())?;
    let (admin_key, _) = KeyPair::load_or_create(&layout.admin_key())?;
    let (node_key, _) = KeyPair::load_or_create(&layout.node_key())?;
    if created {
        tracing::info!(data_dir = %layout.data_dir.display(), "created a new cluster");
    }

    let broker_url = match &args.broker {
        Some(url) => {
            crate::transport::client::parse_url(url)?;
            url.clone()
        }
        None => {
            broker::start(args.listen)?;
            format!("mqtt://{}", args.listen)
        }
    };
    let store = Store::open_with_secret_key(
        &layout.master_db(),
        Some(cluster_key.derive_key("secrets-at-rest")),
    )?;
    master::bootstrap(&store)?;
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
        &node_name,
        &node_key.public(),
        args.cluster_cidr,
        labels,
    )?;
    tracing::info!(node = %node_name, %pod_cidr, broker = %broker_url, "node registered");
    let settings = NodeSettings {
        bridge: args.bridge.clone(),
        node_name: node_name.clone(),
        pod_cidr,
    };
    write_atomic(
        &settings_path(&layout),
        toml::to_string(&settings).unwrap_or_default().as_bytes(),
    )?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let topics = Topics::new(&args.topic_prefix);
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
        node_grace: Duration::from_secs(args.node_grace_seconds),
        resync: Duration::from_secs(5),
        clock_window: Duration::from_secs(600),
        home_assistant_prefix: (!args.no_home_assistant)
            .then(|| args.home_assistant_prefix.clone()),
    };
    let master_task = tokio::spawn(master::run(master_cfg, stop_rx.clone()));

    let images = ImageStore::open(&layout.images())?;
    let runtime = LibcontainerRuntime::new(RuntimeConfig {
        state_dir: layout.container_state(),
        containers_dir: layout.containers(),
        images: images.clone(),
        cgroup_prefix: layout.cgroup_prefix(),
        helper_exe: std::env::current_exe().map_err(|source| ConfigError::Io {
            path: "/proc/self/exe".into(),
            source,
        })?,
    })?
    .with_image_settings(image_settings);
    let worker_cfg = WorkerConfig {
        node_name: node_name.clone(),
        node_key,
        master_key: cluster_key.public(),
        topics: topics.clone(),
        broker_url: broker_url.clone(),
        layout: layout.clone(),
        runtime: Arc::new(runtime),
        bridge: Some(args.bridge.clone()),
        node_port_addr: args.node_port_address,
        node_ip: args.node_ip,
        resolv_conf: args.resolv_conf.clone(),
        heartbeat: Duration::from_secs(5),
        log_max_bytes: 10 * 1024 * 1024,
        clock_window: Duration::from_secs(600),
        reserved: args.system_reserved,
        pids_limit: Some(args.pod_pids_limit).filter(|l| *l > 0),
    };
    let worker_task = tokio::spawn(worker::run(worker_cfg, stop_rx));

    let client_config = ClientConfig {
        broker: broker_url.clone(),
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
    println!("Bramble is up: node {node_name}, broker {broker_url}");
    println!("CLI config written to {}", config_path.display());

    if args.demo {
        match deploy_demo(&args, &images, &client_config).await {
            Ok(()) => println!(
                "Demo applied: curl http://127.0.0.1:{}/   (bramble get pods -o wide)",
                args.demo_node_port
            ),
            Err(e) => eprintln!("error: {e}"),
        }
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| UpError::Demo(format!("cannot watch SIGTERM: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping the agent; pods keep running (`bramble down` removes them)");
    let _ = stop_tx.send(true);
    let (m, w) = tokio::join!(master_task, worker_task);
    let _ = std::fs::remove_file(layout.pid_file());
    if let Ok(Err(e)) = m {
        tracing::error!(error = %e, "master");
    }
    if let Ok(Err(e)) = w {
        tracing::error!(error = %e, "worker");
    }
    Ok(ExitCode::SUCCESS)
}

fn image_settings(args: &UpArgs) -> Result<ImageSettings, UpError> {
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
    Ok(ImageSettings {
        pull: PullOptions {
            insecure_registries: args.insecure_registries.clone(),
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
    args: &UpArgs,
    images: &ImageStore,
    cfg: &ClientConfig,
) -> Result<(), UpError> {
    let busybox = args.busybox.clone();
    let store = images.clone();
    let image = tokio::task::spawn_blocking(move || {
        crate::runtime::demo::build_demo_image(&store, &busybox)
    })
    .await
    .map_err(|e| UpError::Demo(e.to_string()))??;
    tracing::info!(%image, "demo image ready");
    let manifest = include_str!("../examples/demo.yaml").replace(
        "nodePort: 30080",
        &format!("nodePort: {}", args.demo_node_port),
    );
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
