//! `cargo bench --bench rollout`: a rolling update of the demo Deployment
//! at 10 replicas behind its NodePort, on a real one-machine cluster
//! (`bramble up --demo`, real containers), while a client sends requests
//! one after another (a new connection each, 20 ms apart) the whole time.
//!
//! Each round is a `bramble rollout restart` (a new pod template, so every
//! pod is replaced with the default 25 % surge / 25 % unavailable); the
//! clock starts just before the CLI is spawned and stops when the
//! Deployment's status reads as `rollout status`'s "successfully rolled
//! out" (polled every 50 ms over the same client path). Printed: the time
//! per round, and the requests answered and failed during it.
//!
//! Run by `cargo test --all-targets` too, then in a quick mode (3 replicas,
//! one round) that only checks the bench runs to the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bramble::api::{Kind, Object};
use bramble::cli::client::Client;
use bramble::cli::rollout::status_message;
use bramble::config::ClientConfig;
use bramble::transport::messages::{GetRequest, Request, Response};
use common::prober::Prober;
use common::{Cluster, ClusterOptions};

async fn deployment(client: &mut Client) -> Option<Object> {
    let req = GetRequest {
        kind: Kind::Deployment,
        namespace: Some("default".into()),
        name: Some("demo".into()),
        selector: None,
    };
    match client.call(Request::Get(req)).await {
        Ok(Response::Objects(mut o)) => o.pop(),
        _ => None,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (replicas, rounds) = if full { (10, 5) } else { (3, 1) };

    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = ClientConfig::load(&c.config).unwrap();
    let mut client = rt.block_on(Client::connect(&cfg)).unwrap();
    let rolled_out = |client: &mut Client| {
        rt.block_on(deployment(client))
            .is_some_and(|d| status_message(&d).is_ok_and(|(_, done)| done))
    };
    // `up --demo` applies the demo once its node is Ready.
    c.wait_for("the demo Deployment", Duration::from_secs(60), || {
        rt.block_on(deployment(&mut client)).is_some()
    });
    c.ok(&[
        "scale",
        "deployment/demo",
        &format!("--replicas={replicas}"),
    ]);
    c.wait_for("the demo's replicas", Duration::from_secs(180), || {
        c.running_ready("app=demo").len() == replicas && rolled_out(&mut client)
    });
    let addr = format!("127.0.0.1:{}", c.node_port);

    let mut times = Vec::new();
    let mut rows = Vec::new();
    for round in 1..=rounds {
        let prober = Prober::start(addr.clone(), "Hello from", Duration::from_millis(20));
        c.wait_for("the client's first answer", Duration::from_secs(30), || {
            prober.counts().0 > 0
        });
        let (ok0, failed0) = prober.counts();
        let start = Instant::now();
        c.ok(&["rollout", "restart", "deployment/demo"]);
        // The restart is observed first, then the rollout completes.
        std::thread::sleep(Duration::from_millis(50));
        while !rolled_out(&mut client) {
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "the rollout never finished\n{}",
                c.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = start.elapsed();
        let (ok1, _) = prober.counts();
        // A failure in the second after the rollout still counts: the last
        // old pods are stopping then.
        std::thread::sleep(Duration::from_secs(1));
        let (_, failed) = prober.finish();
        times.push(took.as_secs_f64());
        rows.push(format!(
            "| {round} | {:.1} s | {} | {} |",
            took.as_secs_f64(),
            ok1 - ok0,
            failed - failed0
        ));
        c.wait_for("the old pods gone", Duration::from_secs(60), || {
            c.pods("app=demo").len() == replicas
        });
    }
    rt.block_on(client.close());
    println!("rolling update of {replicas} replicas, {rounds} rounds");
    println!("| round | time | requests answered | failed |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "median {:.1} s, min {:.1} s, max {:.1} s",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}
