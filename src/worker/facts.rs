//! What a node tells the master about itself: addresses, architecture, OS,
//! kernel, capacity. Read once at start from /proc, uname and the interfaces.

use std::net::Ipv4Addr;

use crate::transport::messages::NodeFacts;

/// The Kubernetes (GOARCH) name of this machine's architecture.
pub fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The IPv4 address of the interface holding the default route, else the first
/// non-loopback IPv4 address.
pub fn primary_ipv4() -> Option<Ipv4Addr> {
    let default_iface = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
            })
        });
    let addrs: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            (!ip.is_loopback()).then_some((a.interface_name, ip))
        })
        .collect();
    default_iface
        .and_then(|d| addrs.iter().find(|(n, _)| *n == d).map(|(_, ip)| *ip))
        .or_else(|| addrs.first().map(|(_, ip)| *ip))
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<i64>()
                    .ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// The agent's version as `kubectl get nodes` shows it.
pub fn agent_version() -> String {
    format!("v{}+bramble", env!("CARGO_PKG_VERSION"))
}

pub fn gather(address: Option<Ipv4Addr>) -> NodeFacts {
    let address = address.or_else(primary_ipv4);
    NodeFacts {
        addresses: address.map(|a| a.to_string()).into_iter().collect(),
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        arch: goarch().to_string(),
        os: std::env::consts::OS.to_string(),
        os_image: os_image(),
        kernel_version: nix::sys::utsname::uname()
            .ok()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        cpu_millis: std::thread::available_parallelism().map_or(1, |n| n.get()) as i64 * 1000,
        memory_bytes: memory_bytes(),
        max_pods: 110,
        agent_version: agent_version(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_this_machine() {
        let f = gather(None);
        assert_eq!(f.arch, goarch());
        assert_eq!(f.os, "linux");
        assert!(f.cpu_millis >= 1000);
        assert!(f.memory_bytes > 0);
        assert!(!f.kernel_version.is_empty());
    }
}
