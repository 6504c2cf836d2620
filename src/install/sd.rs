//! `bramble image prepare-sd`: makes a Raspberry Pi OS image (`.img`,
//! `.img.xz`) or an SD card join a cluster on first boot.
//!
//! The image's partitions are reached through a loop device (an SD card
//! directly). The ext4 root is mounted, first read-only to check everything
//! (layout, architecture, free space) before a byte is written, then
//! read-write. The FAT boot partition is read and written with mtools, not
//! mounted: kernels built without `vfat` (minimal VMs, this project's CI)
//! cannot mount it, and mtools needs no kernel support. Onto the root filesystem go
//! the binary, `/etc/bramble/worker.toml` (0600: it holds the join token),
//! the unit and its enable link, as `bramble install worker` writes them;
//! onto the boot partition the memory cgroup kernel arguments and the first
//! boot's hook: cloud-init `user-data` on images that have cloud-init, a
//! `firstrun.sh` run through `systemd.run=` otherwise. Every mount and loop
//! device is released on every path out, errors and panics included.
//!
//! Must not touch: anything but the image or device it is given.

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};

use super::boot::{self, ElfArch, KernelVersion};
use super::{InstallError, InstallPlan, Role, Written, install_files, io_err, under};
use crate::config::WorkerFile;

/// What to prepare, and with what.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// An image file (`.img`, `.img.xz`) or a block device (SD card).
    pub target: PathBuf,
    /// Where an `.img.xz` is unpacked (default: beside it, without `.xz`).
    pub output: Option<PathBuf>,
    /// Overwrite `output` if it exists.
    pub force: bool,
    /// The `bramble` binary built for the image's architecture.
    pub binary: PathBuf,
    /// The worker's settings (broker, join token, name, labels).
    pub worker: WorkerFile,
    /// A rule the first boot names the node by, when `worker.node_name` is unset.
    pub node_name_rule: Option<String>,
}

/// How the image runs its first-boot step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstBootHook {
    CloudInit,
    Firstrun,
}

/// What a preparation found and wrote.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The image written (the unpacked one for an `.img.xz`), or the device.
    pub image: PathBuf,
    /// Where the Pi mounts its boot partition (`/boot/firmware`, `/boot`).
    pub boot_path: String,
    pub arch: ElfArch,
    pub kernels: Vec<String>,
    pub cgroup_args: Vec<&'static str>,
    pub hook: FirstBootHook,
    pub root: Written,
    pub boot: Written,
}

/// Prepares `opts.target`. On an error before writing (a layout the Pi would
/// not boot as expected, a binary for another architecture, too little
/// space) the image is untouched.
pub fn prepare(opts: &PrepareOptions) -> Result<Prepared, InstallError> {
    let arch = binary_arch(&opts.binary)?;
    let meta = fs::metadata(&opts.target).map_err(io_err(&opts.target))?;
    if meta.file_type().is_block_device() {
        if opts.output.is_some() {
            return Err(InstallError::Invalid {
                field: "output",
                reason: "only an .img.xz is unpacked to an output file".into(),
            });
        }
        refuse_mounted(&opts.target)?;
        return prepare_device(&opts.target, &opts.target, opts, arch);
    }
    if !meta.is_file() {
        return Err(InstallError::Invalid {
            field: "target",
            reason: format!(
                "{} is neither an image file nor a block device",
                opts.target.display()
            ),
        });
    }
    let is_xz = opts.target.extension().is_some_and(|e| e == "xz");
    if !is_xz {
        if opts.output.is_some() {
            return Err(InstallError::Invalid {
                field: "output",
                reason:
                    "only an .img.xz is unpacked to an output file; an .img is prepared in place"
                        .into(),
            });
        }
        let lo = LoopDevice::attach(&opts.target)?;
        return prepare_device(&lo.dev, &opts.target, opts, arch);
    }
    let out = match &opts.output {
        Some(o) => o.clone(),
        None => opts.target.with_extension(""),
    };
    if out.exists() && !opts.force {
        return Err(InstallError::Exists { path: out });
    }
    unpack_xz(&opts.target, &out)?;
    let result = LoopDevice::attach(&out).and_then(|lo| prepare_device(&lo.dev, &out, opts, arch));
    if result.is_err() {
        // Ours, and half-prepared at worst: the .xz is the original.
        let _ = fs::remove_file(&out);
    }
    result
}

fn binary_arch(binary: &Path) -> Result<ElfArch, InstallError> {
    let mut header = [0u8; 64];
    let mut f = fs::File::open(binary).map_err(io_err(binary))?;
    let n = f.read(&mut header).map_err(io_err(binary))?;
    ElfArch::parse(&header[..n]).ok_or_else(|| InstallError::NotElf {
        path: binary.to_path_buf(),
    })
}

fn unpack_xz(src: &Path, out: &Path) -> Result<(), InstallError> {
    let partial = out.with_extension("img.partial");
    let file = fs::File::create(&partial).map_err(io_err(&partial))?;
    let status = Command::new("xz")
        .args(["--decompress", "--stdout", "--threads=0"])
        .arg(src)
        .stdout(Stdio::from(file))
        .stderr(Stdio::piped())
        .output();
    let fail = |detail: String| {
        let _ = fs::remove_file(&partial);
        InstallError::Command {
            command: format!("xz --decompress {}", src.display()),
            detail,
        }
    };
    match status {
        Err(e) => return Err(fail(format!("{e} (xz comes with the xz-utils package)"))),
        Ok(o) if !o.status.success() => {
            return Err(fail(String::from_utf8_lossy(&o.stderr).trim().to_string()));
        }
        Ok(_) => {}
    }
    fs::rename(&partial, out).map_err(io_err(out))
}

/// A loop device over an image file, with its partitions scanned; detached
/// on drop.
pub struct LoopDevice {
    pub dev: PathBuf,
}

impl LoopDevice {
    pub fn attach(image: &Path) -> Result<LoopDevice, InstallError> {
        let image_s = image.to_string_lossy();
        let out = super::run_tool("losetup", &["--find", "--show", "--partscan", &image_s])?;
        Ok(LoopDevice {
            dev: PathBuf::from(out.trim()),
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = super::run_tool("losetup", &["--detach", &self.dev.to_string_lossy()]) {
            tracing::warn!(device = %self.dev.display(), "cannot detach loop device: {e}");
            return;
        }
        // While anything else holds the device open (a probe by another
        // program), the kernel defers the detach to the last close: wait for
        // it, so the image is free when we return.
        let name = self.dev.file_name().unwrap_or_default();
        let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
        let deadline = Instant::now() + Duration::from_secs(5);
        while backing.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if backing.exists() {
            tracing::warn!(device = %self.dev.display(), "still attached: something holds it open");
        }
    }
}

/// A filesystem mounted on a directory of its own; unmounted (lazily if it
/// is busy) and the directory removed on drop.
pub struct Mounted {
    pub dir: PathBuf,
}

impl Mounted {
    pub fn mount(
        dev: &Path,
        dir: &Path,
        fstype: &str,
        read_only: bool,
        data: Option<&str>,
    ) -> Result<Mounted, InstallError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let flags = if read_only {
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        } else {
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        };
        if let Err(e) = nix::mount::mount(Some(dev), dir, Some(fstype), flags, data) {
            let _ = fs::remove_dir(dir);
            return Err(InstallError::Command {
                command: format!("mount -t {fstype} {} {}", dev.display(), dir.display()),
                detail: e.desc().to_string(),
            });
        }
        Ok(Mounted {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if nix::mount::umount2(&self.dir, MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.dir, MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A scratch directory for the mount points; removed (only if empty, never
/// recursively, so nothing mounted under it can be lost) on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir, InstallError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bramble-sd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// A FAT filesystem on a device or file, read and written through mtools.
pub struct Fat {
    pub dev: PathBuf,
}

impl Fat {
    fn mtools(&self, tool: &str, args: &[&str]) -> Result<std::process::Output, InstallError> {
        Command::new(tool)
            .arg("-i")
            .arg(&self.dev)
            .args(args)
            // Partitions of images have no meaningful disk geometry.
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .map_err(|e| InstallError::Command {
                command: format!("{tool} -i {} {}", self.dev.display(), args.join(" ")),
                detail: format!("{e} (mtools comes with the mtools package)"),
            })
    }

    /// A file's bytes, `None` when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, InstallError> {
        let src = format!("::/{name}");
        let out = self.mtools("mcopy", &["-n", &src, "-"])?;
        if out.status.success() {
            return Ok(Some(out.stdout));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("not found") {
            return Ok(None);
        }
        Err(InstallError::Command {
            command: format!("mcopy -i {} {src} -", self.dev.display()),
            detail: err.trim().to_string(),
        })
    }

    pub fn read_text(&self, name: &str) -> Result<Option<String>, InstallError> {
        Ok(self
            .read(name)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Writes `bytes` as `name` unless it already holds exactly that.
    pub fn write_if_changed(
        &self,
        name: &str,
        bytes: &[u8],
        scratch: &Path,
    ) -> Result<bool, InstallError> {
        if self.read(name)?.as_deref() == Some(bytes) {
            return Ok(false);
        }
        let tmp = scratch.join("fat-file");
        fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        let dst = format!("::/{name}");
        let out = self.mtools("mcopy", &["-o", "-n", &tmp.to_string_lossy(), &dst])?;
        let _ = fs::remove_file(&tmp);
        if !out.status.success() {
            return Err(InstallError::Command {
                command: format!("mcopy -o -i {} {dst}", self.dev.display()),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(true)
    }
}

/// The partitions of a block device, by number, as the kernel lists them.
pub fn partitions(dev: &Path) -> Result<Vec<(u32, PathBuf)>, InstallError> {
    let real = fs::canonicalize(dev).map_err(io_err(dev))?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sys = PathBuf::from("/sys/class/block").join(&name);
    let mut parts = Vec::new();
    for entry in fs::read_dir(&sys).map_err(io_err(&sys))? {
        let entry = entry.map_err(io_err(&sys))?;
        let Ok(n) = fs::read_to_string(entry.path().join("partition")) else {
            continue;
        };
        if let Ok(n) = n.trim().parse() {
            parts.push((n, PathBuf::from("/dev").join(entry.file_name())));
        }
    }
    parts.sort();
    Ok(parts)
}

/// Filesystems told apart by their superblocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Fat,
    Ext,
    Other,
}

pub fn probe(dev: &Path) -> Result<FsKind, InstallError> {
    let mut buf = vec![0u8; 2048];
    let mut f = fs::File::open(dev).map_err(io_err(dev))?;
    f.read_exact(&mut buf).map_err(io_err(dev))?;
    Ok(fs_kind(&buf))
}

fn fs_kind(first_2k: &[u8]) -> FsKind {
    // ext2/3/4: magic 0xEF53 at 1024 + 56.
    if first_2k[1080..1082] == [0x53, 0xEF] {
        return FsKind::Ext;
    }
    let sig = first_2k[510..512] == [0x55, 0xAA];
    if sig
        && (first_2k[54..59] == *b"FAT12"
            || first_2k[54..59] == *b"FAT16"
            || first_2k[82..87] == *b"FAT32")
    {
        return FsKind::Fat;
    }
    FsKind::Other
}

/// Refuses a device any of whose partitions (or itself) is mounted: writing
/// under a mounted filesystem corrupts it, and this also keeps the machine's
/// own disk safe from a typo.
fn refuse_mounted(device: &Path) -> Result<(), InstallError> {
    let real = fs::canonicalize(device).map_err(io_err(device))?;
    let mut devs = vec![real.clone()];
    devs.extend(partitions(&real)?.into_iter().map(|(_, p)| p));
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err(Path::new("/proc/self/mountinfo")))?;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let source = right.split_whitespace().nth(1).unwrap_or_default();
        let source = fs::canonicalize(source).unwrap_or_else(|_| PathBuf::from(source));
        if devs.contains(&source) {
            return Err(InstallError::Mounted {
                device: device.to_path_buf(),
                partition: source,
                mountpoint: left
                    .split_whitespace()
                    .nth(4)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }
    Ok(())
}

/// `path` (absolute on the image) resolved inside `root`: symlinks are
/// followed as the Pi would follow them, an absolute target from `root`.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut queue: std::collections::VecDeque<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let mut current: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        match c.as_str() {
            "." => continue,
            ".." => {
                current.pop();
                continue;
            }
            _ => current.push(c),
        }
        let here = current.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let meta = fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = fs::read_link(&here).ok()?;
            current.pop();
            let target = target.to_string_lossy().into_owned();
            if target.starts_with('/') {
                current.clear();
            }
            for (i, t) in target.split('/').filter(|c| !c.is_empty()).enumerate() {
                queue.insert(i, t.to_string());
            }
        }
    }
    let p = current.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    p.exists().then_some(p)
}

/// What the read-only look at an image found.
struct Inspection {
    boot_path: String,
    kernels: Vec<KernelVersion>,
    kernel_names: Vec<String>,
    hook: FirstBootHook,
    /// For a first-run image: the script's path on the Pi.
    firstrun_script: Option<String>,
}

fn layout(image: &Path, reason: impl Into<String>) -> InstallError {
    InstallError::UnexpectedLayout {
        image: image.to_path_buf(),
        reason: reason.into(),
    }
}

/// The boot partition's mount point in the image's `/etc/fstab`.
pub fn boot_mountpoint(fstab: &str) -> Option<String> {
    fstab.lines().find_map(|l| {
        let l = l.trim();
        if l.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[2] == "vfat" && f[1].starts_with("/boot")).then(|| f[1].to_string())
    })
}

fn inspect(
    boot: &Fat,
    root_dir: &Path,
    image: &Path,
    opts: &PrepareOptions,
    arch: ElfArch,
) -> Result<Inspection, InstallError> {
    let cmdline = boot
        .read_text("cmdline.txt")?
        .ok_or_else(|| layout(image, "the boot partition (1) has no cmdline.txt"))?;
    if cmdline.lines().filter(|l| !l.trim().is_empty()).count() != 1 {
        return Err(layout(
            image,
            "cmdline.txt is not one line of kernel arguments",
        ));
    }
    let fstab = resolve_in_root(root_dir, "/etc/fstab")
        .and_then(|p| fs::read_to_string(p).ok())
        .ok_or_else(|| layout(image, "the root filesystem (partition 2) has no /etc/fstab"))?;
    let boot_path = boot_mountpoint(&fstab).ok_or_else(|| {
        layout(
            image,
            "the image's /etc/fstab mounts no vfat boot partition under /boot",
        )
    })?;

    let image_arch = ["/bin/sh", "/usr/bin/env", "/sbin/init"]
        .iter()
        .filter_map(|p| resolve_in_root(root_dir, p))
        .find_map(|p| binary_arch(&p).ok())
        .ok_or_else(|| {
            layout(
                image,
                "no /bin/sh, /usr/bin/env or /sbin/init program in the root filesystem",
            )
        })?;
    if image_arch != arch {
        return Err(InstallError::ArchMismatch {
            binary: opts.binary.clone(),
            binary_arch: arch.to_string(),
            image: image.to_path_buf(),
            image_arch: image_arch.to_string(),
        });
    }

    let mut kernel_names: Vec<String> = resolve_in_root(root_dir, "/lib/modules")
        .and_then(|d| fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| KernelVersion::parse(n).is_some())
        .collect();
    kernel_names.sort();
    let kernels = kernel_names
        .iter()
        .filter_map(|n| KernelVersion::parse(n))
        .collect();

    let hook = if ["/usr/bin/cloud-init", "/etc/cloud/cloud.cfg"]
        .iter()
        .any(|p| resolve_in_root(root_dir, p).is_some())
    {
        FirstBootHook::CloudInit
    } else {
        FirstBootHook::Firstrun
    };
    let firstrun_script = match hook {
        FirstBootHook::CloudInit => None,
        FirstBootHook::Firstrun => {
            let script = boot::firstrun_script(&cmdline)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{boot_path}/firstrun.sh"));
            if on_boot_partition(&boot_path, &script).is_none() {
                return Err(layout(
                    image,
                    format!(
                        "cmdline.txt runs {script} at first boot, which is not on the boot partition ({boot_path})"
                    ),
                ));
            }
            Some(script)
        }
    };

    // Room for the binary on the root filesystem (the rest is a few KiB).
    let installed = resolve_in_root(root_dir, super::BINARY_PATH)
        .and_then(|p| fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let size = fs::metadata(&opts.binary)
        .map_err(io_err(&opts.binary))?
        .len();
    let free = free_bytes(root_dir)?;
    let needed = size.saturating_sub(installed) + (1 << 20);
    if free < needed {
        return Err(InstallError::NoSpace {
            image: image.to_path_buf(),
            partition: "root",
            needed,
            free,
        });
    }
    Ok(Inspection {
        boot_path,
        kernels,
        kernel_names,
        hook,
        firstrun_script,
    })
}

/// `path` (on the Pi) relative to the boot partition mounted at `boot_path`.
fn on_boot_partition<'a>(boot_path: &str, path: &'a str) -> Option<&'a str> {
    path.strip_prefix(boot_path)?
        .strip_prefix('/')
        .filter(|rest| !rest.is_empty() && !rest.split('/').any(|c| c == ".."))
}

fn free_bytes(dir: &Path) -> Result<u64, InstallError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| io_err(dir)(e.into()))?;
    // The counters are 32-bit on armv7: widen before multiplying.
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The device's partitions, with their nodes in `/dev`. A kernel without
/// the partition table's parser (minimal VM kernels) lists none even with
/// `--partscan`: then `partx` reads the table and adds them.
fn ensure_partitions(dev: &Path) -> Result<Vec<(u32, PathBuf)>, InstallError> {
    let mut parts = partitions(dev)?;
    if parts.is_empty() {
        // No table at all is reported as a layout error by the caller.
        let _ = super::run_tool("partx", &["--add", &dev.to_string_lossy()]);
        parts = partitions(dev)?;
    }
    // The nodes come from devtmpfs (or udev, which may lag a little).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !parts.iter().all(|(_, p)| p.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(parts)
}

fn prepare_device(
    dev: &Path,
    image: &Path,
    opts: &PrepareOptions,
    arch: ElfArch,
) -> Result<Prepared, InstallError> {
    let parts = ensure_partitions(dev)?;
    let part = |n: u32| parts.iter().find(|(k, _)| *k == n).map(|(_, p)| p.clone());
    let (Some(p1), Some(p2)) = (part(1), part(2)) else {
        return Err(layout(
            image,
            format!(
                "{} partition(s); a Raspberry Pi OS image has a FAT boot partition (1) and an ext4 root (2)",
                parts.len()
            ),
        ));
    };
    match (probe(&p1)?, probe(&p2)?) {
        (FsKind::Fat, FsKind::Ext) => {}
        (FsKind::Fat, other) => {
            return Err(layout(
                image,
                format!("partition 2 is not ext4 (found {other:?})"),
            ));
        }
        (other, _) => {
            return Err(layout(
                image,
                format!("partition 1 is not a FAT boot partition (found {other:?})"),
            ));
        }
    }
    let work = WorkDir::new()?;
    let root_dir = work.0.join("root");
    let boot = Fat { dev: p1 };
    let found = {
        let root = Mounted::mount(&p2, &root_dir, "ext4", true, Some("noload"))?;
        inspect(&boot, &root.dir, image, opts, arch)?
    };
    let root = Mounted::mount(&p2, &root_dir, "ext4", false, None)?;
    let root_written = write_root(&root.dir, opts)?;
    let boot_written = write_boot(&boot, &work.0, image, opts, &found)?;
    drop(root);
    nix::unistd::sync();
    Ok(Prepared {
        image: image.to_path_buf(),
        boot_path: found.boot_path.clone(),
        arch,
        kernels: found.kernel_names.clone(),
        cgroup_args: boot::cgroup_args(&found.kernels),
        hook: found.hook,
        root: root_written,
        boot: boot_written,
    })
}

fn write_root(root: &Path, opts: &PrepareOptions) -> Result<Written, InstallError> {
    let config = super::to_toml(&opts.worker, &Role::Worker.config_path())?;
    let written = install_files(
        root,
        &InstallPlan {
            role: Role::Worker,
            binary: &opts.binary,
            config: Some(&config),
            enable_link: true,
        },
    )?;
    if written.changed.contains(&Role::Worker.config_path()) {
        // New settings: the first boot names the node again.
        let done = under(root, super::name::DONE_MARKER);
        if done.exists() {
            fs::remove_file(&done).map_err(io_err(&done))?;
        }
    }
    Ok(written)
}

fn write_boot(
    boot: &Fat,
    scratch: &Path,
    image: &Path,
    opts: &PrepareOptions,
    found: &Inspection,
) -> Result<Written, InstallError> {
    let mut w = Written::default();
    let rule = opts.node_name_rule.as_deref();
    let bad = |name: &str, reason: String| InstallError::BadBootFile {
        path: PathBuf::from(format!("{}/{name}", found.boot_path)),
        reason: format!("{reason} (in {})", image.display()),
    };
    let cmdline = boot
        .read_text("cmdline.txt")?
        .ok_or_else(|| bad("cmdline.txt", "gone".into()))?;
    let new_cmdline = boot::edit_cmdline(
        &cmdline,
        &boot::cgroup_args(&found.kernels),
        found.firstrun_script.as_deref(),
    );
    w.note(
        "cmdline.txt",
        boot.write_if_changed("cmdline.txt", new_cmdline.as_bytes(), scratch)?,
    );
    match (found.hook, &found.firstrun_script) {
        (FirstBootHook::CloudInit, _) => {
            let existing = boot.read_text("user-data")?;
            let text = boot::merge_user_data(existing.as_deref(), rule)
                .map_err(|r| bad("user-data", r))?;
            w.note(
                "user-data",
                boot.write_if_changed("user-data", text.as_bytes(), scratch)?,
            );
            if boot.read("meta-data")?.is_none() {
                let meta = boot::meta_data("bramble-node");
                w.note(
                    "meta-data",
                    boot.write_if_changed("meta-data", meta.as_bytes(), scratch)?,
                );
            }
        }
        (FirstBootHook::Firstrun, Some(script)) => {
            let rel = on_boot_partition(&found.boot_path, script).unwrap_or("firstrun.sh");
            let text = match boot.read_text(rel)? {
                Some(existing) => boot::merge_firstrun(&existing, rule).map_err(|r| bad(rel, r))?,
                None => boot::firstrun_sh(&found.boot_path, script, rule),
            };
            w.note(rel, boot.write_if_changed(rel, text.as_bytes(), scratch)?);
        }
        (FirstBootHook::Firstrun, None) => {}
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_names_the_boot_mountpoint() {
        let bookworm = "proc /proc proc defaults 0 0\nPARTUUID=4e639091-01  /boot/firmware  vfat    defaults          0       2\nPARTUUID=4e639091-02  /               ext4    defaults,noatime  0       1\n";
        assert_eq!(boot_mountpoint(bookworm).as_deref(), Some("/boot/firmware"));
        let bullseye = "PARTUUID=1-01  /boot           vfat    defaults          0       2\n";
        assert_eq!(boot_mountpoint(bullseye).as_deref(), Some("/boot"));
        assert_eq!(
            boot_mountpoint("# /boot vfat\n/dev/sda1 /mnt vfat defaults 0 0\n"),
            None
        );
    }

    #[test]
    fn first_run_scripts_must_sit_on_the_boot_partition() {
        assert_eq!(
            on_boot_partition("/boot/firmware", "/boot/firmware/firstrun.sh"),
            Some("firstrun.sh")
        );
        assert_eq!(
            on_boot_partition("/boot", "/boot/firstrun.sh"),
            Some("firstrun.sh")
        );
        assert_eq!(on_boot_partition("/boot/firmware", "/usr/lib/x.sh"), None);
        assert_eq!(
            on_boot_partition("/boot/firmware", "/boot/firmware/../etc/x"),
            None
        );
        assert_eq!(on_boot_partition("/boot", "/bootx/firstrun.sh"), None);
    }

    #[test]
    fn superblocks_tell_fat_from_ext() {
        let mut b = vec![0u8; 2048];
        assert_eq!(fs_kind(&b), FsKind::Other);
        b[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(fs_kind(&b), FsKind::Ext);
        let mut b = vec![0u8; 2048];
        b[510..512].copy_from_slice(&[0x55, 0xAA]);
        b[82..87].copy_from_slice(b"FAT32");
        assert_eq!(fs_kind(&b), FsKind::Fat);
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::create_dir_all(r.join("usr/lib/modules/6.6.51+rpt-rpi-v8")).unwrap();
        fs::write(r.join("usr/bin/dash"), "x").unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        std::os::unix::fs::symlink("dash", r.join("usr/bin/sh")).unwrap();
        // Absolute: must resolve inside the root, not on this machine.
        std::os::unix::fs::symlink("/usr/bin/dash", r.join("usr/bin/abs")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in_root(r, "/bin/sh"), Some(r.join("usr/bin/dash")));
        assert_eq!(resolve_in_root(r, "/bin/abs"), Some(r.join("usr/bin/dash")));
        assert_eq!(
            resolve_in_root(r, "/lib/modules"),
            Some(r.join("usr/lib/modules"))
        );
        assert_eq!(resolve_in_root(r, "/loop"), None);
        assert_eq!(resolve_in_root(r, "/etc/fstab"), None);
    }
}
