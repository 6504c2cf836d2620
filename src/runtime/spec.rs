//! The OCI runtime spec (`config.json`) of a container, built from its image
//! config and the pod sync loop's [`ContainerConfig`]. Pure: everything read
//! from disk (`/etc/passwd` of the rootfs) is handed in.
//!
//! Defaults follow runc's and Docker's: Docker's default capability set, no
//! seccomp profile (Kubernetes' default, `Unconfined`), runc's masked and
//! read-only paths, a device cgroup that denies everything but the standard
//! devices (libcontainer adds those).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxCpuBuilder, LinuxDevice, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, RootBuilder, Spec, UserBuilder,
};

use super::{BindMount, ContainerConfig, Propagation, Resources, RuntimeError, SecurityConfig};

/// Annotations on the spec (and so in libcontainer's state) that let
/// `list_containers` name a container's pod after an agent restart.
pub const ANNOTATION_POD_UID: &str = "io.bramble.pod-uid";
pub const ANNOTATION_POD_NAMESPACE: &str = "io.bramble.pod-namespace";
pub const ANNOTATION_POD_NAME: &str = "io.bramble.pod-name";
pub const ANNOTATION_CONTAINER_NAME: &str = "io.bramble.container-name";

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// CFS period used for CPU limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Docker's default capabilities.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the kernel may know, by number (`capability.h`), so a
/// privileged container gets exactly those the node can give.
pub const ALL_CAPABILITIES: &[(&str, u32)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// Host files bind-mounted over the container's `/etc` entries.
#[derive(Clone, Debug)]
pub struct EtcFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
}

/// What the spec is built from.
pub struct SpecInputs<'a> {
    pub config: &'a ContainerConfig,
    pub image: &'a ImageConfiguration,
    pub rootfs: &'a Path,
    /// `/<prefix>/<id>`.
    pub cgroups_path: PathBuf,
    pub etc: &'a EtcFiles,
    /// Contents of the rootfs's `/etc/passwd` and `/etc/group`, if present.
    pub passwd: Option<&'a str>,
    pub group: Option<&'a str>,
    /// The kernel accounts swap per cgroup: a memory limit then also bars
    /// swap (as the kubelet does), or a Pi's swap file would stretch it.
    pub limit_swap: bool,
    /// The host's devices, given to privileged containers.
    pub host_devices: &'a [LinuxDevice],
    /// The capabilities the node can hand out: the agent's bounding set
    /// (bit N = capability N), what the kernel knows less what the agent's
    /// own sandbox took away.
    pub available_caps: u64,
}

pub fn build_spec(inputs: &SpecInputs) -> Result<Spec, RuntimeError> {
    let c = inputs.config;
    let fail = |reason: String| RuntimeError::Create {
        id: c.id.clone(),
        reason,
    };
    let image_config = inputs.image.config().clone().unwrap_or_default();
    let args = process_args(
        image_config.entrypoint().as_deref().unwrap_or_default(),
        image_config.cmd().as_deref().unwrap_or_default(),
        &c.command,
        &c.args,
    );
    if args.is_empty() {
        return Err(fail(
            "no command: the image has neither ENTRYPOINT nor CMD and the pod gives no command"
                .into(),
        ));
    }
    let env = merge_env(image_config.env().as_deref().unwrap_or_default(), &c.env);
    let cwd = c
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| image_config.working_dir().clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(fail(format!("working directory {cwd:?} is not absolute")));
    }
    let sec = &c.security;
    let config_error = |reason: String| RuntimeError::Config {
        id: c.id.clone(),
        reason,
    };
    // runAsUser replaces the image's user; its primary group still comes
    // from the image's passwd, as runc resolves it, unless runAsGroup says.
    let image_user = match sec.run_as_user {
        Some(uid) => uid.to_string(),
        None => image_config.user().clone().unwrap_or_default(),
    };
    let mut user = resolve_user(&image_user, inputs.passwd, inputs.group).map_err(fail)?;
    if let Some(gid) = sec.run_as_group {
        user.gid = gid;
    }
    for g in &sec.supplemental_groups {
        if *g != user.gid && !user.additional_gids.contains(g) {
            user.additional_gids.push(*g);
        }
    }
    if sec.run_as_non_root && user.uid == 0 {
        return Err(config_error(if sec.run_as_user == Some(0) {
            "runAsNonRoot is set but runAsUser is 0 (root)".to_string()
        } else {
            format!(
                "container has runAsNonRoot and image will run as root (image user {:?}); set runAsUser",
                image_user
            )
        }));
    }
    let caps = capabilities(sec, inputs.available_caps).map_err(config_error)?;

    let mut spec = Spec::default();
    spec.set_hostname(Some(c.hostname.clone()));
    spec.set_root(Some(
        RootBuilder::default()
            .path(inputs.rootfs)
            .readonly(sec.read_only_rootfs)
            .build()
            .map_err(|e| fail(e.to_string()))?,
    ));
    let mut annotations = std::collections::HashMap::new();
    annotations.insert(ANNOTATION_POD_UID.to_string(), c.pod_uid.clone());
    annotations.insert(
        ANNOTATION_POD_NAMESPACE.to_string(),
        c.pod_namespace.clone(),
    );
    annotations.insert(ANNOTATION_POD_NAME.to_string(), c.pod_name.clone());
    annotations.insert(
        ANNOTATION_CONTAINER_NAME.to_string(),
        c.container_name.clone(),
    );
    spec.set_annotations(Some(annotations));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if sec.privileged {
        // As runc with --privileged: /sys and the cgroup tree writable.
        for m in mounts.iter_mut() {
            if m.destination() == Path::new("/sys")
                || m.destination() == Path::new("/sys/fs/cgroup")
            {
                let opts: Vec<String> = m
                    .options()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| o != "ro")
                    .collect();
                m.set_options(Some(opts));
            }
        }
    }
    mounts.extend([
        bind(&inputs.etc.hosts, "/etc/hosts")?,
        bind(&inputs.etc.resolv_conf, "/etc/resolv.conf")?,
        bind(&inputs.etc.hostname, "/etc/hostname")?,
    ]);
    for m in &c.mounts {
        mounts.push(volume_mount(m).map_err(fail)?);
    }
    spec.set_mounts(Some(mounts));

    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_no_new_privileges(Some(sec.no_new_privileges));
    process.set_user(
        UserBuilder::default()
            .uid(user.uid)
            .gid(user.gid)
            .additional_gids(user.additional_gids)
            .build()
            .map_err(|e| fail(e.to_string()))?,
    );
    let mut capabilities = process.capabilities().clone().unwrap_or_default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    process.set_capabilities(Some(capabilities));
    spec.set_process(Some(process));

    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_namespaces(Some(namespaces(c.netns.as_deref(), c.host_pid)?));
    linux.set_cgroups_path(Some(inputs.cgroups_path.clone()));
    linux.set_resources(Some(
        resources(&c.resources, inputs.limit_swap, sec.privileged).map_err(fail)?,
    ));
    if sec.privileged {
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
        linux.set_devices(Some(inputs.host_devices.to_vec()));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn bind(source: &Path, destination: &str) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec!["rbind".to_string(), "rprivate".to_string()])
        .build()
        .map_err(|e| RuntimeError::Image(format!("building mount {destination}: {e}")))
}

/// A volume: a bind mount, read-only and with the propagation asked for.
fn volume_mount(m: &BindMount) -> Result<Mount, String> {
    if !m.destination.starts_with('/') {
        return Err(format!("mount path {:?} is not absolute", m.destination));
    }
    let propagation = match m.propagation {
        Propagation::Private => "rprivate",
        Propagation::HostToContainer => "rslave",
        Propagation::Bidirectional => "rshared",
    };
    let mut options = vec!["rbind".to_string(), propagation.to_string()];
    if m.read_only {
        options.push("ro".into());
    }
    MountBuilder::default()
        .destination(&m.destination)
        .typ("bind")
        .source(&m.source)
        .options(options)
        .build()
        .map_err(|e| format!("mount {}: {e}", m.destination))
}

/// A capability name as Kubernetes or OCI writes it (`NET_ADMIN`, `CAP_NET_ADMIN`).
fn parse_capability(name: &str) -> Result<Capability, String> {
    let bare = name.trim().to_ascii_uppercase();
    let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
    bare.parse::<Capability>()
        .map_err(|_| format!("unknown capability {name:?}"))
}

/// The capability set: Docker's defaults, or all the node has for
/// privileged containers; then `drop` (`ALL` empties it) and `add` (`ALL`
/// fills it), as the kubelet applies them. Asking to add one the node cannot
/// give is an error, not a silent omission.
pub fn capabilities(sec: &SecurityConfig, available: u64) -> Result<HashSet<Capability>, String> {
    let has = |n: u32| n < 64 && available & (1u64 << n) != 0;
    let all = || -> HashSet<Capability> {
        ALL_CAPABILITIES
            .iter()
            .filter(|(_, n)| has(*n))
            .filter_map(|(name, _)| name.parse().ok())
            .collect()
    };
    let number = |c: &Capability| {
        let name = c.to_string();
        ALL_CAPABILITIES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, num)| *num)
    };
    if sec.privileged {
        return Ok(all());
    }
    let mut caps: HashSet<Capability> = DEFAULT_CAPABILITIES
        .iter()
        .copied()
        .filter(|c| number(c).is_none_or(has))
        .collect();
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    if sec.capabilities_drop.iter().any(is_all) {
        caps.clear();
    }
    for d in sec.capabilities_drop.iter().filter(|n| !is_all(n)) {
        caps.remove(&parse_capability(d)?);
    }
    if sec.capabilities_add.iter().any(is_all) {
        caps.extend(all());
    }
    for a in sec.capabilities_add.iter().filter(|n| !is_all(n)) {
        let cap = parse_capability(a)?;
        if number(&cap).is_some_and(|n| !has(n)) {
            return Err(format!("capability {a:?} is not available on this node"));
        }
        caps.insert(cap);
    }
    Ok(caps)
}

fn namespaces(netns: Option<&Path>, host_pid: bool) -> Result<Vec<LinuxNamespace>, RuntimeError> {
    let mut out = Vec::new();
    let mut types = vec![
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    // No pid entry at all means the host's pid namespace (`hostPID`).
    if !host_pid {
        types.insert(0, LinuxNamespaceType::Pid);
    }
    for typ in types {
        out.push(
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(|e| RuntimeError::Image(e.to_string()))?,
        );
    }
    // No network entry at all means the host's network namespace.
    if let Some(path) = netns {
        out.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()
                .map_err(|e| RuntimeError::Image(e.to_string()))?,
        );
    }
    Ok(out)
}

/// Kubernetes `command`/`args` over the image's ENTRYPOINT/CMD: `command`
/// replaces ENTRYPOINT and drops CMD; `args` replaces CMD.
pub fn process_args(
    entrypoint: &[String],
    cmd: &[String],
    command: &[String],
    args: &[String],
) -> Vec<String> {
    let head = if command.is_empty() {
        entrypoint
    } else {
        command
    };
    let tail = match (command.is_empty(), args.is_empty()) {
        (_, false) => args,
        (true, true) => cmd,
        (false, true) => &[],
    };
    head.iter().chain(tail).cloned().collect()
}

/// The image's `KEY=value` list with the pod's variables replacing same-named
/// ones in place and the rest appended in order; PATH defaults like Docker's.
pub fn merge_env(image: &[String], overrides: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<(String, String)> = image
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    for (k, v) in overrides {
        match out.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// The image's `User` (`""`, `uid`, `uid:gid`, `name`, `name:group`) against
/// the rootfs's passwd and group files, like Docker: a numeric uid absent
/// from passwd runs with gid 0; a name must exist.
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd_entries: Vec<Vec<&str>> = passwd
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let group_entries: Vec<Vec<&str>> = group
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let (uid, mut gid, name) = if user_part.is_empty() {
        (0, 0, Some("root".to_string()))
    } else if let Ok(uid) = user_part.parse::<u32>() {
        match passwd_entries.iter().find(|f| f[2].parse() == Ok(uid)) {
            Some(f) => (uid, f[3].parse().unwrap_or(0), Some(f[0].to_string())),
            None => (uid, 0, None),
        }
    } else {
        let f = passwd_entries
            .iter()
            .find(|f| f[0] == user_part)
            .ok_or_else(|| format!("user {user_part:?} of the image is not in its /etc/passwd"))?;
        let uid = f[2]
            .parse()
            .map_err(|_| format!("bad uid for {user_part:?} in /etc/passwd"))?;
        (uid, f[3].parse().unwrap_or(0), Some(user_part.to_string()))
    };
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g:?} of the image is not in its /etc/group"))?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for f in &group_entries {
            let members = f.get(3).copied().unwrap_or_default();
            if members.split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse::<u32>()
                && g != gid
                && !additional_gids.contains(&g)
            {
                additional_gids.push(g);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// cgroup limits; libcontainer writes them as v1 files or translates to v2
/// (`cpu.max`, `cpu.weight` from shares, `memory.max`).
fn resources(
    r: &Resources,
    limit_swap: bool,
    privileged: bool,
) -> Result<oci_spec::runtime::LinuxResources, String> {
    // Privileged: every device allowed; else all denied but the standard
    // ones (libcontainer adds those).
    let devices = LinuxDeviceCgroupBuilder::default()
        .allow(privileged)
        .access("rwm")
        .build()
        .map_err(|e| e.to_string())?;
    let mut b = LinuxResourcesBuilder::default().devices(vec![devices]);
    if let Some(limit) = r.pids_limit.filter(|l| *l > 0) {
        b = b.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    if let Some(limit) = r.memory_limit_bytes {
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        if limit_swap {
            // OCI's swap is memory+swap (v1 semantics): v1 gets
            // memory.memsw.limit_in_bytes = limit. libcgroups' v2 translation
            // skips a swap of 0 (swap - limit) instead of writing it, so v2
            // gets memory.swap.max through `unified` (which v1 ignores).
            memory = memory.swap(limit);
            b = b.unified(std::collections::HashMap::from([(
                "memory.swap.max".to_string(),
                "0".to_string(),
            )]));
        }
        b = b.memory(memory.build().map_err(|e| e.to_string())?);
    }
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(q) = cpu_quota(r.cpu_limit_millis) {
        cpu = cpu.quota(q).period(CPU_PERIOD_US);
    }
    // No request: the minimum weight, as the kubelet gives BestEffort.
    cpu = cpu.shares(cpu_shares(r.cpu_request_millis).unwrap_or(MIN_SHARES));
    b = b.cpu(cpu.build().map_err(|e| e.to_string())?);
    b.build().map_err(|e| e.to_string())
}

/// CFS quota for a limit in millicores over [`CPU_PERIOD_US`]; the kernel
/// refuses quotas under 1 ms.
pub fn cpu_quota(limit_millis: Option<i64>) -> Option<i64> {
    limit_millis
        .filter(|m| *m > 0)
        .map(|m| (m * CPU_PERIOD_US as i64 / 1000).max(1000))
}

/// The kubelet's minimum cpu.shares.
pub const MIN_SHARES: u64 = 2;

/// cpu.shares for a request in millicores, as the kubelet computes it (min 2).
pub fn cpu_shares(request_millis: Option<i64>) -> Option<u64> {
    request_millis
        .filter(|m| *m > 0)
        .map(|m| ((m * 1024 / 1000) as u64).max(MIN_SHARES))
}

/// `/etc/hosts`: localhost, and the hostname on 127.0.1.1 (Debian's way) since
/// the pod's IP is not known here.
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kubernetes_command_and_args() {
        let (ep, cmd) = (s(&["/ep"]), s(&["c1", "c2"]));
        assert_eq!(process_args(&ep, &cmd, &[], &[]), s(&["/ep", "c1", "c2"]));
        assert_eq!(process_args(&ep, &cmd, &s(&["/x"]), &[]), s(&["/x"]));
        assert_eq!(process_args(&ep, &cmd, &[], &s(&["a"])), s(&["/ep", "a"]));
        assert_eq!(
            process_args(&ep, &cmd, &s(&["/x"]), &s(&["a"])),
            s(&["/x", "a"])
        );
        assert_eq!(process_args(&[], &cmd, &[], &[]), s(&["c1", "c2"]));
        assert_eq!(process_args(&[], &cmd, &[], &s(&["a"])), s(&["a"]));
        assert!(process_args(&[], &[], &[], &[]).is_empty());
    }

    #[test]
    fn env_merge() {
        let image = s(&["PATH=/bin", "A=1", "B=2"]);
        let over = vec![
            ("B".to_string(), "x".to_string()),
            ("C".to_string(), "3=3".to_string()),
        ];
        assert_eq!(
            merge_env(&image, &over),
            s(&["PATH=/bin", "A=1", "B=x", "C=3=3"])
        );
        assert_eq!(merge_env(&[], &[]), vec![format!("PATH={DEFAULT_PATH}")]);
    }

    #[test]
    fn users() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\napp:x:1001:\nwheel:x:10:app,other\nvideo:x:44:app\n";
        let r = |u| resolve_user(u, Some(passwd), Some(group));
        assert_eq!(
            r("").unwrap(),
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("app").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![10, 44]
            }
        );
        assert_eq!(r("1000").unwrap().gid, 1001);
        assert_eq!(
            r("4242").unwrap(),
            ResolvedUser {
                uid: 4242,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(r("4242:7").unwrap().gid, 7);
        assert_eq!(r("app:wheel").unwrap().gid, 10);
        assert!(r("ghost").is_err());
        assert!(r("app:ghosts").is_err());
        assert_eq!(resolve_user("5:6", None, None).unwrap().gid, 6);
    }

    #[test]
    fn cpu_conversions() {
        assert_eq!(cpu_quota(Some(500)), Some(50_000));
        assert_eq!(cpu_quota(Some(2000)), Some(200_000));
        assert_eq!(cpu_quota(Some(1)), Some(1000));
        assert_eq!(cpu_quota(None), None);
        assert_eq!(cpu_shares(Some(1000)), Some(1024));
        assert_eq!(cpu_shares(Some(100)), Some(102));
        assert_eq!(cpu_shares(Some(1)), Some(2));
    }

    #[test]
    fn spec_from_config() {
        let image: ImageConfiguration = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin", "A=1"], "Entrypoint": ["/ep"], "Cmd": ["c"], "WorkingDir": "/w", "User": "7:8"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let config = ContainerConfig {
            id: "p-c-0".into(),
            pod_uid: "uid".into(),
            pod_namespace: "default".into(),
            pod_name: "pod".into(),
            container_name: "c".into(),
            image: "x".into(),
            command: vec![],
            args: s(&["a"]),
            env: vec![("A".into(), "2".into())],
            working_dir: None,
            hostname: "pod".into(),
            resolv_conf: None,
            netns: Some("/run/netns/x".into()),
            log_path: "/tmp/log".into(),
            resources: Resources {
                memory_limit_bytes: Some(64 << 20),
                cpu_limit_millis: Some(250),
                cpu_request_millis: Some(100),
                pids_limit: Some(100),
            },
            ..Default::default()
        };
        let etc = EtcFiles {
            hosts: "/h".into(),
            resolv_conf: "/r".into(),
            hostname: "/n".into(),
        };
        let spec = build_spec(&SpecInputs {
            config: &config,
            image: &image,
            rootfs: Path::new("/rootfs"),
            cgroups_path: "/bramble/t/p-c-0".into(),
            etc: &etc,
            passwd: None,
            group: None,
            limit_swap: true,
            host_devices: &[],
            available_caps: (1 << 41) - 1,
        })
        .unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &s(&["/ep", "a"]));
        assert_eq!(p.env().as_ref().unwrap(), &s(&["PATH=/bin", "A=2"]));
        assert_eq!(p.cwd(), Path::new("/w"));
        assert_eq!((p.user().uid(), p.user().gid()), (7, 8));
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        let net = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(net.path().as_deref(), Some(Path::new("/run/netns/x")));
        let r = linux.resources().as_ref().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.memory().as_ref().unwrap().swap(), Some(64 << 20));
        assert_eq!(r.unified().as_ref().unwrap()["memory.swap.max"], "0");
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(25_000));
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(102));
        assert_eq!(
            spec.annotations().as_ref().unwrap()[ANNOTATION_POD_UID],
            "uid"
        );
        assert_eq!(spec.hostname().as_deref(), Some("pod"));

        // Host network: no network namespace entry at all.
        let host = ContainerConfig {
            netns: None,
            ..config
        };
        let spec = build_spec(&SpecInputs {
            config: &host,
            image: &image,
            rootfs: Path::new("/rootfs"),
            cgroups_path: "/bramble/t/p-c-0".into(),
            etc: &etc,
            passwd: None,
            group: None,
            limit_swap: false,
            host_devices: &[],
            available_caps: (1 << 41) - 1,
        })
        .unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
    }

    fn image(user: &str) -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sh"], "User": user},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap()
    }

    fn build(config: &ContainerConfig, image: &ImageConfiguration) -> Result<Spec, RuntimeError> {
        let etc = EtcFiles {
            hosts: "/h".into(),
            resolv_conf: "/r".into(),
            hostname: "/n".into(),
        };
        let dev: LinuxDevice = serde_json::from_value(serde_json::json!({
            "path": "/dev/sda", "type": "b", "major": 8, "minor": 0
        }))
        .unwrap();
        build_spec(&SpecInputs {
            config,
            image,
            rootfs: Path::new("/rootfs"),
            cgroups_path: "/bramble/t/x".into(),
            etc: &etc,
            passwd: Some("root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n"),
            group: None,
            limit_swap: false,
            host_devices: &[dev],
            available_caps: (1 << 39) - 1,
        })
    }

    #[test]
    fn security_context_users_groups_and_root_checks() {
        let mut c = ContainerConfig {
            id: "x".into(),
            security: SecurityConfig {
                run_as_user: Some(1000),
                supplemental_groups: vec![2000, 1001],
                read_only_rootfs: true,
                no_new_privileges: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let spec = build(&c, &image("")).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            (p.user().uid(), p.user().gid()),
            (1000, 1001),
            "gid from passwd"
        );
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[2000][..]));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        c.security.run_as_group = Some(3000);
        let p = build(&c, &image("")).unwrap().process().clone().unwrap();
        assert_eq!(p.user().gid(), 3000);

        // runAsNonRoot: a root image is refused as a configuration error;
        // an explicit non-root user passes.
        let nonroot = ContainerConfig {
            id: "x".into(),
            security: SecurityConfig {
                run_as_non_root: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let err = build(&nonroot, &image("")).unwrap_err();
        assert!(matches!(err, RuntimeError::Config { .. }), "{err}");
        assert!(err.to_string().contains("runAsNonRoot"), "{err}");
        assert!(build(&nonroot, &image("app")).is_ok());
        let mut as_root = nonroot.clone();
        as_root.security.run_as_user = Some(0);
        assert!(build(&as_root, &image("app")).is_err());
    }

    #[test]
    fn capabilities_add_drop_and_privileged() {
        let sec = |add: &[&str], drop: &[&str]| SecurityConfig {
            capabilities_add: s(add),
            capabilities_drop: s(drop),
            ..Default::default()
        };
        let all41 = (1u64 << 41) - 1;
        let caps = capabilities(&sec(&["NET_ADMIN"], &["MKNOD", "CAP_NET_RAW"]), all41).unwrap();
        assert!(caps.contains(&Capability::NetAdmin));
        assert!(!caps.contains(&Capability::Mknod));
        assert!(!caps.contains(&Capability::NetRaw));
        assert!(caps.contains(&Capability::Chown));
        let caps = capabilities(&sec(&["SYS_TIME"], &["ALL"]), all41).unwrap();
        assert_eq!(caps, HashSet::from([Capability::SysTime]));
        assert!(capabilities(&sec(&["BOGUS"], &[]), all41).is_err());
        // A node whose agent lacks SYS_RESOURCE cannot give it.
        let without = all41 & !(1 << 24);
        assert!(capabilities(&sec(&["SYS_RESOURCE"], &[]), without).is_err());
        let privileged = SecurityConfig {
            privileged: true,
            ..Default::default()
        };
        let caps = capabilities(&privileged, ((1 << 39) - 1) & !(1 << 24)).unwrap();
        assert_eq!(caps.len(), 38, "exactly the node's");
        assert!(caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::Bpf));
        assert!(!caps.contains(&Capability::SysResource));

        let c = ContainerConfig {
            id: "x".into(),
            security: privileged,
            ..Default::default()
        };
        let spec = build(&c, &image("")).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
        assert_eq!(linux.devices().as_ref().unwrap().len(), 1);
        let dev = &linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()[0];
        assert!(dev.allow());
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(!sys.options().as_ref().unwrap().iter().any(|o| o == "ro"));
    }

    #[test]
    fn volumes_host_pid_and_pids_limit() {
        let c = ContainerConfig {
            id: "x".into(),
            host_pid: true,
            mounts: vec![
                BindMount {
                    source: "/data/pods/u/volumes/cfg".into(),
                    destination: "/etc/cfg".into(),
                    read_only: true,
                    propagation: Propagation::Private,
                },
                BindMount {
                    source: "/host".into(),
                    destination: "/host".into(),
                    read_only: false,
                    propagation: Propagation::HostToContainer,
                },
            ],
            resources: Resources {
                pids_limit: Some(64),
                ..Default::default()
            },
            ..Default::default()
        };
        let spec = build(&c, &image("")).unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        let cfg = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/etc/cfg"))
            .unwrap();
        assert_eq!(
            cfg.options().as_ref().unwrap(),
            &s(&["rbind", "rprivate", "ro"])
        );
        let host = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/host"))
            .unwrap();
        assert_eq!(host.options().as_ref().unwrap(), &s(&["rbind", "rslave"]));
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Pid));
        let r = linux.resources().as_ref().unwrap();
        assert_eq!(r.pids().as_ref().unwrap().limit(), 64);
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(MIN_SHARES));
        assert!(!r.devices().as_ref().unwrap()[0].allow());
    }
}
