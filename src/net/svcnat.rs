//! The kernel data path for Services annotated `bramble.io/proxy-mode: kernel`:
//! nftables DNAT, as kube-proxy's nftables mode does, in a table of the node's
//! own, `ip bramble_<bridge>_svc`. A new connection (or UDP flow) to the
//! ClusterIP, or to a NodePort/LoadBalancer port on a node address, is sent to
//! the next ready endpoint (`numgen inc`: round-robin) and masqueraded, so the
//! reply comes back through this node whether the endpoint is a pod on this
//! bridge (hairpin) or on another node. After that first packet conntrack
//! forwards the rest in the kernel: no copy through the agent, no wake-up.
//!
//! What the table does not match falls through to the agent's proxy, which
//! listens on the same addresses: a port with no ready endpoint (the proxy
//! refuses it), and NodePorts on 127.0.0.0/8 (locally generated traffic to
//! loopback cannot be DNATed to a pod without `route_localnet`).
//!
//! Removed TCP endpoints drain: their conntrack entries live on until the
//! connection ends; new connections only go to the endpoints listed. A UDP
//! flow has no end to wait for, so the flows of a removed UDP endpoint are
//! deleted from conntrack (Debian's `conntrack` tool), as kube-proxy does: the
//! flow's next datagram is DNATed afresh to an endpoint still listed.
//!
//! Owns only that table; the table is left in place when the agent stops (the
//! pods keep serving) and removed by `bramble down`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddrV4;

use crate::api::routing::{Protocol, ProxyMode, ServiceRoute};

use super::NetError;

/// Set on the first packet of a connection the table DNATs, read in
/// postrouting to masquerade it. One bit of the packet mark, high enough to
/// stay clear of kube-proxy's 0x4000/0x8000.
const MASQ_MARK: u32 = 0x0010_0000;

/// The nftables table of the node whose pods sit on `bridge`.
pub fn table_name(bridge: &str) -> String {
    format!("{}_svc", super::masq::table_name(bridge))
}

/// The ruleset that replaces the table, or `None` when no route asks for the
/// kernel path (then the table should not exist). `node` is this node's name:
/// a `Local` traffic policy (internal for the ClusterIP, external for the
/// NodePort and LoadBalancer ports) keeps to the endpoints on it, as the
/// proxy does.
pub fn ruleset(bridge: &str, routes: &[ServiceRoute], node: &str) -> Option<String> {
    let mut dispatch = String::new();
    let mut chains = String::new();
    let mut any = false;
    for (i, route) in routes
        .iter()
        .filter(|r| r.mode == ProxyMode::Kernel)
        .enumerate()
    {
        for (j, port) in route.ports.iter().enumerate() {
            let proto = match port.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let comment = format!("{}/{}:{}", route.namespace, route.name, port.name);
            let local: Vec<SocketAddrV4> = port
                .endpoints
                .iter()
                .filter(|e| route.on_node(e.ip(), node))
                .copied()
                .collect();
            let pick = |only_local: bool| if only_local { &local } else { &port.endpoints };
            let mut node_ports: Vec<u16> = port.node_port.into_iter().collect();
            if route.load_balancer {
                node_ports.push(port.port);
            }
            // (name, endpoints) per distinct endpoint set this port needs.
            let mut sets: Vec<(String, &Vec<SocketAddrV4>)> = Vec::new();
            let mut chain_for = |only_local: bool, chains: &mut String| -> Option<String> {
                let eps = pick(only_local);
                if eps.is_empty() {
                    // Falls through to the proxy, which has no endpoint either
                    // and refuses.
                    return None;
                }
                let name = format!("svc_{i}_{j}{}", if only_local { "_local" } else { "" });
                if !sets.iter().any(|(n, _)| *n == name) {
                    write_service_chain(chains, &name, proto, eps);
                    sets.push((name.clone(), eps));
                }
                Some(name)
            };
            if let Some(ip) = route.cluster_ip
                && let Some(svc) = chain_for(route.internal_local, &mut chains)
            {
                any = true;
                let _ = writeln!(
                    dispatch,
                    "\t\tip daddr {ip} {proto} dport {} counter goto {svc} comment \"{comment}\"",
                    port.port
                );
            }
            for p in node_ports {
                let Some(svc) = chain_for(route.external_local, &mut chains) else {
                    continue;
                };
                any = true;
                // After every ClusterIP rule (the ClusterIPs are local
                // addresses too), and not for loopback (see the module doc).
                let _ = writeln!(
                    dispatch,
                    "\t\tip daddr != 127.0.0.0/8 fib daddr type local {proto} dport {p} counter goto {svc} comment \"{comment}\""
                );
            }
        }
    }
    if !any {
        return None;
    }
    // ClusterIP rules first: a node-address rule for port 80 must not catch
    // another Service's ClusterIP:80.
    let (cluster, node): (Vec<&str>, Vec<&str>) =
        dispatch.lines().partition(|l| !l.contains("fib daddr"));
    let table = table_name(bridge);
    let mut out = format!("table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n");
    out.push_str(
        "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n",
    );
    out.push_str(
        "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n",
    );
    let _ = writeln!(
        out,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta mark and {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade\n\t}}"
    );
    out.push_str("\tchain services {\n");
    for line in cluster.iter().chain(node.iter()) {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("\t}\n");
    out.push_str(&chains);
    out.push_str("}\n");
    Some(out)
}

/// The UDP endpoints the kernel path sends flows to.
pub fn udp_endpoints(routes: &[ServiceRoute]) -> BTreeSet<SocketAddrV4> {
    routes
        .iter()
        .filter(|r| r.mode == ProxyMode::Kernel)
        .flat_map(|r| &r.ports)
        .filter(|p| p.protocol == Protocol::Udp)
        .flat_map(|p| p.endpoints.iter().copied())
        .collect()
}

/// Deletes the conntrack entries of UDP flows answered by `endpoint`.
pub async fn forget_udp_flows(endpoint: SocketAddrV4) -> Result<(), NetError> {
    let fail = |reason: String| NetError::Nft {
        op: "delete UDP flows",
        reason,
    };
    let out = tokio::process::Command::new("conntrack")
        .args(["-D", "-p", "udp", "--reply-src"])
        .arg(endpoint.ip().to_string())
        .arg("--reply-port-src")
        .arg(endpoint.port().to_string())
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                fail("the `conntrack` tool is not installed (Debian package conntrack)".into())
            }
            _ => fail(format!("running conntrack: {e}")),
        })?;
    // Exit 1 with "0 flow entries have been deleted" is not a failure.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("0 flow entries") {
        return Ok(());
    }
    Err(fail(format!("{endpoint}: {}", stderr.trim())))
}

/// A chain that marks the packet for masquerade and DNATs it to the next of
/// `endpoints`, each behind a chain of its own.
fn write_service_chain(out: &mut String, name: &str, proto: &str, endpoints: &[SocketAddrV4]) {
    let _ = writeln!(
        out,
        "\tchain {name} {{\n\t\tmeta mark set meta mark or {MASQ_MARK:#x}"
    );
    let _ = write!(out, "\t\tnumgen inc mod {} vmap {{ ", endpoints.len());
    for k in 0..endpoints.len() {
        let sep = if k == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{k} : goto {name}_ep{k}");
    }
    out.push_str(" }\n\t}\n");
    for (k, ep) in endpoints.iter().enumerate() {
        let _ = writeln!(
            out,
            "\tchain {name}_ep{k} {{\n\t\tmeta l4proto {proto} dnat to {ep}\n\t}}"
        );
    }
}

/// Replaces the table with `script` (from [`ruleset`]).
pub async fn install(bridge: &str, script: &str) -> Result<(), NetError> {
    super::masq::nft("install Service DNAT", script).await?;
    tracing::debug!(table = %table_name(bridge), "Service DNAT installed");
    Ok(())
}

/// Removes the table if it is there.
pub async fn remove(bridge: &str) -> Result<(), NetError> {
    let table = table_name(bridge);
    match super::masq::nft(
        "remove Service DNAT",
        &format!("table ip {table}\ndelete table ip {table}\n"),
    )
    .await
    {
        Ok(()) => Ok(()),
        // Without nft there is nothing of ours to remove.
        Err(NetError::Nft { reason, .. }) if reason.contains("not installed") => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routing::RoutePort;

    fn route(name: &str, mode: ProxyMode, endpoints: &[&str]) -> ServiceRoute {
        ServiceRoute {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: Some("10.96.0.5".parse().unwrap()),
            mode,
            ports: vec![RoutePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
                endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_kernel_routes_with_endpoints_get_rules() {
        assert_eq!(
            ruleset(
                "bramble0",
                &[route("a", ProxyMode::Userspace, &["10.88.0.3:8080"])],
                "n1"
            ),
            None
        );
        assert_eq!(
            ruleset("bramble0", &[route("a", ProxyMode::Kernel, &[])], "n1"),
            None
        );
    }

    #[test]
    fn round_robin_dnat_with_masquerade() {
        let r = ruleset(
            "bramble0",
            &[route(
                "web",
                ProxyMode::Kernel,
                &["10.88.0.3:8080", "10.88.1.4:8080"],
            )],
            "n1",
        )
        .unwrap();
        assert!(
            r.starts_with("table ip bramble_bramble0_svc\ndelete table ip bramble_bramble0_svc\n")
        );
        assert!(r.contains("ip daddr 10.96.0.5 tcp dport 80 counter goto svc_0_0"));
        assert!(r.contains(
            "ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 30080 counter goto svc_0_0"
        ));
        assert!(r.contains("numgen inc mod 2 vmap { 0 : goto svc_0_0_ep0, 1 : goto svc_0_0_ep1 }"));
        assert!(r.contains("meta l4proto tcp dnat to 10.88.1.4:8080"));
        assert!(r.contains("meta mark and 0x100000 == 0x100000 masquerade"));
    }

    #[test]
    fn local_traffic_policies_keep_to_this_node() {
        let mut r = route(
            "web",
            ProxyMode::Kernel,
            &["10.88.0.3:8080", "10.88.1.4:8080"],
        );
        r.endpoint_nodes = vec![
            ("10.88.0.3".parse().unwrap(), "n1".into()),
            ("10.88.1.4".parse().unwrap(), "n2".into()),
        ];
        r.internal_local = true;
        let rules = ruleset("bramble0", std::slice::from_ref(&r), "n1").unwrap();
        assert!(rules.contains("ip daddr 10.96.0.5 tcp dport 80 counter goto svc_0_0_local"));
        assert!(rules.contains("dport 30080 counter goto svc_0_0 "));
        assert!(
            rules
                .contains("chain svc_0_0_local_ep0 {\n\t\tmeta l4proto tcp dnat to 10.88.0.3:8080")
        );
        assert!(!rules.contains("svc_0_0_local_ep1"));
        // No endpoint here: ClusterIP traffic is left to the proxy, which has
        // none either and refuses; the NodePort still spreads.
        let rules = ruleset("bramble0", std::slice::from_ref(&r), "n3").unwrap();
        assert!(!rules.contains("ip daddr 10.96.0.5"));
        assert!(rules.contains("dport 30080 counter goto svc_0_0 "));
        r.internal_local = false;
        r.external_local = true;
        let rules = ruleset("bramble0", &[r], "n3").unwrap();
        assert!(rules.contains("ip daddr 10.96.0.5 tcp dport 80 counter goto svc_0_0 "));
        assert!(!rules.contains("dport 30080"));
    }

    /// The kernel's own parser has the last word: `nft --check` on a
    /// ruleset with every kind of rule.
    #[test]
    fn nft_accepts_the_ruleset() {
        let mut lb = route(
            "lb",
            ProxyMode::Kernel,
            &["10.88.0.3:8080", "10.88.0.4:8080"],
        );
        lb.load_balancer = true;
        let mut udp = route("dns", ProxyMode::Kernel, &["10.88.0.5:53"]);
        udp.cluster_ip = Some("10.96.0.6".parse().unwrap());
        udp.ports[0].protocol = Protocol::Udp;
        let script = ruleset("brtestnat0", &[lb, udp], "n1").unwrap();
        let mut child = std::process::Command::new("nft")
            .args(["--check", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft (Debian package nftables)");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn cluster_ips_are_matched_before_node_addresses() {
        let mut lb = route("lb", ProxyMode::Kernel, &["10.88.0.3:8080"]);
        lb.load_balancer = true;
        let mut other = route("other", ProxyMode::Kernel, &["10.88.0.4:80"]);
        other.cluster_ip = Some("10.96.0.6".parse().unwrap());
        other.ports[0].node_port = None;
        let r = ruleset("bramble0", &[lb, other], "n1").unwrap();
        let first_node_rule = r.find("fib daddr").unwrap();
        let other_cluster_ip = r.find("ip daddr 10.96.0.6 tcp dport 80").unwrap();
        assert!(other_cluster_ip < first_node_rule);
        assert!(r.contains("fib daddr type local tcp dport 80 counter goto svc_0_0"));
    }
}
