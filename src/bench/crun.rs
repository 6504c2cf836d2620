//! `crun`, the bare OCI runtime floor: a bundle over a rootfs directory, a
//! timed `crun run -d`, and the cgroup mount crun needs on this kind of host.
//!
//! Owns only the containers and the mount it creates (ids passed in by the
//! caller, deleted by it); never touches Bramble's or Docker's containers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{BenchError, io_err};

/// `crun` refuses a hybrid cgroup layout while the v2 mount holds the hugetlb
/// controller ("cgroups in hybrid mode not supported"): give it a v1 hugetlb
/// hierarchy for the run, and take it away again on drop.
pub struct HugetlbMount(bool);

impl HugetlbMount {
    pub fn ensure() -> HugetlbMount {
        let dir = Path::new("/sys/fs/cgroup/hugetlb");
        if dir.exists() || !Path::new("/sys/fs/cgroup/unified").exists() {
            return HugetlbMount(false);
        }
        let ok = std::fs::create_dir_all(dir).is_ok()
            && Command::new("mount")
                .args(["-t", "cgroup", "-o", "hugetlb", "cgroup"])
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
        HugetlbMount(ok)
    }
}

impl Drop for HugetlbMount {
    fn drop(&mut self) {
        if self.0 {
            let _ = Command::new("umount")
                .arg("/sys/fs/cgroup/hugetlb")
                .status();
            let _ = std::fs::remove_dir("/sys/fs/cgroup/hugetlb");
        }
    }
}

/// A bundle in `dir/bundle` running `args` over the read-only `rootfs`
/// (crun's default spec otherwise: its own namespaces, no network).
pub fn bundle(
    crun: &Path,
    rootfs: &Path,
    dir: &Path,
    args: &[&str],
) -> Result<PathBuf, BenchError> {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(io_err(&bundle))?;
    let path = bundle.join("config.json");
    let _ = std::fs::remove_file(&path);
    let out = Command::new(crun)
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .map_err(io_err(crun))?;
    if !out.status.success() {
        return Err(BenchError::command("crun spec", &out));
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| BenchError::Parse {
            what: path.display().to_string(),
            detail: e.to_string(),
        })?;
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&path, spec.to_string()).map_err(io_err(&path))?;
    Ok(bundle)
}

/// `crun run -d` (create + start, detached) of `bundle` as `id`: how long
/// it took. The container is left running; [`delete`] removes it.
pub fn run_detached(
    crun: &Path,
    bundle: &Path,
    id: &str,
    scratch: &Path,
) -> Result<Duration, BenchError> {
    // The detached container inherits crun's stdio: give it files, not pipes,
    // or waiting for crun's output would wait for the container.
    let err_file = scratch.join(format!("{id}.err"));
    let stderr = std::fs::File::create(&err_file).map_err(io_err(&err_file))?;
    let start = Instant::now();
    let status = Command::new(crun)
        .args(["run", "-d", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .status()
        .map_err(io_err(crun))?;
    let took = start.elapsed();
    let message = std::fs::read_to_string(&err_file).unwrap_or_default();
    let _ = std::fs::remove_file(&err_file);
    if !status.success() {
        delete(crun, id);
        return Err(BenchError::Command {
            command: format!("crun run -d {id}"),
            status: status.to_string(),
            stderr: message.trim().to_string(),
        });
    }
    Ok(took)
}

/// `crun delete -f`, best effort (cleanup).
pub fn delete(crun: &Path, id: &str) {
    let _ = Command::new(crun)
        .args(["delete", "-f", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
