//! From Service routes to the listeners the proxy should hold: pure, so the
//! reconcile rules (what conflicts, what rebinds, what only swaps endpoints) are
//! tested without sockets.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::api::routing::{Protocol, ServiceRoute};

use super::ProxyError;
use super::backend::Policy;

/// One listening socket: the address and the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ListenKey {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

fn protocol_rank(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

impl Ord for ListenKey {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.addr, protocol_rank(self.protocol)).cmp(&(other.addr, protocol_rank(other.protocol)))
    }
}

impl PartialOrd for ListenKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One Service port; its ClusterIP and NodePort listeners share its endpoints
/// and its round-robin position.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BackendId {
    pub namespace: String,
    pub name: String,
    /// The Service port number: unique per protocol within a Service.
    pub port: u16,
    pub udp: bool,
    /// Only this node's endpoints (a `Local` traffic policy): the listeners
    /// under that policy share this backend, the others the full one.
    pub local: bool,
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        let local = if self.local { "/local" } else { "" };
        write!(
            f,
            "{}/{}:{}/{proto}{local}",
            self.namespace, self.name, self.port
        )
    }
}

/// What the routes ask for.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub listeners: BTreeMap<ListenKey, BackendId>,
    pub backends: BTreeMap<BackendId, (Vec<SocketAddrV4>, Policy)>,
    /// Ports that cannot be served; the rest of the plan stands without them.
    pub errors: Vec<ProxyError>,
}

/// Where each Service port listens: its ClusterIP, the NodePort on
/// `node_port_addr`, and for LoadBalancer Services the port itself on every
/// address of `lb_addrs`. A `Local` traffic policy (internal for the
/// ClusterIP, external for the NodePort and LoadBalancer addresses) gives
/// those listeners only the endpoints on `node`, none if it has none, as
/// kube-proxy does.
pub(crate) fn plan(
    routes: &[ServiceRoute],
    node_port_addr: IpAddr,
    lb_addrs: &[IpAddr],
    node: &str,
) -> Plan {
    let mut out = Plan::default();
    for route in routes {
        let policy = Policy {
            balance: route.balance,
            affinity: route
                .affinity_seconds
                .map(|s| Duration::from_secs(u64::from(s))),
        };
        for port in &route.ports {
            let id = |local: bool| BackendId {
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                port: port.port,
                udp: port.protocol == Protocol::Udp,
                local,
            };
            // Each address with whether it serves only local endpoints.
            let mut addrs = Vec::with_capacity(2);
            if let Some(ip) = route.cluster_ip {
                addrs.push((SocketAddr::new(ip.into(), port.port), route.internal_local));
            }
            if let Some(node_port) = port.node_port {
                addrs.push((
                    SocketAddr::new(node_port_addr, node_port),
                    route.external_local,
                ));
            }
            if route.load_balancer && route.cluster_ip.is_some() {
                addrs.extend(
                    lb_addrs
                        .iter()
                        .map(|ip| (SocketAddr::new(*ip, port.port), route.external_local)),
                );
            }
            for (addr, local) in addrs {
                let id = id(local);
                let key = ListenKey {
                    addr,
                    protocol: port.protocol,
                };
                match out.listeners.get(&key) {
                    Some(other) => out.errors.push(ProxyError::Conflict {
                        service: id.to_string(),
                        addr,
                        other: other.to_string(),
                    }),
                    None => {
                        out.listeners.insert(key, id.clone());
                        let endpoints = if local {
                            port.endpoints
                                .iter()
                                .filter(|e| route.on_node(e.ip(), node))
                                .copied()
                                .collect()
                        } else {
                            port.endpoints.clone()
                        };
                        out.backends.insert(id, (endpoints, policy));
                    }
                }
            }
        }
    }
    out
}

/// Listeners to close and to open so that `current` becomes `wanted`. A listener
/// whose address now belongs to another Service port is closed and opened again;
/// one that keeps its Service port stays bound (its endpoints are swapped).
pub(crate) fn diff(
    current: &BTreeMap<ListenKey, BackendId>,
    wanted: &BTreeMap<ListenKey, BackendId>,
) -> (Vec<ListenKey>, Vec<ListenKey>) {
    let close = current
        .iter()
        .filter(|(key, id)| wanted.get(key) != Some(id))
        .map(|(key, _)| *key)
        .collect();
    let open = wanted
        .iter()
        .filter(|(key, id)| current.get(key) != Some(id))
        .map(|(key, _)| *key)
        .collect();
    (close, open)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::api::routing::RoutePort;

    fn port(port: u16, node_port: Option<u16>, endpoints: &[&str]) -> RoutePort {
        RoutePort {
            name: format!("p{port}"),
            protocol: Protocol::Tcp,
            port,
            node_port,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn route(name: &str, cluster_ip: Option<[u8; 4]>, ports: Vec<RoutePort>) -> ServiceRoute {
        ServiceRoute {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: cluster_ip.map(Ipv4Addr::from),
            ports,
            ..Default::default()
        }
    }

    fn key(addr: &str) -> ListenKey {
        ListenKey {
            addr: addr.parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

    #[test]
    fn cluster_ip_and_node_port_share_one_backend() {
        let routes = [route(
            "web",
            Some([10, 96, 0, 10]),
            vec![port(80, Some(30080), &["10.88.0.2:8080", "10.88.0.3:8080"])],
        )];
        let plan = plan(&routes, ANY, &[], "n1");
        assert!(plan.errors.is_empty());
        let keys: Vec<_> = plan.listeners.keys().copied().collect();
        assert_eq!(keys, vec![key("0.0.0.0:30080"), key("10.96.0.10:80")]);
        let ids: Vec<_> = plan.listeners.values().collect();
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[0].to_string(), "default/web:80/tcp");
        assert_eq!(plan.backends[ids[0]].0.len(), 2);
    }

    #[test]
    fn headless_without_node_port_listens_nowhere() {
        let routes = [route(
            "db",
            None,
            vec![port(5432, None, &["10.88.0.2:5432"])],
        )];
        let plan = plan(&routes, ANY, &[], "n1");
        assert!(plan.listeners.is_empty() && plan.backends.is_empty() && plan.errors.is_empty());
    }

    #[test]
    fn second_claim_on_an_address_is_a_conflict_and_the_first_keeps_it() {
        let routes = [
            route("a", Some([10, 96, 0, 10]), vec![port(80, Some(30080), &[])]),
            route("b", Some([10, 96, 0, 10]), vec![port(80, None, &[])]),
            route("c", Some([10, 96, 0, 11]), vec![port(80, Some(30080), &[])]),
        ];
        let plan = plan(&routes, ANY, &[], "n1");
        assert_eq!(plan.errors.len(), 2);
        assert!(
            matches!(&plan.errors[0], ProxyError::Conflict { service, other, .. }
                if service == "default/b:80/tcp" && other == "default/a:80/tcp")
        );
        assert_eq!(plan.listeners[&key("10.96.0.10:80")].name, "a");
        assert_eq!(plan.listeners[&key("10.96.0.11:80")].name, "c");
        assert_eq!(plan.listeners[&key("0.0.0.0:30080")].name, "a");
        // b got no listener at all, so it has no backend either.
        assert!(plan.backends.keys().all(|id| id.name != "b"));
    }

    #[test]
    fn udp_and_tcp_on_one_port_are_two_listeners() {
        let mut udp = port(53, None, &["10.88.0.2:53"]);
        udp.protocol = Protocol::Udp;
        let routes = [route(
            "dns",
            Some([10, 96, 0, 53]),
            vec![udp, port(53, None, &[])],
        )];
        let plan = plan(&routes, ANY, &[], "n1");
        assert!(plan.errors.is_empty());
        assert_eq!(plan.listeners.len(), 2);
        assert_eq!(plan.backends.len(), 2);
        let ids: Vec<String> = plan.backends.keys().map(|id| id.to_string()).collect();
        assert_eq!(ids, vec!["default/dns:53/tcp", "default/dns:53/udp"]);
    }

    #[test]
    fn load_balancer_ports_listen_on_every_node_address() {
        let mut lb = route(
            "web",
            Some([10, 96, 0, 10]),
            vec![port(80, Some(30080), &["10.88.0.2:8080"])],
        );
        lb.load_balancer = true;
        lb.affinity_seconds = Some(30);
        let node_ips = [
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9)),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ];
        let plan = plan(&[lb], ANY, &node_ips, "n1");
        assert!(plan.errors.is_empty());
        let keys: Vec<_> = plan.listeners.keys().copied().collect();
        assert_eq!(
            keys,
            vec![
                key("0.0.0.0:30080"),
                key("10.96.0.10:80"),
                key("127.0.0.1:80"),
                key("192.168.1.9:80")
            ]
        );
        let (_, policy) = plan.backends.values().next().unwrap();
        assert_eq!(policy.affinity, Some(Duration::from_secs(30)));
    }

    #[test]
    fn local_traffic_policies_keep_traffic_on_the_node() {
        let mut r = route(
            "web",
            Some([10, 96, 0, 10]),
            vec![port(
                80,
                Some(30080),
                &["10.88.0.2:8080", "10.88.1.2:8080", "10.88.2.2:8080"],
            )],
        );
        r.load_balancer = true;
        r.endpoint_nodes = vec![
            (Ipv4Addr::new(10, 88, 0, 2), "n1".into()),
            (Ipv4Addr::new(10, 88, 1, 2), "n2".into()),
        ];
        let lb_ip = [IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9))];
        let endpoints = |plan: &Plan, addr: &str| -> Vec<String> {
            let id = &plan.listeners[&key(addr)];
            plan.backends[id].0.iter().map(|e| e.to_string()).collect()
        };
        let all = ["10.88.0.2:8080", "10.88.1.2:8080", "10.88.2.2:8080"];
        // Cluster (the default): every listener, every endpoint, one backend.
        let p = plan(std::slice::from_ref(&r), ANY, &lb_ip, "n1");
        assert_eq!(p.backends.len(), 1);
        for addr in ["10.96.0.10:80", "0.0.0.0:30080", "192.168.1.9:80"] {
            assert_eq!(endpoints(&p, addr), all, "{addr}");
        }
        // internalTrafficPolicy: Local: the ClusterIP only to n1's endpoint;
        // NodePort and LoadBalancer still to all.
        r.internal_local = true;
        let p = plan(std::slice::from_ref(&r), ANY, &lb_ip, "n1");
        assert!(p.errors.is_empty());
        assert_eq!(endpoints(&p, "10.96.0.10:80"), ["10.88.0.2:8080"]);
        assert_eq!(endpoints(&p, "0.0.0.0:30080"), all);
        assert_eq!(endpoints(&p, "192.168.1.9:80"), all);
        assert_eq!(
            p.listeners[&key("10.96.0.10:80")].to_string(),
            "default/web:80/tcp/local"
        );
        // On n2, n2's; on a node without endpoints, none (not the others').
        let p = plan(std::slice::from_ref(&r), ANY, &lb_ip, "n2");
        assert_eq!(endpoints(&p, "10.96.0.10:80"), ["10.88.1.2:8080"]);
        let p = plan(std::slice::from_ref(&r), ANY, &lb_ip, "n3");
        assert!(endpoints(&p, "10.96.0.10:80").is_empty());
        // externalTrafficPolicy: Local: the other way round.
        r.internal_local = false;
        r.external_local = true;
        let p = plan(std::slice::from_ref(&r), ANY, &lb_ip, "n2");
        assert_eq!(endpoints(&p, "10.96.0.10:80"), all);
        assert_eq!(endpoints(&p, "0.0.0.0:30080"), ["10.88.1.2:8080"]);
        assert_eq!(endpoints(&p, "192.168.1.9:80"), ["10.88.1.2:8080"]);
        // The NodePort and LoadBalancer listeners share one local backend.
        assert_eq!(p.backends.len(), 2);
    }

    #[test]
    fn diff_keeps_same_backend_and_rebinds_changed_ones() {
        let before = plan(
            &[
                route(
                    "a",
                    Some([10, 96, 0, 10]),
                    vec![port(80, Some(30080), &["10.88.0.2:80"])],
                ),
                route("b", Some([10, 96, 0, 11]), vec![port(80, None, &[])]),
            ],
            ANY,
            &[],
            "n1",
        );
        let after = plan(
            &[
                // Endpoints changed, ClusterIP kept, NodePort moved.
                route(
                    "a",
                    Some([10, 96, 0, 10]),
                    vec![port(80, Some(30081), &["10.88.0.3:80"])],
                ),
                // The address now belongs to another Service.
                route("c", Some([10, 96, 0, 11]), vec![port(80, None, &[])]),
            ],
            ANY,
            &[],
            "n1",
        );
        let (close, open) = diff(&before.listeners, &after.listeners);
        assert_eq!(close, vec![key("0.0.0.0:30080"), key("10.96.0.11:80")]);
        assert_eq!(open, vec![key("0.0.0.0:30081"), key("10.96.0.11:80")]);
        let (close, open) = diff(&after.listeners, &after.listeners);
        assert!(close.is_empty() && open.is_empty());
    }
}
