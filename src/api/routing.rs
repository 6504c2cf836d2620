//! Service routes: what every node's proxy and cluster DNS need to know, derived
//! from Service and Endpoints objects. Pure data and pure functions over it; the
//! master computes the routes, the wire carries them, the proxy, the DNS server
//! and the worker's container setup consume them.

use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// As Kubernetes spells it (`TCP`, `UDP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// How a Service port spreads new connections (and UDP flows) over its
/// endpoints. Chosen per Service with [`BALANCE_ANNOTATION`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

/// Service annotation choosing the balancing: `round-robin` (the default) or
/// `least-connections`.
pub const BALANCE_ANNOTATION: &str = "bramble.io/load-balancing";

impl Balance {
    /// The annotation's value, or `None` when it names no policy.
    pub fn parse(value: &str) -> Option<Balance> {
        match value {
            "round-robin" => Some(Balance::RoundRobin),
            "least-connections" => Some(Balance::LeastConnections),
            _ => None,
        }
    }
}

/// Where a Service's packets are steered. Chosen per Service with
/// [`PROXY_MODE_ANNOTATION`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProxyMode {
    /// The agent's L4 proxy: every policy, a retry on a refused connect.
    #[default]
    Userspace,
    /// nftables DNAT on each node (round-robin only): the kernel forwards
    /// the packets, so throughput is that of the direct path; a refused
    /// connect reaches the client as a refusal.
    Kernel,
}

/// Service annotation choosing the data path: `userspace` (the default) or
/// `kernel`.
pub const PROXY_MODE_ANNOTATION: &str = "bramble.io/proxy-mode";

impl ProxyMode {
    /// The annotation's value, or `None` when it names no mode.
    pub fn parse(value: &str) -> Option<ProxyMode> {
        match value {
            "userspace" => Some(ProxyMode::Userspace),
            "kernel" => Some(ProxyMode::Kernel),
            _ => None,
        }
    }
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// One Service as the proxy and the DNS server see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoute {
    pub namespace: String,
    pub name: String,
    /// `None` for headless and ExternalName Services (nothing to listen on).
    pub cluster_ip: Option<Ipv4Addr>,
    /// `clusterIP: None`: DNS answers with the endpoints' own addresses.
    #[serde(default)]
    pub headless: bool,
    /// `type: ExternalName`: DNS answers with a CNAME to this name.
    #[serde(default)]
    pub external_name: Option<String>,
    /// `type: LoadBalancer`: each port is also served on every node address.
    #[serde(default)]
    pub load_balancer: bool,
    /// `sessionAffinity: ClientIP`: a client IP sticks to one endpoint for
    /// this many seconds of inactivity.
    #[serde(default)]
    pub affinity_seconds: Option<u32>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub mode: ProxyMode,
    /// `internalTrafficPolicy: Local`: a node's proxy sends ClusterIP traffic
    /// only to the endpoints on that node.
    #[serde(default)]
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` (NodePort, LoadBalancer): NodePort and
    /// LoadBalancer traffic only to the endpoints on the node it arrives at.
    #[serde(default)]
    pub external_local: bool,
    /// The node of each endpoint address (Endpoints' `nodeName`), sorted by
    /// address; filled only for Services with a `Local` policy.
    #[serde(default)]
    pub endpoint_nodes: Vec<(Ipv4Addr, String)>,
    pub ports: Vec<RoutePort>,
    /// The endpoint addresses DNS publishes (for headless Services): ready
    /// ones, or all with `publishNotReadyAddresses`, sorted by IP.
    #[serde(default)]
    pub addresses: Vec<DnsAddress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePort {
    pub name: String,
    pub protocol: Protocol,
    /// The Service port, listened on at the ClusterIP (and, for LoadBalancer
    /// Services, at every node address).
    pub port: u16,
    /// Listened on at every node address, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// Ready endpoints only, in a stable order; round-robin walks this list.
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServiceRoute {
    /// Whether endpoint address `ip` is on `node`, by [`Self::endpoint_nodes`].
    pub fn on_node(&self, ip: &Ipv4Addr, node: &str) -> bool {
        self.endpoint_nodes
            .binary_search_by(|(a, _)| a.cmp(ip))
            .is_ok_and(|i| self.endpoint_nodes[i].1 == node)
    }
}

/// An endpoint address as DNS names it: `<hostname>.<svc>.<ns>.svc.<domain>`
/// when the pod has a hostname (StatefulSet pods, or `hostname` + `subdomain`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DnsAddress {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// What every node needs to know about the cluster's network besides the
/// Services: where the cluster DNS is and what it serves, and which addresses
/// are pods (never masqueraded).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    pub cluster_cidr: Option<Ipv4Net>,
    pub service_cidr: Option<Ipv4Net>,
    /// The cluster DNS address (a reserved ClusterIP), bound on every node.
    pub dns_ip: Option<Ipv4Addr>,
    /// `cluster.local` unless configured otherwise.
    pub domain: String,
    /// Every node's pod CIDR and address: each worker routes the others'
    /// pod CIDRs through their addresses (host-gw).
    #[serde(default)]
    pub nodes: Vec<NodeRoute>,
    /// The master's registry mirror, `host:port` (an empty or unspecified
    /// host means the host of the broker the node reaches the master
    /// through); `None` when the master serves none.
    #[serde(default)]
    pub registry_mirror: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeRoute {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub address: Ipv4Addr,
}

/// The default cluster domain, as in Kubernetes.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The cluster DNS address of a service CIDR: its tenth address (kube-dns's
/// `.10`). `None` when the CIDR is too small to hold it below its broadcast.
pub fn cluster_dns_ip(service_cidr: Ipv4Net) -> Option<Ipv4Addr> {
    let ip = u32::from(service_cidr.network()).checked_add(10)?;
    (ip < u32::from(service_cidr.broadcast())).then(|| Ipv4Addr::from(ip))
}

/// A Service name as an environment variable prefix: upper case, `-` → `_`.
fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The variables the kubelet gives every container for the Services of its
/// namespace that have a ClusterIP (headless and ExternalName ones have none):
/// `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<PORT NAME>]` and the docker-link
/// style `<SVC>_PORT`, `<SVC>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`.
/// Services come in name order; the container's own `env` is applied after
/// these and wins.
pub fn service_env(routes: &[ServiceRoute], namespace: &str) -> Vec<(String, String)> {
    let mut services: Vec<&ServiceRoute> = routes
        .iter()
        .filter(|r| r.namespace == namespace && !r.headless && r.external_name.is_none())
        .filter(|r| r.cluster_ip.is_some())
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut env = Vec::new();
    for route in services {
        let Some(ip) = route.cluster_ip else { continue };
        let svc = env_name(&route.name);
        env.push((format!("{svc}_SERVICE_HOST"), ip.to_string()));
        let Some(first) = route.ports.first() else {
            continue;
        };
        env.push((format!("{svc}_SERVICE_PORT"), first.port.to_string()));
        for p in route.ports.iter().filter(|p| !p.name.is_empty()) {
            env.push((
                format!("{svc}_SERVICE_PORT_{}", env_name(&p.name)),
                p.port.to_string(),
            ));
        }
        let url = |p: &RoutePort| {
            format!(
                "{}://{ip}:{}",
                p.protocol.as_str().to_ascii_lowercase(),
                p.port
            )
        };
        env.push((format!("{svc}_PORT"), url(first)));
        for p in &route.ports {
            let proto = p.protocol.as_str();
            let prefix = format!("{svc}_PORT_{}_{proto}", p.port);
            env.push((prefix.clone(), url(p)));
            env.push((format!("{prefix}_PROTO"), proto.to_ascii_lowercase()));
            env.push((format!("{prefix}_PORT"), p.port.to_string()));
            env.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, protocol: Protocol, port: u16) -> RoutePort {
        RoutePort {
            name: name.into(),
            protocol,
            port,
            ..Default::default()
        }
    }

    #[test]
    fn dns_ip_is_the_tenth_address() {
        let ip = |s: &str| cluster_dns_ip(s.parse().unwrap());
        assert_eq!(ip("10.96.0.0/16"), Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(ip("10.5.128.0/24"), Some(Ipv4Addr::new(10, 5, 128, 10)));
        assert_eq!(ip("10.96.0.0/28"), Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(ip("10.96.0.0/29"), None);
    }

    #[test]
    fn env_like_the_kubelet() {
        let routes = vec![
            ServiceRoute {
                namespace: "default".into(),
                name: "redis-primary".into(),
                cluster_ip: Some(Ipv4Addr::new(10, 0, 0, 11)),
                ports: vec![port("", Protocol::Tcp, 6379)],
                ..Default::default()
            },
            ServiceRoute {
                namespace: "default".into(),
                name: "dns".into(),
                cluster_ip: Some(Ipv4Addr::new(10, 0, 0, 12)),
                ports: vec![
                    port("udp", Protocol::Udp, 53),
                    port("tcp", Protocol::Tcp, 53),
                ],
                ..Default::default()
            },
            ServiceRoute {
                namespace: "default".into(),
                name: "headless".into(),
                headless: true,
                ports: vec![port("", Protocol::Tcp, 80)],
                ..Default::default()
            },
            ServiceRoute {
                namespace: "other".into(),
                name: "elsewhere".into(),
                cluster_ip: Some(Ipv4Addr::new(10, 0, 0, 13)),
                ports: vec![port("", Protocol::Tcp, 80)],
                ..Default::default()
            },
        ];
        let env = service_env(&routes, "default");
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("REDIS_PRIMARY_SERVICE_HOST"), Some("10.0.0.11"));
        assert_eq!(get("REDIS_PRIMARY_SERVICE_PORT"), Some("6379"));
        assert_eq!(get("REDIS_PRIMARY_PORT"), Some("tcp://10.0.0.11:6379"));
        assert_eq!(
            get("REDIS_PRIMARY_PORT_6379_TCP"),
            Some("tcp://10.0.0.11:6379")
        );
        assert_eq!(get("REDIS_PRIMARY_PORT_6379_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("REDIS_PRIMARY_PORT_6379_TCP_PORT"), Some("6379"));
        assert_eq!(get("REDIS_PRIMARY_PORT_6379_TCP_ADDR"), Some("10.0.0.11"));
        assert_eq!(get("DNS_SERVICE_PORT"), Some("53"));
        assert_eq!(get("DNS_SERVICE_PORT_UDP"), Some("53"));
        assert_eq!(get("DNS_SERVICE_PORT_TCP"), Some("53"));
        assert_eq!(get("DNS_PORT"), Some("udp://10.0.0.12:53"));
        assert_eq!(get("DNS_PORT_53_UDP_PROTO"), Some("udp"));
        assert_eq!(get("DNS_PORT_53_TCP"), Some("tcp://10.0.0.12:53"));
        assert!(get("HEADLESS_SERVICE_HOST").is_none());
        assert!(get("ELSEWHERE_SERVICE_HOST").is_none());
        // Name order: dns before redis-primary.
        assert_eq!(env[0].0, "DNS_SERVICE_HOST");
    }

    #[test]
    fn balance_annotation_values() {
        assert_eq!(
            Balance::parse("least-connections"),
            Some(Balance::LeastConnections)
        );
        assert_eq!(Balance::parse("round-robin"), Some(Balance::RoundRobin));
        assert_eq!(Balance::parse("random"), None);
    }
}
