//! Pod networking on one node: the bridge, a network namespace and veth pair per
//! pod, pod IP allocation, Service ClusterIPs held on the bridge, egress
//! masquerade ([`masq`]) and the cluster DNS ([`dns`]).
//!
//! Owns: the bridge named in [`NetConfig`] (created if missing, deleted by
//! [`PodNetwork::teardown_all`]), every `/32` address on it (those are ClusterIPs
//! and the cluster DNS address), the namespace files under `netns_dir`, the
//! veths named `bv<hash>` after pod uids ([`host_veth_name`]), and the nftables
//! table `bramble_<bridge>`. Links and addresses are done through rtnetlink;
//! nothing here spawns `ip` (nftables rules go through `nft`).
//!
//! Also owns the node's host-gw routes to other nodes' pod CIDRs (main table,
//! marked with protocol [`ROUTE_PROTOCOL`] so they can be told from the
//! rest): a flat home LAN needs no overlay.
//!
//! Must not touch: other interfaces, other routes, other nftables or iptables
//! rules, or containers (the runtime joins a pod's namespace through
//! [`PodNet::netns_path`]).
//!
//! Every operation is idempotent and safe after an agent restart: the bridge, a
//! veth or a namespace file that already exists is checked and reused, one that
//! is half made is redone.

pub mod dns;
mod ipam;
mod link;
pub mod masq;
mod netns;
pub mod svcnat;

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{debug, info};

pub use ipam::{MAX_POD_PREFIX, allocate_ip, gateway_ip, is_pod_ip};

/// The routing protocol number marking our host-gw routes (`ip route` shows
/// `proto 77`): unassigned in iproute2's rt_protos, unlike 186 (bgp) and
/// its neighbours.
pub const ROUTE_PROTOCOL: u8 = 77;
use link::netlink_err;
use netns::NsConn;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Name of the pod's interface inside its namespace.
const POD_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("network config {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("pod uid {uid:?}: {reason}")]
    InvalidPodUid { uid: String, reason: &'static str },
    #[error(
        "pod IP {ip} is not a pod address of {cidr} (network, gateway and broadcast are reserved)"
    )]
    IpNotInCidr { ip: Ipv4Addr, cidr: Ipv4Net },
    #[error("link {name} exists but is not a bridge")]
    NotABridge { name: String },
    #[error("link {name} not found")]
    LinkNotFound { name: String },
    #[error("{} is not a mounted network namespace", path.display())]
    NotANetns { path: PathBuf },
    #[error("netlink {op} {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("opening a netlink socket: {0}")]
    NetlinkSocket(#[source] io::Error),
    #[error("{op} {}: {source}", path.display())]
    Netns {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("network namespace thread: {0}")]
    Thread(#[source] io::Error),
    #[error("nftables: {op}: {reason}")]
    Nft { op: &'static str, reason: String },
    #[error("iptables: {op}: {reason}")]
    Iptables { op: &'static str, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// `bramble0` in production; at most 15 characters.
    pub bridge: String,
    /// This node's pod CIDR; the bridge gets its first host address as gateway.
    pub pod_cidr: Ipv4Net,
    /// Where pod namespace files are bind-mounted, one per pod uid.
    pub netns_dir: PathBuf,
}

/// What a set-up pod's network is: the runtime puts the pod's containers into
/// `netns_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    pub host_veth: String,
}

/// The node's pod network. Operations are serialized: each is a handful of
/// netlink requests, and one at a time keeps the check-then-act steps honest.
pub struct PodNetwork {
    config: NetConfig,
    gateway: Ipv4Addr,
    host: NsConn,
    lock: Mutex<()>,
    /// The cluster CIDR the masquerade rule was last installed for.
    masquerade: Mutex<Option<Ipv4Net>>,
    /// The Service DNAT ruleset last installed, `Some(None)` once known to be
    /// absent (see [`svcnat`]).
    service_nat: Mutex<Option<Option<String>>>,
    /// The UDP endpoints of that ruleset, whose flows go when they leave it.
    kernel_udp: Mutex<BTreeSet<std::net::SocketAddrV4>>,
}

/// The host-side veth name for a pod: `bv` + 11 hex chars of the uid's SHA-256.
/// Stable across restarts, ≤ 15 characters, and found again from the uid alone.
/// (The pod side is `eth0` inside the pod's namespace from the moment it exists.)
pub fn host_veth_name(pod_uid: &str) -> String {
    let digest = Sha256::digest(pod_uid.as_bytes());
    let hash = hex::encode(&digest[..6]);
    format!("bv{}", &hash[..11])
}

fn validate_config(config: &NetConfig) -> Result<Ipv4Addr, NetError> {
    let bridge = &config.bridge;
    if bridge.is_empty()
        || bridge.len() > MAX_IFNAME
        || bridge
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(NetError::InvalidConfig {
            field: "bridge",
            reason: format!(
                "{bridge:?} is not a valid interface name (1-{MAX_IFNAME} characters, no '/', ':' or spaces)"
            ),
        });
    }
    gateway_ip(config.pod_cidr).ok_or_else(|| NetError::InvalidConfig {
        field: "pod_cidr",
        reason: format!(
            "{} is too small: the prefix must be at most /{MAX_POD_PREFIX}",
            config.pod_cidr
        ),
    })
}

fn validate_uid(uid: &str) -> Result<(), NetError> {
    let reason = if uid.is_empty() {
        "is empty"
    } else if uid == "." || uid == ".." || uid.contains('/') || uid.contains('\0') {
        "cannot be a file name"
    } else {
        return Ok(());
    };
    Err(NetError::InvalidPodUid {
        uid: uid.into(),
        reason,
    })
}

/// A fixed, locally administered MAC for the bridge. Without one the kernel gives
/// the bridge the lowest MAC of its ports, so the gateway's MAC would change as
/// pods come and go and pods' ARP caches would point to a stale one.
fn bridge_mac(bridge: &str) -> Vec<u8> {
    let digest = Sha256::digest(bridge.as_bytes());
    let mut mac = digest[..6].to_vec();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

impl PodNetwork {
    /// Ensures the bridge exists, is up and has the gateway address.
    pub async fn new(config: NetConfig) -> Result<PodNetwork, NetError> {
        let gateway = validate_config(&config)?;
        let host = NsConn::here()?;
        let network = PodNetwork {
            config,
            gateway,
            host,
            lock: Mutex::new(()),
            masquerade: Mutex::new(None),
            service_nat: Mutex::new(None),
            kernel_udp: Mutex::new(BTreeSet::new()),
        };
        network.ensure_bridge().await?;
        Ok(network)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Where the namespace of pod `pod_uid` is (or would be) mounted.
    pub fn netns_path(&self, pod_uid: &str) -> PathBuf {
        self.config.netns_dir.join(pod_uid)
    }

    fn prefix(&self) -> u8 {
        self.config.pod_cidr.prefix_len()
    }

    async fn ensure_bridge(&self) -> Result<u32, NetError> {
        let name = &self.config.bridge;
        let handle = &self.host.handle;
        let index = match link::by_name(handle, name).await? {
            Some(existing) if !link::is_bridge(&existing) => {
                return Err(NetError::NotABridge { name: name.clone() });
            }
            Some(existing) => existing.header.index,
            None => {
                info!(bridge = %name, "creating bridge");
                let message = LinkBridge::new(name).address(bridge_mac(name)).build();
                match handle.link().add(message).execute().await {
                    Ok(()) => {}
                    Err(err) => {
                        // Lost a race with another creator: fine if it is a bridge.
                        match link::by_name(handle, name).await? {
                            Some(link) if link::is_bridge(&link) => {}
                            _ => return Err(netlink_err("create bridge", name.clone())(err)),
                        }
                    }
                }
                link::index_of(handle, name).await?
            }
        };
        link::set_up(handle, index, name).await?;
        // The gateway is the bridge's one non-/32 address; others are left over
        // from an earlier pod CIDR.
        for addr in link::ipv4_addrs(handle, index, name).await? {
            if addr.prefix != 32 && (addr.ip, addr.prefix) != (self.gateway, self.prefix()) {
                info!(bridge = %name, ip = %addr.ip, prefix = addr.prefix, "removing stale bridge address");
                link::del_addr(handle, name, addr).await?;
            }
        }
        link::add_addr(handle, index, name, self.gateway, self.prefix()).await?;
        Ok(index)
    }

    /// Gives pod `pod_uid` its namespace, veth, `ip` and default route. Calling it
    /// again for a set-up pod checks and repairs; nothing is recreated needlessly.
    pub async fn setup_pod(&self, pod_uid: &str, ip: Ipv4Addr) -> Result<PodNet, NetError> {
        validate_uid(pod_uid)?;
        if !is_pod_ip(self.config.pod_cidr, ip) {
            return Err(NetError::IpNotInCidr {
                ip,
                cidr: self.config.pod_cidr,
            });
        }
        let _serial = self.lock.lock().await;
        let bridge_index = link::index_of(&self.host.handle, &self.config.bridge).await?;
        let netns_path = self.netns_path(pod_uid);
        netns::ensure(&netns_path).await?;
        let pod = NsConn::open(&netns_path).await?;
        let host_veth = host_veth_name(pod_uid);

        let host_link = link::by_name(&self.host.handle, &host_veth).await?;
        let pod_link = link::by_name(&pod.handle, POD_IFNAME).await?;
        // A veth's IFLA_LINK is its peer's index; a mismatch means the two are
        // not one pair (say, a namespace recreated while the old one lingered).
        let paired = match (&host_link, &pod_link) {
            (Some(host), Some(pod)) => link::peer_index_of(host) == Some(pod.header.index),
            _ => false,
        };
        if paired {
            debug!(pod_uid, %host_veth, "veth pair exists");
        } else {
            // Half made, or not a pair: start the pair over.
            if host_link.is_some() {
                link::delete(&self.host.handle, &host_veth).await?;
            }
            if pod_link.is_some() {
                link::delete(&pod.handle, POD_IFNAME).await?;
            }
            self.create_veth(&netns_path, &host_veth).await?;
        }

        let host_index = link::index_of(&self.host.handle, &host_veth).await?;
        self.host
            .handle
            .link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink_err(
                "attach to bridge and set up",
                host_veth.clone(),
            ))?;

        self.configure_pod_side(&pod, ip).await?;
        link::forget_neighbour(&self.host.handle, bridge_index, &self.config.bridge, ip).await?;
        info!(pod_uid, %ip, %host_veth, "pod network ready");
        Ok(PodNet {
            netns_path,
            ip,
            host_veth,
        })
    }

    /// One request creates the pair with its peer already in the pod's namespace
    /// and named `eth0`, so no half-moved peer can be left in the host namespace.
    async fn create_veth(&self, netns_path: &Path, host_veth: &str) -> Result<(), NetError> {
        let netns_file = std::fs::File::open(netns_path).map_err(|source| NetError::Netns {
            op: "open",
            path: netns_path.to_owned(),
            source,
        })?;
        let peer = LinkUnspec::new_with_name(POD_IFNAME)
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&netns_file))
            .build();
        let message = LinkVeth::new(host_veth, POD_IFNAME)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.host
            .handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(netlink_err("create veth", host_veth.to_owned()))?;
        drop(netns_file);
        Ok(())
    }

    async fn configure_pod_side(&self, pod: &NsConn, ip: Ipv4Addr) -> Result<(), NetError> {
        let handle = &pod.handle;
        let lo = link::index_of(handle, "lo").await?;
        link::set_up(handle, lo, "lo").await?;
        let eth0 = link::index_of(handle, POD_IFNAME).await?;
        // Up before the route: a gateway route needs a live link to reach through.
        link::set_up(handle, eth0, POD_IFNAME).await?;
        let mut present = false;
        for addr in link::ipv4_addrs(handle, eth0, POD_IFNAME).await? {
            if (addr.ip, addr.prefix) == (ip, self.prefix()) {
                present = true;
            } else {
                link::del_addr(handle, POD_IFNAME, addr).await?;
            }
        }
        if !present {
            link::add_addr(handle, eth0, POD_IFNAME, ip, self.prefix()).await?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(self.gateway)
            .output_interface(eth0)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(netlink_err(
                "add default route via",
                self.gateway.to_string(),
            ))
    }

    /// Removes pod `pod_uid`'s veth and namespace file (unmount + unlink). Absent
    /// pieces are fine.
    pub async fn teardown_pod(&self, pod_uid: &str) -> Result<(), NetError> {
        validate_uid(pod_uid)?;
        let _serial = self.lock.lock().await;
        self.teardown_pod_locked(pod_uid).await
    }

    async fn teardown_pod_locked(&self, pod_uid: &str) -> Result<(), NetError> {
        let host_veth = host_veth_name(pod_uid);
        // Deleting our end also deletes the peer, even while a container still
        // holds the namespace open.
        link::delete(&self.host.handle, &host_veth).await?;
        netns::remove(&self.netns_path(pod_uid))?;
        debug!(pod_uid, %host_veth, "pod network removed");
        Ok(())
    }

    /// Makes exactly `ips` present as `/32`s on the bridge: adds the missing ones
    /// and removes every other `/32` (all `/32`s on the bridge are ClusterIPs).
    pub async fn set_service_ips(&self, ips: &BTreeSet<Ipv4Addr>) -> Result<(), NetError> {
        let _serial = self.lock.lock().await;
        let name = &self.config.bridge;
        let handle = &self.host.handle;
        let index = link::index_of(handle, name).await?;
        let mut present = BTreeSet::new();
        for addr in link::ipv4_addrs(handle, index, name).await? {
            if addr.prefix != 32 {
                continue;
            }
            if ips.contains(&addr.ip) {
                present.insert(addr.ip);
            } else {
                debug!(ip = %addr.ip, "removing service IP");
                link::del_addr(handle, name, addr).await?;
            }
        }
        for ip in ips.difference(&present) {
            debug!(%ip, "adding service IP");
            link::add_addr(handle, index, name, *ip, 32).await?;
        }
        Ok(())
    }

    /// Makes exactly `routes` (pod CIDR → the node address it lives behind)
    /// present as our host-gw routes: replaces changed ones, removes ours that
    /// are no longer wanted, and leaves every other route alone.
    pub async fn set_node_routes(
        &self,
        routes: &std::collections::BTreeMap<Ipv4Net, Ipv4Addr>,
    ) -> Result<(), NetError> {
        use futures::TryStreamExt;
        use rtnetlink::packet_route::route::{
            RouteAddress, RouteAttribute, RouteMessage, RouteProtocol,
        };
        let handle = &self.host.handle;
        let mut listing = handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut present = BTreeSet::new();
        let mut stale: Vec<RouteMessage> = Vec::new();
        while let Some(msg) = listing
            .try_next()
            .await
            .map_err(netlink_err("list routes", "ipv4"))?
        {
            if u8::from(msg.header.protocol) != ROUTE_PROTOCOL {
                continue;
            }
            let addr = |want_gateway: bool| {
                msg.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) if !want_gateway => {
                        Some(*ip)
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) if want_gateway => Some(*ip),
                    _ => None,
                })
            };
            let net = addr(false)
                .and_then(|d| Ipv4Net::new(d, msg.header.destination_prefix_length).ok());
            match (net, addr(true)) {
                (Some(net), Some(gw)) if routes.get(&net) == Some(&gw) => {
                    present.insert(net);
                }
                _ => stale.push(msg),
            }
        }
        for msg in stale {
            debug!(?msg.header, "removing a host-gw route");
            handle
                .route()
                .del(msg)
                .execute()
                .await
                .map_err(netlink_err("delete route", "host-gw"))?;
        }
        for (net, gw) in routes {
            if present.contains(net) {
                continue;
            }
            info!(%net, via = %gw, "route to another node's pods");
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.addr(), net.prefix_len())
                .gateway(*gw)
                .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
                .build();
            handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(netlink_err("add route", format!("{net} via {gw}")))?;
        }
        Ok(())
    }

    /// Lets pods reach addresses outside `cluster_cidr` through the node's
    /// address (see [`masq`]). Installs once per agent run and CIDR; the
    /// install replaces whatever an earlier run left.
    pub async fn ensure_masquerade(&self, cluster_cidr: Ipv4Net) -> Result<(), NetError> {
        let mut installed = self.masquerade.lock().await;
        if *installed == Some(cluster_cidr) {
            return Ok(());
        }
        masq::install(&self.config.bridge, self.config.pod_cidr, cluster_cidr).await?;
        *installed = Some(cluster_cidr);
        Ok(())
    }

    /// Steers the Services that ask for the kernel path by nftables DNAT (see
    /// [`svcnat`]); the others are left to the proxy. Only a changed ruleset
    /// is written.
    pub async fn set_service_nat(
        &self,
        routes: &[crate::api::routing::ServiceRoute],
        node: &str,
    ) -> Result<(), NetError> {
        let wanted = svcnat::ruleset(&self.config.bridge, routes, node);
        let udp = svcnat::udp_endpoints(routes);
        let mut installed = self.service_nat.lock().await;
        if installed.as_ref() == Some(&wanted) {
            return Ok(());
        }
        match &wanted {
            Some(script) => {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
                    NetError::Nft {
                        op: "enable IPv4 forwarding",
                        reason: e.to_string(),
                    }
                })?;
                svcnat::install(&self.config.bridge, script).await?
            }
            None => svcnat::remove(&self.config.bridge).await?,
        }
        *installed = Some(wanted);
        // Only once the new rules are in: a datagram arriving in between is
        // DNATed by them, not by the old ones.
        let mut kernel_udp = self.kernel_udp.lock().await;
        for gone in kernel_udp.difference(&udp) {
            if let Err(e) = svcnat::forget_udp_flows(*gone).await {
                tracing::warn!(error = %e, "UDP flows to a removed endpoint stay until they time out");
            }
        }
        *kernel_udp = udp;
        Ok(())
    }

    /// Removes every pod namespace under `netns_dir`, every pod veth on the
    /// bridge, the masquerade table, and the bridge with its ClusterIPs. The
    /// network is unusable after; [`PodNetwork::new`] builds it again.
    pub async fn teardown_all(&self) -> Result<(), NetError> {
        self.set_node_routes(&Default::default()).await?;
        let _serial = self.lock.lock().await;
        masq::remove(&self.config.bridge, self.config.pod_cidr).await?;
        *self.masquerade.lock().await = None;
        svcnat::remove(&self.config.bridge).await?;
        *self.service_nat.lock().await = None;
        let dir = &self.config.netns_dir;
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|source| NetError::Netns {
                        op: "read directory",
                        path: dir.clone(),
                        source,
                    })?;
                    if let Some(uid) = entry.file_name().to_str() {
                        self.teardown_pod_locked(uid).await?;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetError::Netns {
                    op: "read directory",
                    path: dir.clone(),
                    source,
                });
            }
        }
        let handle = &self.host.handle;
        let name = &self.config.bridge;
        if let Some(bridge) = link::by_name(handle, name).await? {
            // Veths whose namespace file is already gone.
            for port in link::all(handle).await? {
                let port_name = link::name_of(&port).unwrap_or_default();
                if link::controller_of(&port) == Some(bridge.header.index)
                    && port_name.starts_with("bv")
                {
                    link::delete(handle, port_name).await?;
                }
            }
            link::delete(handle, name).await?;
            info!(bridge = %name, "bridge removed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_short_stable_and_distinct() {
        let host = host_veth_name("0b6c1f0e-2d9a-4d8e-9a57-1c1d5c0e7f11");
        assert_eq!(host.len(), 13);
        assert!(host.starts_with("bv"));
        assert!(host[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(host_veth_name("0b6c1f0e-2d9a-4d8e-9a57-1c1d5c0e7f11"), host);
        assert_ne!(host_veth_name("another-pod"), host);
    }

    #[test]
    fn config_validation_names_the_field() {
        let good = NetConfig {
            bridge: "bramble0".into(),
            pod_cidr: "10.88.0.0/24".parse().unwrap(),
            netns_dir: "/run/bramble/netns".into(),
        };
        assert_eq!(validate_config(&good).unwrap(), Ipv4Addr::new(10, 88, 0, 1));
        let long = NetConfig {
            bridge: "a-very-long-bridge".into(),
            ..good.clone()
        };
        assert!(matches!(
            validate_config(&long),
            Err(NetError::InvalidConfig {
                field: "bridge",
                ..
            })
        ));
        let tiny = NetConfig {
            pod_cidr: "10.88.0.0/31".parse().unwrap(),
            ..good
        };
        assert!(matches!(
            validate_config(&tiny),
            Err(NetError::InvalidConfig {
                field: "pod_cidr",
                ..
            })
        ));
    }

    #[test]
    fn pod_uids_must_be_file_names() {
        assert!(validate_uid("abc-123").is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(validate_uid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bridge_mac_is_unicast_and_local() {
        let mac = bridge_mac("bramble0");
        assert_eq!(mac.len(), 6);
        assert_eq!(mac[0] & 0x01, 0);
        assert_eq!(mac[0] & 0x02, 0x02);
        assert_eq!(mac, bridge_mac("bramble0"));
    }
}
