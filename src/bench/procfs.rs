//! What `/proc` says about a set of processes: memory (RSS, PSS), CPU time and
//! bytes written to disk, summed over the set, and the process tree helpers
//! that find a daemon's helpers (containerd's shims) or a container's init.
//!
//! Reads only; never signals or changes a process.

use std::collections::BTreeSet;

/// The first number after `key:` in `/proc/PID/FILE` (`status`, `io`,
/// `smaps_rollup`: all `Key: value [unit]` lines).
pub fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?.trim();
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces and parentheses): index 0 is the state, 1 the parent pid.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of the process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let f = stat_fields(pid).unwrap_or_default();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Clock ticks per second (`CLK_TCK`).
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Gone, or a zombie nobody has reaped yet: either way it serves nothing.
pub fn is_gone(pid: u32) -> bool {
    match stat_fields(pid) {
        None => true,
        Some(f) => matches!(f.first().map(String::as_str), Some("Z" | "X")),
    }
}

/// The command line, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Every process id in `/proc`.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| parent(*p) == Some(pid))
        .collect()
}

/// The process whose cgroup path (in any hierarchy) ends in `/{leaf}` and
/// whose parent is `parent_pid`: a Bramble container's init, which the agent
/// (a child subreaper) adopts.
pub fn cgroup_init(leaf: &str, parent_pid: u32) -> Option<u32> {
    let suffix = format!("/{leaf}");
    all_pids().into_iter().find(|p| {
        parent(*p) == Some(parent_pid)
            && std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l.ends_with(&suffix)))
    })
}

/// Memory, CPU and disk writes of a set of processes, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub pss_anon_kib: u64,
    pub cpu_ticks: u64,
    pub write_bytes: u64,
    pub processes: usize,
}

impl Usage {
    pub fn of(pids: &BTreeSet<u32>) -> Usage {
        let mut u = Usage::default();
        for &pid in pids {
            if is_gone(pid) {
                continue;
            }
            u.processes += 1;
            u.rss_kib += proc_field(pid, "smaps_rollup", "Rss").unwrap_or(0);
            u.pss_kib += proc_field(pid, "smaps_rollup", "Pss").unwrap_or(0);
            u.pss_anon_kib += proc_field(pid, "smaps_rollup", "Pss_Anon").unwrap_or(0);
            u.cpu_ticks += cpu_ticks(pid);
            u.write_bytes += proc_field(pid, "io", "write_bytes").unwrap_or(0);
        }
        u
    }
}

/// The idle cost of a set of processes over a window: memory at its end, CPU
/// and writes during it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdleCost {
    pub rss_mib: f64,
    pub pss_mib: f64,
    pub pss_anon_mib: f64,
    pub cpu_percent: f64,
    pub write_kib_per_hour: f64,
    pub processes: usize,
}

impl IdleCost {
    pub fn between(start: &Usage, end: &Usage, seconds: f64) -> IdleCost {
        let ticks = end.cpu_ticks.saturating_sub(start.cpu_ticks) as f64;
        let written = end.write_bytes.saturating_sub(start.write_bytes) as f64;
        IdleCost {
            rss_mib: end.rss_kib as f64 / 1024.0,
            pss_mib: end.pss_kib as f64 / 1024.0,
            pss_anon_mib: end.pss_anon_kib as f64 / 1024.0,
            cpu_percent: ticks / clock_ticks() / seconds * 100.0,
            write_kib_per_hour: written * 3600.0 / seconds / 1024.0,
            processes: end.processes,
        }
    }
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(proc_field(me, "status", "VmRSS").is_some_and(|v| v > 0));
        assert!(!is_gone(me));
        assert_eq!(parent(me), Some(std::os::unix::process::parent_id()));
        let u = Usage::of(&BTreeSet::from([me]));
        assert_eq!(u.processes, 1);
        assert!(u.rss_kib > 0 && u.pss_kib > 0);
        assert!(cmdline(me).contains("bramble"));
    }

    #[test]
    fn idle_cost_is_a_rate() {
        let a = Usage {
            cpu_ticks: 0,
            write_bytes: 0,
            ..Usage::default()
        };
        let b = Usage {
            rss_kib: 2048,
            cpu_ticks: clock_ticks() as u64,
            write_bytes: 1024,
            ..Usage::default()
        };
        let c = IdleCost::between(&a, &b, 100.0);
        assert_eq!(c.rss_mib, 2.0);
        assert!((c.cpu_percent - 1.0).abs() < 1e-9);
        assert!((c.write_kib_per_hour - 36.0).abs() < 1e-9);
    }
}
