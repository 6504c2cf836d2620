//! The host's device nodes, for privileged containers (as runc's
//! `HostDevices`): every char and block device under `/dev`, skipping the
//! directories a container gets its own of.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};

/// Directories under `/dev` not walked: the container mounts its own.
const SKIP: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

pub(crate) fn host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out, 0);
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

fn walk(dir: &Path, out: &mut Vec<LinuxDevice>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            let name = entry.file_name();
            if depth < 4 && !SKIP.iter().any(|s| name == *s) {
                walk(&path, out, depth + 1);
            }
            continue;
        }
        // /dev/console belongs to the container's terminal, not the host's.
        if path == Path::new("/dev/console") {
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        let rdev = meta.rdev();
        let dev = LinuxDeviceBuilder::default()
            .path(&path)
            .typ(typ)
            .major(nix::sys::stat::major(rdev) as i64)
            .minor(nix::sys::stat::minor(rdev) as i64)
            .file_mode(meta.mode() & 0o7777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build();
        if let Ok(d) = dev {
            out.push(d);
        }
    }
}

/// The capabilities this process may hand out: its bounding set
/// (`CapBnd` in `/proc/self/status`), which is the kernel's set less whatever
/// a sandbox around the agent removed.
pub(crate) fn available_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or((1 << 41) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_null_and_skips_pts() {
        let devs = host_devices();
        let null = devs
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .expect("/dev/null is a host device");
        assert_eq!((null.major(), null.minor()), (1, 3));
        assert!(devs.iter().all(|d| !d.path().starts_with("/dev/pts")));
        assert_ne!(available_caps() & 1, 0, "CAP_CHOWN");
    }
}
