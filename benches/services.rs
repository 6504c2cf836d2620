//! `cargo bench --bench services`: the Service proxy against going straight to
//! the pod, in one run, with one client each.
//!
//! - HTTP: Debian's `wrk` (keep-alive, `-t2 -c32 -d10s --latency`) from the
//!   host against `netserve http` in one pod: its pod IP, the Service's
//!   ClusterIP and its NodePort on 127.0.0.1. Requests/s, p50 and p99.
//! - Bulk: the same with 1 MiB responses (`-c4`): transfer rate.
//! - UDP: a ping-pong load generator here (32 client sockets, each with 8
//!   datagrams in flight, 10 s) against `netserve udp-echo`: pod IP, ClusterIP,
//!   NodePort. Replies/s (each one datagram up and one down) and the loss.
//!
//! Each Service also has a twin annotated `bramble.io/proxy-mode: kernel`
//! (nftables DNAT, `src/net/svcnat.rs`), measured in the same run: its
//! ClusterIP and its NodePort on the node address (the kernel path leaves
//! 127.0.0.1 to the proxy).
//!
//! The proxy's copy mode is the agent's `BRAMBLE_PROXY_COPY` (`auto`, the
//! default, `splice` or `read-write`), inherited from this process: run the
//! bench once per mode to compare them.
//!
//! One replica, so the proxy has the same single endpoint the direct runs hit.
//! Run by `cargo test --all-targets` too, then in a quick mode (1 s runs, few
//! connections) that only checks the bench runs to the end.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/netkit/mod.rs"]
mod netkit;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bramble::bench::wrk::Wrk;
use common::{Cluster, ClusterOptions, free_node_port};
use netkit::{IMAGE, cluster_ip, curl, must_apply, node_ip, pod_ip};

struct Settings {
    seconds: u64,
    connections: u32,
    udp_flows: usize,
    udp_window: usize,
}

/// The kernel-path twin of a Service in [`manifests`].
fn kernel_twin(name: &str, port: u16, target: u16, protocol: &str, node_port: u16) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata:
  name: {name}-k
  annotations:
    bramble.io/proxy-mode: kernel
spec:
  type: NodePort
  selector:
    app: {name}
  ports:
    - port: {port}
      protocol: {protocol}
      targetPort: {target}
      nodePort: {node_port}
"#
    )
}

fn manifests(http_np: u16, udp_np: u16, bulk_np: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: bench-bulk
  labels:
    app: bench-bulk
spec:
  containers:
    - name: web
      image: {IMAGE}
      imagePullPolicy: Never
      command: ["netserve", "http", "8080", "1048576"]
---
apiVersion: v1
kind: Service
metadata:
  name: bench-bulk
spec:
  type: NodePort
  selector:
    app: bench-bulk
  ports:
    - port: 80
      targetPort: 8080
      nodePort: {bulk_np}
---
apiVersion: v1
kind: Pod
metadata:
  name: bench-web
  labels:
    app: bench-web
spec:
  containers:
    - name: web
      image: {IMAGE}
      imagePullPolicy: Never
      command: ["netserve", "http", "8080"]
---
apiVersion: v1
kind: Pod
metadata:
  name: bench-echo
  labels:
    app: bench-echo
spec:
  containers:
    - name: echo
      image: {IMAGE}
      imagePullPolicy: Never
      command: ["netserve", "udp-echo", "9000"]
---
apiVersion: v1
kind: Service
metadata:
  name: bench-web
spec:
  type: NodePort
  selector:
    app: bench-web
  ports:
    - port: 80
      targetPort: 8080
      nodePort: {http_np}
---
apiVersion: v1
kind: Service
metadata:
  name: bench-echo
spec:
  type: NodePort
  selector:
    app: bench-echo
  ports:
    - port: 9000
      protocol: UDP
      targetPort: 9000
      nodePort: {udp_np}
"#
    )
}

fn wrk(url: &str, s: &Settings, connections: u32) -> Wrk {
    let w = bramble::bench::wrk::run(Path::new("wrk"), url, 2, connections, s.seconds)
        .expect("wrk (Debian's wrk) runs");
    if let Some(e) = &w.errors {
        eprintln!("wrk {url}: {e}");
    }
    w
}

/// Ping-pong over `flows` sockets, `window` datagrams in flight on each.
/// Returns (replies per second, datagrams lost).
fn udp_load(to: SocketAddr, s: &Settings) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..s.udp_flows)
        .map(|_| {
            let (stop, replies, lost) = (stop.clone(), replies.clone(), lost.clone());
            let window = s.udp_window;
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.connect(to).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let payload = [0x42u8; 64];
                let mut buf = [0u8; 256];
                for _ in 0..window {
                    let _ = socket.send(&payload);
                }
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv(&mut buf) {
                        Ok(_) => {
                            replies.fetch_add(1, Ordering::Relaxed);
                        }
                        // Lost on the way: put another in flight.
                        Err(_) => {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let _ = socket.send(&payload);
                }
            })
        })
        .collect();
    // Warm-up (flows created, caches warm) is not counted.
    std::thread::sleep(Duration::from_millis(500));
    let start_count = replies.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(s.seconds));
    let count = replies.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    (count as f64 / elapsed, lost.load(Ordering::Relaxed))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let settings = if full {
        Settings {
            seconds: 10,
            connections: 32,
            udp_flows: 32,
            udp_window: 8,
        }
    } else {
        Settings {
            seconds: 1,
            connections: 4,
            udp_flows: 2,
            udp_window: 2,
        }
    };
    let c = Cluster::start_with(
        ClusterOptions {
            demo: false,
            broker: None,
        },
        &[],
    );
    netkit::import_image(&c);
    let (http_np, udp_np, bulk_np) = (free_node_port(), free_node_port(), free_node_port());
    let (http_k, udp_k, bulk_k) = (free_node_port(), free_node_port(), free_node_port());
    let mut yaml = manifests(http_np, udp_np, bulk_np);
    yaml.push_str(&kernel_twin("bench-web", 80, 8080, "TCP", http_k));
    yaml.push_str(&kernel_twin("bench-bulk", 80, 8080, "TCP", bulk_k));
    yaml.push_str(&kernel_twin("bench-echo", 9000, 9000, "UDP", udp_k));
    must_apply(&c, "bench.yaml", &yaml);
    let node = node_ip(&c);
    c.wait_for("the bench pods", Duration::from_secs(60), || {
        ["app=bench-web", "app=bench-echo", "app=bench-bulk"]
            .iter()
            .all(|l| c.running_ready(l).len() == 1)
    });
    let web_pod = pod_ip(&c, "bench-web").unwrap();
    let echo_pod = pod_ip(&c, "bench-echo").unwrap();
    let web_svc = cluster_ip(&c, "bench-web");
    let echo_svc = cluster_ip(&c, "bench-echo");
    let web_k = cluster_ip(&c, "bench-web-k");
    let echo_k = cluster_ip(&c, "bench-echo-k");
    let http_targets = [
        ("pod IP (direct)", format!("http://{web_pod}:8080/")),
        ("ClusterIP (proxy)", format!("http://{web_svc}/")),
        (
            "NodePort 127.0.0.1 (proxy)",
            format!("http://127.0.0.1:{http_np}/"),
        ),
        ("ClusterIP (kernel)", format!("http://{web_k}/")),
        (
            "NodePort node IP (kernel)",
            format!("http://{node}:{http_k}/"),
        ),
    ];
    for (_, url) in &http_targets {
        c.wait_for(url, Duration::from_secs(30), || curl(url).is_some());
    }
    println!(
        "proxy copy mode: {}\n",
        std::env::var("BRAMBLE_PROXY_COPY").unwrap_or_else(|_| "auto".into())
    );
    println!(
        "HTTP, wrk -t2 -c{} -d{}s, keep-alive, netserve in one pod:",
        settings.connections, settings.seconds
    );
    println!("| target | req/s | p50 | p99 |");
    println!("|---|---|---|---|");
    for (name, url) in &http_targets {
        let r = wrk(url, &settings, settings.connections);
        println!(
            "| {name} | {:.0} | {} | {} |",
            r.requests_per_second, r.p50, r.p99
        );
    }
    let bulk_pod = pod_ip(&c, "bench-bulk").unwrap();
    let bulk_svc = cluster_ip(&c, "bench-bulk");
    let bulk_k_ip = cluster_ip(&c, "bench-bulk-k");
    let bulk_targets = [
        ("pod IP (direct)", format!("http://{bulk_pod}:8080/")),
        ("ClusterIP (proxy)", format!("http://{bulk_svc}/")),
        (
            "NodePort 127.0.0.1 (proxy)",
            format!("http://127.0.0.1:{bulk_np}/"),
        ),
        ("ClusterIP (kernel)", format!("http://{bulk_k_ip}/")),
        (
            "NodePort node IP (kernel)",
            format!("http://{node}:{bulk_k}/"),
        ),
    ];
    for (_, url) in &bulk_targets {
        c.wait_for(url, Duration::from_secs(30), || curl(url).is_some());
    }
    println!(
        "\nBulk, 1 MiB responses, wrk -t2 -c4 -d{}s:",
        settings.seconds
    );
    println!("| target | transfer/s | req/s | p50 |");
    println!("|---|---|---|---|");
    for (name, url) in &bulk_targets {
        let r = wrk(url, &settings, 4);
        println!(
            "| {name} | {} | {:.0} | {} |",
            r.transfer, r.requests_per_second, r.p50
        );
    }
    let udp_targets = [
        ("pod IP (direct)", SocketAddr::new(echo_pod.into(), 9000)),
        ("ClusterIP (proxy)", SocketAddr::new(echo_svc.into(), 9000)),
        (
            "NodePort 127.0.0.1 (proxy)",
            SocketAddr::from(([127, 0, 0, 1], udp_np)),
        ),
        ("ClusterIP (kernel)", SocketAddr::new(echo_k.into(), 9000)),
        (
            "NodePort node IP (kernel)",
            SocketAddr::new(node.into(), udp_k),
        ),
    ];
    println!(
        "\nUDP ping-pong, {} flows x {} in flight, 64-byte datagrams, {}s:",
        settings.udp_flows, settings.udp_window, settings.seconds
    );
    println!("| target | replies/s | lost |");
    println!("|---|---|---|");
    for (name, to) in udp_targets {
        let (pps, lost) = udp_load(to, &settings);
        println!("| {name} | {pps:.0} | {lost} |");
    }
}
