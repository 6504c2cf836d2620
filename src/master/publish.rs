//! What the master tells the workers, computed from a snapshot: each node's
//! assignment (its pods, without status) and the Service routing table.
//! Pure; `master::run` decides when to publish.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod, PodSpec, Secret, Service};

use crate::api::routing::{
    BALANCE_ANNOTATION, Balance, DEFAULT_AFFINITY_SECONDS, DnsAddress, PROXY_MODE_ANNOTATION,
    Protocol, ProxyMode, RoutePort, ServiceRoute,
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

/// `(namespace, name)` keys of objects a pod refers to.
pub type Refs = BTreeSet<(String, String)>;

/// The `(namespace, name)` of every ConfigMap and Secret a pod references:
/// volumes (also projected sources), env `valueFrom`, `envFrom` of every
/// container (init and ephemeral ones too), and `imagePullSecrets`.
pub fn references(pod: &Pod) -> (Refs, Refs) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    if let Some(spec) = pod.spec.as_ref() {
        spec_references(spec, &mut cms, &mut secrets);
    }
    let keyed = |names: Vec<String>| names.into_iter().map(|n| (ns.clone(), n)).collect();
    (keyed(cms), keyed(secrets))
}

fn spec_references(spec: &PodSpec, cms: &mut Vec<String>, secrets: &mut Vec<String>) {
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.push(c.name.clone());
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(name);
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &src.config_map {
                cms.push(c.name.clone());
            }
            if let Some(s) = &src.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    let envs = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| (&c.env, &c.env_from))
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| (&c.env, &c.env_from)),
        );
    for (env, env_from) in envs {
        for e in env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
        for f in env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        secrets.push(s.name.clone());
    }
}

/// The ConfigMaps and Secrets `pods` reference that exist, sorted, stripped
/// of what changes without their content changing.
pub fn referenced_objects(snap: &Snapshot, pods: &[Pod]) -> (Vec<ConfigMap>, Vec<Secret>) {
    let (mut cm_keys, mut secret_keys) = (BTreeSet::new(), BTreeSet::new());
    for p in pods {
        let (c, s) = references(p);
        cm_keys.extend(c);
        secret_keys.extend(s);
    }
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let mut cms: Vec<ConfigMap> = snap
        .configmaps()
        .filter(|c| cm_keys.contains(&key(&c.metadata)))
        .map(|c| {
            let mut c = c.clone();
            c.metadata.managed_fields = None;
            c
        })
        .collect();
    cms.sort_by_key(|c| key(&c.metadata));
    let mut secrets: Vec<Secret> = snap
        .secrets()
        .filter(|s| secret_keys.contains(&key(&s.metadata)))
        .map(|s| {
            let mut s = s.clone();
            s.metadata.managed_fields = None;
            s
        })
        .collect();
    secrets.sort_by_key(|s| key(&s.metadata));
    (cms, secrets)
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
    let terminating: std::collections::HashSet<&str> = snap
        .pods()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .filter_map(|p| p.metadata.uid.as_deref())
        .collect();
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
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = matches!(type_, "NodePort" | "LoadBalancer")
        && spec.external_traffic_policy.as_deref() == Some("Local");
    let mut endpoint_nodes: Vec<(Ipv4Addr, String)> = if internal_local || external_local {
        subsets()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter_map(|a| Some((a.ip.parse().ok()?, a.node_name.clone()?)))
            .collect()
    } else {
        Vec::new()
    };
    endpoint_nodes.sort();
    endpoint_nodes.dedup_by(|a, b| a.0 == b.0);
    let balance = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BALANCE_ANNOTATION))
        .and_then(|v| Balance::parse(v))
        .unwrap_or_default();
    let mode = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROXY_MODE_ANNOTATION))
        .and_then(|v| ProxyMode::parse(v))
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
        mode,
        internal_local,
        external_local,
        endpoint_nodes,
        ports,
        addresses,
    })
}

/// Every node's pod CIDR behind its reported address, for host-gw routes.
/// Nodes that are not Ready stay listed: their pods may still be serving on
/// the LAN, and a route to a dead node costs nothing.
pub fn node_routes(snap: &Snapshot) -> Vec<crate::api::routing::NodeRoute> {
    let mut out: Vec<crate::api::routing::NodeRoute> = snap
        .nodes()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let pod_cidr = n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
            let address = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse()
                .ok()?;
            Some(crate::api::routing::NodeRoute {
                name,
                pod_cidr,
                address,
            })
        })
        .collect();
    out.sort();
    out
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
    fn local_traffic_policies_carry_the_endpoints_nodes() {
        let ep = |name: &str| Endpoints {
            metadata: meta(name, "default"),
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![
                    EndpointAddress {
                        ip: "10.88.1.3".into(),
                        node_name: Some("n2".into()),
                        ..Default::default()
                    },
                    EndpointAddress {
                        ip: "10.88.0.3".into(),
                        node_name: Some("n1".into()),
                        ..Default::default()
                    },
                ]),
                not_ready_addresses: None,
                ports: Some(vec![EndpointPort {
                    port: 8080,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
        };
        let mut internal = service("internal", "default", "web", 80, IntOrString::Int(8080));
        internal.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        let mut external = service("external", "default", "web", 80, IntOrString::Int(8080));
        let spec = external.spec.as_mut().unwrap();
        spec.type_ = Some("NodePort".into());
        spec.external_traffic_policy = Some("Local".into());
        // externalTrafficPolicy means nothing without a NodePort.
        let mut plain = service("plain", "default", "web", 80, IntOrString::Int(8080));
        plain.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let routes = service_routes(&snapshot(vec![
            Object::Service(internal),
            Object::Service(external),
            Object::Service(plain),
            Object::Endpoints(ep("internal")),
            Object::Endpoints(ep("external")),
            Object::Endpoints(ep("plain")),
        ]));
        let by = |n: &str| routes.iter().find(|r| r.name == n).unwrap();
        let nodes = vec![
            (Ipv4Addr::new(10, 88, 0, 3), "n1".to_string()),
            (Ipv4Addr::new(10, 88, 1, 3), "n2".to_string()),
        ];
        let internal = by("internal");
        assert!(internal.internal_local && !internal.external_local);
        assert_eq!(internal.endpoint_nodes, nodes);
        assert!(internal.on_node(&Ipv4Addr::new(10, 88, 1, 3), "n2"));
        assert!(!internal.on_node(&Ipv4Addr::new(10, 88, 1, 3), "n1"));
        let external = by("external");
        assert!(!external.internal_local && external.external_local);
        assert_eq!(external.endpoint_nodes, nodes);
        let plain = by("plain");
        assert!(!plain.internal_local && !plain.external_local);
        assert!(plain.endpoint_nodes.is_empty());
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
                // A pod that is not ready: neither routed nor in DNS.
                not_ready_addresses: Some(vec![EndpointAddress {
                    ip: "10.88.0.7".into(),
                    hostname: Some("db-2".into()),
                    ..Default::default()
                }]),
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
        assert!(
            db.ports[0]
                .endpoints
                .iter()
                .all(|e| e.ip() != &Ipv4Addr::new(10, 88, 0, 7))
        );
        let zone = crate::net::dns::Zone::new(&routes, &Default::default());
        for name in [
            "db.default.svc.cluster.local.",
            "db-2.db.default.svc.cluster.local.",
            "10-88-0-7.db.default.svc.cluster.local.",
        ] {
            let answer = dns_a(&zone, name);
            assert!(
                !answer.contains(&"10.88.0.7".to_string()),
                "{name}: {answer:?}"
            );
        }
        assert_eq!(
            dns_a(&zone, "db.default.svc.cluster.local."),
            vec!["10.88.0.8", "10.88.0.9"]
        );
        let ext = by("ext");
        assert_eq!(ext.external_name.as_deref(), Some("example.org"));
        assert!(!ext.headless && ext.cluster_ip.is_none());
    }

    /// The A records the cluster DNS answers `name` with.
    fn dns_a(zone: &crate::net::dns::Zone, name: &str) -> Vec<String> {
        use hickory_proto::op::{Message, Query};
        use hickory_proto::rr::{Name, RData, RecordType};
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let crate::net::dns::Handling::Respond(reply) =
            crate::net::dns::handle(zone, &q.to_vec().unwrap(), false)
        else {
            panic!("{name} not answered locally")
        };
        Message::from_vec(&reply)
            .unwrap()
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
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

    #[test]
    fn only_referenced_configmaps_and_secrets_are_sent() {
        use k8s_openapi::api::core::v1::{
            ConfigMapEnvSource, ConfigMapVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
            LocalObjectReference, ProjectedVolumeSource, SecretKeySelector, SecretProjection,
            Volume, VolumeProjection,
        };
        let rs = replicaset("web-abc", "default", 1);
        let mut pod = owned_pod("a", &rs, Some("n1"), false);
        let spec = pod.spec.as_mut().unwrap();
        spec.volumes = Some(vec![
            Volume {
                name: "cfg".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "vol-cm".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "proj".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        secret: Some(SecretProjection {
                            name: "proj-secret".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        spec.image_pull_secrets = Some(vec![LocalObjectReference {
            name: "pull".into(),
        }]);
        let c = &mut spec.containers[0];
        c.env = Some(vec![EnvVar {
            name: "X".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "env-secret".into(),
                    key: "k".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        c.env_from = Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: "from-cm".into(),
                optional: None,
            }),
            ..Default::default()
        }]);
        let cm = |name: &str, ns: &str| {
            Object::ConfigMap(ConfigMap {
                metadata: meta(name, ns),
                ..Default::default()
            })
        };
        let secret = |name: &str, ns: &str| {
            Object::Secret(Secret {
                metadata: meta(name, ns),
                ..Default::default()
            })
        };
        let snap = snapshot(vec![
            Object::Pod(pod),
            cm("vol-cm", "default"),
            cm("from-cm", "default"),
            cm("unrelated", "default"),
            cm("vol-cm", "other"),
            secret("proj-secret", "default"),
            secret("env-secret", "default"),
            secret("pull", "default"),
            secret("unrelated", "default"),
            secret("env-secret", "other"),
        ]);
        let pods = assignment_pods(&snap, "n1");
        let (cms, secrets) = referenced_objects(&snap, &pods);
        let names = |m: Vec<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>| {
            m.into_iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        m.namespace.as_deref().unwrap(),
                        m.name.as_deref().unwrap()
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(cms.iter().map(|c| &c.metadata).collect()),
            ["default/from-cm", "default/vol-cm"]
        );
        assert_eq!(
            names(secrets.iter().map(|s| &s.metadata).collect()),
            ["default/env-secret", "default/proj-secret", "default/pull"]
        );
        // Another node's assignment carries none of them.
        let (cms, secrets) = referenced_objects(&snap, &assignment_pods(&snap, "n2"));
        assert!(cms.is_empty() && secrets.is_empty());
    }

    #[test]
    fn proxy_mode_comes_from_the_annotation() {
        let mut fast = service("fast", "default", "web", 80, IntOrString::Int(8080));
        fast.metadata.annotations =
            Some([(PROXY_MODE_ANNOTATION.to_string(), "kernel".to_string())].into());
        let plain = service("plain", "default", "web", 80, IntOrString::Int(8080));
        let routes = service_routes(&snapshot(vec![
            Object::Service(fast),
            Object::Service(plain),
        ]));
        let by = |n: &str| routes.iter().find(|r| r.name == n).unwrap();
        assert_eq!(by("fast").mode, ProxyMode::Kernel);
        assert_eq!(by("plain").mode, ProxyMode::Userspace);
    }
}
