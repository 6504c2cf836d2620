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
    Capability, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    RootBuilder, Spec, UserBuilder,
};

use super::{ContainerConfig, Resources, RuntimeError};

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
    let user = resolve_user(
        image_config.user().as_deref().unwrap_or_default(),
        inputs.passwd,
        inputs.group,
    )
    .map_err(fail)?;

    let mut spec = Spec::default();
    spec.set_hostname(Some(c.hostname.clone()));
    spec.set_root(Some(
        RootBuilder::default()
            .path(inputs.rootfs)
            .readonly(false)
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
    mounts.extend([
        bind(&inputs.etc.hosts, "/etc/hosts")?,
        bind(&inputs.etc.resolv_conf, "/etc/resolv.conf")?,
        bind(&inputs.etc.hostname, "/etc/hostname")?,
    ]);
    spec.set_mounts(Some(mounts));

    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_no_new_privileges(Some(false));
    process.set_user(
        UserBuilder::default()
            .uid(user.uid)
            .gid(user.gid)
            .additional_gids(user.additional_gids)
            .build()
            .map_err(|e| fail(e.to_string()))?,
    );
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    let mut capabilities = process.capabilities().clone().unwrap_or_default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    process.set_capabilities(Some(capabilities));
    spec.set_process(Some(process));

    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_namespaces(Some(namespaces(c.netns.as_deref())?));
    linux.set_cgroups_path(Some(inputs.cgroups_path.clone()));
    linux.set_resources(Some(
        resources(&c.resources, inputs.limit_swap).map_err(fail)?,
    ));
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

fn namespaces(netns: Option<&Path>) -> Result<Vec<LinuxNamespace>, RuntimeError> {
    let mut out = Vec::new();
    let types = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
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
fn resources(r: &Resources, limit_swap: bool) -> Result<oci_spec::runtime::LinuxResources, String> {
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(|e| e.to_string())?;
    let mut b = LinuxResourcesBuilder::default().devices(vec![deny_all]);
    if let Some(limit) = r.memory_limit_bytes {
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        if limit_swap {
            // OCI's swap is memory+swap (v1 semantics); libcontainer writes
            // swap - limit = 0 to memory.swap.max on v2.
            memory = memory.swap(limit);
        }
        b = b.memory(memory.build().map_err(|e| e.to_string())?);
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if let Some(q) = cpu_quota(r.cpu_limit_millis) {
        cpu = cpu.quota(q).period(CPU_PERIOD_US);
        any_cpu = true;
    }
    if let Some(s) = cpu_shares(r.cpu_request_millis) {
        cpu = cpu.shares(s);
        any_cpu = true;
    }
    if any_cpu {
        b = b.cpu(cpu.build().map_err(|e| e.to_string())?);
    }
    b.build().map_err(|e| e.to_string())
}

/// CFS quota for a limit in millicores over [`CPU_PERIOD_US`]; the kernel
/// refuses quotas under 1 ms.
pub fn cpu_quota(limit_millis: Option<i64>) -> Option<i64> {
    limit_millis
        .filter(|m| *m > 0)
        .map(|m| (m * CPU_PERIOD_US as i64 / 1000).max(1000))
}

/// cpu.shares for a request in millicores, as the kubelet computes it (min 2).
pub fn cpu_shares(request_millis: Option<i64>) -> Option<u64> {
    request_millis
        .filter(|m| *m > 0)
        .map(|m| ((m * 1024 / 1000) as u64).max(2))
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
            },
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
        })
        .unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
    }
}
