//! Pod networking against the real kernel: a bridge, network namespaces, veths
//! and addresses made through netlink, checked from inside the namespaces with
//! real TCP connections (and `busybox ping`) and from outside with `ip`.
//!
//! Needs root. Each test uses its own bridge name, pod uids and 10.244.X.0/24, and
//! a guard removes all of them with `ip`/`umount` even when the test panics.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bramble::net::{Ipv4Net, NetConfig, NetError, PodNet, PodNetwork, host_veth_name};
use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Names and addresses owned by one test, removed on drop whatever happened.
struct Fixture {
    bridge: String,
    cidr: Ipv4Net,
    netns_dir: PathBuf,
    prefix: String,
    extra_links: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{:x}", (pid << 4) ^ n);
        let bridge = format!("bt{}", &tag[tag.len().saturating_sub(8)..]);
        let cidr = free_subnet(pid, n);
        let netns_dir = std::env::temp_dir().join(format!("bramble-net-{tag}"));
        Fixture {
            bridge,
            cidr,
            netns_dir,
            prefix: format!("t{tag}-"),
            extra_links: Vec::new(),
        }
    }

    fn config(&self) -> NetConfig {
        NetConfig {
            bridge: self.bridge.clone(),
            pod_cidr: self.cidr,
            netns_dir: self.netns_dir.clone(),
        }
    }

    fn uid(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn host(&self, n: u8) -> Ipv4Addr {
        let o = self.cidr.network().octets();
        Ipv4Addr::new(o[0], o[1], o[2], n)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.netns_dir) {
            for entry in entries.flatten() {
                let uid = entry.file_name().to_string_lossy().into_owned();
                let _ = Command::new("ip")
                    .args(["link", "del", &host_veth_name(&uid)])
                    .stderr(std::process::Stdio::null())
                    .status();
                let _ = Command::new("umount").arg("-l").arg(entry.path()).status();
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.netns_dir);
        for link in self.extra_links.iter().chain([&self.bridge]) {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// A 10.244.X.0/24 no interface on this machine uses yet.
fn free_subnet(pid: u32, n: u32) -> Ipv4Net {
    let used = ip(&["-4", "-o", "addr"]);
    for i in 0..250u32 {
        let x = ((pid.wrapping_mul(7) + n * 31 + i) % 250) as u8 + 1;
        if !used.contains(&format!("10.244.{x}.")) {
            return format!("10.244.{x}.0/24").parse().unwrap();
        }
    }
    panic!("no free 10.244.X.0/24");
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn ifindex(name: &str) -> String {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("ifindex")).unwrap()
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

/// `/32` addresses on `dev`, as `ip` sees them.
fn slash32s(dev: &str) -> BTreeSet<Ipv4Addr> {
    ip(&["-4", "-o", "addr", "show", "dev", dev])
        .lines()
        .filter_map(|line| {
            let cidr = line.split_whitespace().nth(3)?;
            let (addr, prefix) = cidr.split_once('/')?;
            (prefix == "32").then(|| addr.parse().unwrap())
        })
        .collect()
}

/// Runs `f` on a thread inside the namespace at `path`; sockets it creates stay
/// in that namespace.
fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(path).unwrap();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in netns panicked")
}

/// A listener that answers every connection with `greeting`.
fn greeter(listener: TcpListener, greeting: &'static str) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(greeting.as_bytes());
        }
    });
    addr
}

/// Connects from inside `netns` and returns what the server said.
fn fetch_from(netns: &Path, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(netns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })
}

fn in_pod_netns_ip(pod: &PodNet, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", pod.netns_path.display()))
        .arg("ip")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_the_gateway_and_service_ips() {
    let fx = Fixture::new();
    let network = PodNetwork::new(fx.config()).await.unwrap();
    assert_eq!(network.gateway(), fx.host(1));
    assert!(
        ip(&["-4", "-o", "addr", "show", "dev", &fx.bridge])
            .contains(&format!("{}/24", fx.host(1)))
    );

    let a = network.setup_pod(&fx.uid("a"), fx.host(2)).await.unwrap();
    let b = network.setup_pod(&fx.uid("b"), fx.host(3)).await.unwrap();
    assert_eq!(a.netns_path, fx.netns_dir.join(fx.uid("a")));
    assert_eq!(a.host_veth, host_veth_name(&fx.uid("a")));
    assert!(ip(&["-o", "link", "show", &a.host_veth]).contains(&format!("master {}", fx.bridge)));
    assert!(
        in_pod_netns_ip(&a, &["-4", "-o", "addr", "show", "eth0"])
            .contains(&format!("{}/24", fx.host(2)))
    );
    assert!(in_pod_netns_ip(&a, &["route"]).contains(&format!("default via {}", fx.host(1))));
    assert!(in_pod_netns_ip(&a, &["-o", "link", "show", "lo"]).contains("UP"));

    // Pod A to pod B over the bridge.
    let b_ip = b.ip;
    let listener = in_netns(&b.netns_path, move || TcpListener::bind((b_ip, 0)).unwrap());
    let b_addr = greeter(listener, "from b");
    assert_eq!(fetch_from(&a.netns_path, b_addr).unwrap(), "from b");
    let ping = Command::new("nsenter")
        .arg(format!("--net={}", a.netns_path.display()))
        .args(["busybox", "ping", "-c", "1", "-W", "5", &b.ip.to_string()])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // Pod A to the host at the gateway address.
    let gateway_addr = greeter(
        TcpListener::bind((network.gateway(), 0)).unwrap(),
        "from host",
    );
    assert_eq!(
        fetch_from(&a.netns_path, gateway_addr).unwrap(),
        "from host"
    );

    // ClusterIPs: /32s on the bridge, reached by pods through their default route.
    let svc1 = Ipv4Addr::new(10, 96, fx.cidr.network().octets()[2], 10);
    let svc2 = Ipv4Addr::new(10, 96, fx.cidr.network().octets()[2], 11);
    network
        .set_service_ips(&BTreeSet::from([svc1, svc2]))
        .await
        .unwrap();
    assert_eq!(slash32s(&fx.bridge), BTreeSet::from([svc1, svc2]));
    let svc_addr = greeter(TcpListener::bind((svc1, 0)).unwrap(), "from service");
    assert_eq!(fetch_from(&a.netns_path, svc_addr).unwrap(), "from service");
    network
        .set_service_ips(&BTreeSet::from([svc2]))
        .await
        .unwrap();
    assert_eq!(slash32s(&fx.bridge), BTreeSet::from([svc2]));
    network
        .set_service_ips(&BTreeSet::from([svc2]))
        .await
        .unwrap();
    assert_eq!(slash32s(&fx.bridge), BTreeSet::from([svc2]));
    // The gateway address is not a ClusterIP and stays.
    network.set_service_ips(&BTreeSet::new()).await.unwrap();
    assert!(slash32s(&fx.bridge).is_empty());
    assert!(
        ip(&["-4", "-o", "addr", "show", "dev", &fx.bridge])
            .contains(&format!("{}/24", fx.host(1)))
    );

    // Tearing down A removes its veth, mount and file, and leaves B alone.
    network.teardown_pod(&fx.uid("a")).await.unwrap();
    assert!(!link_exists(&a.host_veth));
    assert!(!is_mounted(&a.netns_path));
    assert!(!a.netns_path.exists());
    network.teardown_pod(&fx.uid("a")).await.unwrap();
    assert!(link_exists(&b.host_veth));

    network
        .set_service_ips(&BTreeSet::from([svc1]))
        .await
        .unwrap();
    network.teardown_all().await.unwrap();
    assert!(!link_exists(&fx.bridge));
    assert!(!link_exists(&b.host_veth));
    assert!(!is_mounted(&b.netns_path));
    assert!(!b.netns_path.exists());
    assert!(!ip(&["-4", "-o", "addr"]).contains(&format!(" {svc1}/32")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_is_idempotent_and_repairs_after_restart() {
    let fx = Fixture::new();
    let uid = fx.uid("a");
    let network = PodNetwork::new(fx.config()).await.unwrap();
    let first = network.setup_pod(&uid, fx.host(5)).await.unwrap();
    let veth_index = ifindex(&first.host_veth);

    // Same call again: same result, nothing recreated.
    let again = network.setup_pod(&uid, fx.host(5)).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(ifindex(&first.host_veth), veth_index);

    // An agent restart: a second PodNetwork over the existing bridge and pod.
    drop(network);
    let network = PodNetwork::new(fx.config()).await.unwrap();
    let after_restart = network.setup_pod(&uid, fx.host(5)).await.unwrap();
    assert_eq!(after_restart, first);
    assert_eq!(ifindex(&first.host_veth), veth_index);
    assert_eq!(slash32s(&fx.bridge), BTreeSet::new());
    let gw = greeter(
        TcpListener::bind((network.gateway(), 0)).unwrap(),
        "still here",
    );
    assert_eq!(fetch_from(&first.netns_path, gw).unwrap(), "still here");

    // A new IP for the same pod replaces the old one.
    network.setup_pod(&uid, fx.host(6)).await.unwrap();
    let addrs = in_pod_netns_ip(&first, &["-4", "-o", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("{}/24", fx.host(6))), "{addrs}");
    assert!(!addrs.contains(&format!("{}/24", fx.host(5))), "{addrs}");
    assert!(in_pod_netns_ip(&first, &["route"]).contains(&format!("default via {}", fx.host(1))));

    // Veth deleted behind our back: recreated.
    assert!(
        Command::new("ip")
            .args(["link", "del", &first.host_veth])
            .status()
            .unwrap()
            .success()
    );
    network.setup_pod(&uid, fx.host(6)).await.unwrap();
    assert!(link_exists(&first.host_veth));
    assert_eq!(fetch_from(&first.netns_path, gw).unwrap(), "still here");

    // Namespace file left unmounted (crash between creating and mounting it).
    network.teardown_pod(&uid).await.unwrap();
    std::fs::write(&first.netns_path, b"").unwrap();
    let repaired = network.setup_pod(&uid, fx.host(6)).await.unwrap();
    assert!(is_mounted(&repaired.netns_path));
    assert_eq!(fetch_from(&repaired.netns_path, gw).unwrap(), "still here");

    network.teardown_all().await.unwrap();
    network.teardown_all().await.unwrap();
    assert!(!link_exists(&fx.bridge));
    // Everything again from scratch after a full teardown.
    let network = PodNetwork::new(fx.config()).await.unwrap();
    network.teardown_all().await.unwrap();
    assert!(!link_exists(&fx.bridge));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_with_the_reason() {
    let mut fx = Fixture::new();
    let network = PodNetwork::new(fx.config()).await.unwrap();
    for bad in [
        fx.host(0),
        fx.host(1),
        fx.host(255),
        Ipv4Addr::new(10, 245, 0, 2),
    ] {
        match network.setup_pod(&fx.uid("x"), bad).await {
            Err(NetError::IpNotInCidr { ip, .. }) => assert_eq!(ip, bad),
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert!(matches!(
        network.setup_pod("../escape", fx.host(2)).await,
        Err(NetError::InvalidPodUid { .. })
    ));
    assert!(!fx.netns_dir.join(fx.uid("x")).exists());

    // A link by the bridge's name that is not a bridge is not taken over.
    let imposter = format!("{}x", &fx.bridge[..fx.bridge.len().min(14)]);
    fx.extra_links.push(imposter.clone());
    let peer = format!("{}y", &fx.bridge[..fx.bridge.len().min(14)]);
    fx.extra_links.push(peer.clone());
    assert!(
        Command::new("ip")
            .args([
                "link", "add", &imposter, "type", "veth", "peer", "name", &peer
            ])
            .status()
            .unwrap()
            .success()
    );
    let config = NetConfig {
        bridge: imposter.clone(),
        ..fx.config()
    };
    assert!(matches!(
        PodNetwork::new(config).await,
        Err(NetError::NotABridge { name }) if name == imposter
    ));
    network.teardown_all().await.unwrap();
}

/// The whole Service path on one node: pod A connects to a ClusterIP, its default
/// route takes it to the bridge, where the ClusterIP is a local /32 and the proxy
/// listens; the proxy connects to pod B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_reaches_pod_through_a_cluster_ip_and_the_proxy() {
    use bramble::api::routing::{Protocol, RoutePort, ServiceRoute};
    use bramble::proxy::{Proxy, ProxyConfig};

    let fx = Fixture::new();
    let network = PodNetwork::new(fx.config()).await.unwrap();
    let a = network.setup_pod(&fx.uid("a"), fx.host(2)).await.unwrap();
    let b = network.setup_pod(&fx.uid("b"), fx.host(3)).await.unwrap();
    let b_ip = b.ip;
    let listener = in_netns(&b.netns_path, move || TcpListener::bind((b_ip, 0)).unwrap());
    let SocketAddr::V4(endpoint) = greeter(listener, "from b via service") else {
        unreachable!()
    };

    let cluster_ip = Ipv4Addr::new(10, 96, fx.cidr.network().octets()[2], 20);
    let proxy = Proxy::new(ProxyConfig {
        node_port_addr: network.gateway().into(),
        load_balancer_addrs: Vec::new(),
        node_name: "n1".into(),
    });
    // The proxy goes first: it binds before the address is on the bridge.
    let errors = proxy
        .apply(&[ServiceRoute {
            namespace: "default".into(),
            name: "b".into(),
            cluster_ip: Some(cluster_ip),
            ports: vec![RoutePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                // No pod has .99: its ARP goes unanswered, so the connect
                // times out and the proxy goes on to pod B.
                endpoints: vec![SocketAddrV4::new(fx.host(99), 80), endpoint],
            }],
            ..Default::default()
        }])
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    network
        .set_service_ips(&BTreeSet::from([cluster_ip]))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            fetch_from(&a.netns_path, SocketAddr::new(cluster_ip.into(), 80)).unwrap(),
            "from b via service"
        );
    }
    proxy.shutdown().await;
    network.teardown_all().await.unwrap();
}
