//! `cargo bench --bench cluster`: the many-node cluster (`TestCluster`: a
//! master and three workers, each in its own network namespace), measured.
//!
//! - join: three workers started together until all are Ready;
//! - node loss: `kill -9` of the worker holding most of a 6-replica
//!   Deployment until all 6 are Running and Ready elsewhere (5 rounds; the
//!   killed worker rejoins between rounds);
//! - memory: RSS of the master and of each worker with 30 pods running;
//! - first boot: a fourth worker started from a prepared worker.toml (as
//!   `bramble image prepare-sd` writes it) until a DaemonSet's pod runs on it.
//!
//! Run by `cargo test --all-targets` too, in a quick mode (one round, 6 pods)
//! that only checks the bench runs to the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::multi::{TestCluster, TestClusterOptions};

fn deployment(replicas: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: bramble.local/demo:v1
          imagePullPolicy: Never
"#
    )
}

const AGENT: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
        - name: agent
          image: bramble.local/demo:v1
          imagePullPolicy: Never
"#;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn per_node(c: &TestCluster) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in c.running_ready("app=web") {
        *out.entry(p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    out
}

fn median(v: &mut [u128]) -> u128 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 5 } else { 1 };
    let t0 = Instant::now();
    let mut c = TestCluster::start(TestClusterOptions {
        workers: 3,
        master_args: vec![
            "--node-grace-seconds".into(),
            "3".into(),
            "--pod-eviction-seconds".into(),
            "1".into(),
        ],
        broker: None,
    });
    let joined = c.joined_in;
    eprintln!(
        "cluster up in {} ms; 3 workers joined and Ready in {} ms",
        t0.elapsed().as_millis(),
        joined.as_millis()
    );
    let path = c.dir.join("web.yaml");
    std::fs::write(&path, deployment(6)).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
    c.wait_for("6 Running", Duration::from_secs(120), || {
        c.running_ready("app=web").len() == 6
    });

    let mut losses = Vec::new();
    for round in 0..rounds {
        let counts = per_node(&c);
        let (victim, lost) = counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(k, n)| (k.clone(), *n))
            .unwrap();
        let start = Instant::now();
        c.worker_mut(&victim).kill9();
        c.wait_for("replacements Running", Duration::from_secs(60), || {
            let now = per_node(&c);
            now.values().sum::<usize>() == 6 && !now.contains_key(&victim)
        });
        let ms = start.elapsed().as_millis();
        eprintln!(
            "round {round}: kill -9 {victim} ({lost} pods) -> all Running elsewhere in {ms} ms"
        );
        losses.push(ms);
        // It rejoins from its stored membership (no token).
        let w = c.worker_mut(&victim);
        if let Some(i) = w.args.iter().position(|a| a == "--join") {
            w.args.drain(i..i + 2);
        }
        w.spawn();
        c.wait_for(
            "the killed worker Ready again",
            Duration::from_secs(60),
            || c.node_ready(&victim),
        );
    }

    let pods = if full { 30 } else { 6 };
    std::fs::write(&path, deployment(pods)).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
    c.wait_for("all pods Running", Duration::from_secs(300), || {
        c.running_ready("app=web").len() == pods
    });
    std::thread::sleep(Duration::from_secs(if full { 20 } else { 2 }));
    let master_rss = rss_kib(c.master.child.as_ref().unwrap().id());
    let workers: Vec<(String, u64, usize)> = c
        .workers
        .iter()
        .map(|w| {
            (
                w.name.clone(),
                rss_kib(w.child.as_ref().unwrap().id()),
                per_node(&c).get(&w.name).copied().unwrap_or(0),
            )
        })
        .collect();

    // A flashed Pi's first boot: a DaemonSet (as a home lab runs for node
    // exporters) waits for it; from the worker's process start with its
    // prepared worker.toml to that pod Running on it.
    let agent = c.dir.join("agent.yaml");
    std::fs::write(&agent, AGENT).unwrap();
    c.ok(&["apply", "-f", agent.to_str().unwrap()]);
    c.wait_for("agent on the 3 workers", Duration::from_secs(120), || {
        c.running_ready("app=agent").len() == 3
    });
    let start = Instant::now();
    let new = c.start_prepared_worker();
    c.wait_for("the new node's first pod", Duration::from_secs(120), || {
        c.running_ready("app=agent")
            .iter()
            .any(|p| p["spec"]["nodeName"] == new.as_str())
    });
    let first_pod = start.elapsed();

    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| 3 workers join until Ready (in parallel) | {} ms |",
        joined.as_millis()
    );
    println!(
        "| worker kill -9 → its pods Running elsewhere, median of {} (min–max) | {} ms ({}–{} ms) |",
        losses.len(),
        median(&mut losses.clone()),
        losses.iter().min().unwrap(),
        losses.iter().max().unwrap()
    );
    println!(
        "| worker process start with a prepared worker.toml → joined and its first pod Running | {} ms |",
        first_pod.as_millis()
    );
    println!(
        "| master RSS, {pods} pods on 3 workers | {:.1} MiB |",
        master_rss as f64 / 1024.0
    );
    for (name, rss, n) in workers {
        println!(
            "| worker {name} RSS ({n} pods) | {:.1} MiB |",
            rss as f64 / 1024.0
        );
    }
}
