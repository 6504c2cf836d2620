//! Putting Bramble onto machines: the systemd units and settings files
//! (`bramble install master|worker`), Raspberry Pi OS images and SD cards
//! prepared to join a cluster on first boot (`bramble image prepare-sd`,
//! [`sd`]), and that first boot's own step (`bramble install first-boot`,
//! [`name`]).
//!
//! Everything here writes under a root directory (`/` on a live machine, a
//! test's directory, or a mounted image's root filesystem), so the same code
//! installs a node and prepares an image. Files are written only when their
//! content changes (SD cards wear out; preparing twice changes nothing).
//!
//! Must not touch: the store, MQTT, containers or the pod network; this is
//! files, and mounts of the image being prepared.

pub mod boot;
pub mod name;
pub mod sd;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{ConfigError, WorkerFile};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{image}: {reason}; nothing was written")]
    UnexpectedLayout { image: PathBuf, reason: String },
    #[error(
        "{binary} is built for {binary_arch} but {image} runs {image_arch} programs; \
         build bramble for the image's architecture (cross/README.md); nothing was written"
    )]
    ArchMismatch {
        binary: PathBuf,
        binary_arch: String,
        image: PathBuf,
        image_arch: String,
    },
    #[error("{path} is not a Linux program (no ELF header)")]
    NotElf { path: PathBuf },
    #[error(
        "the {partition} partition of {image} has {free} bytes free, {needed} are needed; nothing was written"
    )]
    NoSpace {
        image: PathBuf,
        partition: &'static str,
        needed: u64,
        free: u64,
    },
    #[error("{partition} (on {device}) is mounted at {mountpoint}; unmount it first")]
    Mounted {
        device: PathBuf,
        partition: PathBuf,
        mountpoint: String,
    },
    #[error("{path} exists; remove it or pass --force")]
    Exists { path: PathBuf },
    #[error("node name rule {rule:?}: {reason}")]
    BadRule { rule: String, reason: String },
    #[error("{path}: {reason}")]
    BadBootFile { path: PathBuf, reason: String },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which role a machine runs under systemd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Master,
    Worker,
}

/// The units as shipped in `systemd/` (what `systemd-analyze verify` checks in CI).
pub const MASTER_UNIT: &str = include_str!("../../systemd/bramble-master.service");
pub const WORKER_UNIT: &str = include_str!("../../systemd/bramble-worker.service");

/// Where the units expect the binary.
pub const BINARY_PATH: &str = "/usr/local/bin/bramble";

/// The data directory installed roles use unless told otherwise (the roles'
/// own default, `.bramble`, is relative to the working directory, which is
/// `/` under systemd).
pub const DATA_DIR: &str = "/var/lib/bramble";

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
    pub fn unit_name(self) -> String {
        format!("bramble-{}.service", self.name())
    }
    pub fn unit_text(self) -> &'static str {
        match self {
            Role::Master => MASTER_UNIT,
            Role::Worker => WORKER_UNIT,
        }
    }
    /// The settings file the unit passes to `--config`, absolute on the machine.
    pub fn config_path(self) -> String {
        format!("/etc/bramble/{}.toml", self.name())
    }
    pub fn unit_path(self) -> String {
        format!("/etc/systemd/system/{}", self.unit_name())
    }
    /// The link `systemctl enable` makes.
    pub fn wants_link(self) -> String {
        format!(
            "/etc/systemd/system/multi-user.target.wants/{}",
            self.unit_name()
        )
    }
}

/// `path` (absolute on the machine) under `root`.
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Writes `bytes` to `path` through a temp file and a rename, unless the file
/// already holds exactly that (and has `mode`). `mode` is `None` on
/// filesystems without permissions (the FAT boot partition). Returns whether
/// anything was written.
pub fn write_if_changed(
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
) -> Result<bool, InstallError> {
    let same_mode =
        |m: &fs::Metadata| mode.is_none_or(|mode| m.permissions().mode() & 0o7777 == mode);
    if let Ok(m) = fs::symlink_metadata(path)
        && m.is_file()
        && m.len() == bytes.len() as u64
        && same_mode(&m)
        && fs::read(path).map_err(io_err(path))? == bytes
    {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.bramble-tmp"));
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    if let Some(mode) = mode {
        // Before the content: a token must never sit in a world-readable file.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
    }
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(true)
}

/// Makes `link` a symlink to `target` unless it already is one.
fn symlink_if_changed(link: &Path, target: &str) -> Result<bool, InstallError> {
    if fs::read_link(link).is_ok_and(|t| t == Path::new(target)) {
        return Ok(false);
    }
    if let Some(dir) = link.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    match fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(link)(e)),
    }
    symlink(target, link).map_err(io_err(link))?;
    Ok(true)
}

/// Copies the binary to [`BINARY_PATH`] under `root` when its content differs
/// (a rename, so a running copy is not disturbed).
fn install_binary(root: &Path, source: &Path) -> Result<bool, InstallError> {
    let dest = under(root, BINARY_PATH);
    if let (Ok(a), Ok(b)) = (fs::canonicalize(source), fs::canonicalize(&dest))
        && a == b
    {
        return Ok(false);
    }
    let bytes = fs::read(source).map_err(io_err(source))?;
    write_if_changed(&dest, &bytes, Some(0o755))
}

/// What an install wrote: paths on the machine, for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

impl Written {
    fn note(&mut self, path: &str, changed: bool) {
        if changed {
            self.changed.push(path.to_string());
        } else {
            self.unchanged.push(path.to_string());
        }
    }
}

/// What to install for one role.
#[derive(Clone, Debug)]
pub struct InstallPlan<'a> {
    pub role: Role,
    /// The program to copy to [`BINARY_PATH`] (the running one by default).
    pub binary: &'a Path,
    /// The settings file's text; `None` keeps the one already there.
    pub config: Option<&'a str>,
    /// Make the `multi-user.target.wants` link (what `systemctl enable`
    /// makes) rather than leaving enabling to systemctl.
    pub enable_link: bool,
}

/// Writes the binary, the settings file (mode 0600: it holds the join token
/// or broker credentials), the unit and, when asked, the enable link, under
/// `root`.
pub fn install_files(root: &Path, plan: &InstallPlan<'_>) -> Result<Written, InstallError> {
    let mut w = Written::default();
    w.note(BINARY_PATH, install_binary(root, plan.binary)?);
    let config_path = plan.role.config_path();
    if let Some(text) = plan.config {
        let dest = under(root, &config_path);
        w.note(
            &config_path,
            write_if_changed(&dest, text.as_bytes(), Some(0o600))?,
        );
    } else if !under(root, &config_path).exists() {
        return Err(InstallError::Invalid {
            field: "broker",
            reason: format!("no {config_path} yet: give the settings to write one"),
        });
    }
    let unit_path = plan.role.unit_path();
    let unit = plan.role.unit_text();
    w.note(
        &unit_path,
        write_if_changed(&under(root, &unit_path), unit.as_bytes(), Some(0o644))?,
    );
    if plan.enable_link {
        let link = plan.role.wants_link();
        w.note(&link, symlink_if_changed(&under(root, &link), &unit_path)?);
    }
    Ok(w)
}

/// Whether this machine runs systemd as PID 1 (`sd_booted()`'s test).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Runs `systemctl` with `args`, naming the command on failure.
pub fn systemctl(args: &[&str]) -> Result<(), InstallError> {
    run_tool("systemctl", args).map(drop)
}

/// Runs a tool to completion; its stderr becomes the error's detail.
pub(crate) fn run_tool(tool: &str, args: &[&str]) -> Result<String, InstallError> {
    let command = format!("{tool} {}", args.join(" "));
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| InstallError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(InstallError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A worker's settings as given on the command line, before they become a
/// [`WorkerFile`].
#[derive(Clone, Debug, Default)]
pub struct WorkerSettings {
    pub broker: String,
    pub token: Option<String>,
    pub node_name: Option<String>,
    /// `KEY=VALUE`.
    pub labels: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub node_ip: Option<std::net::Ipv4Addr>,
    pub insecure_registries: Vec<String>,
    pub topic_prefix: Option<String>,
}

impl WorkerSettings {
    /// Checks every setting (naming the flag at fault) and builds the file.
    pub fn to_file(&self) -> Result<WorkerFile, InstallError> {
        use crate::api::validate::{
            dns1123_subdomain_errors, label_value_errors, qualified_name_errors,
        };
        let invalid = |field, reason: String| InstallError::Invalid { field, reason };
        crate::transport::client::parse_url(&self.broker)
            .map_err(|e| invalid("broker", e.to_string()))?;
        if let Some(t) = &self.token {
            crate::master::tokens::JoinToken::parse(t)
                .map_err(|e| invalid("token", e.to_string()))?;
        }
        if let Some(n) = &self.node_name {
            let errs = dns1123_subdomain_errors(n);
            if !errs.is_empty() {
                return Err(invalid("node-name", format!("{n:?}: {}", errs.join("; "))));
            }
        }
        let mut labels = std::collections::BTreeMap::new();
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| invalid("label", format!("{l:?} is not KEY=VALUE")))?;
            let errs: Vec<String> = qualified_name_errors(k)
                .into_iter()
                .chain(label_value_errors(v))
                .collect();
            if !errs.is_empty() {
                return Err(invalid("label", format!("{l:?}: {}", errs.join("; "))));
            }
            labels.insert(k.to_string(), v.to_string());
        }
        Ok(WorkerFile {
            broker: self.broker.clone(),
            broker_ca: None,
            mqtt_version: None,
            join_token: self.token.as_ref().map(|t| t.trim().to_string()),
            node_name: self.node_name.clone(),
            labels,
            data_dir: Some(self.data_dir.clone().unwrap_or_else(|| DATA_DIR.into())),
            node_ip: self.node_ip,
            insecure_registries: self.insecure_registries.clone(),
            registry_ca: None,
            topic_prefix: self.topic_prefix.clone(),
        })
    }
}

/// A settings file's text.
pub fn to_toml<T: serde::Serialize>(file: &T, path: &str) -> Result<String, InstallError> {
    toml::to_string(file).map_err(|e| InstallError::BadBootFile {
        path: PathBuf::from(path),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn directives(unit: &str) -> Vec<(&str, &str)> {
        unit.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('['))
            .filter_map(|l| l.split_once('='))
            .collect()
    }

    #[test]
    fn units_keep_pods_across_restarts_and_wait_for_the_network() {
        for role in [Role::Master, Role::Worker] {
            let d = directives(role.unit_text());
            for want in [
                ("Delegate", "yes"),
                ("KillMode", "process"),
                ("Restart", "on-failure"),
                ("Wants", "network-online.target"),
                ("WantedBy", "multi-user.target"),
            ] {
                assert!(d.contains(&want), "{role:?}: {want:?}");
            }
            assert!(
                d.iter()
                    .any(|(k, v)| *k == "After"
                        && v.split(' ').any(|u| u == "network-online.target")),
                "{role:?}"
            );
        }
    }

    /// The unit's command line is one the binary parses, reading the settings
    /// file the installer writes (not the client config, `--config`).
    #[test]
    fn units_run_the_role_with_its_settings_file() {
        for role in [Role::Master, Role::Worker] {
            let exec = directives(role.unit_text())
                .into_iter()
                .find(|(k, _)| *k == "ExecStart")
                .map(|(_, v)| v)
                .unwrap();
            let argv: Vec<&str> = exec.split_whitespace().collect();
            assert_eq!(argv[0], BINARY_PATH);
            let cli = crate::cli::Cli::try_parse_from(&argv).unwrap();
            let config_file = match (role, cli.command) {
                (Role::Master, crate::cli::Cmd::Master(a)) => a.config_file,
                (Role::Worker, crate::cli::Cmd::Worker(a)) => a.config_file,
                (_, other) => panic!("{role:?} unit runs {other:?}"),
            };
            assert_eq!(config_file, Some(PathBuf::from(role.config_path())));
            assert_eq!(cli.config, None, "{role:?}");
        }
    }

    #[test]
    fn worker_settings_name_the_bad_flag_and_default_the_data_dir() {
        let ok = WorkerSettings {
            broker: "mqtt://10.0.0.1:1883".into(),
            token: Some("BRAMBLE1.0123456789abcdef0123456789abcdef.abc123.0123456789abcdef".into()),
            labels: vec!["room=attic".into()],
            ..Default::default()
        };
        let file = ok.to_file().unwrap();
        assert_eq!(file.data_dir.as_deref(), Some(Path::new(DATA_DIR)));
        assert_eq!(file.labels["room"], "attic");
        for (bad, field) in [
            (
                WorkerSettings {
                    broker: "http://x".into(),
                    ..ok.clone()
                },
                "--broker",
            ),
            (
                WorkerSettings {
                    token: Some("BRAMBLE1.x".into()),
                    ..ok.clone()
                },
                "--token",
            ),
            (
                WorkerSettings {
                    node_name: Some("Pi_1".into()),
                    ..ok.clone()
                },
                "--node-name",
            ),
            (
                WorkerSettings {
                    labels: vec!["a".into()],
                    ..ok.clone()
                },
                "--label",
            ),
            (
                WorkerSettings {
                    labels: vec!["a=b c".into()],
                    ..ok.clone()
                },
                "--label",
            ),
        ] {
            let err = bad.to_file().unwrap_err().to_string();
            assert!(err.starts_with(field), "{err}");
        }
    }

    #[test]
    fn writes_happen_only_on_change_and_set_the_mode_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/bramble/worker.toml");
        assert!(write_if_changed(&p, b"a", Some(0o600)).unwrap());
        assert!(!write_if_changed(&p, b"a", Some(0o600)).unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A wrong mode alone is fixed.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(write_if_changed(&p, b"a", Some(0o600)).unwrap());
        assert!(write_if_changed(&p, b"b", Some(0o600)).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left");
    }
}
