//! Egress: pods reach the LAN and the internet through a masquerade rule in an
//! nftables table of the node's own, `ip bramble_<bridge>`, so it never touches
//! anyone else's rules and goes away whole with one `delete table`. Traffic
//! from the pod CIDR to anything outside the cluster CIDR leaves with the
//! node's address; pod-to-pod traffic (same node or across nodes) keeps its
//! pod IP.
//!
//! Done with the `nft` tool (Debian's `nftables`), each change one atomic
//! transaction read from stdin.
//!
//! An accept in our own table cannot overrule a drop in another one: a host
//! whose iptables FORWARD policy is DROP (Docker sets it) would still drop
//! the pods' forwarded traffic. So, like flannel and k3s, when `iptables` is
//! installed, two ACCEPT rules for the node's pod CIDR (from it, to it) go at
//! the top of the filter table's FORWARD chain, marked with a comment naming
//! the bridge; `bramble down` removes them with the table.

use std::io;
use std::process::Stdio;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{debug, info};

use super::NetError;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The nftables table of the node whose pods sit on `bridge`.
pub fn table_name(bridge: &str) -> String {
    let safe: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("bramble_{safe}")
}

/// The ruleset that replaces the table (created empty first so that the
/// delete never fails, all in one transaction).
pub fn ruleset(bridge: &str, pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> String {
    let table = table_name(bridge);
    format!(
        "table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod} ip daddr != {cluster} oifname != \"{bridge}\" masquerade\n\
         \t}}\n\
         }}\n",
        pod = pod_cidr.trunc(),
        cluster = cluster_cidr.trunc(),
    )
}

pub(super) async fn nft(op: &'static str, script: &str) -> Result<(), NetError> {
    let fail = |reason: String| NetError::Nft { op, reason };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                fail("the `nft` tool is not installed (Debian package nftables)".into())
            }
            _ => fail(format!("running nft: {e}")),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| fail(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Installs (or replaces) the masquerade rule, adds the FORWARD accept rules
/// where iptables exists, and turns IPv4 forwarding on. Forwarding stays on
/// afterwards: other software on the node may need it too.
pub async fn install(
    bridge: &str,
    pod_cidr: Ipv4Net,
    cluster_cidr: Ipv4Net,
) -> Result<(), NetError> {
    std::fs::write(IP_FORWARD, "1").map_err(|e| NetError::Nft {
        op: "enable IPv4 forwarding",
        reason: format!("{IP_FORWARD}: {e}"),
    })?;
    nft(
        "install masquerade",
        &ruleset(bridge, pod_cidr, cluster_cidr),
    )
    .await?;
    accept_forwarding(bridge, pod_cidr).await?;
    info!(table = %table_name(bridge), %pod_cidr, %cluster_cidr, "egress masquerade installed");
    Ok(())
}

/// The iptables FORWARD rules (without chain and action verb) that let the
/// traffic of the pods on `bridge` through: from the pod CIDR and to it.
pub fn forward_rules(bridge: &str, pod_cidr: Ipv4Net) -> [Vec<String>; 2] {
    let comment = format!("bramble:{bridge}");
    ["-s", "-d"].map(|dir| {
        [
            dir,
            &pod_cidr.trunc().to_string(),
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "ACCEPT",
        ]
        .map(str::to_string)
        .to_vec()
    })
}

/// Runs `iptables -w <verb> FORWARD <rule>`: `None` when iptables is not
/// installed, else whether it succeeded and what it said.
async fn iptables(verb: &[&str], rule: &[String]) -> Option<(bool, String)> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(verb)
        .args(rule)
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) => Some((
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some((false, format!("running iptables: {e}"))),
    }
}

/// Puts the [`forward_rules`] at the top of FORWARD unless they are there.
/// Without iptables there is no FORWARD chain of its making to get past.
async fn accept_forwarding(bridge: &str, pod_cidr: Ipv4Net) -> Result<(), NetError> {
    for rule in forward_rules(bridge, pod_cidr) {
        match iptables(&["-C", "FORWARD"], &rule).await {
            None => {
                debug!("no iptables: no FORWARD rules to add");
                return Ok(());
            }
            Some((true, _)) => continue,
            Some((false, _)) => {}
        }
        if let Some((false, reason)) = iptables(&["-I", "FORWARD", "1"], &rule).await {
            return Err(NetError::Iptables {
                op: "accept forwarded pod traffic",
                reason,
            });
        }
    }
    Ok(())
}

/// Removes every copy of the [`forward_rules`] (a crashed run may have left
/// one beside this run's).
async fn remove_forwarding(bridge: &str, pod_cidr: Ipv4Net) {
    for rule in forward_rules(bridge, pod_cidr) {
        for _ in 0..16 {
            match iptables(&["-D", "FORWARD"], &rule).await {
                Some((true, _)) => debug!(?rule, "FORWARD rule removed"),
                _ => break,
            }
        }
    }
}

/// Removes the table and the FORWARD rules if they are there.
pub async fn remove(bridge: &str, pod_cidr: Ipv4Net) -> Result<(), NetError> {
    remove_forwarding(bridge, pod_cidr).await;
    let table = table_name(bridge);
    match nft(
        "remove masquerade",
        &format!("table ip {table}\ndelete table ip {table}\n"),
    )
    .await
    {
        Ok(()) => {
            debug!(%table, "egress masquerade removed");
            Ok(())
        }
        // Without nft there is nothing of ours to remove.
        Err(NetError::Nft { reason, .. }) if reason.contains("not installed") => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("bramble0"), "bramble_bramble0");
        assert_eq!(table_name("br-lan.2"), "bramble_br_lan_2");
    }

    #[test]
    fn forward_rules_name_the_bridge_both_ways() {
        let [from, to] = forward_rules("bt01", "10.88.3.7/24".parse().unwrap());
        assert_eq!(
            from.join(" "),
            "-s 10.88.3.0/24 -m comment --comment bramble:bt01 -j ACCEPT"
        );
        assert_eq!(
            to.join(" "),
            "-d 10.88.3.0/24 -m comment --comment bramble:bt01 -j ACCEPT"
        );
    }

    #[test]
    fn ruleset_excludes_the_cluster() {
        let r = ruleset(
            "bramble0",
            "10.88.3.0/24".parse().unwrap(),
            "10.88.0.0/16".parse().unwrap(),
        );
        assert!(r.starts_with("table ip bramble_bramble0\ndelete table ip bramble_bramble0\n"));
        assert!(r.contains(
            "ip saddr 10.88.3.0/24 ip daddr != 10.88.0.0/16 oifname != \"bramble0\" masquerade"
        ));
        assert!(r.contains("type nat hook postrouting priority srcnat;"));
    }
}
