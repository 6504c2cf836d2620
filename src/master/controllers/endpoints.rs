//! Endpoints controller: for every Service with a selector, an Endpoints object
//! of the same name listing the matching pods' IPs and target ports, ready pods
//! under `addresses`, the others under `notReadyAddresses` (all under
//! `addresses` with `publishNotReadyAddresses`). A pod whose `subdomain` names
//! the Service gets its `hostname` on its address, which is what DNS publishes
//! as `<hostname>.<svc>.<ns>.svc.<domain>` (StatefulSet pods). Services without
//! a selector keep the Endpoints their user writes; ExternalName Services have
//! none.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Action, Snapshot, is_ready, is_terminating, rv};
use crate::api::selector::Selector;
use crate::api::{Kind, Object, ObjectKey};

/// Marks Endpoints this controller owns (so it never deletes a user's).
pub const MANAGED_LABEL: &str = "endpoints.bramble.io/managed";

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut out = Vec::new();
    let existing: BTreeMap<(String, String), &Endpoints> = snap
        .endpoints()
        .map(|e| {
            (
                (
                    e.metadata.namespace.clone().unwrap_or_default(),
                    e.metadata.name.clone().unwrap_or_default(),
                ),
                e,
            )
        })
        .collect();
    let mut wanted = std::collections::BTreeSet::new();
    for svc in snap.services() {
        let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            continue;
        };
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        if selector.is_empty() {
            continue;
        }
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        wanted.insert((ns.clone(), name.clone()));
        let sel = Selector::from_map(selector);
        let pods: Vec<&Pod> = snap
            .pods()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|p| !is_terminating(p))
            .filter(|p| sel.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
            .collect();
        let subsets = subsets_for(svc, &pods);
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        labels.insert(MANAGED_LABEL.into(), "true".into());
        match existing.get(&(ns.clone(), name.clone())) {
            Some(e) => {
                let mut updated = (*e).clone();
                updated.subsets = subsets;
                updated.metadata.labels = Some(labels);
                if &updated != *e {
                    out.push(Action::Update(Object::Endpoints(updated)));
                }
            }
            None => out.push(Action::Create(Object::Endpoints(Endpoints {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns),
                    labels: Some(labels),
                    ..Default::default()
                },
                subsets,
            }))),
        }
    }
    for ((ns, name), e) in existing {
        let managed = e
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(MANAGED_LABEL));
        if managed && !wanted.contains(&(ns.clone(), name.clone())) {
            out.push(Action::Delete {
                key: ObjectKey::new(Kind::Endpoints, &ns, &name),
                resource_version: rv(&e.metadata),
            });
        }
    }
    out
}

/// The container port named `name` in the pod, as Kubernetes resolves a named
/// targetPort.
fn named_port(pod: &Pod, name: &str) -> Option<(i32, String)> {
    pod.spec.as_ref()?.containers.iter().find_map(|c| {
        c.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref() == Some(name)).then(|| {
                (
                    p.container_port,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            })
        })
    })
}

/// Groups pods by the ports they resolve to, one subset per distinct set, as
/// the Kubernetes endpoints controller does.
fn subsets_for(svc: &Service, pods: &[&Pod]) -> Option<Vec<EndpointSubset>> {
    let spec = svc.spec.as_ref()?;
    let ports = spec.ports.clone().unwrap_or_default();
    // A headless Service without ports still publishes its pods' addresses.
    let portless = ports.is_empty() && spec.cluster_ip.as_deref() == Some("None");
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    // Resolved (name, port, protocol) per Service port → (ready, not ready).
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Group> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let mut resolved = Vec::new();
        for p in &ports {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let target = match &p.target_port {
                None => Some((p.port, protocol.clone())),
                Some(IntOrString::Int(n)) => Some((*n, protocol.clone())),
                Some(IntOrString::String(s)) => named_port(pod, s),
            };
            if let Some((port, proto)) = target {
                resolved.push((p.name.clone().unwrap_or_default(), port, proto));
            }
        }
        if resolved.is_empty() && !portless {
            continue;
        }
        let pod_spec = pod.spec.as_ref();
        let hostname = pod_spec
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty())
            .filter(|_| {
                pod_spec.and_then(|s| s.subdomain.as_deref()) == svc.metadata.name.as_deref()
            });
        let address = EndpointAddress {
            ip,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            hostname,
        };
        let entry = groups.entry(resolved).or_default();
        if publish_not_ready || is_ready(pod) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    if groups.is_empty() {
        return None;
    }
    let by_ip = |a: &EndpointAddress| {
        a.ip.parse::<std::net::Ipv4Addr>()
            .map(u32::from)
            .unwrap_or(u32::MAX)
    };
    Some(
        groups
            .into_iter()
            .map(|(ports, (mut ready, mut not_ready))| {
                ready.sort_by_key(by_ip);
                not_ready.sort_by_key(by_ip);
                EndpointSubset {
                    addresses: (!ready.is_empty()).then_some(ready),
                    not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                    ports: (!ports.is_empty()).then(|| {
                        ports
                            .into_iter()
                            .map(|(name, port, protocol)| EndpointPort {
                                name: (!name.is_empty()).then_some(name),
                                port,
                                protocol: Some(protocol),
                                app_protocol: None,
                            })
                            .collect()
                    }),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;

    #[test]
    fn ready_and_not_ready_pods_are_listed_apart() {
        let svc = service(
            "web",
            "default",
            "web",
            80,
            IntOrString::String("http".into()),
        );
        let rs = replicaset("web-abc", "default", 2);
        let mut a = owned_pod("web-abc-a", &rs, Some("n1"), true);
        let mut b = owned_pod("web-abc-b", &rs, Some("n1"), false);
        set_ip(&mut a, "10.88.0.3");
        set_ip(&mut b, "10.88.0.2");
        let snap = snapshot(vec![Object::Service(svc), Object::Pod(a), Object::Pod(b)]);
        let actions = reconcile(&snap);
        let Some(Action::Create(Object::Endpoints(ep))) = actions.first() else {
            panic!("expected endpoints, got {actions:?}");
        };
        let subset = &ep.subsets.as_ref().unwrap()[0];
        assert_eq!(subset.addresses.as_ref().unwrap()[0].ip, "10.88.0.3");
        assert_eq!(
            subset.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.88.0.2"
        );
        assert_eq!(
            subset.ports.as_ref().unwrap()[0].port,
            8080,
            "named port resolved"
        );
    }

    fn endpoints_of(actions: &[Action]) -> &Endpoints {
        match actions.first() {
            Some(Action::Create(Object::Endpoints(ep))) => ep,
            other => panic!("expected endpoints, got {other:?}"),
        }
    }

    #[test]
    fn subdomain_pods_get_hostnames_and_not_ready_can_be_published() {
        let mut svc = service("db", "default", "web", 5432, IntOrString::Int(5432));
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let rs = replicaset("db", "default", 2);
        let mut a = owned_pod("db-0", &rs, Some("n1"), true);
        let mut b = owned_pod("db-1", &rs, Some("n1"), false);
        set_ip(&mut a, "10.88.0.2");
        set_ip(&mut b, "10.88.0.3");
        for (p, name) in [(&mut a, "db-0"), (&mut b, "db-1")] {
            let spec = p.spec.as_mut().unwrap();
            spec.hostname = Some(name.into());
            spec.subdomain = Some("db".into());
        }
        // Another subdomain: no hostname on the address.
        let mut c = owned_pod("other-0", &rs, Some("n1"), true);
        set_ip(&mut c, "10.88.0.4");
        c.spec.as_mut().unwrap().hostname = Some("other-0".into());
        c.spec.as_mut().unwrap().subdomain = Some("elsewhere".into());
        let objects = vec![
            Object::Pod(a.clone()),
            Object::Pod(b.clone()),
            Object::Pod(c.clone()),
        ];
        let mut with = objects.clone();
        with.push(Object::Service(svc.clone()));
        let actions = reconcile(&snapshot(with));
        let subset = &endpoints_of(&actions).subsets.as_ref().unwrap()[0];
        let ready = subset.addresses.as_ref().unwrap();
        assert_eq!(ready[0].hostname.as_deref(), Some("db-0"));
        assert_eq!(ready[1].ip, "10.88.0.4");
        assert_eq!(ready[1].hostname, None);
        assert_eq!(
            subset.not_ready_addresses.as_ref().unwrap()[0]
                .hostname
                .as_deref(),
            Some("db-1")
        );

        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let mut with = objects;
        with.push(Object::Service(svc));
        let actions = reconcile(&snapshot(with));
        let subset = &endpoints_of(&actions).subsets.as_ref().unwrap()[0];
        assert_eq!(subset.addresses.as_ref().unwrap().len(), 3);
        assert!(subset.not_ready_addresses.is_none());
    }

    #[test]
    fn headless_without_ports_lists_addresses_and_external_name_has_none() {
        let mut svc = service("db", "default", "web", 5432, IntOrString::Int(5432));
        let spec = svc.spec.as_mut().unwrap();
        spec.cluster_ip = Some("None".into());
        spec.ports = None;
        let rs = replicaset("db", "default", 1);
        let mut a = owned_pod("db-0", &rs, Some("n1"), true);
        set_ip(&mut a, "10.88.0.2");
        let actions = reconcile(&snapshot(vec![
            Object::Service(svc.clone()),
            Object::Pod(a.clone()),
        ]));
        let subset = &endpoints_of(&actions).subsets.as_ref().unwrap()[0];
        assert_eq!(subset.addresses.as_ref().unwrap()[0].ip, "10.88.0.2");
        assert_eq!(subset.ports, None);

        let spec = svc.spec.as_mut().unwrap();
        spec.type_ = Some("ExternalName".into());
        spec.external_name = Some("example.org".into());
        assert!(reconcile(&snapshot(vec![Object::Service(svc), Object::Pod(a)])).is_empty());
    }

    #[test]
    fn managed_endpoints_of_a_deleted_service_go() {
        let ep = Endpoints {
            metadata: ObjectMeta {
                name: Some("gone".into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    MANAGED_LABEL.to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            subsets: None,
        };
        let mut user = ep.clone();
        user.metadata.name = Some("mine".into());
        user.metadata.labels = None;
        let snap = snapshot(vec![Object::Endpoints(ep), Object::Endpoints(user)]);
        let actions = reconcile(&snap);
        assert_eq!(actions.len(), 1);
        assert!(matches!(&actions[0], Action::Delete { key, .. } if key.name == "gone"));
    }
}
