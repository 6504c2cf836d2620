//! A pod's `/etc/resolv.conf`, built the way the kubelet builds it from
//! `dnsPolicy` and `dnsConfig`, and the node's own resolv.conf read for it (and
//! for the upstream servers the cluster DNS forwards to). Pure: the text comes
//! in, the text goes out; only [`read_for_pods`] reads the node's files.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, PodDNSConfig};

use crate::api::routing::{ClusterNetwork, DEFAULT_CLUSTER_DOMAIN};

/// The kubelet's limits.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// What the node's resolv.conf says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeResolv {
    pub nameservers: Vec<IpAddr>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Parses resolv.conf text. Unknown lines and bad addresses are skipped, as
/// the C library does; the last `search` (or `domain`) line wins.
pub fn parse_resolv_conf(text: &str) -> NodeResolv {
    let mut out = NodeResolv::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // `nameserver fe80::1%eth0`: the zone is not an IpAddr.
                if let Some(ip) = words.next().and_then(|w| w.split('%').next()?.parse().ok()) {
                    out.nameservers.push(ip);
                }
            }
            Some("search") | Some("domain") => {
                out.searches = words.map(str::to_string).collect();
            }
            Some("options") => out.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    out
}

/// Where systemd-resolved writes the real upstream servers, when the node's
/// resolv.conf only names its stub on 127.0.0.53.
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// Whether every nameserver `resolv` names is a loopback address (and it
/// names one): from inside a pod, whose loopback is its own, none works.
fn only_loopback(resolv: &NodeResolv) -> bool {
    !resolv.nameservers.is_empty() && resolv.nameservers.iter().all(IpAddr::is_loopback)
}

/// The node's resolver settings as a pod can use them (`dnsPolicy: Default`,
/// and the node's searches under ClusterFirst), like the kubelet and k3s:
/// when `node` names only loopback servers (systemd-resolved's stub
/// 127.0.0.53, a local dnsmasq) and `fallback` (systemd-resolved's own file)
/// names real ones, that file is used instead. Otherwise `node` as it is.
/// The cluster DNS keeps forwarding to the node's own file: it runs in the
/// agent, on the host, where loopback servers answer.
pub fn for_pods(node: NodeResolv, fallback: Option<&str>) -> NodeResolv {
    if !only_loopback(&node) {
        return node;
    }
    match fallback.map(parse_resolv_conf) {
        Some(other) if !other.nameservers.is_empty() && !only_loopback(&other) => other,
        _ => node,
    }
}

/// The node's resolv.conf when none is named.
pub const NODE_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The file to fall back on for `path`: systemd-resolved's when `path` is
/// the default [`NODE_RESOLV_CONF`]; a file named with `--resolv-conf` is
/// taken at its word, as k3s does.
pub fn fallback_for(path: &std::path::Path) -> Option<&'static std::path::Path> {
    (path == std::path::Path::new(NODE_RESOLV_CONF))
        .then(|| std::path::Path::new(SYSTEMD_RESOLV_CONF))
}

/// [`for_pods`] over the files: the node's resolv.conf at `path`, and
/// `fallback` read only when needed. A missing file reads as empty.
pub fn read_for_pods(path: &std::path::Path, fallback: Option<&std::path::Path>) -> NodeResolv {
    let node = parse_resolv_conf(&std::fs::read_to_string(path).unwrap_or_default());
    if !only_loopback(&node) {
        return node;
    }
    let other = fallback.and_then(|f| std::fs::read_to_string(f).ok());
    let chosen = for_pods(node.clone(), other.as_deref());
    if chosen == node {
        tracing::warn!(
            path = %path.display(),
            "the node's resolv.conf names only loopback nameservers, which pods cannot reach"
        );
    }
    chosen
}

/// The cluster side of a pod's DNS: where the cluster DNS is and the pod's
/// namespace, for the search list.
#[derive(Clone, Copy, Debug)]
pub struct ClusterDns<'a> {
    pub server: IpAddr,
    pub domain: &'a str,
    pub namespace: &'a str,
}

/// What a pod asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct PodDns<'a> {
    /// `ClusterFirst` when unset.
    pub policy: Option<&'a str>,
    pub host_network: bool,
    pub config: Option<&'a PodDNSConfig>,
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The pod's resolv.conf:
/// - `ClusterFirst` (the default): the cluster DNS, searching
///   `<ns>.svc.<domain> svc.<domain> <domain>` then the node's search list,
///   `ndots:5`; with `hostNetwork` (or no cluster DNS) it is `Default`.
/// - `ClusterFirstWithHostNet`: the cluster DNS even with `hostNetwork`.
/// - `Default`: the node's resolv.conf.
/// - `None`: only `dnsConfig`.
///
/// `dnsConfig` is then merged in: nameservers and searches appended (no
/// duplicates, at most 3 and 32), options replacing those of the same name.
pub fn resolv_conf(pod: PodDns, cluster: Option<ClusterDns>, node: &NodeResolv) -> String {
    let policy = pod.policy.unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirst" if !pod.host_network => cluster,
        "ClusterFirstWithHostNet" => cluster,
        _ => None,
    };
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match (policy, cluster) {
            ("None", _) => (Vec::new(), Vec::new(), Vec::new()),
            (_, Some(c)) => {
                let mut searches = vec![
                    format!("{}.svc.{}", c.namespace, c.domain),
                    format!("svc.{}", c.domain),
                    c.domain.to_string(),
                ];
                for s in &node.searches {
                    push_unique(&mut searches, s.clone());
                }
                (
                    vec![c.server.to_string()],
                    searches,
                    vec!["ndots:5".to_string()],
                )
            }
            (_, None) => (
                node.nameservers.iter().map(IpAddr::to_string).collect(),
                node.searches.clone(),
                node.options.clone(),
            ),
        };
    if let Some(config) = pod.config {
        for ns in config.nameservers.iter().flatten() {
            push_unique(&mut servers, ns.clone());
        }
        for s in config.searches.iter().flatten() {
            push_unique(&mut searches, s.clone());
        }
        for o in config.options.iter().flatten() {
            let Some(name) = o.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let option = match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            };
            options.retain(|x| x.split(':').next() != Some(name));
            options.push(option);
        }
    }
    servers.truncate(MAX_NAMESERVERS);
    searches.truncate(MAX_SEARCHES);
    let mut out = String::new();
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// [`resolv_conf`] for `pod` on a node whose resolv.conf says `node`, with
/// the cluster DNS of `network` (none known: the node's file, as the kubelet
/// does without `--cluster-dns`).
pub fn pod_resolv_conf(pod: &Pod, network: &ClusterNetwork, node: &NodeResolv) -> String {
    let spec = pod.spec.as_ref();
    let domain = if network.domain.is_empty() {
        DEFAULT_CLUSTER_DOMAIN
    } else {
        network.domain.as_str()
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let cluster = network.dns_ip.map(|ip| ClusterDns {
        server: ip.into(),
        domain,
        namespace,
    });
    resolv_conf(
        PodDns {
            policy: spec.and_then(|s| s.dns_policy.as_deref()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            config: spec.and_then(|s| s.dns_config.as_ref()),
        },
        cluster,
        node,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodDNSConfigOption;

    fn node() -> NodeResolv {
        parse_resolv_conf(
            "# from DHCP\nnameserver 192.168.1.1\nnameserver fe80::1%eth0\nnameserver bogus\n\
             domain old.lan\nsearch home.lan ; comment\noptions edns0 timeout:2\n",
        )
    }

    fn cluster() -> ClusterDns<'static> {
        ClusterDns {
            server: "10.96.0.10".parse().unwrap(),
            domain: "cluster.local",
            namespace: "shop",
        }
    }

    #[test]
    fn loopback_only_servers_give_way_to_systemd_resolved_file() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("resolv.conf");
        let real = dir.path().join("systemd-resolv.conf");
        let absent = dir.path().join("absent.conf");
        std::fs::write(
            &stub,
            "# systemd-resolved stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch home.lan\n",
        )
        .unwrap();
        std::fs::write(
            &real,
            "nameserver 192.168.1.1\nnameserver 2001:db8::1\nsearch home.lan\n",
        )
        .unwrap();
        let n = read_for_pods(&stub, Some(&real));
        assert_eq!(
            n.nameservers,
            vec![
                "192.168.1.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(n.searches, vec!["home.lan"]);
        // dnsPolicy Default: the pod gets the real servers.
        let text = resolv_conf(
            PodDns {
                policy: Some("Default"),
                ..Default::default()
            },
            Some(cluster()),
            &n,
        );
        assert!(text.starts_with("nameserver 192.168.1.1\n"), "{text}");
        assert!(!text.contains("127.0.0.53"), "{text}");
        // No systemd file: the node's as it is (nothing better to offer).
        let n = read_for_pods(&stub, Some(&absent));
        assert_eq!(n.nameservers, vec!["127.0.0.53".parse::<IpAddr>().unwrap()]);
        // A fallback with only loopback servers is no better.
        std::fs::write(&real, "nameserver 127.0.0.1\n").unwrap();
        let n = read_for_pods(&stub, Some(&real));
        assert_eq!(n.nameservers, vec!["127.0.0.53".parse::<IpAddr>().unwrap()]);
        // Only the default file falls back.
        assert_eq!(
            fallback_for(std::path::Path::new("/etc/resolv.conf")),
            Some(std::path::Path::new(SYSTEMD_RESOLV_CONF))
        );
        assert_eq!(fallback_for(&stub), None);
        // A real server next to a loopback one: the node's file stands.
        std::fs::write(&stub, "nameserver 127.0.0.53\nnameserver 10.0.0.1\n").unwrap();
        std::fs::write(&real, "nameserver 192.168.1.1\n").unwrap();
        let n = read_for_pods(&stub, Some(&real));
        assert_eq!(n.nameservers.len(), 2);
        assert_eq!(n.nameservers[1], "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn parses_the_node_file() {
        let n = node();
        assert_eq!(
            n.nameservers,
            vec![
                "192.168.1.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(n.searches, vec!["home.lan"]);
        assert_eq!(n.options, vec!["edns0", "timeout:2"]);
    }

    #[test]
    fn cluster_first_searches_the_namespace_first() {
        let text = resolv_conf(PodDns::default(), Some(cluster()), &node());
        assert_eq!(
            text,
            "nameserver 10.96.0.10\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local home.lan\n\
             options ndots:5\n"
        );
        // Host network: the node's file, unless ClusterFirstWithHostNet.
        let host = PodDns {
            host_network: true,
            ..Default::default()
        };
        assert!(
            resolv_conf(host, Some(cluster()), &node()).starts_with("nameserver 192.168.1.1\n")
        );
        let with = PodDns {
            policy: Some("ClusterFirstWithHostNet"),
            host_network: true,
            ..Default::default()
        };
        assert!(resolv_conf(with, Some(cluster()), &node()).starts_with("nameserver 10.96.0.10\n"));
        // No cluster DNS known: falls back to the node's.
        assert!(resolv_conf(PodDns::default(), None, &node()).contains("search home.lan\n"));
    }

    #[test]
    fn default_none_and_dns_config() {
        let default = PodDns {
            policy: Some("Default"),
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(default, Some(cluster()), &node()),
            "nameserver 192.168.1.1\nnameserver fe80::1\nsearch home.lan\noptions edns0 timeout:2\n"
        );
        let config = PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into()]),
            searches: Some(vec!["ns1.svc.cluster-domain.example".into()]),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                },
                PodDNSConfigOption {
                    name: Some("edns0".into()),
                    value: None,
                },
            ]),
        };
        let none = PodDns {
            policy: Some("None"),
            config: Some(&config),
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(none, Some(cluster()), &node()),
            "nameserver 1.1.1.1\nsearch ns1.svc.cluster-domain.example\noptions ndots:2 edns0\n"
        );
        let merged = PodDns {
            config: Some(&config),
            ..Default::default()
        };
        let text = resolv_conf(merged, Some(cluster()), &node());
        assert!(
            text.starts_with("nameserver 10.96.0.10\nnameserver 1.1.1.1\n"),
            "{text}"
        );
        assert!(text.ends_with("options ndots:2 edns0\n"), "{text}");
        // At most three nameservers.
        let many = PodDNSConfig {
            nameservers: Some(vec!["1.0.0.1".into(), "1.0.0.2".into(), "1.0.0.3".into()]),
            ..Default::default()
        };
        let text = resolv_conf(
            PodDns {
                config: Some(&many),
                ..Default::default()
            },
            Some(cluster()),
            &node(),
        );
        assert_eq!(text.matches("nameserver").count(), 3);
    }
}
