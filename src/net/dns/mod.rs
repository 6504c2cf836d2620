//! Cluster DNS, inside every node's agent: a UDP and TCP server on the cluster
//! DNS address (a reserved ClusterIP on the bridge, so pods reach it through
//! their default route like any ClusterIP) that answers names under the
//! cluster domain from the node's own Service table ([`zone`]) and forwards
//! everything else to the node's upstream resolvers (its resolv.conf); an
//! ExternalName's target outside the cluster is resolved through them too and
//! its addresses appended to the CNAME, as CoreDNS does. It keeps
//! answering without the master: the table is the one the worker persisted.
//!
//! Owns: its two sockets and the forwarding sockets it opens. Must not touch:
//! addresses (the worker puts the DNS address on the bridge with the
//! ClusterIPs), the store or the transport. A query that is malformed, huge or
//! for a name outside the cluster is answered (FORMERR, SERVFAIL, the
//! upstream's answer) or dropped, never a reason to stop.

pub mod resolv;
pub mod zone;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use hickory_proto::op::{Message, ResponseCode};
use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use crate::api::routing::{ClusterNetwork, ServiceRoute};
pub use zone::{Handling, Zone, handle};

/// How long one upstream gets to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP client idle this long between queries is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Forwarded queries in flight and TCP connections open at once; beyond
/// them queries are refused (SERVFAIL) or connections closed, so a flood
/// costs bounded memory.
const MAX_FORWARDS: usize = 256;
const MAX_TCP: usize = 128;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    #[error("cluster DNS: bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Where the server listens and whom it forwards to.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The cluster DNS address and port 53 in production.
    pub addr: SocketAddr,
    /// The node's resolv.conf; its nameservers are the upstreams (re-read
    /// when it changes).
    pub resolv_conf: PathBuf,
}

/// The node's upstream resolvers, from its resolv.conf.
struct Upstreams {
    path: PathBuf,
    /// Never forward to ourselves.
    own: IpAddr,
    cache: Mutex<(Option<SystemTime>, Vec<SocketAddr>)>,
}

impl Upstreams {
    fn current(&self) -> Vec<SocketAddr> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != modified || modified.is_none() {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            let servers: Vec<SocketAddr> = resolv::parse_resolv_conf(&text)
                .nameservers
                .into_iter()
                .filter(|ip| *ip != self.own)
                .map(|ip| SocketAddr::new(ip, 53))
                .collect();
            debug!(path = %self.path.display(), ?servers, "upstream resolvers");
            *cache = (modified, servers);
        }
        cache.1.clone()
    }
}

struct Shared {
    zone: RwLock<Arc<Zone>>,
    upstreams: Upstreams,
    forwards: Arc<Semaphore>,
    tcp: Arc<Semaphore>,
}

impl Shared {
    fn zone(&self) -> Arc<Zone> {
        self.zone.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A running cluster DNS server. Dropping it stops it.
pub struct DnsServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

/// A UDP socket on `addr` with `IP_FREEBIND`, like the proxy's: the
/// address may reach the bridge after the server starts.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, socket};
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the cluster DNS address must be IPv4",
        ));
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv4() {
        setsockopt(&socket, sockopt::IpFreebind, &true)?;
    }
    socket.bind(addr)?;
    socket.listen(128)
}

impl DnsServer {
    /// Binds UDP and TCP on `config.addr` (free-binding: the address may reach
    /// the bridge later) and starts answering from `routes`.
    pub fn start(
        config: DnsConfig,
        routes: &[ServiceRoute],
        network: &ClusterNetwork,
    ) -> Result<DnsServer, DnsError> {
        let bind_err = |source| DnsError::Bind {
            addr: config.addr,
            source,
        };
        let udp = bind_udp(config.addr).map_err(bind_err)?;
        let addr = udp.local_addr().map_err(bind_err)?;
        let tcp = bind_tcp(addr).map_err(bind_err)?;
        let shared = Arc::new(Shared {
            zone: RwLock::new(Arc::new(Zone::new(routes, network))),
            upstreams: Upstreams {
                path: config.resolv_conf.clone(),
                own: addr.ip(),
                cache: Mutex::new((None, Vec::new())),
            },
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            tcp: Arc::new(Semaphore::new(MAX_TCP)),
        });
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), shared.clone())),
            tokio::spawn(serve_tcp(tcp, shared.clone())),
        ];
        info!(%addr, "cluster DNS listening");
        Ok(DnsServer {
            shared,
            addr,
            tasks,
        })
    }

    /// Answers from `routes` from now on.
    pub fn update(&self, routes: &[ServiceRoute], network: &ClusterNetwork) {
        let zone = Arc::new(Zone::new(routes, network));
        *self.shared.zone.write().unwrap_or_else(|e| e.into_inner()) = zone;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Keeps the node's DNS server in line with the Service table: started on the
/// table's DNS address once it names one, updated in place, restarted if the
/// address moves. A bind failure is logged and returned beside `None`; the
/// worker retries it.
pub fn serve(
    current: Option<DnsServer>,
    routes: &[ServiceRoute],
    network: &ClusterNetwork,
    resolv_conf: &std::path::Path,
) -> (Option<DnsServer>, Option<DnsError>) {
    let Some(dns_ip) = network.dns_ip else {
        return (None, None);
    };
    let addr = SocketAddr::new(dns_ip.into(), 53);
    if let Some(server) = current {
        if server.addr() == addr {
            server.update(routes, network);
            return (Some(server), None);
        }
        drop(server);
    }
    let config = DnsConfig {
        addr,
        resolv_conf: resolv_conf.to_path_buf(),
    };
    match DnsServer::start(config, routes, network) {
        Ok(server) => (Some(server), None),
        Err(e) => {
            warn!(error = %e, "cluster DNS is not running");
            (None, Some(e))
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    // Big enough for any datagram: a longer one would be cut short by the
    // kernel and then misparsed.
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                trace!(error = %e, "DNS receive error");
                continue;
            }
        };
        let zone = shared.zone();
        match handle(&zone, &buf[..n], true) {
            Handling::Respond(reply) => {
                let _ = socket.send_to(&reply, peer).await;
            }
            Handling::Drop => trace!(%peer, bytes = n, "DNS datagram dropped"),
            Handling::Chase(partial) => {
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    send_servfail(&socket, &partial.query, peer).await;
                    continue;
                };
                let (socket, shared) = (socket.clone(), shared.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Handling::Respond(reply) =
                        chase(partial, &shared.upstreams.current(), true).await
                    {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                });
            }
            Handling::Forward(query) => {
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    send_servfail(&socket, &query, peer).await;
                    continue;
                };
                let bytes = buf[..n].to_vec();
                let (socket, shared) = (socket.clone(), shared.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match forward_udp(&bytes, &shared.upstreams.current()).await {
                        Some(reply) => {
                            let _ = socket.send_to(&reply, peer).await;
                        }
                        None => send_servfail(&socket, &query, peer).await,
                    }
                });
            }
        }
    }
}

fn servfail(query: &Message) -> Option<Vec<u8>> {
    zone::error(query, ResponseCode::ServFail).to_vec().ok()
}

async fn send_servfail(socket: &UdpSocket, query: &Message, peer: SocketAddr) {
    if let Some(reply) = servfail(query) {
        let _ = socket.send_to(&reply, peer).await;
    }
}

/// Completes an ExternalName's answer with its target's addresses from the
/// upstreams (over TCP when the UDP answer was truncated). Without an
/// upstream answer the CNAME alone is sent, as before the chase.
async fn chase(chase: Box<zone::Chase>, upstreams: &[SocketAddr], udp: bool) -> Handling {
    let Ok(query) = chase.upstream_query(rand::random()).to_vec() else {
        return chase.finish(None, udp);
    };
    let parse = |r: Vec<u8>| Message::from_vec(&r).ok();
    let mut reply = forward_udp(&query, upstreams).await.and_then(parse);
    if reply.as_ref().is_some_and(|r| r.metadata.truncation) {
        reply = forward_tcp(&query, upstreams)
            .await
            .and_then(parse)
            .or(reply);
    }
    chase.finish(reply.as_ref(), udp)
}

/// Asks each upstream in turn; the first reply with the query's ID wins.
async fn forward_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for upstream in upstreams {
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(socket) = UdpSocket::bind(local).await else {
            continue;
        };
        if socket.connect(upstream).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65_535];
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                match socket.recv(&mut buf).await {
                    Ok(n) if n >= 12 && &buf[..2] == id => return Some(buf[..n].to_vec()),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        })
        .await;
        match answer {
            Ok(Some(reply)) => return Some(reply),
            _ => debug!(%upstream, "upstream resolver did not answer"),
        }
    }
    None
}

async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let attempt = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            let mut stream = TcpStream::connect(upstream).await?;
            let len = u16::try_from(query.len()).map_err(io::Error::other)?;
            stream.write_all(&len.to_be_bytes()).await?;
            stream.write_all(query).await?;
            let len = stream.read_u16().await? as usize;
            let mut reply = vec![0u8; len];
            stream.read_exact(&mut reply).await?;
            Ok::<_, io::Error>(reply)
        })
        .await;
        match attempt {
            Ok(Ok(reply)) => return Some(reply),
            _ => debug!(%upstream, "upstream resolver did not answer over TCP"),
        }
    }
    None
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = shared.tcp.clone().try_acquire_owned() else {
            debug!(%peer, "too many DNS TCP connections; closing one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_tcp_client(stream, &shared).await {
                trace!(%peer, error = %e, "DNS TCP client done");
            }
        });
    }
}

/// Length-prefixed queries, one after another, until the client closes or
/// idles.
async fn serve_tcp_client(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let mut query = vec![0u8; len? as usize];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let zone = shared.zone();
        let reply = match handle(&zone, &query, false) {
            Handling::Respond(r) => r,
            Handling::Drop => return Ok(()),
            Handling::Chase(partial) => {
                let Ok(_permit) = shared.forwards.try_acquire() else {
                    return Ok(());
                };
                match chase(partial, &shared.upstreams.current(), false).await {
                    Handling::Respond(r) => r,
                    _ => return Ok(()),
                }
            }
            Handling::Forward(q) => {
                let Ok(_permit) = shared.forwards.try_acquire() else {
                    return Ok(());
                };
                match forward_tcp(&query, &shared.upstreams.current()).await {
                    Some(r) => r,
                    None => match servfail(&q) {
                        Some(r) => r,
                        None => return Ok(()),
                    },
                }
            }
        };
        let len = u16::try_from(reply.len()).map_err(io::Error::other)?;
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&reply).await?;
    }
}
