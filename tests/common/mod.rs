//! Shared helpers for the end-to-end tests: a one-machine cluster (`bramble up`
//! as a child process) with names, addresses and ports no other test uses, and
//! a guard that takes it all down again, even when the test panics.

#![allow(dead_code)]

pub mod mosquitto;
pub mod multi;
pub mod prober;
pub mod registry;

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bramble");

/// A free TCP port on loopback (released before use: a small race, accepted).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port in the NodePort range.
pub fn free_node_port() -> u16 {
    loop {
        let p = rand::random_range(30000u16..=32767);
        if TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
}

/// Runs the CLI with `config`.
pub fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BRAMBLE_CONFIG", config)
        .stdin(Stdio::null())
        .output()
        .expect("bramble runs")
}

/// Runs the CLI and insists it succeeds (showing `logs` when not); stdout.
pub fn cli_ok(config: &Path, args: &[&str], logs: impl FnOnce() -> String) -> String {
    let out = cli(config, args);
    assert!(
        out.status.success(),
        "bramble {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `cli_ok` with `-o json`, parsed.
pub fn cli_json(config: &Path, args: &[&str], logs: impl FnOnce() -> String) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&cli_ok(config, &a, logs)).unwrap()
}

/// The pods a label selector picks, as JSON items.
pub fn pods_of(
    config: &Path,
    selector: &str,
    logs: impl FnOnce() -> String,
) -> Vec<serde_json::Value> {
    cli_json(config, &["get", "pods", "-l", selector], logs)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Running, Ready and not being deleted.
pub fn is_running_ready(p: &serde_json::Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["metadata"]["deletionTimestamp"].is_null()
        && p["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Polls `check` until it holds; past `limit`, panics naming `what` with `logs`.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> bool,
    logs: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}\n{}", logs());
}

/// An address block only this test holds: the second octet of 10.X.0.0/16,
/// claimed with an exclusive file so concurrent test processes never share it.
pub struct NetLease {
    pub octet: u8,
    token: PathBuf,
}

impl NetLease {
    pub fn take() -> NetLease {
        let dir = PathBuf::from("/tmp/bramble-test-nets");
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..1000 {
            let octet = rand::random_range(100u8..=199);
            let token = dir.join(octet.to_string());
            if OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&token)
                .is_ok()
            {
                return NetLease { octet, token };
            }
        }
        panic!("no free test network block");
    }

    pub fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/17", self.octet)
    }

    pub fn service_cidr(&self) -> String {
        format!("10.{}.128.0/24", self.octet)
    }
}

impl Drop for NetLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token);
    }
}

/// A `bramble up` child with everything unique to one test.
pub struct Cluster {
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub bridge: String,
    pub node: String,
    pub broker: String,
    pub node_port: u16,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub net: NetLease,
    pub args: Vec<String>,
}

pub struct ClusterOptions {
    pub demo: bool,
    /// An external broker URL (Mosquitto); the embedded one otherwise.
    pub broker: Option<String>,
}

impl Cluster {
    pub fn start(opts: ClusterOptions) -> Cluster {
        Cluster::start_with(opts, &[])
    }

    /// Like [`Cluster::start`], with more `bramble up` arguments.
    pub fn start_with(opts: ClusterOptions, extra: &[String]) -> Cluster {
        let c = Cluster::launch(opts, extra);
        c.wait_ready();
        c
    }

    /// Starts `bramble up` without waiting for it to be ready.
    pub fn launch(opts: ClusterOptions, extra: &[String]) -> Cluster {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let dir = std::env::temp_dir().join(format!("bramble-e2e-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let net = NetLease::take();
        let port = free_port();
        let mut c = Cluster {
            data_dir: dir.join("data"),
            config: dir.join("config.toml"),
            log: dir.join("up.log"),
            bridge: format!("bt{tag}"),
            node: format!("n{tag}"),
            broker: opts
                .broker
                .clone()
                .unwrap_or_else(|| format!("mqtt://127.0.0.1:{port}")),
            node_port: free_node_port(),
            dir,
            child: None,
            net,
            args: Vec::new(),
        };
        let mut args = vec![
            "up".to_string(),
            "--data-dir".into(),
            c.data_dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--bridge".into(),
            c.bridge.clone(),
            "--node-name".into(),
            c.node.clone(),
            "--cluster-cidr".into(),
            c.net.cluster_cidr(),
            "--service-cidr".into(),
            c.net.service_cidr(),
            "--demo-node-port".into(),
            c.node_port.to_string(),
        ];
        if opts.demo {
            args.push("--demo".into());
        }
        if let Some(b) = &opts.broker {
            args.push("--broker".into());
            args.push(b.clone());
        }
        args.extend(extra.iter().cloned());
        c.args = args.clone();
        c.launch_child(&args);
        c
    }

    /// Starts `bramble up` again with the same arguments.
    pub fn restart(&mut self) {
        let args = self.args.clone();
        self.spawn(&args);
    }

    pub fn spawn(&mut self, args: &[String]) {
        self.launch_child(args);
        self.wait_ready();
    }

    fn launch_child(&mut self, args: &[String]) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env("BRAMBLE_CONFIG", &self.config)
            .env("RUST_LOG", "info,bramble=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("bramble up starts");
        self.child = Some(child);
    }

    /// Waits until the CLI reaches the master.
    pub fn wait_ready(&self) {
        self.wait_for("the CLI config", Duration::from_secs(30), || {
            self.config.exists() && self.bramble(&["get", "nodes"]).status.success()
        });
    }

    /// Runs the CLI against this cluster.
    pub fn bramble(&self, args: &[&str]) -> Output {
        cli(&self.config, args)
    }

    /// Runs the CLI and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        cli_ok(&self.config, args, || self.log_tail())
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        cli_json(&self.config, args, || self.log_tail())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- last lines of bramble up ---\n{}",
            lines[from..].join("\n")
        )
    }

    pub fn wait_for(&self, what: &str, limit: Duration, check: impl FnMut() -> bool) {
        wait_until(what, limit, check, || self.log_tail());
    }

    /// Pods of the demo, as JSON items.
    pub fn pods(&self, selector: &str) -> Vec<serde_json::Value> {
        pods_of(&self.config, selector, || self.log_tail())
    }

    pub fn running_ready(&self, selector: &str) -> Vec<serde_json::Value> {
        self.pods(selector)
            .into_iter()
            .filter(is_running_ready)
            .collect()
    }

    pub fn layout(&self) -> bramble::config::Layout {
        bramble::config::Layout::new(&self.data_dir).unwrap()
    }

    /// Stops the agent with SIGTERM and insists it stops cleanly: exit
    /// status 0 within 20 s, its pid file removed.
    pub fn stop(&mut self) {
        self.stop_with(nix::sys::signal::Signal::SIGTERM);
    }

    /// [`Cluster::stop`] with another signal (SIGINT is Ctrl-C).
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) {
        if let Err(e) = self.try_stop(signal) {
            panic!("{e}\n{}", self.log_tail());
        }
    }

    /// Sends `signal` and waits; says what was not clean, after killing
    /// the agent if it did not stop in time.
    pub fn try_stop(&mut self, signal: nix::sys::signal::Signal) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    return Err(format!("bramble up ended with {status} on {signal}"));
                }
                let pid_file = self.layout().pid_file();
                if pid_file.exists() {
                    return Err(format!(
                        "bramble up stopped on {signal} but left {}",
                        pid_file.display()
                    ));
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "bramble up did not stop within 20 s of {signal}; killed"
        ))
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Every test's cluster must stop cleanly on SIGTERM; said after the
        // cleanup below, which a panic here would skip.
        let stopped = self.try_stop(nix::sys::signal::Signal::SIGTERM);
        let stop_failure = stopped.err().map(|e| format!("{e}\n{}", self.log_tail()));
        if std::thread::panicking() || stop_failure.is_some() {
            // The data dir goes below; the log of a failed test stays.
            let kept = std::env::temp_dir().join(format!(
                "{}.log",
                self.dir.file_name().unwrap_or_default().to_string_lossy()
            ));
            if std::fs::copy(&self.log, &kept).is_ok() {
                eprintln!("bramble up's log kept in {}", kept.display());
            }
        }
        let out = Command::new(BIN)
            .args(["down", "--purge", "--data-dir"])
            .arg(&self.data_dir)
            .output();
        if let Ok(o) = out
            && !o.status.success()
        {
            eprintln!(
                "bramble down failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(failure) = stop_failure
            && !std::thread::panicking()
        {
            panic!("{failure}");
        }
    }
}

/// An HTTP GET with a plain TCP client (no proxy settings, no keep-alive).
pub fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: bramble\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.").then_some(body)
}

/// The pod names that answered `n` requests to `addr`.
pub fn who_answers(addr: &str, names: &[String], n: usize) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        if let Some(body) = http_get(addr) {
            for name in names {
                if body.contains(name.as_str()) {
                    seen.insert(name.clone());
                }
            }
        }
    }
    seen
}

/// Paths under `dir` that exist, for leftover checks.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

pub fn loopback() -> Ipv4Addr {
    Ipv4Addr::LOCALHOST
}
