//! Making sure a container's cgroup is really gone, on every hierarchy.
//!
//! libcontainer's delete removes the cgroup it created; on cgroup v1 that is
//! one directory per controller, and a failure half-way would leave some
//! behind. These helpers look at every mounted hierarchy (v1 controllers,
//! named v1 hierarchies, the v2 unified one) so nothing leaks.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Mount points of every cgroup and cgroup2 filesystem, from mountinfo.
pub fn hierarchies() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_hierarchies(&text)
}

fn parse_hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // `id parent maj:min root mount-point options [optional...] - fstype source super`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        if let Some(mp) = left.split(' ').nth(4) {
            out.push(PathBuf::from(unescape(mp)));
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the kernel accounts swap per cgroup: v1 has `memory.memsw.*`
/// (needs `swapaccount=1` on older kernels); v2 has `memory.swap.max` in
/// non-root cgroups, so look at our own.
pub(crate) fn swap_accounting() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("memory").is_dir() {
        return root.join("memory/memory.memsw.limit_in_bytes").exists();
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| root.join(p.trim_start_matches('/')).join("memory.swap.max"))
        .is_some_and(|p| p.exists())
}

/// Whether the kernel's OOM killer killed a task of cgroup `rel`: v2's
/// `memory.events` `oom_kill`, v1's `memory.oom_control` `oom_kill` (Linux
/// 4.13+), else v1's `memory.failcnt` with the limit reached (older kernels
/// count no kills; a failed charge at the limit is the best evidence left).
pub(crate) fn oom_killed(rel: &Path) -> bool {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let mut v1_dir = None;
    for mount in hierarchies() {
        let dir = mount.join(rel);
        if let Ok(t) = std::fs::read_to_string(dir.join("memory.events")) {
            return counter(&t, "oom_kill") > 0;
        }
        if dir.join("memory.oom_control").exists() {
            v1_dir = Some(dir);
        }
    }
    let Some(dir) = v1_dir else {
        return false;
    };
    let control = std::fs::read_to_string(dir.join("memory.oom_control")).unwrap_or_default();
    if control.lines().any(|l| l.starts_with("oom_kill ")) {
        return counter(&control, "oom_kill") > 0;
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    read("memory.failcnt").is_some_and(|n| n > 0)
        && read("memory.max_usage_in_bytes") >= read("memory.limit_in_bytes")
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// CPU time and memory working set of the cgroup `rel`, wherever its
/// controllers are mounted: v1 `cpuacct.usage` and `memory.usage_in_bytes`
/// less `total_inactive_file`, or v2 `cpu.stat`'s `usage_usec` and
/// `memory.current` less `inactive_file` (the files libcgroups' stats read).
pub(crate) fn stats(rel: &Path) -> io::Result<crate::runtime::ContainerStats> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let mut cpu = None;
    let mut mem = None;
    for mount in hierarchies() {
        let dir = mount.join(rel);
        if !dir.is_dir() {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        if cpu.is_none() {
            if let Some(v) = read("cpuacct.usage").and_then(|t| t.trim().parse::<u64>().ok()) {
                cpu = Some(v);
            } else if let Some(v) = read("cpu.stat").and_then(|t| stat_value(&t, "usage_usec")) {
                cpu = Some(v * 1000);
            }
        }
        if mem.is_none() {
            if let Some(usage) =
                read("memory.usage_in_bytes").and_then(|t| t.trim().parse::<u64>().ok())
            {
                let inactive = read("memory.stat")
                    .and_then(|t| stat_value(&t, "total_inactive_file"))
                    .unwrap_or(0);
                mem = Some(usage.saturating_sub(inactive));
            } else if let Some(usage) =
                read("memory.current").and_then(|t| t.trim().parse::<u64>().ok())
            {
                let inactive = read("memory.stat")
                    .and_then(|t| stat_value(&t, "inactive_file"))
                    .unwrap_or(0);
                mem = Some(usage.saturating_sub(inactive));
            }
        }
    }
    match (cpu, mem) {
        (None, None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no cgroup {} on any hierarchy", rel.display()),
        )),
        (cpu, mem) => Ok(crate::runtime::ContainerStats {
            cpu_nanos: cpu.unwrap_or(0),
            memory_bytes: mem.unwrap_or(0),
        }),
    }
}

/// A `key value` line's value from a cgroup stat file.
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Removes `rel` (a cgroup path like `bramble/run/id`) on every hierarchy.
/// A cgroup with processes cannot be removed; the error says which.
pub(crate) fn remove_everywhere(rel: &Path) -> io::Result<()> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    for mount in hierarchies() {
        let dir = mount.join(rel);
        if dir.is_dir() {
            rmdir_tree(&dir)?;
        }
    }
    Ok(())
}

/// Removes the directories of `rel` and below, deepest first, on every
/// hierarchy, stopping quietly where one is still in use.
pub(crate) fn remove_empty_tree_everywhere(rel: &Path) {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    for mount in hierarchies() {
        let dir = mount.join(rel);
        if dir.is_dir() {
            let _ = rmdir_tree(&dir);
        }
    }
}

/// Removes `rel`'s ancestors (not `rel` itself) that are empty, on every
/// hierarchy, up to but excluding the hierarchy root.
pub(crate) fn remove_empty_parents_everywhere(rel: &Path) {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    for mount in hierarchies() {
        let mut cur = rel.parent();
        while let Some(p) = cur.filter(|p| !p.as_os_str().is_empty()) {
            // Fails with EBUSY/ENOTEMPTY while a sibling container still lives.
            if std::fs::remove_dir(mount.join(p)).is_err() && mount.join(p).exists() {
                break;
            }
            cur = p.parent();
        }
    }
}

/// cgroup directories hold only control files, so removal is rmdir,
/// children first. The kernel may report EBUSY for a moment after the last
/// process exits; retry briefly.
fn rmdir_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            rmdir_tree(&entry.path())?;
        }
    }
    let mut last = None;
    for _ in 0..20 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
    let e = last.expect("loop ran");
    Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counters() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(counter(v2, "oom_kill"), 1);
        assert_eq!(counter(v2, "oom"), 1);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n";
        assert_eq!(counter(v1, "oom_kill"), 0);
        assert_eq!(counter("", "oom_kill"), 0);
        assert!(!oom_killed(Path::new("/bramble-no-such-cgroup/x")));
    }

    #[test]
    fn stat_files() {
        let v2 = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(stat_value(v2, "usage_usec"), Some(1500));
        let v1 = "cache 4096\ntotal_inactive_file 8192\n";
        assert_eq!(stat_value(v1, "total_inactive_file"), Some(8192));
        assert_eq!(stat_value(v1, "inactive_file"), None);
    }

    #[test]
    fn finds_v1_and_v2_hierarchies() {
        let info = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:7 - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
40 1 0:40 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_hierarchies(info),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/memory"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                PathBuf::from("/mnt/with space"),
            ]
        );
    }
}
