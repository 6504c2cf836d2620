//! The Docker peer: a private `dockerd` (its own socket, exec root and data
//! root, so it never meets another engine's state), its CLI, a small client
//! of its HTTP API on the unix socket (for polling without a CLI process per
//! look), Swarm on loopback, and the shutdown that leaves the host as it was.
//!
//! Owns the engine it starts and everything under its roots. Must not touch
//! other engines, Bramble's pods or links that were there before it started
//! ([`HostState`] decides what is Docker's).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::hoststate::HostState;
use super::{BenchError, io_err, procfs, wait_until};

pub struct DockerEngine {
    exec_root: PathBuf,
    data_root: PathBuf,
    sock: PathBuf,
    pub log: PathBuf,
    cli: PathBuf,
    child: Option<Child>,
    host: Option<HostState>,
    swarm: bool,
    /// Set once [`DockerEngine::shutdown`] ran.
    down: bool,
}

/// One Swarm task, as the API reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub state: String,
    pub desired: String,
    pub container_id: Option<String>,
    pub pid: Option<u32>,
}

/// `%`-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl DockerEngine {
    /// Starts `dockerd` with roots named by `tag` and waits until it answers.
    pub fn start(
        dockerd: &Path,
        cli: &Path,
        tag: &str,
        log: &Path,
    ) -> Result<DockerEngine, BenchError> {
        let host = HostState::capture();
        // Unix socket paths are limited to 108 bytes: keep the exec root short.
        let exec_root = PathBuf::from(format!("/run/bramble-bench-{tag}"));
        let data_root = PathBuf::from(format!("/var/lib/bramble-bench-{tag}"));
        for d in [&exec_root, &data_root] {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let sock = exec_root.join("docker.sock");
        let log_file = std::fs::File::create(log).map_err(io_err(log))?;
        let err_file = log_file.try_clone().map_err(io_err(log))?;
        let mut engine = DockerEngine {
            sock: sock.clone(),
            log: log.to_path_buf(),
            cli: cli.to_path_buf(),
            child: None,
            host: Some(host),
            swarm: false,
            down: false,
            exec_root: exec_root.clone(),
            data_root: data_root.clone(),
        };
        let child = Command::new(dockerd)
            .arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(exec_root.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            // Nothing can be pulled here: a Swarm task would first try (and
            // fail, slowly for some names) to pull its image; this moby knob
            // makes it use the imported image, as Bramble's `Never` does.
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            // Its own process group: a Ctrl-C at the terminal reaches only
            // the bench, which then stops the engine in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(io_err(dockerd))?;
        engine.child = Some(child);
        let limit = Duration::from_secs(60);
        wait_until(
            "dockerd to answer",
            limit,
            Duration::from_millis(100),
            || {
                if let Some(Ok(Some(status))) = engine.child.as_mut().map(|c| c.try_wait()) {
                    return Err(BenchError::Docker(format!(
                        "dockerd exited ({status}): {}",
                        engine.log_tail()
                    )));
                }
                Ok(engine.get("/_ping").ok().map(|_| ()))
            },
        )?;
        Ok(engine)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The docker CLI against this engine.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.cli);
        c.env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .stdin(Stdio::null());
        c
    }

    pub fn cli(&self, args: &[&str]) -> Result<Output, BenchError> {
        self.command()
            .args(args)
            .output()
            .map_err(io_err(&self.cli))
    }

    /// Runs the CLI, insists it succeeds, returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String, BenchError> {
        let out = self.cli(args)?;
        if !out.status.success() {
            return Err(BenchError::command(
                &format!("docker {}", args.join(" ")),
                &out,
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `GET path` on the engine's API; the JSON body of a 2xx answer.
    pub fn get(&self, path: &str) -> Result<Value, BenchError> {
        let what = format!("docker API GET {path}");
        let mut s = UnixStream::connect(&self.sock).map_err(io_err(&self.sock))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err(&self.sock))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(io_err(&self.sock))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io_err(&self.sock))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| BenchError::Parse {
                what: what.clone(),
                detail: "no end of headers".into(),
            })?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if !status.starts_with('2') {
            return Err(BenchError::Docker(format!(
                "{what}: {status} {}",
                body.trim()
            )));
        }
        if body.trim() == "OK" {
            return Ok(Value::String("OK".into()));
        }
        serde_json::from_str(body).map_err(|e| BenchError::Parse {
            what,
            detail: e.to_string(),
        })
    }

    /// `docker import` of a rootfs tar as `name`.
    pub fn import(&self, rootfs_tar: &Path, name: &str) -> Result<(), BenchError> {
        let out = self
            .command()
            .args(["import", &rootfs_tar.display().to_string(), name])
            .output()
            .map_err(io_err(&self.cli))?;
        if !out.status.success() {
            return Err(BenchError::command(&format!("docker import {name}"), &out));
        }
        Ok(())
    }

    /// The engine's processes: dockerd, its containerd, the shims and
    /// docker-proxies serving its containers (not the containers).
    pub fn processes(&self) -> BTreeSet<u32> {
        let Some(dockerd) = self.child.as_ref().map(Child::id) else {
            return BTreeSet::new();
        };
        let root = self.exec_root.display().to_string();
        let mut set = BTreeSet::from([dockerd]);
        for pid in procfs::all_pids() {
            let cmd = procfs::cmdline(pid);
            let ours = cmd.contains(&root);
            let helper = (cmd.starts_with("containerd") || cmd.contains("/containerd")) && ours
                || procfs::parent(pid) == Some(dockerd);
            if helper {
                set.insert(pid);
            }
        }
        set
    }

    /// The container's first IPv4 address on any network.
    pub fn container_ip(&self, id: &str) -> Result<Ipv4Addr, BenchError> {
        let v = self.get(&format!("/containers/{id}/json"))?;
        v["NetworkSettings"]["Networks"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .find_map(|n| n["IPAddress"].as_str()?.parse().ok())
            .ok_or_else(|| BenchError::Docker(format!("container {id} has no IPv4 address")))
    }

    /// Running containers carrying `label` (`key=value`).
    pub fn containers_with_label(&self, label: &str) -> Result<Vec<String>, BenchError> {
        let filters = serde_json::json!({ "label": [label] }).to_string();
        let v = self.get(&format!("/containers/json?filters={}", encode(&filters)))?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["Id"].as_str().map(str::to_string))
            .collect())
    }

    pub fn swarm_init(&mut self) -> Result<(), BenchError> {
        // A free port rather than 2377, which another swarm on this machine
        // may hold.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err(Path::new("127.0.0.1:0")))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        self.ok(&[
            "swarm",
            "init",
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
        ])?;
        self.swarm = true;
        Ok(())
    }

    pub fn swarm(&self) -> bool {
        self.swarm
    }

    /// The tasks of a Swarm service.
    pub fn tasks(&self, service: &str) -> Result<Vec<Task>, BenchError> {
        let filters = serde_json::json!({ "service": [service] }).to_string();
        let v = self.get(&format!("/tasks?filters={}", encode(&filters)))?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let cs = &t["Status"]["ContainerStatus"];
                Task {
                    state: t["Status"]["State"].as_str().unwrap_or("").to_string(),
                    desired: t["DesiredState"].as_str().unwrap_or("").to_string(),
                    container_id: cs["ContainerID"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    pid: cs["PID"].as_u64().filter(|p| *p > 0).map(|p| p as u32),
                }
            })
            .collect())
    }

    /// Tasks running (and meant to be).
    pub fn running_tasks(&self, service: &str) -> Result<Vec<Task>, BenchError> {
        Ok(self
            .tasks(service)?
            .into_iter()
            .filter(|t| t.state == "running" && t.desired == "running")
            .collect())
    }

    /// Stops everything and puts the host back; returns what remains. Safe to
    /// call twice.
    pub fn shutdown(&mut self) -> Vec<String> {
        if self.down {
            return Vec::new();
        }
        self.down = true;
        let mut remains = Vec::new();
        if self.child.is_some() {
            if self.swarm {
                if let Ok(ids) = self.ok(&["service", "ls", "-q"]) {
                    for id in ids.split_whitespace() {
                        let _ = self.cli(&["service", "rm", id]);
                    }
                }
                let _ = self.cli(&["swarm", "leave", "--force"]);
            }
            if let Ok(ids) = self.ok(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.cli(&args);
                }
            }
        }
        let helpers = self.processes();
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // containerd normally exits with dockerd; a shim of a container that
        // could not be removed would not.
        for pid in helpers {
            if !procfs::is_gone(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                remains.push(format!(
                    "process {pid} ({}) had to be killed",
                    procfs::cmdline(pid)
                ));
            }
        }
        for root in [&self.exec_root, &self.data_root] {
            unmount_under(root);
            if std::fs::remove_dir_all(root).is_err() && root.exists() {
                remains.push(format!("{} could not be removed", root.display()));
            }
        }
        if let Some(host) = self.host.take() {
            remains.extend(host.restore());
        }
        remains
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        for line in self.shutdown() {
            tracing::warn!(%line, "left behind by the Docker peer");
        }
    }
}

/// Detaches every mount under `root`, deepest first.
fn unmount_under(root: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Polls until `service` has `n` running tasks (and no more).
pub fn wait_tasks(
    engine: &DockerEngine,
    service: &str,
    n: usize,
    limit: Duration,
) -> Result<(), BenchError> {
    wait_until(
        &format!("{n} running tasks of {service}"),
        limit,
        Duration::from_millis(10),
        || Ok((engine.running_tasks(service)?.len() == n).then_some(())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_filters() {
        assert_eq!(
            encode(r#"{"a":["b c"]}"#),
            "%7B%22a%22%3A%5B%22b%20c%22%5D%7D"
        );
    }
}
