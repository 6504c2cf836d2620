//! A container's root filesystem: an overlay of the image's unpacked layers
//! (read-only, shared) under a per-container writable upper directory.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, fchown};

use crate::runtime::BindMount;

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

/// Makes the process's working directory `cwd` if it is missing, as runc
/// does (`MkdirAll(cwd, 0755)` by the container's init, as root, after the
/// mounts): libcontainer only changes into it. The path is looked up as the
/// container will see it: inside the deepest volume mounted over it, else
/// in the rootfs, every symlink resolved within that root (an absolute
/// target starts again from it), so an image or a volume cannot make us
/// create anything outside. New directories are mode 0755, owned by root.
/// A missing directory under a read-only volume is left to the chdir to
/// report, as it would be with runc.
pub(crate) fn make_working_dir(
    rootfs: &Path,
    mounts: &[BindMount],
    cwd: &str,
) -> Result<(), String> {
    let cwd_parts = clean_components(Path::new(cwd));
    let volume = mounts
        .iter()
        .filter(|m| {
            let dest = clean_components(Path::new(&m.destination));
            cwd_parts.starts_with(&dest) && m.source.is_dir()
        })
        .max_by_key(|m| clean_components(Path::new(&m.destination)).len());
    let (root, rest): (&Path, Vec<&std::ffi::OsStr>) = match volume {
        Some(m) => {
            let skip = clean_components(Path::new(&m.destination)).len();
            if m.read_only {
                return Ok(());
            }
            (&m.source, cwd_parts[skip..].to_vec())
        }
        None => (rootfs, cwd_parts),
    };
    mkdir_all_in_root(root, &rest).map_err(|e| format!("creating working directory {cwd:?}: {e}"))
}

/// The normal components of an absolute container path (`..` clamped at the
/// root, `.` dropped), lexically.
fn clean_components(path: &Path) -> Vec<&std::ffi::OsStr> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// `mkdir -p` of `parts` inside `root`, every lookup confined to `root` by
/// `openat2(RESOLVE_IN_ROOT)`, so a symlink swapped in meanwhile cannot
/// lead outside either.
fn mkdir_all_in_root(root: &Path, parts: &[&std::ffi::OsStr]) -> Result<(), String> {
    let root_fd = open(root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(|e| format!("opening {}: {e}", root.display()))?;
    let lookup = |rel: &Path| -> nix::Result<OwnedFd> {
        openat2(
            &root_fd,
            rel,
            OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
        )
    };
    let mut parent =
        lookup(Path::new(".")).map_err(|e| format!("opening {}: {e}", root.display()))?;
    let mut rel = PathBuf::from(".");
    for part in parts {
        rel.push(part);
        parent = match lookup(&rel) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(&parent, *part, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(format!("mkdir {}: {e}", rel.display())),
                }
                let fd = lookup(&rel).map_err(|e| format!("{}: {e}", rel.display()))?;
                // The umask does not decide the mode; runc's init runs as root.
                fchmod(&fd, Mode::from_bits_truncate(0o755))
                    .and_then(|()| fchown(&fd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0))))
                    .map_err(|e| format!("{}: {e}", rel.display()))?;
                fd
            }
            Err(e) => return Err(format!("{}: {e}", rel.display())),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Propagation;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn working_dir_is_made_inside_the_root_even_through_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("opt")).unwrap();
        // An absolute symlink to a host path, and a relative one climbing out.
        std::os::unix::fs::symlink(outside.path(), r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", r.join("opt/up")).unwrap();
        std::os::unix::fs::symlink("/opt", r.join("work")).unwrap();

        make_working_dir(r, &[], "/made/here").unwrap();
        let made = std::fs::metadata(r.join("made/here")).unwrap();
        assert!(made.is_dir());
        assert_eq!(made.permissions().mode() & 0o7777, 0o755);
        assert_eq!((made.uid(), made.gid()), (0, 0));

        // The absolute target is looked up in the root: dangling there, as
        // runc's MkdirAll in the container it is an error ...
        assert!(make_working_dir(r, &[], "/abs/x").is_err());
        // ... and once it exists in the root, the directory is made there.
        let host_target = outside.path().strip_prefix("/").unwrap();
        std::fs::create_dir_all(r.join(host_target)).unwrap();
        make_working_dir(r, &[], "/abs/x").unwrap();
        assert!(r.join(host_target).join("x").is_dir());
        make_working_dir(r, &[], "/opt/up/y").unwrap();
        assert!(r.join("y").is_dir());
        make_working_dir(r, &[], "/work/z").unwrap();
        assert!(r.join("opt/z").is_dir());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        // A file in the way is an error naming the directory.
        std::fs::write(r.join("file"), "").unwrap();
        let err = make_working_dir(r, &[], "/file/sub").unwrap_err();
        assert!(err.contains("/file/sub"), "{err}");
    }

    #[test]
    fn working_dir_under_a_volume_is_made_in_the_volume() {
        let root = tempfile::tempdir().unwrap();
        let vol = tempfile::tempdir().unwrap();
        let mount = |read_only| BindMount {
            source: vol.path().to_path_buf(),
            destination: "/data".into(),
            read_only,
            propagation: Propagation::Private,
        };
        make_working_dir(root.path(), &[mount(false)], "/data/./sub/../w").unwrap();
        assert!(vol.path().join("w").is_dir());
        assert!(!root.path().join("data").exists());
        make_working_dir(root.path(), &[mount(true)], "/data/ro").unwrap();
        assert!(!vol.path().join("ro").exists());
    }

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
