//! Services on the kernel path (`bramble.io/proxy-mode: kernel`) end to end on
//! a real `bramble up`: nftables DNAT spreads connections over the ready pods
//! for the ClusterIP (from the host and from a pod on the same bridge, which
//! needs the hairpin masquerade) and for the NodePort on the node address, UDP
//! included; the table's counters show the kernel carried them, not the proxy;
//! a UDP flow whose endpoint goes is moved to another (its conntrack entry
//! deleted); the rules follow a scale-up; a Service switched back to `userspace` leaves
//! the table and is served by the proxy; `bramble down` removes the table.

mod common;
mod netkit;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{Cluster, ClusterOptions, free_node_port};
use netkit::{IMAGE, cluster_ip, curl, import_image, must_apply, node_ip, wait_log};

const PATIENCE: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: web
          image: {IMAGE}
          imagePullPolicy: Never
          command: ["sh", "-c", "netserve udp-echo 9000 & exec netserve http 8080"]
          ports:
            - name: http
              containerPort: 8080
"#
    )
}

fn service(mode: &str, node_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: fast
  annotations:
    bramble.io/proxy-mode: {mode}
spec:
  type: NodePort
  selector:
    app: web
  ports:
    - name: http
      port: 80
      targetPort: http
      nodePort: {node_port}
    - name: echo
      protocol: UDP
      port: 9000
      targetPort: 9000
"#
    )
}

fn table(c: &Cluster) -> Option<String> {
    let out = Command::new("nft")
        .args([
            "list",
            "table",
            "ip",
            &bramble::net::svcnat::table_name(&c.bridge),
        ])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The packets the table's Service rules matched, summed.
fn dnat_packets(c: &Cluster) -> u64 {
    let t = table(c).unwrap_or_default();
    t.lines()
        .filter(|l| l.contains("goto svc_"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "packets")?;
            w.get(i + 1)?.parse::<u64>().ok()
        })
        .sum()
}

fn pod_ips(c: &Cluster) -> Vec<String> {
    c.running_ready("app=web")
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect()
}

/// Which pods answered `n` fresh connections to `url`.
fn answers(url: &str, n: usize) -> BTreeSet<String> {
    (0..n).filter_map(|_| curl(url)).collect()
}

fn udp_ask(c: &Cluster, to: SocketAddr, message: &str) -> Option<String> {
    let out = Command::new(netkit::build_netserve(&c.dir))
        .args(["udp-ask", &to.to_string(), message])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One flow (one client socket) sticks to its endpoint through conntrack;
/// when that pod goes, its conntrack entry must go too, or the flow's
/// datagrams would keep going to the dead address for as long as the client
/// keeps sending.
fn udp_flow_moves_off_a_removed_endpoint(c: &Cluster, echo: SocketAddr) {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let ask = |m: &str| -> Option<String> {
        sock.send_to(m.as_bytes(), echo).ok()?;
        let mut buf = [0u8; 512];
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(reply.split(':').next().unwrap_or_default().to_string())
    };
    let mut first = None;
    c.wait_for("a UDP reply", PATIENCE, || {
        first = ask("hello");
        first.is_some()
    });
    let first = first.unwrap();
    for _ in 0..3 {
        if let Some(again) = ask("again") {
            assert_eq!(again, first, "a flow sticks to its endpoint");
        }
    }
    let gone_ip = c
        .running_ready("app=web")
        .iter()
        .find(|p| p["metadata"]["name"] == first.as_str())
        .and_then(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .unwrap();
    c.ok(&["delete", "pod", &first]);
    c.wait_for("the pod's DNAT rules removed", PATIENCE, || {
        table(c).is_some_and(|t| !t.contains(&format!("{gone_ip}:9000")))
    });
    let mut moved = None;
    c.wait_for("the flow answered by another pod", PATIENCE, || {
        moved = ask("moved").filter(|n| *n != first);
        moved.is_some()
    });
}

#[test]
fn kernel_path_services() {
    let c = Cluster::start_with(
        ClusterOptions {
            demo: false,
            broker: None,
        },
        &[],
    );
    import_image(&c);
    let node_port = free_node_port();
    must_apply(&c, "web.yaml", &deployment("web", 2));
    must_apply(&c, "fast.yaml", &service("kernel", node_port));
    c.wait_for("2 ready web pods", PATIENCE, || pod_ips(&c).len() == 2);
    let ips = pod_ips(&c);
    c.wait_for("DNAT rules for both pods", PATIENCE, || {
        table(&c).is_some_and(|t| ips.iter().all(|ip| t.contains(&format!("{ip}:8080"))))
    });
    let rules = table(&c).unwrap();
    assert!(rules.contains("numgen inc mod 2"), "{rules}");
    assert!(rules.contains("dnat to"), "{rules}");

    let vip = cluster_ip(&c, "fast");
    let names: BTreeSet<String> = c
        .running_ready("app=web")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let before = dnat_packets(&c);
    assert_eq!(
        answers(&format!("http://{vip}/"), 6),
        names,
        "ClusterIP from the host"
    );
    let node = node_ip(&c);
    assert_eq!(
        answers(&format!("http://{node}:{node_port}/"), 6),
        names,
        "NodePort on the node address"
    );
    let after = dnat_packets(&c);
    assert!(
        after >= before + 12,
        "12 connections but the DNAT rules counted {before} → {after}:\n{}",
        table(&c).unwrap_or_default()
    );
    // UDP: each flow is a conntrack entry of its own, DNATed round-robin.
    let echo = SocketAddr::new(vip.into(), 9000);
    let udp: BTreeSet<String> = (0..6)
        .filter_map(|i| udp_ask(&c, echo, &format!("m{i}")))
        .map(|r| r.split(':').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(udp, names, "UDP over the ClusterIP");

    // From a pod on the same bridge: the reply must come back through the
    // node (hairpin masquerade), or the client would see a stranger's address.
    must_apply(
        &c,
        "client.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  restartPolicy: Never
  containers:
    - name: c
      image: {IMAGE}
      imagePullPolicy: Never
      command: ["sh", "-c", "for i in 1 2 3 4 5 6; do netserve http-get {vip}:80; done; echo '--- done'; sleep 3600"]
"#
        ),
    );
    let log = wait_log(&c, "client", "the in-pod client", |t| {
        t.contains("--- done")
    });
    for name in &names {
        assert!(
            log.contains(name.as_str()),
            "{name} never answered the pod:\n{log}"
        );
    }

    udp_flow_moves_off_a_removed_endpoint(&c, echo);

    // The rules follow the endpoints.
    c.ok(&["scale", "deployment", "web", "--replicas", "3"]);
    c.wait_for("3 ready web pods", PATIENCE, || pod_ips(&c).len() == 3);
    c.wait_for("DNAT over 3 endpoints", PATIENCE, || {
        table(&c).is_some_and(|t| t.contains("numgen inc mod 3"))
    });

    // Back to the proxy: the table goes, the Service keeps answering.
    must_apply(&c, "fast.yaml", &service("userspace", node_port));
    c.wait_for("the DNAT table removed", PATIENCE, || table(&c).is_none());
    assert!(curl(&format!("http://{vip}/")).is_some());

    // Kernel mode cannot do least-connections or client affinity: refused.
    let (ok, out) = netkit::apply(
        &c,
        "sticky.yaml",
        r#"apiVersion: v1
kind: Service
metadata:
  name: sticky
  annotations:
    bramble.io/proxy-mode: kernel
spec:
  sessionAffinity: ClientIP
  selector:
    app: web
  ports:
    - port: 80
      targetPort: 8080
"#,
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("metadata.annotations[bramble.io/proxy-mode]"),
        "{out}"
    );

    must_apply(&c, "fast.yaml", &service("kernel", node_port));
    c.wait_for("the DNAT table back", PATIENCE, || table(&c).is_some());
    let out = Command::new(common::BIN)
        .args(["down", "--data-dir"])
        .arg(&c.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table(&c).is_none(), "the DNAT table outlived bramble down");
}
