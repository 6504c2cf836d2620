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

use bramble::api::routing::{Protocol, RoutePort, ServiceRoute};
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
