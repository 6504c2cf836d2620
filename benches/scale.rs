//! Controller and scheduler throughput on the fake runtime: 100 simulated
//! nodes (each a real `worker::run` with a `FakeRuntime` and no pod network)
//! and one master, all in this process against one embedded broker. A
//! Deployment of 3000 replicas is stored and the clock runs until every pod
//! is bound and reported Running. Prints the time and the process's RSS
//! (master and the 100 agents together; the agents' share is measured first,
//! before the master starts).
//!
//! `cargo bench --bench scale` (`SCALE_NODES` / `SCALE_PODS` to change the size).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
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

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let nodes = env("SCALE_NODES", 100);
    let pods = env("SCALE_PODS", 3000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(nodes, pods));
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
    let store = Store::open(&dir.path().join("master.redb")).unwrap();
    master::bootstrap(&store).unwrap();
    let topics = Topics::new("bramble/v1");
    let cidr = "10.88.0.0/16".parse().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rss_start = rss_kib();

    let mut workers = Vec::new();
    for i in 0..nodes {
        let name = format!("sim{i:03}");
        let key = KeyPair::generate();
        master::register_node(&store, &name, &key.public(), cidr, BTreeMap::new()).unwrap();
        let layout = Layout::new(&dir.path().join(&name)).unwrap();
        let cfg = WorkerConfig {
            node_name: name,
            node_key: key,
            master_key: cluster_key.public(),
            topics: topics.clone(),
            broker_url: broker_url.clone(),
            layout,
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_workers = rss_kib();

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
        node_grace: Duration::from_secs(30),
        pod_eviction: Duration::from_secs(30),
        resync: Duration::from_secs(5),
        clock_window: Duration::from_secs(600),
        home_assistant_prefix: None,
    };
    let master_task = tokio::spawn(master::run(master_cfg, stop_rx.clone()));
    // Every node Ready first.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = store
            .list(Kind::Node, None)
            .iter()
            .filter(
                |n| matches!(&***n, Object::Node(n) if bramble::master::controllers::node_ready(n)),
            )
            .count();
        if ready == nodes || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_idle = rss_kib();

    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: scale\nspec:\n  replicas: {pods}\n  selector:\n    matchLabels:\n      app: scale\n  template:\n    metadata:\n      labels:\n        app: scale\n    spec:\n      containers:\n        - name: c\n          image: bramble.local/demo:latest\n"
    );
    let obj = bramble::api::manifest::parse("scale.yaml", &manifest)
        .unwrap()
        .remove(0)
        .object;
    let start = Instant::now();
    store.commit(vec![Op::Put(obj)], Mode::Commit).unwrap();
    let mut bound_at = None;
    let mut peak = 0;
    let limit = Duration::from_secs(env("SCALE_LIMIT_SECS", 900) as u64);
    let running_at = loop {
        let list = store.list(Kind::Pod, None);
        let bound = list
            .iter()
            .filter(|p| matches!(&***p, Object::Pod(p) if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()))
            .count();
        let running = list
            .iter()
            .filter(|p| matches!(&***p, Object::Pod(p) if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
            .count();
        peak = peak.max(rss_kib());
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("nodes: {nodes}, pods: {pods}");
    println!("all bound: {:?}", bound_at);
    println!("all Running: {:?}", running_at);
    println!("RSS before anything: {} MiB", rss_start / 1024);
    println!("RSS with {nodes} agents idle: {} MiB", rss_workers / 1024);
    println!("RSS with the master, nodes Ready: {} MiB", rss_idle / 1024);
    println!(
        "RSS peak during the run: {} MiB (master ≈ peak − agents)",
        peak / 1024
    );
    println!("store write transactions: {}", store.write_transactions());
    let _ = stop_tx.send(true);
    let _ = master_task.await;
    for w in workers {
        let _ = w.await;
    }
}
