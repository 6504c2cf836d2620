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
use bramble::cli::client::Client;
use bramble::config::ClientConfig;
use bramble::transport::messages::{GetRequest, Request, Response};
use common::{Cluster, ClusterOptions};

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.trim_start_matches(':').trim();
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// utime + stime of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

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

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
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
    let (cpu0, w0) = (cpu_ticks(pid), proc_field(pid, "io", "write_bytes"));
    std::thread::sleep(idle);
    let (cpu1, w1) = (cpu_ticks(pid), proc_field(pid, "io", "write_bytes"));
    let rss = proc_field(pid, "smaps_rollup", "Rss");
    let pss = proc_field(pid, "smaps_rollup", "Pss");
    let anon = proc_field(pid, "smaps_rollup", "Pss_Anon");
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu_pct = (cpu1 - cpu0) as f64 / tick / idle.as_secs_f64() * 100.0;
    let writes_per_hour = (w1 - w0) as f64 * 3600.0 / idle.as_secs_f64();

    let (med, min, max) = stats(&mut apply_ms);
    println!("| figure | median | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| apply → 2 demo pods Running+Ready ({rounds} runs) | {med:.0} ms | {min:.0} ms | {max:.0} ms |"
    );
    println!(
        "| `bramble up` idle RSS, demo running | {:.1} MiB | | |",
        rss as f64 / 1024.0
    );
    println!(
        "| `bramble up` idle PSS (anon part) | {:.1} MiB ({:.1} MiB) | | |",
        pss as f64 / 1024.0,
        anon as f64 / 1024.0
    );
    println!(
        "| idle CPU over {} s | {cpu_pct:.2} % | | |",
        idle.as_secs()
    );
    println!(
        "| idle disk writes | {:.0} KiB/h | | |",
        writes_per_hour / 1024.0
    );
}
