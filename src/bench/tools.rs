//! The bench's setup step: find the peers' programs, and install the missing
//! ones from Debian's packages (`apt-get`, as root) unless told not to. What
//! cannot be had becomes a reason the report prints ("peer skipped: …").
//!
//! `scripts/bench-deps` installs the same packages by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Debian package of each program the bench runs.
pub const PACKAGES: &[(&str, &str)] = &[
    ("dockerd", "docker.io"),
    ("containerd", "containerd"),
    ("docker", "docker.io"),
    ("crun", "crun"),
    ("wrk", "wrk"),
];

/// Where the programs are, when they are.
#[derive(Clone, Debug, Default)]
pub struct Tools {
    pub dockerd: Option<PathBuf>,
    /// Debian's client, which matches its engine (`/usr/bin/docker` before
    /// any other `docker` on the PATH).
    pub docker: Option<PathBuf>,
    pub crun: Option<PathBuf>,
    pub wrk: Option<PathBuf>,
    /// Why the Docker peer (engine and Swarm) cannot run, if it cannot.
    pub docker_missing: Option<String>,
    pub crun_missing: Option<String>,
    pub wrk_missing: Option<String>,
}

/// `name` on the PATH or in the sbin directories (root's PATH may lack them).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn docker_client() -> Option<PathBuf> {
    Some(PathBuf::from("/usr/bin/docker"))
        .filter(|p| p.is_file())
        .or_else(|| which("docker"))
}

fn missing_programs() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .filter(|(prog, _)| which(prog).is_none())
        .map(|(prog, _)| *prog)
        .collect()
}

/// Runs apt-get for the packages of `programs`; an error says why not.
fn install(programs: &[&str]) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root, cannot install Debian packages".into());
    }
    if which("apt-get").is_none() {
        return Err("no apt-get on this machine".into());
    }
    let mut packages: Vec<&str> = PACKAGES
        .iter()
        .filter(|(prog, _)| programs.contains(prog))
        .map(|(_, pkg)| *pkg)
        .collect();
    packages.sort_unstable();
    packages.dedup();
    eprintln!("bench: installing {}", packages.join(" "));
    // The packages' maintainer scripts must not start a system-wide dockerd
    // (the bench runs its own): a policy-rc.d that denies every start, only
    // if the machine has none.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists()
        && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok()
        && Command::new("chmod")
            .args(["755", "/usr/sbin/policy-rc.d"])
            .status()
            .is_ok_and(|s| s.success());
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let mut install_args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install_args.extend(&packages);
    let mut result = apt(&install_args);
    if !result.as_ref().is_ok_and(|o| o.status.success()) {
        let _ = apt(&["update", "-qq"]);
        result = apt(&install_args);
    }
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    match result {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "apt-get install {} failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        )),
        Err(e) => Err(format!("apt-get did not run: {e}")),
    }
}

impl Tools {
    /// Finds the programs, installing missing ones when `may_install`.
    pub fn find(may_install: bool) -> Tools {
        let missing = missing_programs();
        let install_error = if missing.is_empty() {
            None
        } else if may_install {
            install(&missing).err()
        } else {
            Some("not installed and --no-install given; scripts/bench-deps installs it".into())
        };
        let why = |prog: &str| {
            format!(
                "{prog} not found ({})",
                install_error
                    .as_deref()
                    .unwrap_or("installed but not on the PATH")
            )
        };
        let dockerd = which("dockerd");
        let containerd = which("containerd");
        let docker = docker_client();
        let docker_missing = match (&dockerd, &containerd, &docker) {
            (None, _, _) => Some(why("dockerd")),
            (_, None, _) => Some(why("containerd")),
            (_, _, None) => Some(why("the docker CLI")),
            _ => None,
        };
        let crun = which("crun");
        let wrk = which("wrk");
        Tools {
            crun_missing: crun.is_none().then(|| why("crun")),
            wrk_missing: wrk.is_none().then(|| why("wrk")),
            dockerd,
            docker,
            crun,
            wrk,
            docker_missing,
        }
    }

    /// The peers' versions, for the report's header.
    pub fn versions(&self) -> Vec<String> {
        let version = |p: &Option<PathBuf>, arg: &str| -> Option<String> {
            let out = Command::new(p.as_ref()?).arg(arg).output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            Some(text.lines().next()?.trim().to_string())
        };
        let mut v = Vec::new();
        if let Some(d) = version(&self.dockerd, "--version") {
            v.push(format!("{d} (dockerd; containerd and runc from Debian)"));
        }
        if let Some(c) = version(&self.crun, "--version") {
            v.push(c);
        }
        if let Some(w) =
            version(&self.wrk, "-v").or_else(|| self.wrk.as_ref().map(|_| "wrk".into()))
        {
            v.push(format!("load generator: {w}"));
        }
        v
    }
}
