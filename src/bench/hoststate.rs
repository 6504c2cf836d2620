//! What Docker changes on the host and does not undo when it stops: its
//! bridges (`docker0`, `docker_gwbridge`), its iptables chains and rules, the
//! `ip_forward` and bridge-netfilter sysctls, the FORWARD policy. Captured
//! before the engine starts and put back after it stopped.
//!
//! Touches only what Docker made: links with Docker's names that were not
//! there before, iptables rules and chains that mention Docker and were not
//! there before (other tenants' rules added meanwhile stay), sysctls back to
//! their old values.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// The links Docker and Swarm create and leave behind.
const DOCKER_LINKS: &[&str] = &["docker0", "docker_gwbridge"];

const SYSCTLS: &[&str] = &[
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

#[derive(Clone, Debug, Default)]
pub struct HostState {
    links: BTreeSet<String>,
    iptables: BTreeMap<&'static str, Tables>,
    sysctls: Vec<(&'static str, Option<String>)>,
}

/// `iptables-save` output, by table: chains (name → policy) and rules.
type Tables = BTreeMap<String, Table>;

#[derive(Clone, Debug, Default, PartialEq)]
struct Table {
    chains: BTreeMap<String, String>,
    rules: Vec<String>,
}

fn links() -> BTreeSet<String> {
    Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| {
                    let name = l.split(':').nth(1)?.trim();
                    Some(name.split('@').next()?.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn save(tool: &str) -> Tables {
    Command::new(tool)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| parse_save(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

fn parse_save(text: &str) -> Tables {
    let mut tables = Tables::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            current = Some(name.to_string());
            tables.entry(name.to_string()).or_default();
        } else if let Some(t) = current.as_ref().and_then(|c| tables.get_mut(c)) {
            if let Some(chain) = line.strip_prefix(':') {
                let mut parts = chain.split_whitespace();
                if let (Some(name), Some(policy)) = (parts.next(), parts.next()) {
                    t.chains.insert(name.to_string(), policy.to_string());
                }
            } else if line.starts_with("-A ") {
                t.rules.push(line.to_string());
            }
        }
    }
    tables
}

/// The `iptables-restore --noflush` script that removes from `after` the
/// Docker rules and chains `before` did not have, and puts back builtin
/// policies Docker changed. Empty when there is nothing to undo.
fn undo_script(before: &Tables, after: &Tables) -> String {
    let mut out = String::new();
    let empty = Table::default();
    for (name, now) in after {
        let old = before.get(name).unwrap_or(&empty);
        let docker = |s: &str| s.to_ascii_lowercase().contains("docker");
        let new_chains: Vec<&String> = now
            .chains
            .keys()
            .filter(|c| !old.chains.contains_key(*c) && docker(c))
            .collect();
        let mut old_rules: Vec<&String> = old.rules.iter().collect();
        let mut lines = Vec::new();
        for (chain, policy) in &now.chains {
            let builtin = policy != "-";
            let was = old
                .chains
                .get(chain)
                .map(String::as_str)
                .unwrap_or("ACCEPT");
            if builtin && policy != was {
                lines.push(format!(":{chain} {was} [0:0]"));
            }
        }
        for rule in &now.rules {
            if let Some(i) = old_rules.iter().position(|r| *r == rule) {
                old_rules.remove(i);
                continue;
            }
            let chain = rule.split_whitespace().nth(1).unwrap_or("");
            if docker(rule) && !new_chains.iter().any(|c| c.as_str() == chain) {
                lines.push(format!("-D {}", &rule[3..]));
            }
        }
        for c in &new_chains {
            lines.push(format!("-F {c}"));
        }
        for c in &new_chains {
            lines.push(format!("-X {c}"));
        }
        if !lines.is_empty() {
            out.push_str(&format!("*{name}\n{}\nCOMMIT\n", lines.join("\n")));
        }
    }
    out
}

fn uses_nftables(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables"))
}

impl HostState {
    pub fn capture() -> HostState {
        HostState {
            links: links(),
            iptables: [
                ("iptables-save", save("iptables-save")),
                ("ip6tables-save", save("ip6tables-save")),
            ]
            .into(),
            sysctls: SYSCTLS
                .iter()
                .map(|p| (*p, std::fs::read_to_string(p).ok()))
                .collect(),
        }
    }

    /// Undoes what Docker left; returns what is still different afterwards,
    /// one line each, for the report.
    pub fn restore(&self) -> Vec<String> {
        let mut remains = Vec::new();
        let now = links();
        for link in DOCKER_LINKS {
            if now.contains(*link) && !self.links.contains(*link) {
                let _ = Command::new("ip").args(["link", "del", link]).status();
            }
        }
        for (save_tool, before) in &self.iptables {
            let (restore_tool, family) = if *save_tool == "iptables-save" {
                ("iptables-restore", "ip")
            } else {
                ("ip6tables-restore", "ip6")
            };
            let after = save(save_tool);
            let script = undo_script(before, &after);
            if !script.is_empty() {
                run_with_stdin(restore_tool, &["--noflush"], &script);
            }
            // iptables-nft creates its tables on first use: a table that was
            // not there before and holds no rule now goes too.
            let cleaned = save(save_tool);
            if uses_nftables(&restore_tool.replace("-restore", "")) {
                for (table, t) in &cleaned {
                    if !before.contains_key(table) && t.rules.is_empty() {
                        let _ = Command::new("nft")
                            .args(["delete", "table", family, table])
                            .status();
                    }
                }
            }
            let last = save(save_tool);
            for (table, t) in &last {
                let old = before.get(table);
                for rule in &t.rules {
                    if old.is_none_or(|o| !o.rules.contains(rule))
                        && rule.to_ascii_lowercase().contains("docker")
                    {
                        remains.push(format!("{save_tool} -t {table}: {rule}"));
                    }
                }
                for chain in t.chains.keys() {
                    if old.is_none_or(|o| !o.chains.contains_key(chain))
                        && chain.to_ascii_lowercase().contains("docker")
                    {
                        remains.push(format!("{save_tool} -t {table}: chain {chain}"));
                    }
                }
            }
        }
        for (path, old) in &self.sysctls {
            let Some(old) = old else { continue };
            if std::fs::read_to_string(path).ok().as_ref() != Some(old)
                && std::fs::write(path, old).is_err()
            {
                remains.push(format!("{path} could not be set back to {}", old.trim()));
            }
        }
        let after = links();
        for link in after.difference(&self.links) {
            if DOCKER_LINKS.contains(&link.as_str()) || link.starts_with("veth") {
                remains.push(format!("link {link}"));
            }
        }
        remains
    }
}

fn run_with_stdin(tool: &str, args: &[&str], input: &str) {
    use std::io::Write;
    use std::process::Stdio;
    let child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    if let Ok(mut child) = child {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        if let Ok(out) = child.wait_with_output()
            && !out.status.success()
        {
            tracing::warn!(
                tool,
                error = %String::from_utf8_lossy(&out.stderr).trim(),
                "undoing Docker's iptables rules failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n";
    const AFTER: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:180]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-USER - [0:0]\n:MINE - [0:0]\n-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp --dport 22 -j MINE\n-A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DOCKER\n-A DOCKER-USER -j RETURN\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n-A DOCKER -i docker0 -j RETURN\nCOMMIT\n";

    #[test]
    fn undoes_only_dockers_additions() {
        let script = undo_script(&parse_save(BEFORE), &parse_save(AFTER));
        let expected = "*filter\n:FORWARD ACCEPT [0:0]\n-D FORWARD -j DOCKER-USER\n-D FORWARD -o docker0 -j DOCKER\n-F DOCKER\n-F DOCKER-USER\n-X DOCKER\n-X DOCKER-USER\nCOMMIT\n*nat\n-D PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n-F DOCKER\n-X DOCKER\nCOMMIT\n";
        assert_eq!(script, expected);
        assert_eq!(undo_script(&parse_save(AFTER), &parse_save(AFTER)), "");
    }
}
