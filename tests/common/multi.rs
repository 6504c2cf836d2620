//! A many-node cluster on one machine: a master and N workers, each a real
//! `bramble` process in its own network namespace, joined by veths to a test
//! bridge that plays the home LAN. Everything is named after a per-test tag
//! and removed on drop, even when the test panics.
//!
//! Processes enter their namespace with `nsenter --net` only (not `ip netns
//! exec`, which also makes a mount namespace): pod namespaces and rootfs
//! mounts stay visible to the host, so a restarted agent and `bramble down`
//! find them.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, NetLease};

/// One node: its namespace, address, data dir and process.
pub struct TestNode {
    pub name: String,
    pub netns: String,
    /// Our end of its LAN cable (`ip link set … down` is a pulled cable).
    pub host_veth: String,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    pub child: Option<Child>,
}

impl TestNode {
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!("--- {} ---\n{}", self.name, all[from..].join("\n"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the node's process (again) with its arguments.
    pub fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(BIN)
            .args(&self.args)
            .env("RUST_LOG", "info,bramble=debug,rumqttd=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nsenter runs bramble");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a command inside the node's network namespace.
    pub fn run_in(&self, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter runs")
    }

    /// Pulls (`false`) or plugs back (`true`) the node's LAN cable.
    pub fn set_link(&self, up: bool) {
        sh(&[
            "ip",
            "link",
            "set",
            &self.host_veth,
            if up { "up" } else { "down" },
        ]);
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn seed_demo_image(n: &TestNode) {
    let layout = bramble::config::Layout::new(&n.data_dir).unwrap();
    let store = bramble::runtime::ImageStore::open(&layout.images()).unwrap();
    bramble::runtime::demo::build_demo_image(&store, std::path::Path::new("/bin/busybox")).unwrap();
}

fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

pub struct TestCluster {
    pub tag: String,
    pub dir: PathBuf,
    /// The CLI's config (the admin key, the broker on the master's address).
    pub config: PathBuf,
    pub lan_bridge: String,
    pub net: NetLease,
    pub master: TestNode,
    pub workers: Vec<TestNode>,
    pub broker: String,
    /// From starting the workers until all were Ready.
    pub joined_in: Duration,
}

pub struct TestClusterOptions {
    pub workers: usize,
    /// More `bramble master` arguments.
    pub master_args: Vec<String>,
    /// An external broker URL instead of the master's embedded one (the
    /// broker must be reachable from the nodes' namespaces).
    pub broker: Option<String>,
}

/// An external broker the test starts once the LAN exists, since it must
/// listen where the nodes' namespaces reach it: the host's LAN address (for
/// a TLS broker, also the address its certificate names).
pub struct LanBroker<'a> {
    /// Given the host's address on the LAN, starts the broker and returns
    /// its URL.
    pub start: Box<dyn FnOnce(Ipv4Addr) -> String + 'a>,
    /// More `bramble worker` arguments for worker `i` (0-based), e.g.
    /// `--broker-ca`, `--mqtt-version`.
    pub worker_args: Box<dyn Fn(usize) -> Vec<String> + 'a>,
}

/// Where the demo image is when the workers start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoImage {
    /// Built into every worker's own store (what [`TestCluster::start`] does).
    OnEveryWorker,
    /// Imported on the master only, with `bramble image import`: the
    /// workers' stores start empty and must pull it from the master's
    /// registry mirror.
    OnMasterOnly,
}

impl TestCluster {
    /// The LAN's /24: inside this test's 10.X.0.0/16 lease, clear of the
    /// cluster (10.X.0.0/17) and service (10.X.128.0/24) ranges.
    fn lan_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net.octet, 200, host)
    }

    pub fn start(opts: TestClusterOptions) -> TestCluster {
        Self::start_inner(opts, None, DemoImage::OnEveryWorker)
    }

    /// A cluster on a broker the test starts on the LAN (see [`LanBroker`]);
    /// `opts.broker` is ignored.
    pub fn start_with_broker(opts: TestClusterOptions, broker: LanBroker<'_>) -> TestCluster {
        Self::start_inner(opts, Some(broker), DemoImage::OnEveryWorker)
    }

    pub fn start_with(opts: TestClusterOptions, demo: DemoImage) -> TestCluster {
        Self::start_inner(opts, None, demo)
    }

    fn start_inner(
        mut opts: TestClusterOptions,
        lan_broker: Option<LanBroker<'_>>,
        demo: DemoImage,
    ) -> TestCluster {
        let tag = format!("{:05x}", rand::random::<u32>() & 0xf_ffff);
        let dir = std::env::temp_dir().join(format!("bramble-multi-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let net = NetLease::take();
        let lan_bridge = format!("bl{tag}");
        let mk_node = |name: &str, suffix: &str, ip: Ipv4Addr| TestNode {
            name: name.to_string(),
            netns: format!("bn{tag}{suffix}"),
            host_veth: format!("bh{tag}{suffix}"),
            ip,
            data_dir: dir.join(name).join("data"),
            log: dir.join(format!("{name}.log")),
            args: Vec::new(),
            child: None,
        };
        let octet = net.octet;
        let ip = |h: u8| Ipv4Addr::new(10, octet, 200, h);
        let master = mk_node("master", "m", ip(2));
        let workers = (0..opts.workers)
            .map(|i| {
                mk_node(
                    &format!("w{}", i + 1),
                    &(i + 1).to_string(),
                    ip(10 + i as u8),
                )
            })
            .collect();
        let mut c = TestCluster {
            config: dir.join("config.toml"),
            broker: opts
                .broker
                .clone()
                .unwrap_or_else(|| format!("mqtt://{}:1883", ip(2))),
            tag,
            dir,
            lan_bridge,
            net,
            master,
            workers,
            joined_in: Duration::ZERO,
        };
        // The LAN first; from here on Drop cleans up whatever exists.
        sh(&["ip", "link", "add", &c.lan_bridge, "type", "bridge"]);
        let host_ip = format!("{}/24", c.lan_ip(1));
        sh(&["ip", "addr", "add", &host_ip, "dev", &c.lan_bridge]);
        sh(&["ip", "link", "set", &c.lan_bridge, "up"]);
        let worker_args = match lan_broker {
            Some(b) => {
                c.broker = (b.start)(c.lan_ip(1));
                opts.broker = Some(c.broker.clone());
                Some(b.worker_args)
            }
            None => None,
        };
        for n in std::iter::once(&c.master).chain(c.workers.iter()) {
            c.plug(n);
        }

        let mut args: Vec<String> = vec![
            "master".into(),
            "--data-dir".into(),
            c.master.data_dir.display().to_string(),
            "--listen".into(),
            format!("{}:1883", c.master.ip),
            "--cluster-cidr".into(),
            c.net.cluster_cidr(),
            "--service-cidr".into(),
            c.net.service_cidr(),
        ];
        if let Some(b) = &opts.broker {
            args.extend(["--broker".into(), b.clone()]);
        }
        args.extend(opts.master_args.iter().cloned());
        args.extend(["--config".into(), c.config.display().to_string()]);
        c.master.args = args;
        c.master.spawn();
        let token_file = c.master.data_dir.join("join-token");
        c.wait_for(
            "the master's config and join token",
            Duration::from_secs(60),
            || {
                token_file.exists()
                    && c.config.exists()
                    && c.bramble(&["get", "nodes"]).status.success()
            },
        );
        let token = std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_string();
        let broker = c.broker.clone();
        // The demo image, built into each node's own store first, so the
        // join time is the join's alone.
        match demo {
            DemoImage::OnEveryWorker => {
                for w in &c.workers {
                    seed_demo_image(w);
                }
            }
            DemoImage::OnMasterOnly => {
                let archive = c.dir.join("demo-image.tar");
                let busybox = std::path::Path::new("/bin/busybox");
                bramble::runtime::demo::write_demo_archive(busybox, &archive).unwrap();
                c.ok(&["image", "import", archive.to_str().unwrap()]);
            }
        }
        let started = Instant::now();
        for (i, w) in c.workers.iter_mut().enumerate() {
            w.args = vec![
                "worker".into(),
                "--join".into(),
                token.clone(),
                "--broker".into(),
                broker.clone(),
                "--data-dir".into(),
                w.data_dir.display().to_string(),
                "--node-name".into(),
                w.name.clone(),
                "--node-ip".into(),
                w.ip.to_string(),
            ];
            if let Some(more) = &worker_args {
                w.args.extend(more(i));
            }
            w.spawn();
        }
        let names: Vec<String> = c.workers.iter().map(|w| w.name.clone()).collect();
        c.wait_for("every worker Ready", Duration::from_secs(90), || {
            names.iter().all(|n| c.node_ready(n))
        });
        c.joined_in = started.elapsed();
        c
    }

    /// A node's namespace, cabled to the LAN bridge at its address.
    fn plug(&self, n: &TestNode) {
        let (ns, veth, ip) = (&n.netns, &n.host_veth, n.ip);
        sh(&["ip", "netns", "add", ns]);
        sh(&[
            "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        sh(&["ip", "link", "set", veth, "master", &self.lan_bridge, "up"]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        let gateway = self.lan_ip(1).to_string();
        sh(&["ip", "-n", ns, "route", "add", "default", "via", &gateway]);
    }

    /// One more machine on the LAN, `w<N>`, with the demo image in its
    /// store: not started (its `args` are the caller's), removed on drop.
    pub fn add_node(&mut self) -> &mut TestNode {
        let i = self.workers.len() + 1;
        let name = format!("w{i}");
        let node = TestNode {
            netns: format!("bn{}{i}", self.tag),
            host_veth: format!("bh{}{i}", self.tag),
            ip: self.lan_ip(9 + i as u8),
            data_dir: self.dir.join(&name).join("data"),
            log: self.dir.join(format!("{name}.log")),
            args: Vec::new(),
            child: None,
            name,
        };
        // Pushed first, so Drop removes whatever `plug` managed to make.
        self.workers.push(node);
        let node = self.workers.last().unwrap();
        self.plug(node);
        seed_demo_image(node);
        self.workers.last_mut().unwrap()
    }

    /// A new machine started as a flashed Pi is: `bramble worker
    /// --config-file worker.toml`, the file holding the broker, the join
    /// token, its name and address. Returns its name.
    pub fn start_prepared_worker(&mut self) -> String {
        let (broker, token) = (self.broker.clone(), self.join_token());
        let node = self.add_node();
        let file = bramble::config::WorkerFile {
            broker,
            broker_ca: None,
            mqtt_version: None,
            join_token: Some(token),
            node_name: Some(node.name.clone()),
            labels: Default::default(),
            data_dir: Some(node.data_dir.clone()),
            node_ip: Some(node.ip),
            insecure_registries: Vec::new(),
            registry_ca: None,
            topic_prefix: None,
        };
        let path = node.data_dir.with_file_name("worker.toml");
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
        node.args = vec![
            "worker".into(),
            "--config-file".into(),
            path.display().to_string(),
        ];
        node.spawn();
        node.name.clone()
    }

    pub fn join_token(&self) -> String {
        std::fs::read_to_string(self.master.data_dir.join("join-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn worker(&self, name: &str) -> &TestNode {
        self.workers.iter().find(|w| w.name == name).unwrap()
    }

    pub fn worker_mut(&mut self, name: &str) -> &mut TestNode {
        self.workers.iter_mut().find(|w| w.name == name).unwrap()
    }

    pub fn bramble(&self, args: &[&str]) -> Output {
        super::cli(&self.config, args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        super::cli_ok(&self.config, args, || self.logs())
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        super::cli_json(&self.config, args, || self.logs())
    }

    /// The `Ready` condition of node `name` is True.
    pub fn node_ready(&self, name: &str) -> bool {
        let out = self.bramble(&["get", "node", name, "-o", "json"]);
        if !out.status.success() {
            return false;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    }

    pub fn pods(&self, selector: &str) -> Vec<serde_json::Value> {
        super::pods_of(&self.config, selector, || self.logs())
    }

    /// Running, Ready and not being deleted.
    pub fn running_ready(&self, selector: &str) -> Vec<serde_json::Value> {
        self.pods(selector)
            .into_iter()
            .filter(super::is_running_ready)
            .collect()
    }

    pub fn logs(&self) -> String {
        std::iter::once(&self.master)
            .chain(self.workers.iter())
            .map(|n| n.log_tail(25))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn wait_for(&self, what: &str, limit: Duration, check: impl FnMut() -> bool) {
        super::wait_until(what, limit, check, || self.logs());
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in std::iter::once(&mut self.master).chain(self.workers.iter_mut()) {
            n.kill9();
            // Containers, cgroups, mounts and the node's pod network go with
            // `down`, run where the node's links are.
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", n.netns))
                .arg("--")
                .arg(BIN)
                .args(["down", "--purge", "--data-dir"])
                .arg(&n.data_dir)
                .output();
            if let Ok(o) = out
                && !o.status.success()
            {
                eprintln!(
                    "bramble down ({}): {}",
                    n.name,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            sh_quiet(&["ip", "link", "del", &n.host_veth]);
            sh_quiet(&["ip", "netns", "del", &n.netns]);
        }
        sh_quiet(&["ip", "link", "del", &self.lan_bridge]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
