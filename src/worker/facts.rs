//! What a node tells the master about itself: addresses, architecture, OS,
//! kernel, capacity. Read once at start from /proc, uname and the interfaces.

use std::net::Ipv4Addr;
use std::path::Path;

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

/// What the node keeps back from pods (the kubelet's `--system-reserved`
/// plus `--kube-reserved`): allocatable is capacity minus this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl std::str::FromStr for Reserved {
    type Err = String;

    /// `cpu=200m,memory=256Mi` (either may be left out; `""` reserves nothing).
    fn from_str(s: &str) -> Result<Reserved, String> {
        let mut r = Reserved::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected resource=quantity"))?;
            let q = crate::api::quantity::parse(v).map_err(|e| e.to_string())?;
            match k.trim() {
                "cpu" => r.cpu_millis = q.millis_ceil(),
                "memory" => r.memory_bytes = q.units_ceil(),
                other => return Err(format!("{other:?}: only cpu and memory can be reserved")),
            }
        }
        if r.cpu_millis < 0 || r.memory_bytes < 0 {
            return Err("a reserve cannot be negative".into());
        }
        Ok(r)
    }
}

/// Size in bytes of the filesystem holding `dir`.
fn filesystem_bytes(dir: &Path) -> i64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| (s.blocks() as i64).saturating_mul(s.fragment_size() as i64))
        .unwrap_or(0)
}

/// Where a Raspberry Pi (and most Linux boards) reports its SoC temperature.
pub const THERMAL_ZONE: &str = "/sys/class/thermal/thermal_zone0/temp";

/// The temperature in `path` (millidegrees Celsius, as sysfs writes it), if
/// the machine has that thermal zone.
pub fn temperature_millicelsius(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn gather(address: Option<Ipv4Addr>, data_dir: &Path, reserved: Reserved) -> NodeFacts {
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
        ephemeral_storage_bytes: filesystem_bytes(data_dir),
        reserved_cpu_millis: reserved.cpu_millis,
        reserved_memory_bytes: reserved.memory_bytes,
        temperature_millicelsius: temperature_millicelsius(Path::new(THERMAL_ZONE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_from_a_thermal_zone_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("temp");
        std::fs::write(&f, "48312\n").unwrap();
        assert_eq!(temperature_millicelsius(&f), Some(48312));
        std::fs::write(&f, "n/a").unwrap();
        assert_eq!(temperature_millicelsius(&f), None);
        assert_eq!(temperature_millicelsius(&dir.path().join("absent")), None);
    }

    #[test]
    fn facts_of_this_machine() {
        let reserved: Reserved = "cpu=250m,memory=128Mi".parse().unwrap();
        let f = gather(None, Path::new("/"), reserved);
        assert_eq!(f.arch, goarch());
        assert_eq!(f.os, "linux");
        assert!(f.cpu_millis >= 1000);
        assert!(f.memory_bytes > 0);
        assert!(!f.kernel_version.is_empty());
        assert!(f.ephemeral_storage_bytes > 0);
        assert_eq!(f.allocatable_cpu_millis(), f.cpu_millis - 250);
        assert_eq!(f.allocatable_memory_bytes(), f.memory_bytes - (128 << 20));
    }

    #[test]
    fn reserve_flag() {
        assert_eq!("".parse::<Reserved>().unwrap(), Reserved::default());
        assert_eq!(
            "memory=1Gi".parse::<Reserved>().unwrap(),
            Reserved {
                cpu_millis: 0,
                memory_bytes: 1 << 30
            }
        );
        assert!("disk=1".parse::<Reserved>().is_err());
        assert!("cpu".parse::<Reserved>().is_err());
        assert!("cpu=-1".parse::<Reserved>().is_err());
    }
}
