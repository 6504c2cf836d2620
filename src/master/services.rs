//! Services on the master: what `apply` allocates for a Service (its ClusterIP,
//! its NodePorts) and refuses (an address or port another Service holds), and
//! the cluster network settings every worker receives with the Service table.
//!
//! Owns: the allocation rules. Must not touch: the store (`apply` hands in
//! what is taken and commits the result) or the transport.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;

use crate::api::routing::{ClusterNetwork, Protocol, cluster_dns_ip};
use crate::api::{Object, ObjectKey};
use crate::master::allocate;
use crate::master::commands::{Ctx, Settings};
use crate::transport::messages::{ApiError, ErrorCode};

/// What the workers need besides the routes: published in every Service table.
pub fn cluster_network(settings: &Settings) -> ClusterNetwork {
    ClusterNetwork {
        cluster_cidr: Some(settings.cluster_cidr),
        service_cidr: Some(settings.service_cidr),
        dns_ip: cluster_dns_ip(settings.service_cidr),
        domain: settings.cluster_domain.clone(),
        nodes: Vec::new(),
        registry_mirror: None,
    }
}

fn protocol(p: Option<&str>) -> Protocol {
    match p {
        Some("UDP") => Protocol::Udp,
        _ => Protocol::Tcp,
    }
}

/// ClusterIPs and node ports taken by stored Services and by earlier objects
/// of the same request. Node ports and LoadBalancer ports share one space: both
/// are listened on at the node's addresses.
pub struct Allocations {
    ips: HashMap<Ipv4Addr, ObjectKey>,
    /// NodePorts and LoadBalancer ports, by number and protocol.
    host_ports: HashMap<(u16, Protocol), HostPort>,
}

#[derive(Clone, Debug)]
struct HostPort {
    holder: ObjectKey,
    load_balancer: bool,
}

impl Allocations {
    pub fn from_store(ctx: &Ctx) -> Allocations {
        let mut a = Allocations {
            ips: HashMap::new(),
            host_ports: HashMap::new(),
        };
        for obj in ctx.store.list(crate::api::Kind::Service, None) {
            if let Object::Service(s) = &*obj {
                a.record(obj.key(), s);
            }
        }
        a
    }

    fn record(&mut self, key: ObjectKey, svc: &Service) {
        let Some(spec) = &svc.spec else { return };
        if let Some(ip) = spec.cluster_ip.as_deref().and_then(|i| i.parse().ok()) {
            self.ips.insert(ip, key.clone());
        }
        let load_balancer = spec.type_.as_deref() == Some("LoadBalancer");
        for p in spec.ports.iter().flatten() {
            let proto = protocol(p.protocol.as_deref());
            if let Some(n) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
                self.host_ports.insert(
                    (n, proto),
                    HostPort {
                        holder: key.clone(),
                        load_balancer: false,
                    },
                );
            }
            if load_balancer && let Ok(n) = u16::try_from(p.port) {
                self.host_ports.insert(
                    (n, proto),
                    HostPort {
                        holder: key.clone(),
                        load_balancer: true,
                    },
                );
            }
        }
    }

    fn used_numbers(&self) -> HashSet<u16> {
        self.host_ports.keys().map(|(n, _)| *n).collect()
    }

    /// Fills in `svc`'s ClusterIP and NodePorts (keeping those `old` had) and
    /// refuses addresses and ports that are taken, naming the field.
    pub fn prepare_service(
        &mut self,
        ctx: &Ctx,
        svc: &mut Service,
        old: Option<&Service>,
    ) -> Result<(), ApiError> {
        let key = Object::Service(svc.clone()).key();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let err = |msg: String| {
            ApiError::new(
                ErrorCode::Invalid,
                format!("Service \"{name}\" is invalid: {msg}"),
            )
        };
        // Free what this Service holds now, so an update can keep it.
        self.ips.retain(|_, k| k != &key);
        self.host_ports.retain(|_, h| h.holder != key);
        let old_spec = old.and_then(|o| o.spec.clone()).unwrap_or_default();
        let spec = svc.spec.get_or_insert_with(Default::default);
        let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let load_balancer = type_ == "LoadBalancer";
        let node_port_type = type_ == "NodePort" || load_balancer;
        let allocate_node_ports = type_ == "NodePort"
            || (load_balancer && spec.allocate_load_balancer_node_ports != Some(false));
        let dns_ip = cluster_dns_ip(ctx.settings.service_cidr);

        if type_ == "ExternalName" {
            // A name, not an address: nothing to allocate, nothing kept.
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        } else {
            let old_ip = old_spec
                .cluster_ip
                .clone()
                .filter(|s| !s.is_empty() && old_spec.type_.as_deref() != Some("ExternalName"));
            match (spec.cluster_ip.clone().filter(|s| !s.is_empty()), old_ip) {
                (Some(want), Some(have)) if want != have => {
                    return Err(err(format!(
                        "spec.clusterIP: Invalid value: \"{want}\": field is immutable"
                    )));
                }
                (Some(want), _) if want == "None" => {}
                (Some(want), _) => {
                    let ip: Ipv4Addr = want.parse().map_err(|_| {
                        err(format!(
                            "spec.clusterIP: Invalid value: \"{want}\": must be a valid IP address"
                        ))
                    })?;
                    if !ctx.settings.service_cidr.contains(&ip) {
                        return Err(err(format!(
                            "spec.clusterIP: Invalid value: \"{want}\": provided IP is not in the valid range. The range of valid IPs is {}",
                            ctx.settings.service_cidr
                        )));
                    }
                    if Some(ip) == dns_ip {
                        return Err(err(format!(
                            "spec.clusterIP: Invalid value: \"{want}\": provided IP is reserved for the cluster DNS"
                        )));
                    }
                    if let Some(holder) = self.ips.get(&ip) {
                        return Err(err(format!(
                            "spec.clusterIP: Invalid value: \"{want}\": provided IP is already allocated (to {holder})"
                        )));
                    }
                }
                (None, Some(have)) => spec.cluster_ip = Some(have),
                (None, None) => {
                    let mut used: HashSet<Ipv4Addr> = self.ips.keys().copied().collect();
                    used.extend(dns_ip);
                    let ip = allocate::cluster_ip(ctx.settings.service_cidr, &used).ok_or_else(
                        || {
                            ApiError::new(
                                ErrorCode::Unavailable,
                                format!("no free ClusterIP left in {}", ctx.settings.service_cidr),
                            )
                        },
                    )?;
                    spec.cluster_ip = Some(ip.to_string());
                }
            }
            spec.cluster_ips = spec.cluster_ip.clone().map(|ip| vec![ip]);
        }

        let range = ctx.settings.node_port_range.clone();
        for (i, port) in spec.ports.iter_mut().flatten().enumerate() {
            let proto = protocol(port.protocol.as_deref());
            if load_balancer && let Ok(p) = u16::try_from(port.port) {
                if let Some(h) = self.host_ports.get(&(p, proto)) {
                    let what = if h.load_balancer {
                        "LoadBalancer port"
                    } else {
                        "NodePort"
                    };
                    return Err(err(format!(
                        "spec.ports[{i}].port: Invalid value: {p}: port {p}/{} on the node addresses is already the {what} of {}",
                        proto.as_str(),
                        h.holder
                    )));
                }
                self.host_ports.insert(
                    (p, proto),
                    HostPort {
                        holder: key.clone(),
                        load_balancer: true,
                    },
                );
            }
            if !node_port_type {
                if port.node_port.is_some_and(|n| n != 0) {
                    return Err(err(format!(
                        "spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is '{type_}'"
                    )));
                }
                port.node_port = None;
                continue;
            }
            match port.node_port.filter(|n| *n != 0) {
                Some(n) => {
                    let p = u16::try_from(n).ok().filter(|p| range.contains(p)).ok_or_else(|| {
                        err(format!(
                            "spec.ports[{i}].nodePort: Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}",
                            range.start(),
                            range.end()
                        ))
                    })?;
                    if let Some(h) = self.host_ports.get(&(p, proto)) {
                        return Err(err(format!(
                            "spec.ports[{i}].nodePort: Invalid value: {n}: provided port is already allocated (to {})",
                            h.holder
                        )));
                    }
                    self.host_ports.insert(
                        (p, proto),
                        HostPort {
                            holder: key.clone(),
                            load_balancer: false,
                        },
                    );
                }
                None if !allocate_node_ports => port.node_port = None,
                None => {
                    let kept = old_spec.ports.iter().flatten().find(|o| {
                        o.port == port.port && o.protocol == port.protocol && o.name == port.name
                    });
                    let p =
                        match kept
                            .and_then(|o| o.node_port)
                            .and_then(|n| u16::try_from(n).ok())
                        {
                            Some(p) if !self.host_ports.contains_key(&(p, proto)) => p,
                            _ => allocate::node_port(&range, &self.used_numbers()).ok_or_else(
                                || ApiError::new(ErrorCode::Unavailable, "no free NodePort left"),
                            )?,
                        };
                    port.node_port = Some(i32::from(p));
                    self.host_ports.insert(
                        (p, proto),
                        HostPort {
                            holder: key.clone(),
                            load_balancer: false,
                        },
                    );
                }
            }
        }
        self.record(key, svc);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::commands::Caller;
    use crate::store::{Mode, Op, Store};
    use serde_json::json;

    fn settings() -> Settings {
        Settings {
            cluster_cidr: "10.88.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/28".parse().unwrap(),
            node_port_range: 30000..=30009,
            broker_url: String::new(),
            master_key: String::new(),
            cluster_domain: "cluster.local".into(),
        }
    }

    fn svc(name: &str, spec: serde_json::Value) -> Service {
        let o = Object::from_json(
            crate::api::Kind::Service,
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
        )
        .unwrap();
        match o {
            Object::Service(s) => s,
            _ => unreachable!(),
        }
    }

    struct Env {
        _dir: tempfile::TempDir,
        store: Store,
        settings: Settings,
        caller: Caller,
    }

    fn env(existing: Vec<Service>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb")).unwrap();
        let ops = existing
            .into_iter()
            .map(|s| Op::Put(Object::Service(s)))
            .collect::<Vec<_>>();
        if !ops.is_empty() {
            store.commit(ops, Mode::Commit).unwrap();
        }
        Env {
            _dir: dir,
            store,
            settings: settings(),
            caller: Caller {
                id: "admin:test".into(),
                key: String::new(),
            },
        }
    }

    fn prepare(e: &Env, s: &mut Service) -> Result<(), String> {
        let ctx = Ctx {
            store: &e.store,
            settings: &e.settings,
            caller: &e.caller,
            now: jiff::Timestamp::now(),
            usage: &Default::default(),
        };
        let mut a = Allocations::from_store(&ctx);
        a.prepare_service(&ctx, s, None).map_err(|e| e.message)
    }

    #[test]
    fn cluster_ips_skip_the_dns_address() {
        let mut taken = Vec::new();
        for i in 1..=9 {
            taken.push(svc(
                &format!("s{i}"),
                json!({"clusterIP": format!("10.96.0.{i}"), "ports": [{"port": 80}]}),
            ));
        }
        let e = env(taken);
        let mut s = svc("next", json!({"ports": [{"port": 80}]}));
        prepare(&e, &mut s).unwrap();
        assert_eq!(s.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.11"));
        let mut s = svc(
            "dns",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
        );
        let err = prepare(&e, &mut s).unwrap_err();
        assert!(err.contains("reserved for the cluster DNS"), "{err}");
    }

    #[test]
    fn load_balancer_ports_and_node_ports() {
        let e = env(vec![svc(
            "web",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.2",
                   "ports": [{"port": 80, "nodePort": 30001}]}),
        )]);
        // Port 80/TCP on the node addresses is taken by the first.
        let mut s = svc(
            "other",
            json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
        );
        let err = prepare(&e, &mut s).unwrap_err();
        assert!(
            err.contains("spec.ports[0].port: Invalid value: 80")
                && err.contains("LoadBalancer port of service/web"),
            "{err}"
        );
        // UDP 80 is another port; it gets a NodePort allocated.
        let mut s = svc(
            "udp",
            json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "UDP"}]}),
        );
        prepare(&e, &mut s).unwrap();
        let np = s.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
        assert!((30000..=30009).contains(&np) && np != 30001);
        // Without NodePort allocation, none is set.
        let mut s = svc(
            "bare",
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                   "ports": [{"port": 8443}]}),
        );
        prepare(&e, &mut s).unwrap();
        assert_eq!(s.spec.unwrap().ports.unwrap()[0].node_port, None);
        // A NodePort already taken is refused with the field named.
        let mut s = svc(
            "np",
            json!({"type": "NodePort", "ports": [{"port": 81, "nodePort": 30001}]}),
        );
        let err = prepare(&e, &mut s).unwrap_err();
        assert!(
            err.contains("spec.ports[0].nodePort: Invalid value: 30001")
                && err.contains("already allocated"),
            "{err}"
        );
    }

    #[test]
    fn cluster_ip_as_given_kept_if_free_refused_if_taken_or_outside() {
        let e = env(vec![svc(
            "web",
            json!({"clusterIP": "10.96.0.3", "ports": [{"port": 80}]}),
        )]);
        // A free address in the service CIDR is kept as given, not replaced
        // by the allocator's first free one (10.96.0.1).
        let mut s = svc(
            "mine",
            json!({"clusterIP": "10.96.0.7", "ports": [{"port": 80}]}),
        );
        prepare(&e, &mut s).unwrap();
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.7"));
        assert_eq!(spec.cluster_ips, Some(vec!["10.96.0.7".to_string()]));
        // Another Service's address is refused, naming the field and holder.
        let mut s = svc(
            "clash",
            json!({"clusterIP": "10.96.0.3", "ports": [{"port": 80}]}),
        );
        let err = prepare(&e, &mut s).unwrap_err();
        assert!(
            err.contains("spec.clusterIP: Invalid value: \"10.96.0.3\"")
                && err.contains("already allocated")
                && err.contains("service/web"),
            "{err}"
        );
        // An address outside the service CIDR (10.96.0.0/28 here) is refused.
        for outside in ["10.96.0.16", "192.168.1.5"] {
            let mut s = svc(
                "far",
                json!({"clusterIP": outside, "ports": [{"port": 80}]}),
            );
            let err = prepare(&e, &mut s).unwrap_err();
            assert!(
                err.contains(&format!("spec.clusterIP: Invalid value: \"{outside}\""))
                    && err.contains("not in the valid range")
                    && err.contains("10.96.0.0/28"),
                "{err}"
            );
        }
        // Not an address at all.
        let mut s = svc("bad", json!({"clusterIP": "ten", "ports": [{"port": 80}]}));
        let err = prepare(&e, &mut s).unwrap_err();
        assert!(
            err.contains("spec.clusterIP") && err.contains("valid IP"),
            "{err}"
        );
    }

    #[test]
    fn external_name_and_headless_get_no_address() {
        let e = env(vec![]);
        let mut s = svc(
            "ext",
            json!({"type": "ExternalName", "externalName": "example.org"}),
        );
        prepare(&e, &mut s).unwrap();
        assert_eq!(s.spec.as_ref().unwrap().cluster_ip, None);
        let mut s = svc(
            "db",
            json!({"clusterIP": "None", "ports": [{"port": 5432}]}),
        );
        prepare(&e, &mut s).unwrap();
        assert_eq!(s.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
    }

    #[test]
    fn network_names_the_dns_address() {
        let n = cluster_network(&settings());
        assert_eq!(n.dns_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(n.domain, "cluster.local");
    }
}
