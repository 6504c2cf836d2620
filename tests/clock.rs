//! Nodes whose clock is hours off the master's: a Pi without a real-time
//! clock or NTP boots with a wrong time, and every envelope carries a
//! timestamp checked against a 10-minute window. Namespaces share one
//! clock, so the nodes here get an injected one (`envelope::Clock` over a
//! skewed source); everything else is real: the embedded broker, the master
//! loop, the join exchange, the agent (with the fake runtime, as the scale
//! bench runs it).
//!
//! A node 5 hours behind and one 3 hours ahead each join with a token
//! (the master answers the stale request with its time and the node asks
//! again), then run their agent with a fresh clock, as after a reboot (the
//! master answers their stale reports with its time in an assignment naming
//! the report): both become Ready and run a pod.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble::api::{Kind, Object, ObjectKey};
use bramble::config::Layout;
use bramble::master::commands::Settings;
use bramble::master::{self, MasterConfig};
use bramble::runtime::fake::FakeRuntime;
use bramble::store::{Mode, Op, Store};
use bramble::transport::envelope::{Clock, TimeSource, now_ms};
use bramble::transport::{KeyPair, Topics, broker};
use bramble::worker::{self, WorkerConfig};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const HOUR_MS: i64 = 3_600_000;

/// The system's clocks, the wall one `offset_ms` off.
struct Skewed {
    offset_ms: i64,
    start: Instant,
}

impl TimeSource for Skewed {
    fn wall_ms(&self) -> i64 {
        now_ms() + self.offset_ms
    }
    fn monotonic(&self) -> Duration {
        self.start.elapsed()
    }
}

fn skewed(offset_ms: i64) -> Clock {
    Clock::with_source(Arc::new(Skewed {
        offset_ms,
        start: Instant::now(),
    }))
}

/// Removes the nodes' runtime directories (`/run/bramble/<id>`).
struct RunDirs(Vec<std::path::PathBuf>);

impl Drop for RunDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn pod(name: &str, node: &str) -> Object {
    Object::Pod(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "c".into(),
                image: Some("bramble.local/demo:v1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn ready(store: &Store, node: &str) -> bool {
    store
        .get(&ObjectKey::new(Kind::Node, "", node))
        .is_some_and(|n| matches!(&*n, Object::Node(n) if master::controllers::node_ready(n)))
}

fn running(store: &Store, name: &str) -> bool {
    store
        .get(&ObjectKey::new(Kind::Pod, "default", name))
        .is_some_and(|p| {
            matches!(&*p, Object::Pod(p)
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        })
}

async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_hours_off_the_masters_clock_join_and_run_pods() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let _broker = broker::start(listen).unwrap();
    let broker_url = format!("mqtt://{listen}");
    let topics = Topics::new(&format!("bramble-clock-{port}"));
    let cluster_key = KeyPair::generate();
    let store = Store::open(&dir.path().join("master.redb")).unwrap();
    master::bootstrap(&store).unwrap();
    let (token_secret, token, _) = master::tokens::create(
        master::tokens::TokenKind::Join,
        &cluster_key.public().fingerprint(),
        None,
        vec![],
        vec![],
        "clock test".into(),
        jiff::Timestamp::now().as_second(),
    );
    store
        .commit(vec![Op::Create(Object::Secret(token_secret))], Mode::Commit)
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cidr = "10.88.0.0/16".parse().unwrap();
    let master_task = tokio::spawn(master::run(
        MasterConfig {
            broker: bramble::transport::BrokerConfig::new(&broker_url),
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
            node_grace: Duration::from_secs(5),
            pod_eviction: Duration::from_secs(60),
            resync: Duration::from_secs(1),
            clock_window: Duration::from_secs(600),
            home_assistant_prefix: None,
            registry_mirror: None,
        },
        stop_rx.clone(),
    ));

    let mut run_dirs = RunDirs(Vec::new());
    let mut agents = Vec::new();
    let nodes = [("behind", -5 * HOUR_MS), ("ahead", 3 * HOUR_MS)];
    for (i, (name, offset)) in nodes.into_iter().enumerate() {
        let data_dir = dir.path().join(name);
        let layout = Layout::new(&data_dir).unwrap();
        run_dirs.0.push(layout.run_dir.clone());
        let key = KeyPair::generate();
        let clock = skewed(offset);
        let membership = worker::join::join_with_clock(
            &bramble::transport::BrokerConfig::new(&broker_url),
            &topics,
            name,
            &key,
            &token,
            BTreeMap::new(),
            &data_dir,
            &clock,
        )
        .await
        .unwrap_or_else(|e| panic!("{name} joins: {e}"));
        assert_eq!(membership.master_key, cluster_key.public().to_hex());
        // The join taught the node the master's time, well inside the window.
        let off = clock.now_ms() - now_ms();
        assert!(off.abs() < 60_000, "{name}: {off} ms off after joining");

        // A reboot: the agent starts with the wrong time again.
        let cfg = WorkerConfig {
            node_name: name.into(),
            node_key: key,
            master_key: cluster_key.public(),
            topics: topics.clone(),
            broker: bramble::transport::BrokerConfig::new(&broker_url),
            layout,
            runtime: Arc::new(FakeRuntime::new()),
            bridge: None,
            node_port_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            node_ip: Some(Ipv4Addr::new(127, 0, 0, 10 + i as u8)),
            resolv_conf: "/etc/resolv.conf".into(),
            heartbeat: Duration::from_millis(500),
            log_max_bytes: 1 << 20,
            clock_window: Duration::from_secs(600),
            reserved: Default::default(),
            pids_limit: None,
        };
        agents.push(tokio::spawn(worker::run_with_clock(
            cfg,
            skewed(offset),
            stop_rx.clone(),
        )));
    }

    for (name, _) in nodes {
        wait_for(&format!("{name} Ready"), Duration::from_secs(30), || {
            ready(&store, name)
        })
        .await;
        store
            .commit(
                vec![Op::Create(pod(&format!("on-{name}"), name))],
                Mode::Commit,
            )
            .unwrap();
    }
    for (name, _) in nodes {
        wait_for(
            &format!("the pod on {name} Running"),
            Duration::from_secs(30),
            || running(&store, &format!("on-{name}")),
        )
        .await;
    }

    let _ = stop_tx.send(true);
    for a in agents {
        a.await.unwrap().unwrap();
    }
    master_task.await.unwrap().unwrap();
}
