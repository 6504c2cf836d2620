//! What the master tells the workers, computed from a snapshot: each node's
//! assignment (its pods, without status) and the Service routing table.
//! Pure; `master::run` decides when to publish.

use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};

use crate::api::routing::{Protocol, RoutePort, ServiceRoute};
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

/// Every Service with a ClusterIP, each port with its ready endpoints.
pub fn service_routes(snap: &Snapshot) -> Vec<ServiceRoute> {
    let mut routes: Vec<ServiceRoute> = snap.services().filter_map(|s| route(snap, s)).collect();
    routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    routes
}

fn route(snap: &Snapshot, svc: &Service) -> Option<ServiceRoute> {
    let spec = svc.spec.as_ref()?;
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone()?;
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let terminating: std::collections::HashSet<&str> = snap
        .pods()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .filter_map(|p| p.metadata.uid.as_deref())
        .collect();
    let eps: Option<&Endpoints> = snap.endpoints().find(|e| {
        e.metadata.namespace.as_deref() == Some(ns.as_str())
            && e.metadata.name.as_deref() == Some(name.as_str())
    });
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let port_name = p.name.clone().unwrap_or_default();
            let proto = protocol(p.protocol.as_deref());
            let mut endpoints = Vec::new();
            for subset in eps.iter().flat_map(|e| e.subsets.iter().flatten()) {
                // Endpoint ports pair with Service ports by name, as kube-proxy does.
                let Some(ep_port) = subset.ports.iter().flatten().find(|ep| {
                    ep.name.clone().unwrap_or_default() == port_name
                        && protocol(ep.protocol.as_deref()) == proto
                }) else {
                    continue;
                };
                // A pod being deleted leaves the table in the same
                // publication that tells its node to stop it, so no new
                // connection reaches a container about to get SIGTERM.
                for addr in subset.addresses.iter().flatten().filter(|a| {
                    a.target_ref
                        .as_ref()
                        .and_then(|r| r.uid.as_deref())
                        .is_none_or(|uid| !terminating.contains(uid))
                }) {
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
    Some(ServiceRoute {
        namespace: ns,
        name,
        cluster_ip,
        ports,
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
