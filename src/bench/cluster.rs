//! Bramble's side: clusters on this host, each a child process of this
//! binary (`bramble up`), or two (`bramble master` and a `bramble worker`
//! joined to it), with a bridge, address block, ports and data directories no
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
use std::process::{Child, Command, ExitStatus, Output, Stdio};
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

/// One process of a bench cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `bramble up`: broker, master and worker in one process.
    Up,
    /// `bramble master` without a worker: broker and master.
    Master,
    /// `bramble worker`, joined to the master of the same cluster.
    Worker,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Up => "up",
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

/// A `bramble` child process with its data dir and log.
struct Agent {
    role: Role,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn spawn(
        exe: &Path,
        dir: &Path,
        role: Role,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Agent, BenchError> {
        let data_dir = dir.join(format!("{}-data", role.name()));
        let log = dir.join(format!("{}.log", role.name()));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(&log))?;
        let err = out.try_clone().map_err(io_err(&log))?;
        let child = Command::new(exe)
            .arg(role.name())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            // Ctrl-C reaches only the bench, which stops the agents in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err(exe))?;
        Ok(Agent {
            role,
            data_dir,
            log,
            child: Some(child),
        })
    }

    /// How the process ended, if it has.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then SIGKILL after 20 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
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
    }
}

/// A bench cluster on this host: one `bramble up` process ([`start`]), or a
/// `bramble master` and a `bramble worker` joined to it ([`start_split`]),
/// what every Pi but the master runs.
///
/// Several can run side by side on the host's network namespace: each has
/// its own bridge (and so its own nftables table), address block (pod CIDR,
/// ClusterIPs, the DNS address its agent binds port 53 on), broker port,
/// data dir (and so `/run/bramble/<id>` and cgroups), and one node, so no
/// host-gw routes. What they would share is the NodePort range: a Service
/// given no `nodePort` could get the same port in two clusters, so the
/// bench always names one ([`free_node_port`]).
///
/// [`start`]: LocalCluster::start
/// [`start_split`]: LocalCluster::start_split
pub struct LocalCluster {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub bridge: String,
    pub node_name: String,
    /// In start order; stopped in reverse.
    agents: Vec<Agent>,
    net: NetLease,
}

impl LocalCluster {
    fn new(exe: &Path, dir: &Path, tag: &str) -> Result<LocalCluster, BenchError> {
        let net = NetLease::take()?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(LocalCluster {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            config: dir.join("config.toml"),
            bridge: format!("bt{tag}"),
            node_name: format!("bench-{tag}"),
            agents: Vec::new(),
            net,
        })
    }

    fn master_args(&self, port: u16) -> Vec<String> {
        let octet = self.net.octet;
        vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--cluster-cidr".into(),
            format!("10.{octet}.0.0/17"),
            "--service-cidr".into(),
            format!("10.{octet}.128.0/24"),
        ]
    }

    fn node_args(&self) -> Vec<String> {
        vec![
            "--bridge".into(),
            self.bridge.clone(),
            "--node-name".into(),
            self.node_name.clone(),
            // The bench's images are imported, not pullable: a shared disk
            // filling up for a moment must not collect them mid-run.
            "--image-gc-high-threshold".into(),
            "100".into(),
        ]
    }

    /// Waits until `check` holds, failing early if an agent exits.
    fn wait(
        &mut self,
        what: &str,
        check: impl Fn(&LocalCluster) -> bool,
    ) -> Result<(), BenchError> {
        wait_until(
            what,
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                if let Some((role, status)) = self
                    .agents
                    .iter_mut()
                    .find_map(|a| Some((a.role, a.exited()?)))
                {
                    return Err(BenchError::Cluster(format!(
                        "bramble {} exited ({status})\n{}",
                        role.name(),
                        self.log_tail()
                    )));
                }
                Ok(check(self).then_some(()))
            },
        )
        .map_err(|e| match e {
            BenchError::Timeout { what, seconds } => BenchError::Timeout {
                what: format!("{what}\n{}", self.log_tail()),
                seconds,
            },
            e => e,
        })
    }

    fn answers(&self) -> bool {
        self.config.exists()
            && self
                .cli(&["get", "nodes"])
                .is_ok_and(|o| o.status.success())
    }

    /// Starts `bramble up` under `dir` and waits until the CLI gets an answer.
    pub fn start(exe: &Path, dir: &Path, tag: &str) -> Result<LocalCluster, BenchError> {
        let mut c = LocalCluster::new(exe, dir, tag)?;
        let mut args = c.master_args(free_port()?);
        args.extend(c.node_args());
        let config = c.config.display().to_string();
        c.agents.push(Agent::spawn(
            exe,
            dir,
            Role::Up,
            &args,
            &[("BRAMBLE_CONFIG", &config)],
        )?);
        c.wait("bramble up to answer", LocalCluster::answers)?;
        Ok(c)
    }

    /// Starts `bramble master` (no worker) and a `bramble worker` joined to
    /// it with the master's `join-token`, each with its own data dir, and
    /// waits until the worker's node is Ready. `prepare` runs on the
    /// worker's layout before the worker starts (to put images in its store).
    pub fn start_split(
        exe: &Path,
        dir: &Path,
        tag: &str,
        prepare: impl FnOnce(&Layout) -> Result<(), BenchError>,
    ) -> Result<LocalCluster, BenchError> {
        let mut c = LocalCluster::new(exe, dir, tag)?;
        let port = free_port()?;
        let args = c.master_args(port);
        let config = c.config.display().to_string();
        c.agents.push(Agent::spawn(
            exe,
            dir,
            Role::Master,
            &args,
            &[("BRAMBLE_CONFIG", &config)],
        )?);
        let token_file = c.agents[0].data_dir.join("join-token");
        c.wait("bramble master to answer", |c| {
            token_file.exists() && c.answers()
        })?;
        let token = std::fs::read_to_string(&token_file).map_err(io_err(&token_file))?;
        let worker_dir = dir.join(format!("{}-data", Role::Worker.name()));
        prepare(&Layout::new(&worker_dir)?)?;
        let mut args = vec!["--broker".into(), format!("mqtt://127.0.0.1:{port}")];
        args.extend(c.node_args());
        // In the environment, not on the command line `ps` shows.
        c.agents.push(Agent::spawn(
            exe,
            dir,
            Role::Worker,
            &args,
            &[("BRAMBLE_JOIN_TOKEN", token.trim())],
        )?);
        c.wait(
            "bramble worker to join and be Ready",
            LocalCluster::node_ready,
        )?;
        Ok(c)
    }

    /// This cluster's node reports Ready.
    fn node_ready(&self) -> bool {
        let Ok(out) = self.cli(&["get", "node", &self.node_name, "-o", "json"]) else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        out.status.success()
            && v["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    }

    /// The process running this cluster's node (its pods are its children):
    /// the `bramble up` process, or the worker of a split cluster.
    pub fn pid(&self) -> u32 {
        self.pid_of(Role::Up)
            .or_else(|| self.pid_of(Role::Worker))
            .unwrap_or(0)
    }

    /// The process playing `role`, if this cluster has one.
    pub fn pid_of(&self, role: Role) -> Option<u32> {
        self.agents
            .iter()
            .find(|a| a.role == role)
            .and_then(Agent::pid)
    }

    /// The data dir of the process running the node (its image store).
    fn node_data_dir(&self) -> &Path {
        self.agents
            .iter()
            .find(|a| a.role != Role::Master)
            .or(self.agents.first())
            .map(|a| a.data_dir.as_path())
            .unwrap_or(&self.dir)
    }

    /// The node's data layout (where its images go).
    pub fn layout(&self) -> Result<Layout, BenchError> {
        Ok(Layout::new(self.node_data_dir())?)
    }

    /// Each process's log file, with a name (`up.log`, `master.log`, …).
    pub fn logs(&self) -> Vec<(PathBuf, String)> {
        self.agents
            .iter()
            .map(|a| (a.log.clone(), format!("{}.log", a.role.name())))
            .collect()
    }

    pub fn log_tail(&self) -> String {
        let mut out = Vec::new();
        for a in &self.agents {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            // The embedded broker's connection chatter says nothing about pods.
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("rumqttd")).collect();
            out.push(format!(
                "--- last lines of bramble {} ---\n{}",
                a.role.name(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        out.join("\n")
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

    /// Stops the agents (the worker before its master) and removes
    /// everything they made; returns what failed.
    pub fn shutdown(&mut self) -> Vec<String> {
        let mut remains = Vec::new();
        if self.agents.iter().all(|a| a.child.is_none()) {
            return remains;
        }
        for a in self.agents.iter_mut().rev() {
            a.stop();
        }
        for a in self.agents.iter().rev() {
            match Command::new(&self.exe)
                .args(["down", "--purge", "--data-dir"])
                .arg(&a.data_dir)
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => remains.push(format!(
                    "bramble down ({}) failed: {}",
                    a.role.name(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => {
                    remains.push(format!("bramble down ({}) did not run: {e}", a.role.name()))
                }
            }
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
