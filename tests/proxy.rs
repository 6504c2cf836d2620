//! The Service proxy over real TCP sockets on loopback: all of 127/8 is local, so
//! each test gets its own 127.A.B.0/24 for backends and ClusterIPs, and NodePorts
//! listen on 127.0.0.1. No bridge is needed.
//!
//! Every backend greets with its name, then echoes until the client half-closes,
//! then closes: a request that completes shows both the endpoint chosen and that
//! half-close went through the proxy in both directions.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bramble::api::routing::{Balance, Protocol, RoutePort, ServiceRoute};
use bramble::proxy::{Proxy, ProxyConfig, ProxyError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Generous bound so a broken proxy fails the test instead of hanging it; no
/// assertion depends on how fast anything is.
const PATIENCE: Duration = Duration::from_secs(10);

static NEXT_NET: AtomicU8 = AtomicU8::new(1);

/// A loopback /24 of this test's own.
struct Net(Ipv4Addr);

impl Net {
    fn new() -> Net {
        let a = (std::process::id() % 200) as u8 + 20;
        Net(Ipv4Addr::new(
            127,
            a,
            NEXT_NET.fetch_add(1, Ordering::SeqCst),
            0,
        ))
    }

    fn ip(&self, n: u8) -> Ipv4Addr {
        let o = self.0.octets();
        Ipv4Addr::new(o[0], o[1], o[2], n)
    }
}

/// A port nothing listens on right now.
fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn backend(ip: Ipv4Addr, name: &'static str) -> SocketAddrV4 {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                stream.write_all(format!("{name}\n").as_bytes()).await?;
                let (mut read, mut write) = stream.split();
                tokio::io::copy(&mut read, &mut write).await?;
                write.shutdown().await
            });
        }
    });
    addr
}

/// A connection through the proxy that stays open between round trips.
struct Session {
    reader: BufReader<TcpStream>,
    server: String,
}

impl Session {
    async fn open(addr: SocketAddr) -> std::io::Result<Session> {
        let stream = timeout(PATIENCE, TcpStream::connect(addr)).await??;
        let mut reader = BufReader::new(stream);
        let mut server = String::new();
        timeout(PATIENCE, reader.read_line(&mut server)).await??;
        if server.is_empty() {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        Ok(Session {
            reader,
            server: server.trim().to_string(),
        })
    }

    async fn round_trip(&mut self, message: &str) -> String {
        let line = format!("{message}\n");
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .unwrap();
        let mut echo = String::new();
        timeout(PATIENCE, self.reader.read_line(&mut echo))
            .await
            .expect("echo in time")
            .unwrap();
        echo.trim().to_string()
    }

    /// Half-closes, then expects the rest of the echo and the server's close.
    async fn finish(mut self, last: &str) {
        self.reader
            .get_mut()
            .write_all(last.as_bytes())
            .await
            .unwrap();
        self.reader.get_mut().shutdown().await.unwrap();
        let mut rest = String::new();
        timeout(PATIENCE, self.reader.read_to_string(&mut rest))
            .await
            .expect("close in time")
            .unwrap();
        assert_eq!(rest, last);
    }
}

/// One complete request: returns the name of the backend that served it.
async fn ask(addr: SocketAddr) -> String {
    let session = Session::open(addr)
        .await
        .unwrap_or_else(|e| panic!("{addr}: {e}"));
    let server = session.server.clone();
    session.finish("ping").await;
    server
}

async fn assert_refused(addr: SocketAddr) {
    let err = timeout(PATIENCE, TcpStream::connect(addr))
        .await
        .unwrap()
        .expect_err("listener should be closed");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{addr}");
}

/// Accepted, then closed without a byte.
async fn assert_rejected(addr: SocketAddr) {
    let mut stream = timeout(PATIENCE, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 16];
    match timeout(PATIENCE, stream.read(&mut buf)).await.unwrap() {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("{addr}: expected a closed connection, got {other:?}"),
    }
}

fn route(
    name: &str,
    cluster_ip: Ipv4Addr,
    port: u16,
    node_port: Option<u16>,
    endpoints: &[SocketAddrV4],
) -> ServiceRoute {
    ServiceRoute {
        namespace: "default".into(),
        name: name.into(),
        cluster_ip: Some(cluster_ip),
        ports: vec![RoutePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port,
            node_port,
            endpoints: endpoints.to_vec(),
        }],
        ..Default::default()
    }
}

fn proxy() -> Proxy {
    Proxy::new(ProxyConfig {
        node_port_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        load_balancer_addrs: Vec::new(),
        node_name: "n1".into(),
    })
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[tokio::test]
async fn round_robin_over_cluster_ip_and_node_port() {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let b = backend(net.ip(2), "b").await;
    let cluster = at(net.ip(10), free_port(net.ip(10)));
    let node = at(Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST));
    let proxy = proxy();
    let errors = proxy
        .apply(&[route(
            "web",
            net.ip(10),
            cluster.port(),
            Some(node.port()),
            &[a, b],
        )])
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    let mut listening = proxy.listening();
    listening.sort();
    let mut expected = vec![cluster, node];
    expected.sort();
    assert_eq!(listening, expected);

    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(ask(cluster).await);
    }
    // The NodePort shares the ClusterIP's rotation.
    for _ in 0..2 {
        served.push(ask(node).await);
    }
    assert!(served.windows(2).all(|w| w[0] != w[1]), "{served:?}");
    assert!(served.contains(&"a".to_string()) && served.contains(&"b".to_string()));
    proxy.shutdown().await;
}

#[tokio::test]
async fn dead_endpoint_is_skipped_without_failing_a_request() {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let b = backend(net.ip(2), "b").await;
    let dead = SocketAddrV4::new(net.ip(3), free_port(net.ip(3)));
    let cluster = at(net.ip(10), free_port(net.ip(10)));
    let proxy = proxy();
    let errors = proxy
        .apply(&[route(
            "web",
            net.ip(10),
            cluster.port(),
            None,
            &[dead, a, dead, b],
        )])
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    let mut served = Vec::new();
    for _ in 0..8 {
        served.push(ask(cluster).await);
    }
    assert!(
        served.iter().any(|s| s == "a") && served.iter().any(|s| s == "b"),
        "{served:?}"
    );

    // Nothing alive: the client connection is closed, and the next request works
    // again once an endpoint is.
    proxy
        .apply(&[route("web", net.ip(10), cluster.port(), None, &[dead])])
        .await;
    assert_rejected(cluster).await;
    proxy
        .apply(&[route("web", net.ip(10), cluster.port(), None, &[dead, b])])
        .await;
    assert_eq!(ask(cluster).await, "b");
    proxy.shutdown().await;
}

#[tokio::test]
async fn endpoint_changes_and_removal_drain_open_connections() {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let b = backend(net.ip(2), "b").await;
    let cluster = at(net.ip(10), free_port(net.ip(10)));
    let proxy = proxy();
    proxy
        .apply(&[route("web", net.ip(10), cluster.port(), None, &[a])])
        .await;
    let mut long = Session::open(cluster).await.unwrap();
    assert_eq!(long.server, "a");
    assert_eq!(long.round_trip("one").await, "one");

    // New endpoints: new connections go there, the open one stays on a.
    let errors = proxy
        .apply(&[route("web", net.ip(10), cluster.port(), None, &[b])])
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(proxy.listening(), vec![cluster]);
    assert_eq!(ask(cluster).await, "b");
    assert_eq!(ask(cluster).await, "b");
    assert_eq!(long.round_trip("two").await, "two");

    // No ready endpoints: new connections are closed at once.
    proxy
        .apply(&[route("web", net.ip(10), cluster.port(), None, &[])])
        .await;
    assert_rejected(cluster).await;
    assert_eq!(long.round_trip("three").await, "three");

    // Service removed: the listener is gone when apply returns.
    assert!(proxy.apply(&[]).await.is_empty());
    assert!(proxy.listening().is_empty());
    assert_refused(cluster).await;
    assert_eq!(long.round_trip("four").await, "four");
    long.finish("bye").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn changed_cluster_ip_or_node_port_rebinds() {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let port = free_port(net.ip(10));
    let node_port = free_port(Ipv4Addr::LOCALHOST);
    let proxy = proxy();
    proxy
        .apply(&[route("web", net.ip(10), port, Some(node_port), &[a])])
        .await;
    assert_eq!(ask(at(net.ip(10), port)).await, "a");

    let new_node_port = free_port(Ipv4Addr::LOCALHOST);
    let errors = proxy
        .apply(&[route("web", net.ip(11), port, Some(new_node_port), &[a])])
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_refused(at(net.ip(10), port)).await;
    assert_refused(at(Ipv4Addr::LOCALHOST, node_port)).await;
    assert_eq!(ask(at(net.ip(11), port)).await, "a");
    assert_eq!(ask(at(Ipv4Addr::LOCALHOST, new_node_port)).await, "a");

    // The same address handed to another Service is served by that one.
    let b = backend(net.ip(2), "b").await;
    let errors = proxy
        .apply(&[route("other", net.ip(11), port, None, &[b])])
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ask(at(net.ip(11), port)).await, "b");
    proxy.shutdown().await;
}

#[tokio::test]
async fn bind_errors_are_reported_and_the_rest_keeps_serving() {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let port = free_port(net.ip(10));
    let routes = [
        route("web", net.ip(10), port, Some(taken_port), &[a]),
        route("copy", net.ip(10), port, None, &[a]),
    ];
    let proxy = proxy();
    let errors = proxy.apply(&routes).await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| matches!(e,
        ProxyError::Bind { service, addr, source }
            if *service == format!("default/web:{port}/tcp")
                && *addr == at(Ipv4Addr::LOCALHOST, taken_port)
                && source.kind() == ErrorKind::AddrInUse)));
    assert!(errors.iter().any(|e| matches!(e,
        ProxyError::Conflict { service, .. } if service.starts_with("default/copy:"))));
    assert_eq!(proxy.listening(), vec![at(net.ip(10), port)]);
    assert_eq!(ask(at(net.ip(10), port)).await, "a");

    // The next apply tries the failed bind again.
    drop(taken);
    let errors = proxy.apply(&routes[..1]).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ask(at(Ipv4Addr::LOCALHOST, taken_port)).await, "a");
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_listeners_and_open_connections() {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let cluster = at(net.ip(10), free_port(net.ip(10)));
    let proxy = proxy();
    proxy
        .apply(&[route("web", net.ip(10), cluster.port(), None, &[a])])
        .await;
    let mut long = Session::open(cluster).await.unwrap();
    assert_eq!(long.round_trip("one").await, "one");

    timeout(PATIENCE, proxy.shutdown())
        .await
        .expect("shutdown in time");
    assert!(proxy.listening().is_empty());
    assert_refused(cluster).await;
    let mut rest = String::new();
    match timeout(PATIENCE, long.reader.read_to_string(&mut rest))
        .await
        .unwrap()
    {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
    }
    assert!(matches!(
        &proxy
            .apply(&[route("web", net.ip(10), cluster.port(), None, &[a])])
            .await[..],
        [ProxyError::ShutDown]
    ));
}

/// A UDP backend that answers every datagram with `<name>:<datagram>`.
async fn udp_backend(ip: Ipv4Addr, name: &'static str) -> SocketAddrV4 {
    let socket = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
    let SocketAddr::V4(addr) = socket.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

fn free_udp_port(ip: Ipv4Addr) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `message` from `client` to `to`; returns the reply and where it came
/// from.
async fn udp_ask(
    client: &tokio::net::UdpSocket,
    to: SocketAddr,
    message: &str,
) -> (String, SocketAddr) {
    client.send_to(message.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, from) = timeout(PATIENCE, client.recv_from(&mut buf))
        .await
        .expect("a UDP reply in time")
        .unwrap();
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

fn udp_route(
    name: &str,
    cluster_ip: Ipv4Addr,
    port: u16,
    node_port: Option<u16>,
    endpoints: &[SocketAddrV4],
) -> ServiceRoute {
    let mut r = route(name, cluster_ip, port, node_port, endpoints);
    r.ports[0].protocol = Protocol::Udp;
    r
}

#[tokio::test]
async fn udp_flows_through_cluster_ip_and_wildcard_node_port() {
    let net = Net::new();
    let a = udp_backend(net.ip(1), "a").await;
    let b = udp_backend(net.ip(2), "b").await;
    let cluster = at(net.ip(10), free_udp_port(net.ip(10)));
    let node_port = free_udp_port(Ipv4Addr::UNSPECIFIED);
    let proxy = Proxy::new(ProxyConfig {
        node_port_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        load_balancer_addrs: Vec::new(),
        node_name: "n1".into(),
    });
    let errors = proxy
        .apply(&[udp_route(
            "echo",
            net.ip(10),
            cluster.port(),
            Some(node_port),
            &[a, b],
        )])
        .await;
    assert!(errors.is_empty(), "{errors:?}");

    // One client is one flow: every datagram goes to the same endpoint, and
    // replies come from the address the client sent to.
    let client = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let (first, from) = udp_ask(&client, cluster, "1").await;
    assert_eq!(from, cluster);
    let server = first.split(':').next().unwrap().to_string();
    for i in 2..5 {
        let (reply, _) = udp_ask(&client, cluster, &i.to_string()).await;
        assert_eq!(reply, format!("{server}:{i}"));
    }
    // New clients rotate over the endpoints.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let c = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let (reply, _) = udp_ask(&c, cluster, "x").await;
        seen.insert(reply);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The wildcard NodePort answers from the exact address asked (IP_PKTINFO),
    // here a second loopback address.
    let asked = at(net.ip(20), node_port);
    let c = tokio::net::UdpSocket::bind((net.ip(21), 0)).await.unwrap();
    let (reply, from) = udp_ask(&c, asked, "np").await;
    assert!(reply.ends_with(":np"), "{reply}");
    assert_eq!(from, asked);
    proxy.shutdown().await;
}

#[tokio::test]
async fn udp_refused_endpoint_resends_to_the_next_and_removed_endpoint_moves_the_flow() {
    let net = Net::new();
    // Nothing listens on `dead`: the kernel answers with port unreachable.
    let dead = SocketAddrV4::new(net.ip(1), free_udp_port(net.ip(1)));
    let live = udp_backend(net.ip(2), "live").await;
    let other = udp_backend(net.ip(3), "other").await;
    let cluster = at(net.ip(10), free_udp_port(net.ip(10)));
    let proxy = proxy();
    let mut r = udp_route("echo", net.ip(10), cluster.port(), None, &[dead, live]);
    assert!(proxy.apply(std::slice::from_ref(&r)).await.is_empty());
    // Whichever endpoint each new flow starts at, every datagram is answered.
    for i in 0..4 {
        let c = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let (reply, _) = udp_ask(&c, cluster, &format!("q{i}")).await;
        assert_eq!(reply, format!("live:q{i}"));
    }
    // The flow's endpoint leaves the list: its next datagram goes to another.
    let c = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    assert_eq!(udp_ask(&c, cluster, "before").await.0, "live:before");
    r.ports[0].endpoints = vec![other];
    assert!(proxy.apply(std::slice::from_ref(&r)).await.is_empty());
    assert_eq!(udp_ask(&c, cluster, "after").await.0, "other:after");
    proxy.shutdown().await;
}

/// Three connections held open to `a` (the only endpoint then), `b` added,
/// then three new connections opened and held: where did those go?
async fn new_connections_after_a_holds_three(balance: Balance) -> Vec<String> {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let b = backend(net.ip(2), "b").await;
    let cluster = at(net.ip(10), free_port(net.ip(10)));
    let proxy = proxy();
    let mut r = route("web", net.ip(10), cluster.port(), None, &[a]);
    r.balance = balance;
    assert!(proxy.apply(std::slice::from_ref(&r)).await.is_empty());
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = Session::open(cluster).await.unwrap();
        assert_eq!(s.server, "a");
        held.push(s);
    }
    // Same Service port: only the endpoints change; a's count stays 3.
    r.ports[0].endpoints = vec![a, b];
    assert!(proxy.apply(std::slice::from_ref(&r)).await.is_empty());
    let mut servers = Vec::new();
    for _ in 0..3 {
        let s = Session::open(cluster).await.unwrap();
        servers.push(s.server.clone());
        held.push(s);
    }
    for s in held {
        s.finish("bye").await;
    }
    proxy.shutdown().await;
    servers
}

#[tokio::test]
async fn least_connections_fills_the_idle_endpoint_first() {
    // a has 3 open, b none: b takes the next three (0, 1, 2 < 3).
    assert_eq!(
        new_connections_after_a_holds_three(Balance::LeastConnections).await,
        ["b", "b", "b"]
    );
    // The same sequence under round-robin alternates, so the assertion above
    // tells the two policies apart.
    let rr = new_connections_after_a_holds_three(Balance::RoundRobin).await;
    assert!(rr.iter().any(|s| s == "a"), "{rr:?}");
}

#[tokio::test]
async fn client_ip_affinity_keeps_one_endpoint() {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let b = backend(net.ip(2), "b").await;
    let cluster = at(net.ip(10), free_port(net.ip(10)));
    let proxy = proxy();
    let mut r = route("web", net.ip(10), cluster.port(), None, &[a, b]);
    r.affinity_seconds = Some(60);
    assert!(proxy.apply(&[r]).await.is_empty());
    let first = ask(cluster).await;
    for _ in 0..5 {
        assert_eq!(ask(cluster).await, first);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn load_balancer_ports_listen_on_the_node_addresses() {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let lb_ip = net.ip(77);
    let port = free_port(lb_ip);
    let proxy = Proxy::new(ProxyConfig {
        node_port_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        load_balancer_addrs: vec![IpAddr::V4(lb_ip)],
        node_name: "n1".into(),
    });
    let mut r = route("web", net.ip(10), port, None, &[a]);
    r.load_balancer = true;
    assert!(proxy.apply(&[r]).await.is_empty());
    assert_eq!(ask(at(lb_ip, port)).await, "a");
    assert_eq!(ask(at(net.ip(10), port)).await, "a");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_arrives_intact_both_ways() {
    let net = Net::new();
    let a = backend(net.ip(1), "a").await;
    let cluster = at(net.ip(10), free_port(net.ip(10)));
    let proxy = proxy();
    assert!(
        proxy
            .apply(&[route("bulk", net.ip(10), cluster.port(), None, &[a])])
            .await
            .is_empty()
    );
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let stream = timeout(PATIENCE, TcpStream::connect(cluster))
        .await
        .unwrap()
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    timeout(PATIENCE, read.read_to_end(&mut got))
        .await
        .expect("the echo in time")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(&got[..2], b"a\n");
    assert!(got[2..] == data[..], "{} bytes back", got.len() - 2);
    proxy.shutdown().await;
}
