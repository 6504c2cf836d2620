//! A container's root filesystem: an overlay of the image's unpacked layers
//! (read-only, shared) under a per-container writable upper directory.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Mounts the overlay at `target`. `layers` are bottom first; overlayfs
/// wants `lowerdir` top first.
pub(crate) fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    let data = overlay_options(layers, upper, work)?;
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| format!("mounting overlay at {}: {e}", target.display()))
}

/// The overlay mount data; it must fit in one page.
pub(crate) fn overlay_options(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<String, String> {
    let mut paths: Vec<&Path> = layers.iter().rev().map(PathBuf::as_path).collect();
    paths.extend([upper, work]);
    for p in &paths {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
        if s.contains([',', ':', '\\']) {
            return Err(format!(
                "overlayfs cannot take path {s:?} (contains , : or \\)"
            ));
        }
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() >= 4096 {
        return Err(format!(
            "overlay options for {} layers are {} bytes, over the kernel's page limit: use a shorter image store path or fewer layers",
            layers.len(),
            data.len()
        ));
    }
    Ok(data)
}

/// Unmounts `target`; not mounted is fine. Falls back to a lazy detach if
/// something still holds it.
pub(crate) fn unmount(target: &Path) -> io::Result<()> {
    if !is_mount_point(target) {
        return Ok(());
    }
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from)
        }
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Whether something is mounted exactly at `target`, per our mountinfo.
pub(crate) fn is_mount_point(target: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = target.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == target)
}

/// Reads `rel` (like `etc/passwd`) in the container's rootfs, refusing to
/// follow symlinks, which would resolve against the host's root.
pub(crate) fn read_in_rootfs(rootfs: &Path, rel: &str) -> Option<String> {
    let mut cur = rootfs.to_path_buf();
    for c in Path::new(rel).components() {
        cur.push(c);
        let meta = std::fs::symlink_metadata(&cur).ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
    }
    std::fs::read_to_string(cur).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_is_top_first() {
        let layers = vec![PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        assert_eq!(
            overlay_options(&layers, Path::new("/c/upper"), Path::new("/c/work")).unwrap(),
            "lowerdir=/l/top:/l/bottom,upperdir=/c/upper,workdir=/c/work"
        );
        assert!(
            overlay_options(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w")).is_err()
        );
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/var/lib/bramble/images/layers/{i:064}")))
            .collect();
        assert!(overlay_options(&many, Path::new("/u"), Path::new("/w")).is_err());
    }
}
