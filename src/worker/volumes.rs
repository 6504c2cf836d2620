//! A pod's volumes on this node: one directory per volume under
//! `<data>/pods/<uid>/volumes/<name>`, made before the pod's first container
//! starts, brought up to date when a new assignment changes what they hold,
//! and removed (unmounted first) when the pod is released.
//!
//! - `emptyDir`: a directory; `medium: Memory` mounts a tmpfs there
//!   (`sizeLimit` is its size).
//! - `hostPath`: the host path itself, after the `type` check.
//! - `configMap`: files written with the kubelet's atomic-writer layout
//!   ([`write_atomic`]): `..data` points at a timestamped directory and each
//!   top-level name is a symlink through `..data`, so an update is one rename
//!   and a reader never sees half of it. A `subPath` mount binds the file the
//!   symlink resolved to when the container started, so it does not update
//!   (as in Kubernetes).
//! - `secret`, `downwardAPI`, `projected`: the same, on a tmpfs mounted per
//!   volume (as the kubelet does), so secrets never reach the SD card.
//! - `persistentVolumeClaim` (the local-path provisioner, node side): the
//!   directory `<data>/volumes/<claim uid>`, made on first use and kept when
//!   the pod goes, so the next pod with the claim finds its data.
//!
//! Owns: everything under `<data>/pods/` and `<data>/volumes/`. Must not touch: containers (the
//! runtime bind-mounts what [`prepare`] returns), other pods' directories.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use nix::mount::{MntFlags, MsFlags};

use super::containers::{
    self, ConfigError, NodeContext, configmap_data, field_value, resource_value, secret_data,
};
use super::podsync::PodRecord;
use crate::api::quantity;
use crate::master::controllers::volumes::POD_CLAIM_ANNOTATION_PREFIX;
use crate::runtime::BindMount;

/// Kubernetes' default file mode for configMap, secret, downward API and
/// projected volumes (0644, `420` in manifests).
pub const DEFAULT_MODE: u32 = 0o644;

/// Name of the symlink to the current payload directory.
const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The kubelet's `FailedMount` wording.
    #[error("MountVolume.SetUp failed for volume {volume:?}: {reason}")]
    SetUp { volume: String, reason: String },
    #[error("subPath {sub_path:?} of volume mount {mount:?}: {reason}")]
    SubPath {
        mount: String,
        sub_path: String,
        reason: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: still mounted after unmounting; not removing it")]
    StillMounted { path: PathBuf },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

/// `<data>/pods/<uid>`.
pub fn pod_dir(pods_root: &Path, uid: &str) -> PathBuf {
    pods_root.join(uid)
}

/// One file of a volume: content and mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContent {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path → content: what one configMap, secret, downward API or
/// projected volume holds.
pub type Payload = BTreeMap<String, FileContent>;

/// Makes every volume of `pod` exist and hold what it should now; returns
/// the host path of each. Idempotent: run before each container start and
/// whenever a new assignment arrives.
pub fn prepare(
    pods_root: &Path,
    pod: &Pod,
    rec: &PodRecord,
    node: &NodeContext,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    let base = pod_dir(pods_root, &rec.uid).join("volumes");
    let mut out = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        let setup = |reason: String| VolumeError::SetUp {
            volume: v.name.clone(),
            reason,
        };
        let dir = base.join(&v.name);
        let path = if let Some(e) = &v.empty_dir {
            make_dir(&dir, 0o777, fs_group).map_err(|e| setup(e.to_string()))?;
            if e.medium.as_deref() == Some("Memory") {
                let size = e
                    .size_limit
                    .as_ref()
                    .map(quantity::units)
                    .transpose()
                    .map_err(|e| setup(format!("sizeLimit: {e}")))?;
                mount_tmpfs(&dir, 0o777, size).map_err(|e| setup(e.to_string()))?;
                set_group(&dir, fs_group, 0o2777).map_err(|e| setup(e.to_string()))?;
            } else if let Some(g) = e.medium.as_deref().filter(|m| !m.is_empty()) {
                return Err(setup(format!("emptyDir medium {g:?} is not supported")));
            }
            dir
        } else if let Some(h) = &v.host_path {
            check_host_path(Path::new(&h.path), h.type_.as_deref().unwrap_or("")).map_err(setup)?;
            PathBuf::from(&h.path)
        } else if v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some()
        {
            let payload = payload(pod, rec, node, v).map_err(|e| setup(e.to_string()))?;
            // Only configMaps go to disk; anything that may hold a secret
            // (or is cheap to rebuild) lives on a tmpfs of its own.
            if v.config_map.is_none() {
                make_dir(&dir, 0o755, None).map_err(|e| setup(e.to_string()))?;
                mount_tmpfs(&dir, 0o755, None).map_err(|e| setup(e.to_string()))?;
            }
            if let Some(payload) = payload {
                write_atomic(&dir, &payload, fs_group).map_err(|e| setup(e.to_string()))?;
            } else {
                // Optional and absent: an empty volume, as Kubernetes mounts it.
                make_dir(&dir, 0o755, None).map_err(|e| setup(e.to_string()))?;
            }
            dir
        } else if let Some(c) = &v.persistent_volume_claim {
            let dir = claim_dir(pods_root, pod, &v.name).ok_or_else(|| {
                setup(format!(
                    "persistentVolumeClaim {:?} is not bound to this pod yet",
                    c.claim_name
                ))
            })?;
            make_dir(&dir, 0o777, fs_group).map_err(|e| setup(e.to_string()))?;
            dir
        } else {
            return Err(setup(
                "only emptyDir, hostPath, configMap, secret, downwardAPI, projected and persistentVolumeClaim volumes are supported"
                    .into(),
            ));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// The directory of a local-path claim volume: `<data>/volumes/<claim uid>`
/// (beside `<data>/pods`), named by the pod's `volumes.bramble.io/<volume>`
/// annotation that the master sets when it binds the claim. It outlives the
/// pod: [`teardown`] removes only `<data>/pods/<uid>`. `None` until bound, or
/// when the annotation is not a plain uid.
pub fn claim_dir(pods_root: &Path, pod: &Pod, volume: &str) -> Option<PathBuf> {
    // The master sets it when it binds the claim (`controllers::volumes`).
    let key = format!("{POD_CLAIM_ANNOTATION_PREFIX}{volume}");
    let uid = pod.metadata.annotations.as_ref()?.get(&key)?;
    let plain = !uid.is_empty()
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    plain.then(|| {
        pods_root
            .parent()
            .unwrap_or(pods_root)
            .join("volumes")
            .join(uid)
    })
}

fn make_dir(dir: &Path, mode: u32, fs_group: Option<u32>) -> io::Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        set_group(dir, fs_group, mode | 0o2000)?;
    }
    Ok(())
}

/// Gives `fsGroup` the directory, setgid so new files inherit the group.
fn set_group(dir: &Path, fs_group: Option<u32>, mode: u32) -> io::Result<()> {
    if let Some(g) = fs_group {
        nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(g)))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn mount_tmpfs(dir: &Path, mode: u32, size: Option<i64>) -> io::Result<()> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut data = format!("mode={mode:o}");
    if let Some(s) = size.filter(|s| *s > 0) {
        data.push_str(&format!(",size={s}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("mounting a tmpfs on {}: {e}", dir.display()),
        )
    })
}

/// Kubernetes' `hostPath` `type` check; `DirectoryOrCreate` and
/// `FileOrCreate` create what is missing. `""` checks nothing.
pub fn check_host_path(path: &Path, typ: &str) -> Result<(), String> {
    let failed = |what: &str| {
        format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        )
    };
    let meta = std::fs::metadata(path).ok();
    let ft = meta.as_ref().map(|m| m.file_type());
    match typ {
        "" => Ok(()),
        "DirectoryOrCreate" if meta.is_none() => std::fs::create_dir_all(path)
            .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("creating directory {}: {e}", path.display())),
        "FileOrCreate" if meta.is_none() => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("creating directory {}: {e}", parent.display()))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|_| {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                })
                .map_err(|e| format!("creating file {}: {e}", path.display()))
        }
        "Directory" | "DirectoryOrCreate" if ft.is_some_and(|t| t.is_dir()) => Ok(()),
        "Directory" | "DirectoryOrCreate" => Err(failed("a directory")),
        "File" | "FileOrCreate" if ft.is_some_and(|t| t.is_file()) => Ok(()),
        "File" | "FileOrCreate" => Err(failed("a file")),
        "Socket" if ft.is_some_and(|t| t.is_socket()) => Ok(()),
        "Socket" => Err(failed("a socket file")),
        "CharDevice" if ft.is_some_and(|t| t.is_char_device()) => Ok(()),
        "CharDevice" => Err(failed("a character device")),
        "BlockDevice" if ft.is_some_and(|t| t.is_block_device()) => Ok(()),
        "BlockDevice" => Err(failed("a block device")),
        other => Err(format!("hostPath type {other:?} is not a known type")),
    }
}

fn mode_of(v: Option<i32>, default: u32, what: &str) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(m) if (0..=0o777).contains(&m) => Ok(m as u32),
        Some(m) => Err(ConfigError::Mount {
            mount: what.into(),
            reason: format!("mode {m} is not between 0 and 0777 (511)"),
        }),
    }
}

/// Entries projected through `items` (key → path, mode), or every key.
fn project(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    optional: bool,
    what: &str,
    out: &mut Payload,
) -> Result<(), ConfigError> {
    match items {
        None => {
            for (k, v) in data {
                out.insert(
                    k.clone(),
                    FileContent {
                        data: v.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for it in items {
                let Some(v) = data.get(&it.key) else {
                    if optional {
                        continue;
                    }
                    return Err(ConfigError::Mount {
                        mount: what.into(),
                        reason: format!("configuration has no key {:?}", it.key),
                    });
                };
                out.insert(
                    it.path.clone(),
                    FileContent {
                        data: v.clone(),
                        mode: mode_of(it.mode, default_mode, what)?,
                    },
                );
            }
        }
    }
    Ok(())
}

fn downward_files(
    pod: &Pod,
    rec: &PodRecord,
    node: &NodeContext,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    out: &mut Payload,
) -> Result<(), ConfigError> {
    let first = Container::default();
    let spec_first = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .unwrap_or(&first);
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            field_value(pod, rec, node, &f.field_path).ok_or_else(|| ConfigError::FieldPath {
                var: it.path.clone(),
                path: f.field_path.clone(),
            })?
        } else if let Some(r) = &it.resource_field_ref {
            resource_value(pod, spec_first, r, node)?
        } else {
            continue;
        };
        out.insert(
            it.path.clone(),
            FileContent {
                data: value.into_bytes(),
                mode: mode_of(it.mode, default_mode, &it.path)?,
            },
        );
    }
    Ok(())
}

/// What a configMap, secret, downward API or projected volume holds now;
/// `None` for an optional source that does not exist.
pub fn payload(
    pod: &Pod,
    rec: &PodRecord,
    node: &NodeContext,
    v: &Volume,
) -> Result<Option<Payload>, ConfigError> {
    let mut out = Payload::new();
    if let Some(c) = &v.config_map {
        let mode = mode_of(c.default_mode, DEFAULT_MODE, &v.name)?;
        match containers::configmap(node, pod, &c.name) {
            Ok(cm) => project(
                &configmap_data(cm),
                c.items.as_ref(),
                mode,
                c.optional == Some(true),
                &v.name,
                &mut out,
            )?,
            Err(_) if c.optional == Some(true) => return Ok(None),
            Err(e) => return Err(e),
        }
    } else if let Some(s) = &v.secret {
        let mode = mode_of(s.default_mode, DEFAULT_MODE, &v.name)?;
        let name = s.secret_name.clone().unwrap_or_default();
        match containers::secret(node, pod, &name) {
            Ok(secret) => project(
                &secret_data(secret),
                s.items.as_ref(),
                mode,
                s.optional == Some(true),
                &v.name,
                &mut out,
            )?,
            Err(_) if s.optional == Some(true) => return Ok(None),
            Err(e) => return Err(e),
        }
    } else if let Some(d) = &v.downward_api {
        let mode = mode_of(d.default_mode, DEFAULT_MODE, &v.name)?;
        downward_files(
            pod,
            rec,
            node,
            d.items.as_deref().unwrap_or_default(),
            mode,
            &mut out,
        )?;
    } else if let Some(p) = &v.projected {
        let mode = mode_of(p.default_mode, DEFAULT_MODE, &v.name)?;
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                match containers::configmap(node, pod, &c.name) {
                    Ok(cm) => project(
                        &configmap_data(cm),
                        c.items.as_ref(),
                        mode,
                        c.optional == Some(true),
                        &v.name,
                        &mut out,
                    )?,
                    Err(_) if c.optional == Some(true) => {}
                    Err(e) => return Err(e),
                }
            } else if let Some(s) = &src.secret {
                match containers::secret(node, pod, &s.name) {
                    Ok(secret) => project(
                        &secret_data(secret),
                        s.items.as_ref(),
                        mode,
                        s.optional == Some(true),
                        &v.name,
                        &mut out,
                    )?,
                    Err(_) if s.optional == Some(true) => {}
                    Err(e) => return Err(e),
                }
            } else if let Some(d) = &src.downward_api {
                downward_files(
                    pod,
                    rec,
                    node,
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                    &mut out,
                )?;
            } else {
                return Err(ConfigError::Mount {
                    mount: v.name.clone(),
                    reason: "only configMap, secret and downwardAPI projections are supported"
                        .into(),
                });
            }
        }
    }
    Ok(Some(out))
}

/// A payload path: relative, no `..` component, not starting with `..`
/// (the writer's own names).
fn valid_payload_path(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && !p.starts_with("..")
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The payload currently published in `dir` (through `..data`), if any.
fn read_current(dir: &Path) -> Option<Payload> {
    let data = std::fs::read_link(dir.join(DATA_DIR)).ok()?;
    let root = dir.join(data);
    let mut out = Payload::new();
    fn walk(root: &Path, rel: &Path, out: &mut Payload) -> io::Result<()> {
        for e in std::fs::read_dir(root.join(rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.is_dir() {
                walk(root, &r, out)?;
            } else {
                out.insert(
                    r.to_string_lossy().into_owned(),
                    FileContent {
                        data: std::fs::read(e.path())?,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
        Ok(())
    }
    walk(&root, Path::new(""), &mut out).ok()?;
    Some(out)
}

/// Publishes `payload` in `dir` the way the kubelet's AtomicWriter does:
/// the files go to a new `..<timestamp>` directory, `..data_tmp` is pointed
/// at it and renamed over `..data` (one atomic step), top-level symlinks
/// `<name>` → `..data/<name>` are added or removed, and the old directory is
/// deleted. Returns whether anything changed (an identical payload writes
/// nothing).
pub fn write_atomic(
    dir: &Path,
    payload: &Payload,
    fs_group: Option<u32>,
) -> Result<bool, VolumeError> {
    for p in payload.keys() {
        if !valid_payload_path(p) {
            return Err(VolumeError::Io {
                context: format!("volume file path {p:?}"),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "must be relative, without '..' and not start with '..'",
                ),
            });
        }
    }
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    if read_current(dir).as_ref() == Some(payload) {
        return Ok(false);
    }
    let old = std::fs::read_link(dir.join(DATA_DIR)).ok();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts_name = format!("..{}_{:09}", now.as_secs(), now.subsec_nanos());
    while dir.join(&ts_name).exists() {
        ts_name.push('_');
    }
    let ts_dir = dir.join(&ts_name);
    std::fs::create_dir(&ts_dir).map_err(io_err(format!("creating {}", ts_dir.display())))?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(format!("chmod {}", ts_dir.display())))?;
    let gid = fs_group.map(nix::unistd::Gid::from_raw);
    for (rel, file) in payload {
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent()
            && parent != ts_dir
        {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&path, &file.data).map_err(io_err(format!("writing {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
            .map_err(io_err(format!("chmod {}", path.display())))?;
        if gid.is_some() {
            nix::unistd::chown(&path, None, gid)
                .map_err(|e| io_err(format!("chown {}", path.display()))(e.into()))?;
        }
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts_name, &tmp).map_err(io_err(format!("linking {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(DATA_DIR)).map_err(io_err(format!(
        "publishing {}",
        dir.join(DATA_DIR).display()
    )))?;
    let tops: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|p| Path::new(p).components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_DIR).join(top), &link)
                .map_err(io_err(format!("linking {}", link.display())))?;
        }
    }
    for e in std::fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))? {
        let e = e.map_err(io_err(format!("listing {}", dir.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| *o != Path::new(&ts_name)) {
        let old = dir.join(old);
        if old.starts_with(dir)
            && old
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".."))
        {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(true)
}

/// Checks each mount's `subPath` (its source deeper than the volume's own
/// directory): resolved on the host, it must stay inside the volume; a
/// missing one is created as a directory, as the kubelet does. The source is
/// replaced by the resolved path, so a configMap subPath binds the file
/// itself and does not follow updates.
pub fn resolve_sub_paths(
    mounts: &mut [BindMount],
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<(), VolumeError> {
    for m in mounts.iter_mut() {
        if volumes.values().any(|v| *v == m.source) {
            continue;
        }
        let Some(base) = volumes
            .values()
            .filter(|v| m.source.starts_with(v))
            .max_by_key(|v| v.as_os_str().len())
        else {
            continue;
        };
        let sub = m
            .source
            .strip_prefix(base)
            .unwrap_or(&m.source)
            .to_path_buf();
        let fail = |reason: String| VolumeError::SubPath {
            mount: m.destination.clone(),
            sub_path: sub.display().to_string(),
            reason,
        };
        let base_real = std::fs::canonicalize(base).map_err(|e| fail(e.to_string()))?;
        if std::fs::symlink_metadata(&m.source).is_err() {
            std::fs::create_dir_all(&m.source).map_err(|e| fail(e.to_string()))?;
        }
        let real = std::fs::canonicalize(&m.source).map_err(|e| fail(e.to_string()))?;
        if !real.starts_with(&base_real) {
            return Err(fail(format!(
                "resolves to {}, outside the volume",
                real.display()
            )));
        }
        m.source = real;
    }
    Ok(())
}

/// Mount points at or under `dir`, deepest first, from our mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
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

fn is_mount_point(dir: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(dir) else {
        return false;
    };
    mounts_under(&real).contains(&real)
}

/// Unmounts everything under `<data>/pods/<uid>` and removes it. Never
/// removes through a mount: if one is left, it fails and the caller retries.
pub fn teardown(pods_root: &Path, uid: &str) -> Result<(), VolumeError> {
    remove_tree(&pod_dir(pods_root, uid))
}

/// Unmounts and removes every pod's volumes (for `bramble down`).
pub fn teardown_all(pods_root: &Path) -> Result<(), VolumeError> {
    remove_tree(pods_root)
}

fn remove_tree(dir: &Path) -> Result<(), VolumeError> {
    let Ok(real) = std::fs::canonicalize(dir) else {
        return Ok(()); // nothing there
    };
    for m in mounts_under(&real) {
        if let Err(e) = nix::mount::umount2(&m, MntFlags::MNT_DETACH)
            && e != nix::errno::Errno::EINVAL
            && e != nix::errno::Errno::ENOENT
        {
            return Err(io_err(format!("unmounting {}", m.display()))(e.into()));
        }
    }
    if let Some(left) = mounts_under(&real).into_iter().next() {
        return Err(VolumeError::StillMounted { path: left });
    }
    match std::fs::remove_dir_all(&real) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("removing {}", real.display()))(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(s: &str, mode: u32) -> FileContent {
        FileContent {
            data: s.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn atomic_writer_layout_updates_and_removals() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let one = Payload::from([
            ("a".to_string(), file("1", 0o644)),
            ("sub/b".to_string(), file("2", 0o400)),
        ]);
        assert!(write_atomic(&dir, &one, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let first = std::fs::read_link(dir.join(DATA_DIR)).unwrap();
        assert!(first.to_string_lossy().starts_with(".."));
        let mode = std::fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        // The same payload again changes nothing.
        assert!(!write_atomic(&dir, &one, None).unwrap());
        assert_eq!(std::fs::read_link(dir.join(DATA_DIR)).unwrap(), first);

        // An update swaps ..data, drops what left, adds what came, and
        // removes the old directory.
        let two = Payload::from([
            ("a".to_string(), file("one", 0o644)),
            ("c".to_string(), file("3", 0o600)),
        ]);
        assert!(write_atomic(&dir, &two, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(dir.join("c")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err());
        assert!(!dir.join(&first).exists());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            4,
            "{names:?}: a, c, ..data, one timestamped dir"
        );
        assert!(!names.iter().any(|n| n == DATA_TMP));
        assert_eq!(read_current(&dir).unwrap(), two);
    }

    #[test]
    fn atomic_writer_rejects_escaping_paths() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["../x", "/abs", "..data", "a/../../b", ""] {
            let p = Payload::from([(bad.to_string(), file("x", 0o644))]);
            assert!(write_atomic(tmp.path(), &p, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claim_volumes_live_beside_the_pods_and_need_a_plain_uid() {
        let mut pod = Pod::default();
        let root = Path::new("/data/pods");
        assert_eq!(claim_dir(root, &pod, "data"), None, "not bound yet");
        let mut set = |uid: &str| {
            pod.metadata.annotations = Some(
                [(
                    format!("{POD_CLAIM_ANNOTATION_PREFIX}data"),
                    uid.to_string(),
                )]
                .into(),
            );
            claim_dir(root, &pod, "data")
        };
        assert_eq!(
            set("3f0c-11aa"),
            Some(PathBuf::from("/data/volumes/3f0c-11aa"))
        );
        assert_eq!(set("../../etc"), None);
        assert_eq!(set(""), None);
    }

    #[test]
    fn host_path_types() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("made/here");
        check_host_path(&d, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        check_host_path(&d, "Directory").unwrap();
        let err = check_host_path(&d, "File").unwrap_err();
        assert_eq!(
            err,
            format!("hostPath type check failed: {} is not a file", d.display())
        );
        let f = tmp.path().join("deep/f.txt");
        check_host_path(&f, "FileOrCreate").unwrap();
        assert!(f.is_file());
        check_host_path(&f, "File").unwrap();
        assert!(check_host_path(&f, "Directory").is_err());
        assert!(check_host_path(&f, "DirectoryOrCreate").is_err());
        assert!(check_host_path(&tmp.path().join("missing"), "File").is_err());
        assert!(check_host_path(&tmp.path().join("missing"), "Directory").is_err());
        assert!(check_host_path(&tmp.path().join("missing"), "").is_ok());
        check_host_path(Path::new("/dev/null"), "CharDevice").unwrap();
        assert!(check_host_path(Path::new("/dev/null"), "BlockDevice").is_err());
        assert!(check_host_path(&f, "Socket").is_err());
        let sock = tmp.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        check_host_path(&sock, "Socket").unwrap();
        assert!(check_host_path(&f, "Weird").is_err());
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let payload = Payload::from([("key".to_string(), file("v", 0o644))]);
        write_atomic(&vol, &payload, None).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("evil")).unwrap();
        let volumes = BTreeMap::from([("v".to_string(), vol.clone())]);
        let mount = |sub: &str| BindMount {
            source: vol.join(sub),
            destination: "/m".into(),
            read_only: false,
            propagation: Default::default(),
        };
        let mut ms = vec![mount("key"), mount("newdir")];
        resolve_sub_paths(&mut ms, &volumes).unwrap();
        // The configMap key resolves to the file in the timestamped directory.
        let real_vol = std::fs::canonicalize(&vol).unwrap();
        assert!(ms[0].source.starts_with(&real_vol));
        assert!(ms[0].source.to_string_lossy().contains("/.."));
        assert!(ms[1].source.is_dir(), "a missing subPath is created");
        let mut bad = vec![mount("evil")];
        assert!(matches!(
            resolve_sub_paths(&mut bad, &volumes),
            Err(VolumeError::SubPath { .. })
        ));
    }

    #[test]
    fn teardown_unmounts_before_removing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pods");
        let dir = pod_dir(&root, "uid1").join("volumes/mem");
        std::fs::create_dir_all(&dir).unwrap();
        mount_tmpfs(&dir, 0o777, Some(1 << 20)).unwrap();
        assert!(is_mount_point(&dir));
        mount_tmpfs(&dir, 0o777, Some(1 << 20)).unwrap();
        assert_eq!(
            mounts_under(&std::fs::canonicalize(&dir).unwrap()).len(),
            1,
            "mounted once"
        );
        std::fs::write(dir.join("x"), "y").unwrap();
        teardown(&root, "uid1").unwrap();
        assert!(!pod_dir(&root, "uid1").exists());
        assert!(mounts_under(&std::fs::canonicalize(&root).unwrap()).is_empty());
        teardown(&root, "uid1").unwrap();
    }

    #[test]
    fn payloads_of_configmap_secret_and_projected_volumes() {
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::{
            ConfigMap, ConfigMapProjection, ConfigMapVolumeSource, DownwardAPIProjection,
            ObjectFieldSelector, PodSpec, ProjectedVolumeSource, Secret, SecretVolumeSource,
            VolumeProjection,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let meta = |name: &str| ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        };
        let cms = [ConfigMap {
            metadata: meta("cfg"),
            data: Some(BTreeMap::from([
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string()),
            ])),
            ..Default::default()
        }];
        let secrets = [Secret {
            metadata: meta("s"),
            data: Some(BTreeMap::from([(
                "k".to_string(),
                ByteString(b"from-data".to_vec()),
            )])),
            string_data: Some(BTreeMap::from([(
                "t".to_string(),
                "from-string".to_string(),
            )])),
            ..Default::default()
        }];
        let node = NodeContext {
            configmaps: &cms,
            secrets: &secrets,
            ..Default::default()
        };
        let pod = Pod {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "x".to_string())])),
                ..meta("p")
            },
            spec: Some(PodSpec::default()),
            status: None,
        };
        let rec = PodRecord::new(&pod, 0);
        let vol = |v: Volume| payload(&pod, &rec, &node, &v);
        let picked = vol(Volume {
            name: "v".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "cfg".into(),
                items: Some(vec![KeyToPath {
                    key: "b".into(),
                    path: "dir/bee".into(),
                    mode: Some(0o600),
                }]),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            picked,
            Payload::from([("dir/bee".to_string(), file("2", 0o600))])
        );
        let secret = vol(Volume {
            name: "v".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("s".into()),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            secret,
            Payload::from([
                ("k".to_string(), file("from-data", 0o400)),
                ("t".to_string(), file("from-string", 0o400)),
            ])
        );
        // Optional and absent: no payload; required and absent: an error.
        let missing = |optional| {
            vol(Volume {
                name: "v".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("nope".into()),
                    optional,
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        assert_eq!(missing(Some(true)).unwrap(), None);
        assert_eq!(
            missing(None).unwrap_err().to_string(),
            "secret \"nope\" not found"
        );
        let projected = vol(Volume {
            name: "v".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "cfg".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "labels".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.labels".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }]),
                        }),
                        ..Default::default()
                    },
                ]),
                default_mode: None,
            }),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(projected.keys().collect::<Vec<_>>(), ["a", "b", "labels"]);
        assert_eq!(projected["labels"], file("app=\"x\"\n", DEFAULT_MODE));
        let bad_mode = vol(Volume {
            name: "v".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "cfg".into(),
                default_mode: Some(0o1777),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(bad_mode.is_err());
    }
}
