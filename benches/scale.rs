//! Controller and scheduler throughput on the fake runtime: 100 simulated
//! nodes and one master. A Deployment of 3000 replicas is stored and the
//! clock runs until every pod is bound to a node, then until every pod is
//! reported Running by its node.
//!
//! Two processes, so the master's memory is measured on its own: this one
//! holds the embedded broker, the store and `master::run` (what `bramble
//! master` would be); a child (this binary again, `SCALE_ROLE=agents`) runs
//! the 100 agents, each a real `worker::run` with a `FakeRuntime` and no pod
//! network, all speaking signed MQTT to the broker as separate machines
//! would. The child stops when its stdin closes, so it never outlives this
//! process.
//!
//! `cargo bench --bench scale` (`SCALE_NODES` / `SCALE_PODS` to change the
//! size). Run by `cargo test --all-targets` too, then in a quick mode
//! (5 nodes, 50 pods) that only checks the bench runs to the end.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble::api::{Kind, Object};
use bramble::config::Layout;
use bramble::master::commands::Settings;
use bramble::master::{self, MasterConfig};
use bramble::runtime::fake::FakeRuntime;
use bramble::store::{Mode, Op, Store};
use bramble::transport::{KeyPair, Topics, broker};
use bramble::worker::{self, WorkerConfig};

const ROLE: &str = "SCALE_ROLE";

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node_name(i: usize) -> String {
    format!("sim{i:03}")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var(ROLE).as_deref() == Ok("agents") {
        let dir = PathBuf::from(std::env::var("SCALE_DIR").unwrap());
        let broker_url = std::env::var("SCALE_BROKER").unwrap();
        rt.block_on(agents(&dir, broker_url, env("SCALE_NODES", 0)));
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let nodes = env("SCALE_NODES", if full { 100 } else { 5 });
    let pods = env("SCALE_PODS", if full { 3000 } else { 50 });
    rt.block_on(run(nodes, pods));
}

/// The child: `nodes` agents until stdin closes.
async fn agents(dir: &Path, broker_url: String, nodes: usize) {
    let master_key = KeyPair::load(&dir.join("cluster.key")).unwrap().public();
    let topics = Topics::new("bramble/v1");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for i in 0..nodes {
        let name = node_name(i);
        let node_dir = dir.join(&name);
        let cfg = WorkerConfig {
            node_key: KeyPair::load(&node_dir.join("node.key")).unwrap(),
            node_name: name,
            master_key,
            topics: topics.clone(),
            broker: bramble::transport::BrokerConfig::new(&broker_url),
            layout: Layout::new(&node_dir).unwrap(),
            runtime: Arc::new(FakeRuntime::new()),
            bridge: None,
            node_port_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            node_ip: Some(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)),
            heartbeat: Duration::from_secs(5),
            log_max_bytes: 1 << 20,
            clock_window: Duration::from_secs(600),
            resolv_conf: "/etc/resolv.conf".into(),
            reserved: Default::default(),
            pids_limit: None,
        };
        workers.push(tokio::spawn(worker::run(cfg, stop_rx.clone())));
    }
    // Stdin closes when the parent is done or gone.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
}

/// The agents' process, stopped (stdin closed, then killed) when dropped.
struct Agents(Child);

impl Agents {
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn count_pods(store: &Store) -> (usize, usize) {
    let list = store.list(Kind::Pod, None);
    let mut bound = 0;
    let mut running = 0;
    for p in &list {
        let Object::Pod(p) = &**p else { continue };
        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
            bound += 1;
        }
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            running += 1;
        }
    }
    (bound, running)
}

async fn run(nodes: usize, pods: usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let _broker = broker::start(listen).unwrap();
    let broker_url = format!("mqtt://{listen}");
    let cluster_key = KeyPair::generate();
    cluster_key.save(&dir.path().join("cluster.key")).unwrap();
    let store = Store::open(&dir.path().join("master.redb")).unwrap();
    master::bootstrap(&store).unwrap();
    let topics = Topics::new("bramble/v1");
    let cidr = "10.88.0.0/16".parse().unwrap();
    for i in 0..nodes {
        let key = KeyPair::generate();
        key.save(&dir.path().join(node_name(i)).join("node.key"))
            .unwrap();
        master::register_node(&store, &node_name(i), &key.public(), cidr, BTreeMap::new()).unwrap();
    }

    let agents = Agents(
        Command::new(std::env::current_exe().unwrap())
            .env(ROLE, "agents")
            .env("SCALE_DIR", dir.path())
            .env("SCALE_BROKER", &broker_url)
            .env("SCALE_NODES", nodes.to_string())
            .stdin(Stdio::piped())
            .spawn()
            .expect("the agents' process starts"),
    );
    let agents_pid = agents.pid();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let master_cfg = MasterConfig {
        store: store.clone(),
        cluster_key: cluster_key.clone(),
        admin_keys: vec![],
        topics: topics.clone(),
        settings: Settings {
            cluster_cidr: cidr,
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            node_port_range: 30000..=32767,
            broker_url: broker_url.clone(),
            master_key: cluster_key.public().to_hex(),
            cluster_domain: "cluster.local".into(),
        },
        broker: bramble::transport::BrokerConfig::new(&broker_url),
        node_grace: Duration::from_secs(30),
        pod_eviction: Duration::from_secs(30),
        resync: Duration::from_secs(5),
        clock_window: Duration::from_secs(600),
        home_assistant_prefix: None,
        registry_mirror: None,
    };
    let master_task = tokio::spawn(master::run(master_cfg, stop_rx.clone()));

    // Every node Ready first.
    let deadline = Instant::now() + Duration::from_secs(300);
    let ready = loop {
        let ready = store
            .list(Kind::Node, None)
            .iter()
            .filter(
                |n| matches!(&***n, Object::Node(n) if bramble::master::controllers::node_ready(n)),
            )
            .count();
        if ready == nodes || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ready, nodes, "every simulated node reports Ready");
    // A few heartbeats' worth of quiet before the idle reading.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let master_idle = rss_kib("self");
    let agents_idle = rss_kib(&agents_pid);
    let writes_before = store.write_transactions();

    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: scale\nspec:\n  replicas: {pods}\n  selector:\n    matchLabels:\n      app: scale\n  template:\n    metadata:\n      labels:\n        app: scale\n    spec:\n      containers:\n        - name: c\n          image: bramble.local/demo:latest\n          imagePullPolicy: IfNotPresent\n"
    );
    let obj = bramble::api::manifest::parse("scale.yaml", &manifest)
        .unwrap()
        .remove(0)
        .object;
    let start = Instant::now();
    store.commit(vec![Op::Put(obj)], Mode::Commit).unwrap();
    let mut bound_at = None;
    let mut master_peak = 0;
    let mut agents_peak = 0;
    let limit = Duration::from_secs(env("SCALE_LIMIT_SECS", 900) as u64);
    let running_at = loop {
        let (bound, running) = count_pods(&store);
        master_peak = master_peak.max(rss_kib("self"));
        agents_peak = agents_peak.max(rss_kib(&agents_pid));
        if bound >= pods && bound_at.is_none() {
            bound_at = Some(start.elapsed());
        }
        if running >= pods {
            break Some(start.elapsed());
        }
        if start.elapsed() > limit {
            eprintln!(
                "gave up: {bound} bound, {running} Running after {:?}",
                start.elapsed()
            );
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let writes = store.write_transactions() - writes_before;
    // Settled: the master holds 3000 pods in memory.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let master_settled = rss_kib("self");
    let agents_settled = rss_kib(&agents_pid);

    let secs = |d: Option<Duration>| {
        d.map_or("never".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
    };
    println!("nodes: {nodes}, pods: {pods}");
    println!("all bound: {}", secs(bound_at));
    println!("all Running: {}", secs(running_at));
    println!("store write transactions during the run: {writes}");
    println!(
        "master process (broker + store + master) RSS: idle with {nodes} nodes {}, peak {}, settled with {pods} pods {}",
        mib(master_idle),
        mib(master_peak),
        mib(master_settled)
    );
    println!(
        "agents process ({nodes} fake-runtime agents) RSS: idle {}, peak {}, settled {}",
        mib(agents_idle),
        mib(agents_peak),
        mib(agents_settled)
    );
    let _ = stop_tx.send(true);
    let _ = master_task.await;
    drop(agents);
    assert!(running_at.is_some(), "every pod Running within {limit:?}");
}
