//! What the master tells the workers, computed from a snapshot: each node's
//! assignment (its pods, without status) and the Service routing table.
//! Pure; `master::run` decides when to publish.

use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};

use crate::api::routing::{
    BALANCE_ANNOTATION, Balance, DEFAULT_AFFINITY_SECONDS, DnsAddress, Protocol, RoutePort,
    ServiceRoute,
};
use crate::master::controllers::Snapshot;

/// The pods bound to `node`, stripped of what the worker does not need and
/// what changes without the desired state changing (status, resourceVersion),
/// so that a status report does not cause a republish.
pub fn assignment_pods(snap: &Snapshot, node: &str) -> Vec<Pod> {
    let mut pods: Vec<Pod> = snap
        .pods()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .map(|p| {
            let mut p = p.clone();
            p.status = None;
            p.metadata.resource_version = None;
            p.metadata.managed_fields = None;
            p
        })
        .collect();
    pods.sort_by(|a, b| a.metadata.uid.cmp(&b.metadata.uid));
    pods
}

fn protocol(p: Option<&str>) -> Protocol {
    match p {
        Some("UDP") => Protocol::Udp,
        _ => Protocol::Tcp,
    }
}

/// Every Service, each port with its ready endpoints, and what DNS needs.
pub fn service_routes(snap: &Snapshot) -> Vec<ServiceRoute> {
    let mut routes: Vec<ServiceRoute> = snap.services().filter_map(|s| route(snap, s)).collect();
    routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    routes
}

fn route(snap: &Snapshot, svc: &Service) -> Option<ServiceRoute> {
    let spec = svc.spec.as_ref()?;
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone()?;
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let external_name = (type_ == "ExternalName")
        .then(|| spec.external_name.clone())
        .flatten()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let headless = external_name.is_none() && spec.cluster_ip.as_deref() == Some("None");
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        .filter(|_| external_name.is_none());
    let eps: Option<&Endpoints> = snap.endpoints().find(|e| {
        e.metadata.namespace.as_deref() == Some(ns.as_str())
            && e.metadata.name.as_deref() == Some(name.as_str())
    });
    let subsets = || eps.iter().flat_map(|e| e.subsets.iter().flatten());
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let port_name = p.name.clone().unwrap_or_default();
            let proto = protocol(p.protocol.as_deref());
            let mut endpoints = Vec::new();
            for subset in subsets() {
                // Endpoint ports pair with Service ports by name, as kube-proxy does.
                let Some(ep_port) = subset.ports.iter().flatten().find(|ep| {
                    ep.name.clone().unwrap_or_default() == port_name
                        && protocol(ep.protocol.as_deref()) == proto
                }) else {
                    continue;
                };
                for addr in subset.addresses.iter().flatten() {
                    if let (Ok(ip), Ok(port)) =
                        (addr.ip.parse::<Ipv4Addr>(), u16::try_from(ep_port.port))
                    {
                        endpoints.push(SocketAddrV4::new(ip, port));
                    }
                }
            }
            endpoints.sort();
            endpoints.dedup();
            RoutePort {
                name: port_name,
                protocol: proto,
                port: u16::try_from(p.port).unwrap_or(0),
                node_port: p
                    .node_port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != 0),
                endpoints,
            }
        })
        .collect();
    let mut addresses: Vec<DnsAddress> = subsets()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| {
            Some(DnsAddress {
                ip: a.ip.parse().ok()?,
                hostname: a.hostname.clone().filter(|h| !h.is_empty()),
            })
        })
        .collect();
    addresses.sort();
    addresses.dedup_by(|a, b| a.ip == b.ip);
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let balance = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BALANCE_ANNOTATION))
        .and_then(|v| Balance::parse(v))
        .unwrap_or_default();
    Some(ServiceRoute {
        namespace: ns,
        name,
        cluster_ip,
        headless,
        external_name,
        load_balancer: type_ == "LoadBalancer",
        affinity_seconds,
        balance,
        ports,
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Object;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn routes_pair_ports_by_name_and_keep_only_ready() {
        let mut svc = service("web", "default", "web", 80, IntOrString::Int(8080));
        svc.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.5".into());
        svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(30080);
        let ep = Endpoints {
            metadata: meta("web", "default"),
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![EndpointAddress {
                    ip: "10.88.0.3".into(),
                    ..Default::default()
                }]),
                not_ready_addresses: Some(vec![EndpointAddress {
                    ip: "10.88.0.4".into(),
                    ..Default::default()
                }]),
                ports: Some(vec![EndpointPort {
                    port: 8080,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
        };
        let snap = snapshot(vec![Object::Service(svc), Object::Endpoints(ep)]);
        let routes = service_routes(&snap);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 5)));
        assert_eq!(routes[0].ports[0].node_port, Some(30080));
        assert_eq!(
            routes[0].ports[0].endpoints,
            vec!["10.88.0.3:8080".parse().unwrap()]
        );
    }

    #[test]
    fn route_kinds_affinity_balance_and_dns_addresses() {
        let mut lb = service("lb", "default", "web", 80, IntOrString::Int(8080));
        lb.metadata.annotations = Some(
            [(
                BALANCE_ANNOTATION.to_string(),
                "least-connections".to_string(),
            )]
            .into(),
        );
        let spec = lb.spec.as_mut().unwrap();
        spec.type_ = Some("LoadBalancer".into());
        spec.cluster_ip = Some("10.96.0.7".into());
        spec.session_affinity = Some("ClientIP".into());
        let mut headless = service("db", "default", "web", 5432, IntOrString::Int(5432));
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let mut ext = service("ext", "default", "web", 80, IntOrString::Int(80));
        let spec = ext.spec.as_mut().unwrap();
        spec.type_ = Some("ExternalName".into());
        spec.external_name = Some("Example.ORG.".into());
        spec.selector = None;
        let ep = Endpoints {
            metadata: meta("db", "default"),
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![
                    EndpointAddress {
                        ip: "10.88.0.9".into(),
                        hostname: Some("db-1".into()),
                        ..Default::default()
                    },
                    EndpointAddress {
                        ip: "10.88.0.8".into(),
                        ..Default::default()
                    },
                ]),
                not_ready_addresses: None,
                ports: Some(vec![EndpointPort {
                    port: 5432,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
        };
        let routes = service_routes(&snapshot(vec![
            Object::Service(lb),
            Object::Service(headless),
            Object::Service(ext),
            Object::Endpoints(ep),
        ]));
        let by = |n: &str| routes.iter().find(|r| r.name == n).unwrap();
        let lb = by("lb");
        assert!(lb.load_balancer && !lb.headless);
        assert_eq!(lb.affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
        assert_eq!(lb.balance, Balance::LeastConnections);
        let db = by("db");
        assert!(db.headless && db.cluster_ip.is_none());
        assert_eq!(db.ports[0].endpoints.len(), 2);
        assert_eq!(
            db.addresses,
            vec![
                DnsAddress {
                    ip: "10.88.0.8".parse().unwrap(),
                    hostname: None
                },
                DnsAddress {
                    ip: "10.88.0.9".parse().unwrap(),
                    hostname: Some("db-1".into())
                },
            ]
        );
        let ext = by("ext");
        assert_eq!(ext.external_name.as_deref(), Some("example.org"));
        assert!(!ext.headless && ext.cluster_ip.is_none());
    }

    #[test]
    fn assignment_ignores_status_changes() {
        let rs = replicaset("web-abc", "default", 1);
        let a = owned_pod("a", &rs, Some("n1"), false);
        let mut b = a.clone();
        b.status.as_mut().unwrap().phase = Some("Running".into());
        b.metadata.resource_version = Some("99".into());
        let one = assignment_pods(&snapshot(vec![Object::Pod(a)]), "n1");
        let two = assignment_pods(&snapshot(vec![Object::Pod(b)]), "n1");
        assert_eq!(one.len(), 1);
        assert_eq!(one, two);
        assert!(assignment_pods(&snapshot(vec![]), "n1").is_empty());
    }
}
