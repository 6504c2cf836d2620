//! Services end to end on a real `bramble up`: every Service type reached with
//! real clients (curl from the host; busybox wget/nslookup and `netserve` from
//! inside pods, their output read with `bramble logs`), the cluster DNS asked
//! with `dig` (Debian's dnsutils), names outside the cluster forwarded to a
//! tiny resolver the test runs on loopback, garbage thrown at the DNS server,
//! UDP echo across a Service, bad Services refused, a failover with a client
//! that keeps sending while an endpoint's container is killed, egress
//! through the masquerade rule past a FORWARD chain that drops (Docker's
//! policy), which `bramble down` removes, and a NodePort a host process
//! holds, served once it is released.

mod common;
mod netkit;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Cluster, ClusterOptions, free_node_port, free_port};
use netkit::{
    IMAGE, Upstream, cluster_ip, curl, dig_short, dig_status, import_image, must_apply, node_ip,
    pod_ip, ready_ips, wait_log,
};

const PATIENCE: Duration = Duration::from_secs(60);

fn cluster(extra: &[String]) -> Cluster {
    let c = Cluster::start_with(
        ClusterOptions {
            demo: false,
            broker: None,
        },
        extra,
    );
    import_image(&c);
    c
}

fn web_deployment(name: &str, replicas: u32) -> String {
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
          command: ["netserve", "http", "8080"]
          ports:
            - name: http
              containerPort: 8080
"#
    )
}

/// The cluster DNS address: the tenth of the test's service CIDR.
fn dns_addr(c: &Cluster) -> SocketAddr {
    let cidr: ipnet::Ipv4Net = c.net.service_cidr().parse().unwrap();
    let ip = bramble::api::routing::cluster_dns_ip(cidr).unwrap();
    SocketAddr::new(ip.into(), 53)
}

fn wait_ready(c: &Cluster, selector: &str, n: usize) -> Vec<serde_json::Value> {
    let mut pods = Vec::new();
    c.wait_for(&format!("{n} ready pods {selector}"), PATIENCE, || {
        pods = c.running_ready(selector);
        pods.len() == n
    });
    pods
}

fn names(pods: &[serde_json::Value]) -> Vec<String> {
    pods.iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// `netserve udp-ask` from the host (the same client the pods run).
fn udp_ask(c: &Cluster, to: SocketAddr, message: &str) -> Option<String> {
    let netserve = netkit::build_netserve(&c.dir);
    let out = Command::new(netserve)
        .args(["udp-ask", &to.to_string(), message])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn every_service_type_dns_env_and_udp() {
    let oct = {
        // The upstream resolver sits on a loopback address of this test's own.
        let lease = common::NetLease::take();
        let oct = lease.octet;
        drop(lease);
        oct
    };
    let upstream_ip = Ipv4Addr::new(127, oct, 0, 53);
    let upstream = Upstream::start(upstream_ip, Ipv4Addr::new(198, 51, 100, 7));
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {upstream_ip}\nsearch test.lan\n"),
    )
    .unwrap();
    let c = cluster(&["--resolv-conf".into(), resolv.display().to_string()]);
    let dns = dns_addr(&c);
    let node_port = free_node_port();
    let lb_port = free_port();
    // A ClusterIP chosen by the user, far above what the allocator hands out.
    let given_ip = {
        let cidr: ipnet::Ipv4Net = c.net.service_cidr().parse().unwrap();
        Ipv4Addr::from(u32::from(cidr.network()) + 200)
    };

    must_apply(&c, "web.yaml", &web_deployment("web", 2));
    must_apply(
        &c,
        "services.yaml",
        &format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
    - name: http
      port: 80
      targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: web-np
spec:
  type: NodePort
  selector:
    app: web
  ports:
    - port: 80
      targetPort: 8080
      nodePort: {node_port}
---
apiVersion: v1
kind: Service
metadata:
  name: web-lb
spec:
  type: LoadBalancer
  selector:
    app: web
  ports:
    - port: {lb_port}
      targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: sticky
spec:
  sessionAffinity: ClientIP
  selector:
    app: web
  ports:
    - port: 80
      targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  clusterIP: None
  selector:
    app: db
  ports:
    - name: pg
      port: 5432
      targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: ext
spec:
  type: ExternalName
  externalName: example.org
---
apiVersion: v1
kind: Service
metadata:
  name: given
spec:
  clusterIP: {given_ip}
  selector:
    app: web
  ports:
    - port: 80
      targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector:
    app: echo
  ports:
    - name: echo
      protocol: UDP
      port: 9000
      targetPort: 9000
"#
        ),
    );
    let db_pod = |n: u32| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: db-{n}
  labels:
    app: db
spec:
  hostname: db-{n}
  subdomain: db
  containers:
    - name: db
      image: {IMAGE}
      imagePullPolicy: Never
      command: ["netserve", "http", "8080"]
"#
        )
    };
    must_apply(&c, "db.yaml", &format!("{}---\n{}", db_pod(0), db_pod(1)));
    must_apply(
        &c,
        "echo.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: echo
  labels:
    app: echo
spec:
  containers:
    - name: echo
      image: {IMAGE}
      imagePullPolicy: Never
      command: ["netserve", "udp-echo", "9000"]
      ports:
        - containerPort: 9000
          protocol: UDP
"#
        ),
    );
    let web = names(&wait_ready(&c, "app=web", 2));
    wait_ready(&c, "app=db", 2);
    wait_ready(&c, "app=echo", 1);
    let web_ip = cluster_ip(&c, "web");

    // A Service without a selector, pointed by hand at the first web pod.
    let first_ip = pod_ip(&c, &web[0]).unwrap();
    must_apply(
        &c,
        "manual.yaml",
        &format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: manual
spec:
  ports:
    - port: 80
---
apiVersion: v1
kind: Endpoints
metadata:
  name: manual
subsets:
  - addresses:
      - ip: {first_ip}
    ports:
      - port: 8080
"#
        ),
    );

    // --- From the host, with curl.
    let answered = |url: &str| -> std::collections::BTreeSet<String> {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            if let Some(body) = curl(url) {
                seen.insert(body);
            }
        }
        seen
    };
    let mut got = None;
    c.wait_for("the ClusterIP to serve both pods", PATIENCE, || {
        got = Some(answered(&format!("http://{web_ip}/")));
        got.as_ref().unwrap().len() == 2
    });
    assert_eq!(
        got.unwrap(),
        web.iter().cloned().collect(),
        "round-robin over both"
    );
    assert_eq!(
        answered(&format!("http://127.0.0.1:{node_port}/")).len(),
        2,
        "NodePort"
    );
    let direct = curl(&format!("http://{first_ip}:8080/")).unwrap();
    assert_eq!(direct, web[0], "straight to the pod IP");
    // LoadBalancer: the status lists the node, and its port answers there.
    let node = node_ip(&c);
    c.wait_for("the LoadBalancer status", PATIENCE, || {
        netkit::service(&c, "web-lb")["status"]["loadBalancer"]["ingress"][0]["ip"]
            == node.to_string()
    });
    for host in [node, Ipv4Addr::LOCALHOST] {
        let body = curl(&format!("http://{host}:{lb_port}/"));
        assert!(
            body.as_ref().is_some_and(|b| web.contains(b)),
            "LoadBalancer on {host}: {body:?}"
        );
    }
    // Session affinity: one client IP, one pod.
    let sticky = cluster_ip(&c, "sticky");
    let mut served = std::collections::BTreeSet::new();
    c.wait_for("the sticky Service", PATIENCE, || {
        curl(&format!("http://{sticky}/")).is_some()
    });
    for _ in 0..6 {
        served.insert(curl(&format!("http://{sticky}/")).unwrap());
    }
    assert_eq!(served.len(), 1, "{served:?}");
    // The ClusterIP as given is kept and served.
    assert_eq!(cluster_ip(&c, "given"), given_ip);
    c.wait_for("the given ClusterIP to serve", PATIENCE, || {
        curl(&format!("http://{given_ip}/")).is_some_and(|b| web.contains(&b))
    });
    // The hand-written Endpoints.
    let manual = cluster_ip(&c, "manual");
    c.wait_for("the selector-less Service", PATIENCE, || {
        curl(&format!("http://{manual}/")).as_deref() == Some(web[0].as_str())
    });
    // UDP across a Service.
    let echo_ip = cluster_ip(&c, "echo");
    let mut reply = None;
    c.wait_for("a UDP echo through the Service", PATIENCE, || {
        reply = udp_ask(&c, SocketAddr::new(echo_ip.into(), 9000), "ping");
        reply.is_some()
    });
    assert_eq!(reply.unwrap(), "echo:ping");

    // --- DNS, with dig.
    assert_eq!(
        dig_short(dns, "web.default.svc.cluster.local", "A"),
        vec![web_ip.to_string()]
    );
    assert_eq!(
        dig_short(dns, "_http._tcp.web.default.svc.cluster.local", "SRV"),
        vec!["0 100 80 web.default.svc.cluster.local.".to_string()]
    );
    let db0 = pod_ip(&c, "db-0").unwrap();
    let db1 = pod_ip(&c, "db-1").unwrap();
    let mut both = vec![db0.to_string(), db1.to_string()];
    both.sort();
    c.wait_for("headless records", PATIENCE, || {
        dig_short(dns, "db.default.svc.cluster.local", "A") == both
    });
    assert_eq!(
        dig_short(dns, "db-0.db.default.svc.cluster.local", "A"),
        vec![db0.to_string()]
    );
    let srv = dig_short(dns, "_pg._tcp.db.default.svc.cluster.local", "SRV");
    assert!(
        srv.contains(&"0 50 8080 db-1.db.default.svc.cluster.local.".to_string()),
        "{srv:?}"
    );
    assert_eq!(
        dig_short(dns, "ext.default.svc.cluster.local", "CNAME"),
        vec!["example.org.".to_string()]
    );
    // An address query gets the CNAME and the target's address, resolved
    // through the upstream, since stub resolvers do not chase the CNAME.
    assert_eq!(
        dig_short(dns, "ext.default.svc.cluster.local", "A"),
        vec!["198.51.100.7".to_string(), "example.org.".to_string()]
    );
    assert_eq!(
        netkit::dig(
            dns,
            &["+short", "+tcp", "ext.default.svc.cluster.local", "A"]
        ),
        "example.org.\n198.51.100.7"
    );
    assert_eq!(
        dig_short(dns, "web.default.svc.cluster.local", "AAAA"),
        Vec::<String>::new()
    );
    assert_eq!(
        dig_status(dns, "nope.default.svc.cluster.local", "A"),
        "NXDOMAIN"
    );
    assert_eq!(
        netkit::dig(dns, &["+short", "-x", &web_ip.to_string()]),
        "web.default.svc.cluster.local."
    );
    // Outside the cluster: forwarded to the node's resolver, UDP and TCP.
    assert_eq!(
        dig_short(dns, "example.org", "A"),
        vec!["198.51.100.7".to_string()]
    );
    assert_eq!(
        netkit::dig(dns, &["+short", "+tcp", "example.org", "A"]),
        "198.51.100.7"
    );

    // Garbage, a huge name and a truncated TCP query never stop the server.
    let raw = UdpSocket::bind("0.0.0.0:0").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    raw.send_to(b"\xde\xad", dns).unwrap();
    raw.send_to(&[0xffu8; 3000], dns).unwrap();
    let mut huge = vec![0x00, 0x07, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for _ in 0..500 {
        huge.extend([1, b'a']);
    }
    huge.extend([0, 0, 1, 0, 1]);
    raw.send_to(&huge, dns).unwrap();
    let mut buf = [0u8; 512];
    let mut formerr = false;
    while let Ok((n, _)) = raw.recv_from(&mut buf) {
        // FORMERR (rcode 1) for the parts that carry a header.
        formerr |= n >= 4 && buf[3] & 0x0f == 1;
    }
    assert!(formerr, "malformed queries get FORMERR");
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(dns).unwrap();
        let _ = s.write_all(&[0xff, 0xff, 1, 2, 3]);
    }
    assert_eq!(
        dig_short(dns, "web.default.svc.cluster.local", "A"),
        vec![web_ip.to_string()],
        "the DNS server still answers"
    );

    // --- From inside a pod: resolv.conf, Service env, DNS, wget, UDP.
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
      command:
        - sh
        - -c
        - |
          echo '--- resolv'; cat /etc/resolv.conf
          echo '--- env'; env | grep -E '^(WEB|ECHO)_' | sort
          echo '--- nslookup'; nslookup web
          echo '--- wget'; wget -q -O - http://web/
          echo '--- wget fqdn'; wget -q -O - http://web.default.svc.cluster.local/
          echo '--- wget stateful'; wget -q -O - http://db-1.db:8080/
          echo '--- udp'; netserve udp-ask {echo_ip}:9000 from-pod
          echo '--- outside'; nslookup example.org
          echo '--- ext'; nslookup ext
          echo '--- expanded'; echo "$URL $0"
          echo '--- done'
          sleep 3600
      args: ["$(WEB_SERVICE_HOST)"]
      env:
        - name: URL
          value: http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)
"#
        ),
    );
    let log = wait_log(&c, "client", "the client pod's output", |t| {
        t.contains("--- done")
    });
    let section = |name: &str| -> String {
        log.split(&format!("--- {name}\n"))
            .nth(1)
            .unwrap_or_default()
            .split("\n---")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        section("resolv"),
        format!(
            "nameserver {}\nsearch default.svc.cluster.local svc.cluster.local cluster.local test.lan\noptions ndots:5",
            dns.ip()
        ),
        "{log}"
    );
    let env = section("env");
    for want in [
        format!("WEB_SERVICE_HOST={web_ip}"),
        "WEB_SERVICE_PORT=80".to_string(),
        "WEB_SERVICE_PORT_HTTP=80".to_string(),
        format!("WEB_PORT=tcp://{web_ip}:80"),
        format!("WEB_PORT_80_TCP_ADDR={web_ip}"),
        format!("ECHO_PORT_9000_UDP=udp://{echo_ip}:9000"),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in\n{env}");
    }
    assert!(section("nslookup").contains(&web_ip.to_string()), "{log}");
    assert!(web.contains(&section("wget")), "{log}");
    assert!(web.contains(&section("wget fqdn")), "{log}");
    assert_eq!(section("wget stateful"), "db-1", "{log}");
    assert_eq!(section("udp"), "echo:from-pod", "{log}");
    assert!(section("outside").contains("198.51.100.7"), "{log}");
    // musl/busybox do not chase a CNAME: the address must come with it.
    assert!(section("ext").contains("198.51.100.7"), "{log}");
    // `$(VAR)` in env and args sees the Service variables.
    assert_eq!(
        section("expanded"),
        format!("http://{web_ip}:80 {web_ip}"),
        "{log}"
    );

    // --- Bad Services are refused whole, the field named, nothing stored.
    let bad = |name: &str, spec: &str, field: &str| {
        let yaml =
            format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}");
        let (ok, text) = netkit::apply(&c, &format!("{name}.yaml"), &yaml);
        assert!(!ok, "{name} was accepted");
        assert!(text.contains(field), "{name}: {text}");
        assert!(
            !c.bramble(&["get", "service", name]).status.success(),
            "{name} was stored"
        );
    };
    bad(
        "bad-port",
        "  ports:\n    - port: 70000\n",
        "spec.ports[0].port: Invalid value: 70000",
    );
    bad(
        "bad-dup",
        "  ports:\n    - name: a\n      port: 80\n    - name: b\n      port: 80\n",
        "spec.ports[1]: Duplicate value",
    );
    bad(
        "bad-np",
        &format!("  type: NodePort\n  ports:\n    - port: 80\n      nodePort: {node_port}\n"),
        &format!(
            "spec.ports[0].nodePort: Invalid value: {node_port}: provided port is already allocated"
        ),
    );
    bad(
        "bad-selector",
        "  selector:\n    app: a b\n  ports:\n    - port: 80\n",
        "spec.selector: Invalid value: \"a b\"",
    );
    bad(
        "bad-lb",
        &format!("  type: LoadBalancer\n  ports:\n    - port: {lb_port}\n"),
        &format!("spec.ports[0].port: Invalid value: {lb_port}"),
    );
    drop(upstream);
}

/// A client keeps sending through the ClusterIP while one endpoint's container
/// is killed: the proxy skips the dead endpoint (refused → next) until the
/// endpoint is marked not ready, and nothing fails after that. The pods are
/// `restartPolicy: Never`, so the killed one stays down and its endpoint
/// leaves the list for good.
#[test]
fn failover_while_a_client_keeps_sending() {
    let c = cluster(&[]);
    let pod = |n: u32| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: web-{n}
  labels:
    app: web
spec:
  restartPolicy: Never
  containers:
    - name: web
      image: {IMAGE}
      imagePullPolicy: Never
      command: ["netserve", "http", "8080"]
      ports:
        - name: http
          containerPort: 8080
"#
        )
    };
    must_apply(
        &c,
        "web.yaml",
        &format!("{}---\n{}---\n{}", pod(0), pod(1), pod(2)),
    );
    must_apply(
        &c,
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n    - port: 80\n      targetPort: http\n",
    );
    let pods = wait_ready(&c, "app=web", 3);
    let ip = cluster_ip(&c, "web");
    let url = format!("http://{ip}/");
    c.wait_for("the Service", PATIENCE, || curl(&url).is_some());
    c.wait_for("three ready endpoints", PATIENCE, || {
        ready_ips(&c, "web").len() == 3
    });

    let stop = Arc::new(AtomicBool::new(false));
    let not_ready = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed_before = Arc::new(AtomicUsize::new(0));
    let failed_after = Arc::new(AtomicUsize::new(0));
    let sent_after = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, not_ready, sent, fb, fa, sa) = (
            stop.clone(),
            not_ready.clone(),
            sent.clone(),
            failed_before.clone(),
            failed_after.clone(),
            sent_after.clone(),
        );
        let url = url.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Read the mark before the request: a failure counts as
                // "after" only if the endpoint was already out when it began.
                let after = not_ready.load(Ordering::Relaxed);
                let ok = curl(&url).is_some();
                sent.fetch_add(1, Ordering::Relaxed);
                if after {
                    sa.fetch_add(1, Ordering::Relaxed);
                }
                if !ok {
                    if after { &fa } else { &fb }.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    c.wait_for("the client to get going", PATIENCE, || {
        sent.load(Ordering::Relaxed) >= 10
    });

    // SIGKILL the first pod's container (its init process).
    let victim = &pods[0];
    let victim_ip = victim["status"]["podIP"].as_str().unwrap().to_string();
    let uid: String = victim["metadata"]["uid"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    let state_dir = c.layout().container_state();
    let id = common::entries(&state_dir)
        .into_iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .find(|id| id.starts_with(&uid))
        .expect("the victim's container");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state_dir.join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let pid = state["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_for(
        "the killed endpoint to be marked not ready",
        PATIENCE,
        || !ready_ips(&c, "web").contains(&victim_ip),
    );
    not_ready.store(true, Ordering::Relaxed);
    let at_mark = sent_after.load(Ordering::Relaxed);
    c.wait_for("requests after the mark", PATIENCE, || {
        sent_after.load(Ordering::Relaxed) >= at_mark + 30
    });
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    eprintln!(
        "failover: {} requests, {} failed before the endpoint was marked not ready, {} after ({} sent after)",
        sent.load(Ordering::Relaxed),
        failed_before.load(Ordering::Relaxed),
        failed_after.load(Ordering::Relaxed),
        sent_after.load(Ordering::Relaxed),
    );
    assert_eq!(failed_after.load(Ordering::Relaxed), 0);
}

/// A peer outside the pod network: a network namespace of the test's own,
/// joined to the host by a veth, the way a LAN is joined by eth0. Traffic to it
/// is routed (forwarded) by the host, so it crosses the masquerade rule; the
/// peer has no route back to the pod CIDR, so without masquerade no reply
/// would arrive.
struct Lan {
    netns: String,
    host_link: String,
    host_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
}

impl Lan {
    fn new(oct: u8) -> Lan {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let lan = Lan {
            netns: format!("bramble-lan-{tag}"),
            host_link: format!("bx{tag}"),
            host_ip: Ipv4Addr::new(198, 18, oct, 1),
            peer_ip: Ipv4Addr::new(198, 18, oct, 2),
        };
        let peer_link = format!("by{tag}");
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &lan.netns]);
        ip(&[
            "link",
            "add",
            &lan.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer_link,
        ]);
        ip(&["link", "set", &peer_link, "netns", &lan.netns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lan.host_ip),
            "dev",
            &lan.host_link,
        ]);
        ip(&["link", "set", &lan.host_link, "up"]);
        ip(&[
            "netns",
            "exec",
            &lan.netns,
            "ip",
            "addr",
            "add",
            &format!("{}/24", lan.peer_ip),
            "dev",
            &peer_link,
        ]);
        ip(&[
            "netns", "exec", &lan.netns, "ip", "link", "set", &peer_link, "up",
        ]);
        ip(&["netns", "exec", &lan.netns, "ip", "link", "set", "lo", "up"]);
        lan
    }

    /// A TCP server in the peer namespace that answers each connection with
    /// the address it came from.
    fn serve(&self) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        use std::io::{Read, Write};
        let path = format!("/run/netns/{}", self.netns);
        let peer_ip = self.peer_ip;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = std::net::TcpListener::bind((peer_ip, 0)).unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            listener.set_nonblocking(false).unwrap();
            // One connection is all the test makes.
            if let Ok((mut s, from)) = listener.accept() {
                // Read the request first: closing with unread bytes would
                // reset the connection under the client's read.
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nseen {}\n",
                    from.ip()
                );
            }
        });
        (rx.recv().unwrap(), handle)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Drops forwarded traffic from and to `cidr` at the end of the iptables
/// FORWARD chain while it lives: what a FORWARD policy of DROP (Docker's)
/// does to the pods' traffic, without cutting the forwarding of anything
/// else on this shared host. Removed on drop, also when the test fails.
struct ForwardDrop {
    rules: Vec<Vec<String>>,
}

impl ForwardDrop {
    fn new(cidr: &str) -> ForwardDrop {
        let guard = ForwardDrop {
            rules: ["-s", "-d"]
                .iter()
                .map(|dir| {
                    [
                        dir,
                        cidr,
                        "-m",
                        "comment",
                        "--comment",
                        "bramble-test-drop",
                        "-j",
                        "DROP",
                    ]
                    .map(str::to_string)
                    .to_vec()
                })
                .collect(),
        };
        for rule in &guard.rules {
            let st = Command::new("iptables")
                .args(["-w", "-A", "FORWARD"])
                .args(rule)
                .status()
                .unwrap();
            assert!(st.success(), "iptables -A FORWARD {rule:?}");
        }
        guard
    }
}

impl Drop for ForwardDrop {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables")
                .args(["-w", "-D", "FORWARD"])
                .args(rule)
                .status();
        }
    }
}

/// The FORWARD rules of ours for `bridge`'s pods.
fn forward_accepts(bridge: &str) -> usize {
    let out = Command::new("iptables")
        .args(["-w", "-S", "FORWARD"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("bramble:{bridge}")) && l.ends_with("-j ACCEPT"))
        .count()
}

fn nft_table_exists(bridge: &str) -> bool {
    Command::new("nft")
        .args([
            "list",
            "table",
            "ip",
            &bramble::net::masq::table_name(bridge),
        ])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn egress_is_masqueraded_and_down_removes_the_rule() {
    let c = cluster(&[]);
    // The host drops forwarded pod traffic, as with Docker's FORWARD DROP.
    let _drop = ForwardDrop::new(&c.net.cluster_cidr());
    let lan = Lan::new(c.net.octet);
    let (server, handle) = lan.serve();
    c.wait_for("the masquerade table", PATIENCE, || {
        nft_table_exists(&c.bridge)
    });
    must_apply(
        &c,
        "out.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: out
spec:
  restartPolicy: Never
  containers:
    - name: c
      image: {IMAGE}
      imagePullPolicy: Never
      command: ["sh", "-c", "netserve http-get {server}; echo '--- done'; sleep 3600"]
"#
        ),
    );
    let log = wait_log(&c, "out", "the egress client", |t| t.contains("--- done"));
    handle.join().unwrap();
    // The peer saw the node's address on that link, not the pod's.
    assert!(
        log.contains(&format!("seen {}", lan.host_ip)),
        "{log}\n{}",
        c.log_tail()
    );
    assert_eq!(forward_accepts(&c.bridge), 2, "from and to the pod CIDR");
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
    assert!(
        !nft_table_exists(&c.bridge),
        "the rule outlived bramble down"
    );
    assert_eq!(
        forward_accepts(&c.bridge),
        0,
        "the FORWARD rules outlived bramble down"
    );
}

/// A NodePort a host process holds when the Service arrives: the node warns
/// once (an Event on the Service) and keeps trying with back-off, so the port
/// serves as soon as the process lets go, with nothing applied again.
#[test]
fn a_node_port_held_by_the_host_serves_once_released() {
    let c = cluster(&[]);
    let node_port = free_node_port();
    let holder = std::net::TcpListener::bind(("0.0.0.0", node_port)).unwrap();
    must_apply(&c, "web.yaml", &web_deployment("web", 1));
    must_apply(
        &c,
        "svc.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: held\nspec:\n  type: NodePort\n  selector:\n    app: web\n  ports:\n    - port: 80\n      targetPort: http\n      nodePort: {node_port}\n"
        ),
    );
    let web = names(&wait_ready(&c, "app=web", 1));
    let bind_warnings = || -> Vec<serde_json::Value> {
        c.json(&["get", "events"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e["involvedObject"]["kind"] == "Service"
                    && e["involvedObject"]["name"] == "held"
                    && e["type"] == "Warning"
                    && e["reason"] == "FailedBindPort"
            })
            .collect()
    };
    let mut warnings = Vec::new();
    c.wait_for("a FailedBindPort Event on the Service", PATIENCE, || {
        warnings = bind_warnings();
        !warnings.is_empty()
    });
    let message = warnings[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&node_port.to_string()), "{message}");
    // The host process still has the port: the node keeps quiet meanwhile
    // (one Event for the episode, not one per retry).
    assert_eq!(
        curl(&format!("http://127.0.0.1:{node_port}/")),
        None,
        "the port is the host process's"
    );
    drop(holder);
    c.wait_for("the NodePort to serve once released", PATIENCE, || {
        curl(&format!("http://127.0.0.1:{node_port}/")).is_some_and(|b| web.contains(&b))
    });
    let warnings = bind_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["count"], 1, "{warnings:?}");
}
