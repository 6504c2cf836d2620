//! LoadBalancer status, the way k3s's ServiceLB does it for home labs: every
//! node serves a LoadBalancer Service's ports on its own addresses (the proxy
//! does that), so `status.loadBalancer.ingress` lists the Ready nodes'
//! InternalIPs (all nodes' while none is Ready). A Service that is no longer a
//! LoadBalancer loses the status.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};

use super::{Action, Snapshot, node_ready};
use crate::api::Object;

fn internal_ips<'a>(nodes: impl Iterator<Item = &'a crate::api::Node>) -> BTreeSet<String> {
    nodes
        .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .collect()
}

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut ips = internal_ips(snap.nodes().filter(|n| node_ready(n)));
    if ips.is_empty() {
        ips = internal_ips(snap.nodes());
    }
    // Sorted as IPs, not as strings: 10.0.0.9 before 10.0.0.10.
    let mut ips: Vec<String> = ips.into_iter().collect();
    ips.sort_by_key(|ip| ip.parse::<std::net::Ipv4Addr>().map(u32::from).ok());
    let mut out = Vec::new();
    for svc in snap.services() {
        let lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
        let wanted = lb.then(|| LoadBalancerStatus {
            ingress: Some(
                ips.iter()
                    .map(|ip| LoadBalancerIngress {
                        ip: Some(ip.clone()),
                        ip_mode: Some("VIP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        });
        let have = svc.status.as_ref().and_then(|s| s.load_balancer.clone());
        let have = have.filter(|s| s != &LoadBalancerStatus::default());
        if have == wanted {
            continue;
        }
        let mut updated: Service = svc.clone();
        let status = updated.status.get_or_insert_with(ServiceStatus::default);
        status.load_balancer = wanted;
        out.push(Action::Update(Object::Service(updated)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::core::v1::NodeAddress;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn node_at(name: &str, ip: &str, ready: bool) -> crate::api::Node {
        let mut n = node(name, ready);
        n.status
            .get_or_insert_with(Default::default)
            .addresses
            .get_or_insert_with(Vec::new)
            .push(NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            });
        n
    }

    #[test]
    fn ingress_lists_ready_nodes_and_is_cleared_when_no_longer_lb() {
        let mut lb = service("web", "default", "web", 80, IntOrString::Int(80));
        lb.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        let plain = service("plain", "default", "web", 80, IntOrString::Int(80));
        let snap = snapshot(vec![
            Object::Node(node_at("b", "192.168.1.10", true)),
            Object::Node(node_at("a", "192.168.1.9", true)),
            Object::Node(node_at("c", "192.168.1.11", false)),
            Object::Service(lb),
            Object::Service(plain),
        ]);
        let actions = reconcile(&snap);
        assert_eq!(actions.len(), 1, "{actions:?}");
        let Action::Update(Object::Service(s)) = &actions[0] else {
            panic!("{actions:?}")
        };
        let ingress = s.status.as_ref().unwrap().load_balancer.as_ref().unwrap();
        let ips: Vec<_> = ingress
            .ingress
            .iter()
            .flatten()
            .map(|i| i.ip.clone().unwrap())
            .collect();
        assert_eq!(ips, vec!["192.168.1.9", "192.168.1.10"]);

        // Applied: nothing more to do. Turned into a ClusterIP: status cleared.
        let mut done = s.clone();
        let again = snapshot(vec![
            Object::Node(node_at("a", "192.168.1.9", true)),
            Object::Node(node_at("b", "192.168.1.10", true)),
            Object::Service(done.clone()),
        ]);
        assert!(reconcile(&again).is_empty());
        done.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        let actions = reconcile(&snapshot(vec![Object::Service(done)]));
        let Action::Update(Object::Service(s)) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(s.status.as_ref().unwrap().load_balancer, None);
    }
}
