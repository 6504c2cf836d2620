//! `cargo bench --bench up`: the one-machine cluster, measured.
//!
//! - apply → both demo pods Running and Ready (the Deployment deleted and
//!   applied again, 10 times; timed from just before `bramble apply` starts
//!   to the moment `get pods` shows both Ready);
//! - idle cost of `bramble up` (broker + master + worker in one process) with
//!   the demo running: RSS and PSS after a minute of idleness, CPU time and
//!   bytes written to disk during that minute.
//!
//! Run by `cargo test --all-targets` too, then in a quick mode (one round,
//! a few seconds of idle) that only checks the bench runs to the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bramble::api::Kind;
use bramble::bench::procfs::{IdleCost, Usage};
use bramble::bench::report::Summary;
use bramble::cli::client::Client;
use bramble::config::ClientConfig;
use bramble::transport::messages::{GetRequest, Request, Response};
use common::{Cluster, ClusterOptions};

async fn ready_pods(client: &mut Client) -> usize {
    let req = GetRequest {
        kind: Kind::Pod,
        namespace: Some("default".into()),
        name: None,
        selector: Some("app=demo".into()),
    };
    match client.call(Request::Get(req)).await {
        Ok(Response::Objects(objs)) => objs
            .iter()
            .filter(|o| match o {
                bramble::api::Object::Pod(p) => {
                    p.metadata.deletion_timestamp.is_none()
                        && p.status.as_ref().is_some_and(|s| {
                            s.conditions
                                .iter()
                                .flatten()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                }
                _ => false,
            })
            .count(),
        _ => 0,
    }
}

async fn any_pods(client: &mut Client) -> bool {
    let req = GetRequest {
        kind: Kind::Pod,
        namespace: Some("default".into()),
        name: None,
        selector: Some("app=demo".into()),
    };
    matches!(client.call(Request::Get(req)).await, Ok(Response::Objects(o)) if !o.is_empty())
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 10 } else { 1 };
    let idle = if full {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(3)
    };

    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let pid = c.child.as_ref().unwrap().id();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.yaml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("nodePort: 30080", &format!("nodePort: {}", c.node_port));
    let demo = c.dir.join("demo.yaml");
    std::fs::write(&demo, text).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = ClientConfig::load(&c.config).unwrap();
    let mut client = rt.block_on(Client::connect(&cfg)).unwrap();
    c.wait_for("the demo", Duration::from_secs(60), || {
        rt.block_on(ready_pods(&mut client)) == 2
    });

    let mut apply_ms = Vec::new();
    for _ in 0..rounds {
        c.ok(&["delete", "deployment", "demo"]);
        c.wait_for("no demo pods", Duration::from_secs(60), || {
            !rt.block_on(any_pods(&mut client))
        });
        let start = Instant::now();
        c.ok(&["apply", "-f", demo.to_str().unwrap()]);
        while rt.block_on(ready_pods(&mut client)) < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "demo pods never became ready\n{}",
                c.log_tail()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        apply_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    rt.block_on(client.close());

    // Idle: nothing talks to the cluster.
    std::thread::sleep(Duration::from_secs(2));
    let agent = std::collections::BTreeSet::from([pid]);
    let start = Usage::of(&agent);
    std::thread::sleep(idle);
    let cost = IdleCost::between(&start, &Usage::of(&agent), idle.as_secs_f64());

    let Summary {
        median: med,
        min,
        max,
        ..
    } = Summary::of(&apply_ms).unwrap();
    println!("| figure | median | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| apply → 2 demo pods Running+Ready ({rounds} runs) | {med:.0} ms | {min:.0} ms | {max:.0} ms |"
    );
    println!(
        "| `bramble up` idle RSS, demo running | {:.1} MiB | | |",
        cost.rss_mib
    );
    println!(
        "| `bramble up` idle PSS (anon part) | {:.1} MiB ({:.1} MiB) | | |",
        cost.pss_mib, cost.pss_anon_mib
    );
    println!(
        "| idle CPU over {} s | {:.2} % | | |",
        idle.as_secs(),
        cost.cpu_percent
    );
    println!(
        "| idle disk writes | {:.0} KiB/h | | |",
        cost.write_kib_per_hour
    );
}
