//! `cargo bench --bench pod_start`: how long a pod takes to start with its
//! image present, beside `crun` starting a container from the same rootfs, in
//! the same run.
//!
//! - Bramble: a Pod applied (`bramble apply`, a new CLI process each time, as a
//!   user would) until `get pod` shows it Running and Ready; 20 pods, one at a
//!   time.
//! - crun: `crun run -d` (create + start, detached) of the demo image's
//!   rootfs with `sleep`, 20 times, then `crun delete -f`.
//!
//! The two measure different things on purpose: the user's wait for a pod
//! (CLI, broker, master, scheduler, worker, network, runtime) against the
//! floor a bare OCI runtime sets. `cargo test` runs it in a quick mode (3
//! pods) that only checks it works.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bramble::api::{Kind, Object};
use bramble::bench::crun;
use bramble::bench::report::percentile;
use bramble::cli::client::Client;
use bramble::config::ClientConfig;
use bramble::transport::messages::{GetRequest, Request, Response};
use common::{Cluster, ClusterOptions};

async fn pod_ready(client: &mut Client, name: &str) -> bool {
    let req = GetRequest {
        kind: Kind::Pod,
        namespace: Some("default".into()),
        name: Some(name.into()),
        selector: None,
    };
    match client.call(Request::Get(req)).await {
        Ok(Response::Objects(objs)) => objs.iter().any(|o| match o {
            Object::Pod(p) => p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            }),
            _ => false,
        }),
        _ => false,
    }
}

fn summary(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "| {name} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        percentile(&v, 0.5),
        percentile(&v, 0.95),
        v[0],
        v[v.len() - 1]
    )
}

/// A crun bundle whose rootfs is the demo image's (single) layer.
fn crun_bundle(c: &Cluster, dir: &Path) -> PathBuf {
    let store = bramble::runtime::ImageStore::open(&c.layout().images()).unwrap();
    let image = store.resolve(bramble::runtime::demo::DEMO_IMAGE).unwrap();
    let rootfs = image.layer_dirs.last().unwrap().clone();
    crun::bundle(Path::new("crun"), &rootfs, dir, &["/bin/sleep", "3600"]).expect("crun spec")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runs = if full { 20 } else { 3 };
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = ClientConfig::load(&c.config).unwrap();
    let mut client = rt.block_on(Client::connect(&cfg)).unwrap();
    c.wait_for("the demo", Duration::from_secs(60), || {
        c.running_ready("app=demo").len() == 2
    });

    let mut bramble_ms = Vec::new();
    for i in 0..runs {
        let name = format!("start-{i}");
        let file = c.dir.join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: bramble.local/demo:v1\n    command: [\"sleep\", \"3600\"]\n"
            ),
        )
        .unwrap();
        let start = Instant::now();
        c.ok(&["apply", "-f", file.to_str().unwrap()]);
        while !rt.block_on(pod_ready(&mut client, &name)) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name} never became ready\n{}",
                c.log_tail()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        bramble_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    rt.block_on(client.close());

    let _hugetlb = crun::HugetlbMount::ensure();
    let bundle = crun_bundle(&c, &c.dir);
    let mut crun_ms = Vec::new();
    for i in 0..runs {
        let id = format!("bramble-bench-{}-{i}", std::process::id());
        let took = crun::run_detached(Path::new("crun"), &bundle, &id, &c.dir);
        crun::delete(Path::new("crun"), &id);
        crun_ms.push(took.expect("crun run").as_secs_f64() * 1000.0);
    }

    println!("| figure ({runs} runs) | p50 | p95 | min | max |");
    println!("|---|---|---|---|---|");
    println!(
        "{}",
        summary("Bramble: apply → pod Running and Ready", bramble_ms)
    );
    println!(
        "{}",
        summary("crun run -d (create + start), same rootfs", crun_ms)
    );
}
