//! Bramble's side: a one-machine cluster (`bramble up` as a child process of
//! this binary) with a bridge, address block, ports and data directory no
//! other cluster or test uses, taken down (`bramble down --purge`) on drop;
//! and an in-process client for polling pods without a CLI process per look.
//!
//! Address blocks are claimed like the test harness does (an exclusive file
//! in `/tmp/bramble-test-nets`), so a bench and the test suite can run side
//! by side.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::{BenchError, io_err, wait_until};
use crate::api::{Kind, Object};
use crate::cli::client::Client;
use crate::config::{ClientConfig, Layout};
use crate::transport::messages::{GetRequest, Request, Response};

/// A free port in the NodePort range (released before use: a small race).
pub fn free_node_port() -> u16 {
    loop {
        let p = rand::random_range(30000u16..=32767);
        if TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
}

fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err(Path::new("127.0.0.1:0")))?;
    Ok(l.local_addr()
        .map_err(io_err(Path::new("127.0.0.1:0")))?
        .port())
}

/// The second octet of 10.X.0.0/16, held exclusively while this lives.
struct NetLease {
    octet: u8,
    token: PathBuf,
}

impl NetLease {
    fn take() -> Result<NetLease, BenchError> {
        let dir = PathBuf::from("/tmp/bramble-test-nets");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for _ in 0..1000 {
            let octet = rand::random_range(100u8..=199);
            let token = dir.join(octet.to_string());
            if OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&token)
                .is_ok()
            {
                return Ok(NetLease { octet, token });
            }
        }
        Err(BenchError::Cluster(format!(
            "no free address block in {}",
            dir.display()
        )))
    }
}

impl Drop for NetLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token);
    }
}

pub struct LocalCluster {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub bridge: String,
    pub log: PathBuf,
    child: Option<Child>,
    net: NetLease,
}

impl LocalCluster {
    /// Starts `bramble up` under `dir` and waits until the CLI gets an answer.
    pub fn start(exe: &Path, dir: &Path, tag: &str) -> Result<LocalCluster, BenchError> {
        let net = NetLease::take()?;
        let port = free_port()?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut c = LocalCluster {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            data_dir: dir.join("data"),
            config: dir.join("config.toml"),
            bridge: format!("bt{tag}"),
            log: dir.join("up.log"),
            child: None,
            net,
        };
        let octet = c.net.octet;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&c.log)
            .map_err(io_err(&c.log))?;
        let log2 = log.try_clone().map_err(io_err(&c.log))?;
        let child = Command::new(exe)
            .arg("up")
            .arg("--data-dir")
            .arg(&c.data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--bridge", &c.bridge])
            .args(["--node-name", &format!("bench-{tag}")])
            .args(["--cluster-cidr", &format!("10.{octet}.0.0/17")])
            .args(["--service-cidr", &format!("10.{octet}.128.0/24")])
            // The bench's images are imported, not pullable: a shared disk
            // filling up for a moment must not collect them mid-run.
            .args(["--image-gc-high-threshold", "100"])
            .env("BRAMBLE_CONFIG", &c.config)
            .env_remove("RUST_LOG")
            // Ctrl-C reaches only the bench, which stops the agent in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(exe))?;
        c.child = Some(child);
        wait_until(
            "bramble up to answer",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                if let Some(Ok(Some(status))) = c.child.as_mut().map(|ch| ch.try_wait()) {
                    return Err(BenchError::Cluster(format!(
                        "bramble up exited ({status})\n{}",
                        c.log_tail()
                    )));
                }
                let answered =
                    c.config.exists() && c.cli(&["get", "nodes"]).is_ok_and(|o| o.status.success());
                Ok(answered.then_some(()))
            },
        )?;
        Ok(c)
    }

    /// The agent's pid (broker, master and worker).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn layout(&self) -> Result<Layout, BenchError> {
        Ok(Layout::new(&self.data_dir)?)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // The embedded broker's connection chatter says nothing about pods.
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("rumqttd")).collect();
        format!(
            "--- last lines of bramble up ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// The CLI against this cluster, as a user runs it.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("BRAMBLE_CONFIG", &self.config).stdin(Stdio::null());
        c
    }

    pub fn cli(&self, args: &[&str]) -> Result<Output, BenchError> {
        self.command()
            .args(args)
            .output()
            .map_err(io_err(&self.exe))
    }

    pub fn ok(&self, args: &[&str]) -> Result<String, BenchError> {
        let out = self.cli(args)?;
        if !out.status.success() {
            let mut e = BenchError::command(&format!("bramble {}", args.join(" ")), &out);
            if let BenchError::Command { stderr, .. } = &mut e {
                stderr.push('\n');
                stderr.push_str(&self.log_tail());
            }
            return Err(e);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `bramble apply -f` of `yaml`, written to `dir/name.yaml`.
    pub fn apply(&self, name: &str, yaml: &str) -> Result<PathBuf, BenchError> {
        let file = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).map_err(io_err(&file))?;
        self.ok(&["apply", "-f", &file.display().to_string()])?;
        Ok(file)
    }

    /// Stops the agent and removes everything it made; returns what failed.
    pub fn shutdown(&mut self) -> Vec<String> {
        let mut remains = Vec::new();
        let Some(mut child) = self.child.take() else {
            return remains;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        match Command::new(&self.exe)
            .args(["down", "--purge", "--data-dir"])
            .arg(&self.data_dir)
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => remains.push(format!(
                "bramble down failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => remains.push(format!("bramble down did not run: {e}")),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        remains
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for line in self.shutdown() {
            tracing::warn!(%line, "left behind by the bench cluster");
        }
    }
}

/// What the bench needs to know of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    pub running: bool,
    pub ready: bool,
    pub deleting: bool,
    pub ip: Option<Ipv4Addr>,
    /// The first container's runtime id (without `bramble://`).
    pub container_id: Option<String>,
    pub restarts: i32,
}

impl PodView {
    pub fn running_ready(&self) -> bool {
        self.running && self.ready && !self.deleting
    }
}

/// An MQTT client of the cluster in this process, reconnecting on demand.
pub struct Api {
    handle: Handle,
    config: ClientConfig,
    client: Option<Client>,
}

impl Api {
    pub fn new(handle: Handle, cluster: &LocalCluster) -> Result<Api, BenchError> {
        Ok(Api {
            handle,
            config: ClientConfig::load(&cluster.config)?,
            client: None,
        })
    }

    /// Drops the connection (so an idle window has no client talking).
    pub fn disconnect(&mut self) {
        if let Some(c) = self.client.take() {
            self.handle.block_on(c.close());
        }
    }

    fn get(&mut self, req: GetRequest) -> Result<Vec<Object>, BenchError> {
        if self.client.is_none() {
            let c = self
                .handle
                .block_on(Client::connect(&self.config))
                .map_err(|e| BenchError::Client(e.to_string()))?;
            self.client = Some(c);
        }
        let client = self.client.as_mut().expect("connected above");
        match self.handle.block_on(client.call(Request::Get(req))) {
            Ok(Response::Objects(objs)) => Ok(objs),
            Ok(other) => Err(BenchError::Client(format!("unexpected answer {other:?}"))),
            Err(e) => {
                self.client = None;
                Err(BenchError::Client(e.to_string()))
            }
        }
    }

    pub fn pods(&mut self, selector: &str) -> Result<Vec<PodView>, BenchError> {
        let objs = self.get(GetRequest {
            kind: Kind::Pod,
            namespace: Some("default".into()),
            name: None,
            selector: Some(selector.into()),
        })?;
        Ok(objs
            .into_iter()
            .filter_map(|o| match o {
                Object::Pod(p) => Some(p),
                _ => None,
            })
            .map(|p| {
                let status = p.status.unwrap_or_default();
                let first = status
                    .container_statuses
                    .as_ref()
                    .and_then(|c| c.first().cloned());
                PodView {
                    name: p.metadata.name.unwrap_or_default(),
                    running: status.phase.as_deref() == Some("Running"),
                    ready: status
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True"),
                    deleting: p.metadata.deletion_timestamp.is_some(),
                    ip: status.pod_ip.as_deref().and_then(|i| i.parse().ok()),
                    container_id: first.as_ref().and_then(|c| {
                        c.container_id
                            .as_deref()
                            .map(|id| id.trim_start_matches("bramble://").to_string())
                    }),
                    restarts: first.map(|c| c.restart_count).unwrap_or(0),
                }
            })
            .collect())
    }

    pub fn cluster_ip(&mut self, service: &str) -> Result<Ipv4Addr, BenchError> {
        let objs = self.get(GetRequest {
            kind: Kind::Service,
            namespace: Some("default".into()),
            name: Some(service.into()),
            selector: None,
        })?;
        objs.into_iter()
            .find_map(|o| match o {
                Object::Service(s) => s.spec?.cluster_ip?.parse().ok(),
                _ => None,
            })
            .ok_or_else(|| BenchError::Cluster(format!("service {service} has no ClusterIP")))
    }
}
