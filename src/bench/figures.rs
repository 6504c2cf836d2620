//! The figures, taken in one run: setup (cluster, images, peers), then each
//! figure on Bramble's side and the peer's, then teardown. A failure on the
//! peer's side becomes "skipped: why" in its row; one on Bramble's side ends
//! the bench with an error (after cleaning up, through the guards).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::cluster::{Api, LocalCluster, PodView, Role, free_node_port};
use super::docker::{DockerEngine, wait_tasks};
use super::image::{SERVE_BINARY, import_into_bramble, libraries, rootfs_tar, stripped_self};
use super::procfs::{self, IdleCost, Usage};
use super::report::{Header, Outcome, Report, Row, Summary, Unit, runs as n_runs};
use super::serve::{SERVE_SUBCOMMAND, http_ok};
use super::tools::Tools;
use super::{Args, BenchError, Settings, crun, io_err, pause, wait_until, wrk};
use crate::runtime::ImageStore;
use crate::runtime::demo::{DEMO_IMAGE, build_demo_image};

/// The throughput figure's image (demo rootfs + this binary).
pub const SERVE_IMAGE: &str = "bramble.local/bench-serve:v1";

/// busybox httpd as PID 1 behind the shell that writes its page: the same
/// command in a Bramble pod and a Swarm task.
const WEB_CMD: &str = "echo ok > /www/index.html; exec httpd -f -p 8080 -h /www";

/// An idle figure: its name, unit and which field of the cost it shows.
type IdleRow = (&'static str, Unit, fn(&IdleCost) -> f64);

/// A throughput row: target key, Bramble's setup, the peer's, the peer's samples.
type ThroughputRow = (&'static str, &'static str, &'static str, PeerSamples);

/// The peer's samples, or why there are none.
type PeerSamples = Result<Vec<f64>, String>;

const MINUTE: Duration = Duration::from_secs(60);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn measured(samples: &[f64]) -> Outcome {
    Summary::of(samples).into()
}

/// A row's peer side: the samples, or why there are none.
fn peer_outcome(r: &Result<Vec<f64>, String>) -> Outcome {
    match r {
        Ok(v) => measured(v),
        Err(why) => Outcome::Skipped(why.clone()),
    }
}

fn deployment(name: &str, replicas: usize, image: &str, command: &[&str]) -> String {
    let command = serde_json::to_string(command).expect("strings serialize");
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      terminationGracePeriodSeconds: 0\n      containers:\n      - name: main\n        image: {image}\n        imagePullPolicy: Never\n        command: {command}\n"
    )
}

fn node_port_service(name: &str, node_port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n    targetPort: 8080\n    nodePort: {node_port}\n"
    )
}

/// The address the default route leaves from (the node's IP), if any.
fn node_ip() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Waits until `n` pods of `app` run (and none of them is being deleted).
fn wait_running(
    api: &mut Api,
    cluster: &LocalCluster,
    app: &str,
    n: usize,
    limit: Duration,
) -> Result<(), BenchError> {
    let what = format!("{n} running pods of {app}");
    let selector = format!("app={app}");
    wait_until(&what, limit, Duration::from_millis(10), || {
        let pods = api.pods(&selector)?;
        Ok((pods.iter().filter(|p| p.running && !p.deleting).count() == n).then_some(()))
    })
    .map_err(|e| with_log(cluster, e))
}

/// Adds the cluster's last log lines to a timeout.
fn with_log(cluster: &LocalCluster, e: BenchError) -> BenchError {
    match e {
        BenchError::Timeout { what, seconds } => BenchError::Timeout {
            what: format!("{what}\n{}", cluster.log_tail()),
            seconds,
        },
        e => e,
    }
}

/// Copies the cluster's logs to `dir` as `bramble-bench-{tag}-{name}`
/// before its scratch directory goes, so a failure can be read afterwards.
fn keep_logs(cluster: &LocalCluster, dir: &Path, tag: &str) {
    for (from, name) in cluster.logs() {
        let to = dir.join(format!("bramble-bench-{tag}-{name}"));
        if std::fs::copy(&from, &to).is_ok() {
            eprintln!("bench: kept {}", to.display());
        }
    }
}

/// Removes the scratch directory at the end, whatever happened.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Bench<'a> {
    s: Settings,
    tag: String,
    scratch: PathBuf,
    tools: &'a Tools,
    cluster: &'a LocalCluster,
    api: Api,
    handle: Handle,
    /// For the demo image in the split cluster's worker.
    busybox: PathBuf,
    /// Where a failed run's logs are kept (`--work-dir`).
    keep_dir: PathBuf,
    docker: Option<DockerEngine>,
    /// Why there is no Docker peer (or no Swarm, once `swarm_init` failed).
    docker_why: String,
    swarm_why: Option<String>,
    demo_rootfs: PathBuf,
    report: Report,
}

impl Bench<'_> {
    /// Runs `f` against the engine; an error other than an interrupt becomes
    /// the reason the peer's row is empty.
    fn on_docker<T>(
        &mut self,
        swarm: bool,
        f: impl FnOnce(&mut DockerEngine) -> Result<T, BenchError>,
    ) -> Result<Result<T, String>, BenchError> {
        let why = if swarm { self.swarm_why.clone() } else { None };
        let Some(engine) = self.docker.as_mut() else {
            return Ok(Err(self.docker_why.clone()));
        };
        if let Some(why) = why {
            return Ok(Err(why));
        }
        match f(engine) {
            Ok(v) => Ok(Ok(v)),
            Err(BenchError::Interrupted) => Err(BenchError::Interrupted),
            Err(e) => {
                eprintln!("bench: peer failed: {e}");
                Ok(Err(format!("failed: {e}")))
            }
        }
    }

    fn pods(&mut self, app: &str) -> Result<Vec<PodView>, BenchError> {
        self.api.pods(&format!("app={app}"))
    }

    fn wait_running(&mut self, app: &str, n: usize, limit: Duration) -> Result<(), BenchError> {
        wait_running(&mut self.api, self.cluster, app, n, limit)
    }

    /// Adds the agent's last log lines to a timeout.
    fn with_log(&self, e: BenchError) -> BenchError {
        with_log(self.cluster, e)
    }

    fn start(&mut self) -> Result<(), BenchError> {
        let runs = self.s.start_runs;
        eprintln!("bench: pod/container start, {runs} runs each");
        let mut bramble = Vec::new();
        for i in 0..runs {
            let name = format!("bench-start-{i}");
            let yaml = format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: bench-start\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: main\n    image: {DEMO_IMAGE}\n    imagePullPolicy: Never\n    command: [\"sleep\", \"3600\"]\n"
            );
            let file = self.scratch.join(format!("{name}.yaml"));
            std::fs::write(&file, yaml).map_err(io_err(&file))?;
            let t = Instant::now();
            self.cluster
                .ok(&["apply", "-f", &file.display().to_string()])?;
            let api = &mut self.api;
            wait_until(
                &format!("pod {name}"),
                MINUTE,
                Duration::from_millis(2),
                || {
                    Ok(api
                        .pods("app=bench-start")?
                        .iter()
                        .any(|p| p.name == name && p.running_ready())
                        .then_some(()))
                },
            )
            .map_err(|e| self.with_log(e))?;
            bramble.push(ms(t.elapsed()));
        }
        self.cluster
            .ok(&["delete", "pods", "-l", "app=bench-start"])?;

        let crun_samples = match (&self.tools.crun, &self.tools.crun_missing) {
            (Some(crun_bin), _) => {
                let _hugetlb = crun::HugetlbMount::ensure();
                let run = || -> Result<Vec<f64>, BenchError> {
                    let bundle = crun::bundle(
                        crun_bin,
                        &self.demo_rootfs,
                        &self.scratch,
                        &["/bin/sleep", "3600"],
                    )?;
                    let mut v = Vec::new();
                    for i in 0..runs {
                        let id = format!("bramble-bench-{}-{i}", self.tag);
                        let took = crun::run_detached(crun_bin, &bundle, &id, &self.scratch);
                        crun::delete(crun_bin, &id);
                        v.push(ms(took?));
                    }
                    Ok(v)
                };
                run().map_err(|e| format!("failed: {e}"))
            }
            (None, why) => Err(why.clone().unwrap_or_default()),
        };

        let docker = self.on_docker(false, |d| {
            let mut v = Vec::new();
            let result = (|| {
                for i in 0..runs {
                    let t = Instant::now();
                    d.ok(&[
                        "run",
                        "-d",
                        "--name",
                        &format!("bench-start-{i}"),
                        DEMO_IMAGE,
                        "/bin/sleep",
                        "3600",
                    ])?;
                    v.push(ms(t.elapsed()));
                }
                Ok(())
            })();
            let names: Vec<String> = (0..runs).map(|i| format!("bench-start-{i}")).collect();
            let mut args = vec!["rm", "-f"];
            args.extend(names.iter().map(String::as_str));
            let _ = d.cli(&args);
            result.map(|_| v)
        })?;

        let figure = format!("pod/container start, image present ({})", n_runs(runs));
        let setup = "`bramble apply` → pod Running and Ready";
        self.report.push(Row::new(
            &figure,
            Unit::Ms,
            setup,
            measured(&bramble),
            "`crun run -d` (same rootfs, no network)",
            peer_outcome(&crun_samples),
        ));
        self.report.push(Row::new(
            &figure,
            Unit::Ms,
            setup,
            measured(&bramble),
            "`docker run -d` (same rootfs, default bridge)",
            peer_outcome(&docker),
        ));
        Ok(())
    }

    /// The idle figures for three Bramble setups in one window: the `up`
    /// cluster, and the worker and the master of a split cluster started
    /// for this figure alone, each with `n` idle pods on its node; against
    /// Docker with `n` idle containers.
    fn idle(&mut self) -> Result<(), BenchError> {
        let n = self.s.idle_pods;
        eprintln!(
            "bench: idle cost with {n} idle pods, {} s window; starting a split cluster (bramble master + bramble worker)",
            self.s.idle_window.as_secs()
        );
        let yaml = deployment("bench-idle", n, DEMO_IMAGE, &["sleep", "3600"]);
        self.cluster.apply("bench-idle", &yaml)?;
        let busybox = self.busybox.clone();
        let mut split = LocalCluster::start_split(
            &self.cluster.exe,
            &self.scratch.join("split"),
            &format!("{}s", self.tag),
            |layout| {
                build_demo_image(&ImageStore::open(&layout.images())?, &busybox)?;
                Ok(())
            },
        )?;
        let result = self.idle_with(&split, &yaml);
        if result.is_err() {
            keep_logs(&split, &self.keep_dir, &format!("{}-split", self.tag));
        }
        self.report.left_behind.extend(split.shutdown());
        result?;
        self.cluster.ok(&["delete", "deployment", "bench-idle"])?;
        let _ = self.on_docker(false, |d| {
            let names: Vec<String> = (0..n).map(|i| format!("bench-idle-{i}")).collect();
            let mut args = vec!["rm", "-f"];
            args.extend(names.iter().map(String::as_str));
            d.ok(&args).map(|_| ())
        })?;
        Ok(())
    }

    fn idle_with(&mut self, split: &LocalCluster, yaml: &str) -> Result<(), BenchError> {
        let n = self.s.idle_pods;
        let window = self.s.idle_window;
        split.apply("bench-idle", yaml)?;
        let started = self.on_docker(false, |d| {
            for i in 0..n {
                d.ok(&[
                    "run",
                    "-d",
                    "--name",
                    &format!("bench-idle-{i}"),
                    DEMO_IMAGE,
                    "/bin/sleep",
                    "3600",
                ])?;
            }
            Ok(())
        })?;
        self.wait_running("bench-idle", n, 2 * MINUTE)?;
        let mut split_api = Api::new(self.handle.clone(), split)?;
        wait_running(&mut split_api, split, "bench-idle", n, 2 * MINUTE)?;
        // Nothing talks to any side during the window.
        split_api.disconnect();
        self.api.disconnect();
        pause(self.s.settle)?;
        let pids = |pid: Option<u32>| BTreeSet::from_iter(pid);
        let sets = [
            BTreeSet::from([self.cluster.pid()]),
            pids(split.pid_of(Role::Worker)),
            pids(split.pid_of(Role::Master)),
        ];
        let docker_set = match (&started, &self.docker) {
            (Ok(()), Some(d)) => d.processes(),
            _ => BTreeSet::new(),
        };
        let before: Vec<Usage> = sets.iter().map(Usage::of).collect();
        let d0 = Usage::of(&docker_set);
        let t = Instant::now();
        pause(window)?;
        let after: Vec<Usage> = sets.iter().map(Usage::of).collect();
        let d1 = Usage::of(&docker_set);
        let seconds = t.elapsed().as_secs_f64();
        let bramble: Vec<IdleCost> = before
            .iter()
            .zip(&after)
            .map(|(b0, b1)| IdleCost::between(b0, b1, seconds))
            .collect();
        if let Some(i) = after.iter().position(|u| u.processes != 1) {
            return Err(BenchError::Cluster(format!(
                "bramble process {i} of the idle figure is gone\n{}",
                split.log_tail()
            )));
        }
        let d: Result<IdleCost, String> = match started {
            Ok(()) if d1.processes > 0 => Ok(IdleCost::between(&d0, &d1, seconds)),
            Ok(()) => Err("no dockerd processes found".into()),
            Err(why) => Err(why),
        };
        let bramble_setups = [
            format!("`bramble up` (broker + master + worker, one process), {n} idle pods"),
            format!("`bramble worker` alone (joined to a `bramble master`), {n} idle pods"),
            format!(
                "`bramble master` alone (broker + master, no worker); its worker runs {n} idle pods"
            ),
        ];
        let peer_setup = match &d {
            Ok(c) => format!(
                "dockerd + containerd + {} shims ({} processes), {n} idle containers",
                c.processes.saturating_sub(2),
                c.processes
            ),
            Err(_) => "dockerd + containerd + shims".into(),
        };
        let rows: [IdleRow; 5] = [
            ("idle memory: RSS", Unit::MiB, |c| c.rss_mib),
            ("idle memory: PSS", Unit::MiB, |c| c.pss_mib),
            ("idle memory: PSS, anonymous part", Unit::MiB, |c| {
                c.pss_anon_mib
            }),
            ("idle CPU", Unit::Percent, |c| c.cpu_percent),
            (
                "disk written while idle (`/proc/PID/io` write_bytes)",
                Unit::KiBPerHour,
                |c| c.write_kib_per_hour,
            ),
        ];
        for (figure, unit, get) in rows {
            let figure = if unit == Unit::Percent {
                format!("{figure} over {} s", window.as_secs())
            } else {
                figure.to_string()
            };
            for (setup, cost) in bramble_setups.iter().zip(&bramble) {
                self.report.push(Row::new(
                    &figure,
                    unit,
                    setup,
                    Outcome::Measured(Summary::one(get(cost))),
                    &peer_setup,
                    match &d {
                        Ok(c) => Outcome::Measured(Summary::one(get(c))),
                        Err(why) => Outcome::Skipped(why.clone()),
                    },
                ));
            }
        }
        Ok(())
    }

    fn kill_to_serving(&mut self) -> Result<(), BenchError> {
        let runs = self.s.kill_runs;
        eprintln!("bench: container killed → replacement serving, {runs} runs each");
        let np = free_node_port();
        let yaml = deployment("bench-web", 1, DEMO_IMAGE, &["sh", "-c", WEB_CMD])
            + &node_port_service("bench-web", np);
        self.cluster.apply("bench-web", &yaml)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], np));
        let agent = self.cluster.pid();
        let mut bramble = Vec::new();
        for run in 0..runs {
            // A fresh pod each run: a pod's later restarts back off (10 s, 20 s, …).
            let api = &mut self.api;
            let pod = wait_until(
                "a fresh bench-web pod serving",
                2 * MINUTE,
                Duration::from_millis(20),
                || {
                    let pods: Vec<PodView> = api
                        .pods("app=bench-web")?
                        .into_iter()
                        .filter(|p| !p.deleting)
                        .collect();
                    Ok(match pods.as_slice() {
                        [p] if p.running_ready()
                            && p.restarts == 0
                            && p.container_id.is_some()
                            && http_ok(addr) =>
                        {
                            Some(p.clone())
                        }
                        _ => None,
                    })
                },
            )
            .map_err(|e| self.with_log(e))?;
            let cid = pod.container_id.clone().unwrap_or_default();
            let pid = wait_until(
                "the container's init",
                Duration::from_secs(10),
                Duration::from_millis(10),
                || Ok(procfs::cgroup_init(&cid, agent)),
            )?;
            kill9(pid);
            let t = Instant::now();
            wait_until(
                "the killed container to die",
                Duration::from_secs(10),
                Duration::from_millis(1),
                || Ok(procfs::is_gone(pid).then_some(())),
            )?;
            wait_until(
                "bench-web to serve again",
                2 * MINUTE,
                Duration::from_millis(5),
                || Ok(http_ok(addr).then_some(())),
            )
            .map_err(|e| self.with_log(e))?;
            bramble.push(t.elapsed().as_secs_f64());
            if run + 1 < runs {
                self.cluster.ok(&["delete", "pod", &pod.name])?;
            }
        }
        let file = self.cluster.dir.join("bench-web.yaml");
        self.cluster
            .ok(&["delete", "-f", &file.display().to_string()])?;

        let mut swarm_rows = Vec::new();
        for (label, extra) in [
            ("Swarm service, default restart delay (5 s)", None),
            (
                "Swarm service, `--restart-delay 0s`",
                Some("--restart-delay=0s"),
            ),
        ] {
            let samples = self.on_docker(true, |d| {
                let p = free_node_port();
                let name = format!("bench-web-{}", swarm_rows.len());
                let publish = format!("mode=host,published={p},target=8080");
                let mut args = vec![
                    "service",
                    "create",
                    "-d",
                    "--name",
                    &name,
                    "--no-resolve-image",
                    "--stop-grace-period",
                    "0s",
                    "--publish",
                    &publish,
                ];
                if let Some(e) = extra {
                    args.push(e);
                }
                args.extend([DEMO_IMAGE, "sh", "-c", WEB_CMD]);
                d.ok(&args)?;
                let addr = SocketAddr::from(([127, 0, 0, 1], p));
                let mut v = Vec::new();
                for _ in 0..runs {
                    let pid = wait_until(
                        &format!("{name} serving"),
                        2 * MINUTE,
                        Duration::from_millis(20),
                        || {
                            let tasks = d.running_tasks(&name)?;
                            Ok(match tasks.as_slice() {
                                [t] if t.pid.is_some() && http_ok(addr) => t.pid,
                                _ => None,
                            })
                        },
                    )?;
                    kill9(pid);
                    let t = Instant::now();
                    wait_until(
                        "the killed task to die",
                        Duration::from_secs(10),
                        Duration::from_millis(1),
                        || Ok(procfs::is_gone(pid).then_some(())),
                    )?;
                    wait_until(
                        &format!("{name} to serve again"),
                        2 * MINUTE,
                        Duration::from_millis(5),
                        || Ok(http_ok(addr).then_some(())),
                    )?;
                    v.push(t.elapsed().as_secs_f64());
                }
                let _ = d.cli(&["service", "rm", &name]);
                Ok(v)
            })?;
            swarm_rows.push((label, samples));
        }
        for (label, samples) in swarm_rows {
            self.report.push(Row::new(
                format!("container killed → replacement serving ({})", n_runs(runs)),
                Unit::Seconds,
                "Deployment behind a NodePort (in-place restart)",
                measured(&bramble),
                format!("{label}, host-mode published port"),
                peer_outcome(&samples),
            ));
        }
        Ok(())
    }

    fn scale(&mut self) -> Result<(), BenchError> {
        let (runs, to) = (self.s.scale_runs, self.s.scale_to);
        eprintln!("bench: scale 1 → {to}, {runs} runs each");
        let yaml = deployment("bench-scale", 1, DEMO_IMAGE, &["sleep", "3600"]);
        self.cluster.apply("bench-scale", &yaml)?;
        self.wait_running("bench-scale", 1, 2 * MINUTE)?;
        let mut bramble = Vec::new();
        let to_s = to.to_string();
        for _ in 0..runs {
            let t = Instant::now();
            self.cluster
                .ok(&["scale", "deployment/bench-scale", "--replicas", &to_s])?;
            self.wait_running("bench-scale", to, 2 * MINUTE)?;
            bramble.push(t.elapsed().as_secs_f64());
            self.cluster
                .ok(&["scale", "deployment/bench-scale", "--replicas", "1"])?;
            let api = &mut self.api;
            wait_until(
                "bench-scale back to 1 pod",
                2 * MINUTE,
                Duration::from_millis(50),
                || Ok((api.pods("app=bench-scale")?.len() == 1).then_some(())),
            )
            .map_err(|e| self.with_log(e))?;
        }
        self.cluster.ok(&["delete", "deployment", "bench-scale"])?;
        let swarm = self.on_docker(true, |d| {
            let name = "bench-scale";
            d.ok(&[
                "service",
                "create",
                "-d",
                "--name",
                name,
                "--no-resolve-image",
                "--stop-grace-period",
                "0s",
                "--replicas",
                "1",
                DEMO_IMAGE,
                "sleep",
                "3600",
            ])?;
            wait_tasks(d, name, 1, 2 * MINUTE)?;
            let label = format!("com.docker.swarm.service.name={name}");
            let mut v = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                d.ok(&["service", "scale", "-d", &format!("{name}={to}")])?;
                wait_tasks(d, name, to, 2 * MINUTE)?;
                v.push(t.elapsed().as_secs_f64());
                d.ok(&["service", "scale", "-d", &format!("{name}=1")])?;
                wait_until(
                    "bench-scale back to 1 container",
                    2 * MINUTE,
                    Duration::from_millis(50),
                    || Ok((d.containers_with_label(&label)?.len() == 1).then_some(())),
                )?;
            }
            let _ = d.cli(&["service", "rm", name]);
            Ok(v)
        })?;
        self.report.push(Row::new(
            format!(
                "scale 1 → {to} replicas until all Running ({})",
                n_runs(runs)
            ),
            Unit::Seconds,
            "`bramble scale deployment`",
            measured(&bramble),
            "`docker service scale -d`",
            peer_outcome(&swarm),
        ));
        Ok(())
    }

    fn throughput(&mut self) -> Result<(), BenchError> {
        let Some(wrk_bin) = self.tools.wrk.clone() else {
            let why = self.tools.wrk_missing.clone().unwrap_or_default();
            self.report.note(format!("proxy throughput skipped: {why}"));
            return Ok(());
        };
        let s = self.s.clone();
        eprintln!(
            "bench: HTTP throughput, wrk -t{} -c{} -d{}s, {} runs each",
            s.wrk_threads, s.wrk_connections, s.wrk_seconds, s.wrk_runs
        );
        let np = free_node_port();
        let cmd = [SERVE_BINARY, SERVE_SUBCOMMAND, "8080"];
        let yaml =
            deployment("bench-serve", 1, SERVE_IMAGE, &cmd) + &node_port_service("bench-serve", np);
        self.cluster.apply("bench-serve", &yaml)?;
        self.wait_running("bench-serve", 1, 2 * MINUTE)?;
        let pod_ip = self
            .pods("bench-serve")?
            .into_iter()
            .find_map(|p| p.ip)
            .ok_or_else(|| BenchError::Cluster("bench-serve has no pod IP".into()))?;
        let cluster_ip = self.api.cluster_ip("bench-serve")?;
        let node = node_ip();
        let mut bramble_targets = vec![
            ("direct", SocketAddr::from((pod_ip, 8080))),
            ("clusterip", SocketAddr::from((cluster_ip, 80))),
            ("loopback", SocketAddr::from(([127, 0, 0, 1], np))),
        ];
        if let Some(ip) = node {
            bramble_targets.push(("nodeip", SocketAddr::from((ip, np))));
        }
        for (_, addr) in &bramble_targets {
            let addr = *addr;
            wait_until(
                &format!("{addr} serving"),
                MINUTE,
                Duration::from_millis(50),
                || Ok(http_ok(addr).then_some(())),
            )
            .map_err(|e| self.with_log(e))?;
        }
        let swarm_targets = self.on_docker(true, |d| {
            let p = free_node_port();
            let publish = format!("mode=host,published={p},target=8080");
            d.ok(&[
                "service",
                "create",
                "-d",
                "--name",
                "bench-serve",
                "--no-resolve-image",
                "--stop-grace-period",
                "0s",
                "--publish",
                &publish,
                SERVE_IMAGE,
                cmd[0],
                cmd[1],
                cmd[2],
            ])?;
            wait_tasks(d, "bench-serve", 1, 2 * MINUTE)?;
            let task = d.running_tasks("bench-serve")?;
            let cid = task
                .first()
                .and_then(|t| t.container_id.clone())
                .ok_or_else(|| BenchError::Docker("bench-serve task has no container".into()))?;
            let ip = d.container_ip(&cid)?;
            let mut t = vec![
                ("direct", SocketAddr::from((ip, 8080))),
                ("loopback", SocketAddr::from(([127, 0, 0, 1], p))),
            ];
            if let Some(n) = node {
                t.push(("nodeip", SocketAddr::from((n, p))));
            }
            for (_, addr) in &t {
                let addr = *addr;
                wait_until(
                    &format!("{addr} serving"),
                    MINUTE,
                    Duration::from_millis(50),
                    || Ok(http_ok(addr).then_some(())),
                )?;
            }
            Ok(t)
        })?;
        let mut bramble: Vec<(&str, Vec<f64>)> = bramble_targets
            .iter()
            .map(|(k, _)| (*k, Vec::new()))
            .collect();
        let mut swarm: Vec<(&str, Result<Vec<f64>, String>)> = match &swarm_targets {
            Ok(t) => t.iter().map(|(k, _)| (*k, Ok(Vec::new()))).collect(),
            Err(why) => ["direct", "loopback", "nodeip"]
                .iter()
                .map(|k| (*k, Err(why.clone())))
                .collect(),
        };
        let one = |addr: SocketAddr| -> Result<f64, BenchError> {
            pause(Duration::ZERO)?;
            let w = wrk::run(
                &wrk_bin,
                &format!("http://{addr}/"),
                s.wrk_threads,
                s.wrk_connections,
                s.wrk_seconds,
            )?;
            if let Some(e) = &w.errors {
                eprintln!("bench: wrk {addr}: {e}");
            }
            Ok(w.requests_per_second)
        };
        // Interleaved, so a burst of load from elsewhere hits both sides.
        for _ in 0..s.wrk_runs {
            for (i, (_, addr)) in bramble_targets.iter().enumerate() {
                bramble[i].1.push(one(*addr)?);
            }
            if let Ok(targets) = &swarm_targets {
                for (i, (_, addr)) in targets.iter().enumerate() {
                    let r = match one(*addr) {
                        Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
                        r => r,
                    };
                    match (&mut swarm[i].1, r) {
                        (Ok(v), Ok(x)) => v.push(x),
                        (slot @ Ok(_), Err(e)) => *slot = Err(format!("failed: {e}")),
                        _ => {}
                    }
                }
            }
        }
        let _ = self.on_docker(true, |d| {
            d.ok(&["service", "rm", "bench-serve"]).map(|_| ())
        })?;
        let get_b = |k: &str| {
            bramble
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
        };
        let get_s = |k: &str| -> Result<Vec<f64>, String> {
            swarm
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| Err("no node IP on this machine".into()))
        };
        let figure = format!(
            "HTTP keep-alive throughput (wrk -t{} -c{} -d{}s, {})",
            s.wrk_threads,
            s.wrk_connections,
            s.wrk_seconds,
            n_runs(s.wrk_runs)
        );
        let rows: [ThroughputRow; 4] = [
            (
                "direct",
                "to the pod's IP (no proxy)",
                "to the task container's IP (no proxy)",
                get_s("direct"),
            ),
            (
                "clusterip",
                "through the Service's ClusterIP (agent's L4 proxy)",
                "Swarm VIP",
                Err("Swarm's VIPs and routing mesh need IPVS, which this kernel lacks".into()),
            ),
            (
                "loopback",
                "through the NodePort at 127.0.0.1 (proxy)",
                "published port at 127.0.0.1 (docker-proxy, userspace)",
                get_s("loopback"),
            ),
            (
                "nodeip",
                "through the NodePort at the node's IP (proxy)",
                "published port at the node's IP (iptables DNAT)",
                get_s("nodeip"),
            ),
        ];
        for (key, bsetup, psetup, peer) in rows {
            let b = match get_b(key) {
                Some(v) => measured(&v),
                None => Outcome::Skipped("no node IP on this machine".into()),
            };
            self.report.push(Row::new(
                &figure,
                Unit::RequestsPerSecond,
                bsetup,
                b,
                psetup,
                peer_outcome(&peer),
            ));
        }
        Ok(())
    }

    fn commands(&mut self) -> Result<(), BenchError> {
        let runs = self.s.command_runs;
        eprintln!("bench: command round trip, {runs} runs each");
        let mut bramble = Vec::new();
        let mut swarm: Result<Vec<f64>, String> = Ok(Vec::new());
        for _ in 0..runs {
            pause(Duration::ZERO)?;
            let t = Instant::now();
            self.cluster.ok(&["get", "pods"])?;
            bramble.push(ms(t.elapsed()));
            if swarm.is_ok() {
                let r = self.on_docker(true, |d| {
                    let t = Instant::now();
                    d.ok(&["service", "ls"])?;
                    Ok(ms(t.elapsed()))
                })?;
                match (&mut swarm, r) {
                    (Ok(v), Ok(x)) => v.push(x),
                    (slot, Err(why)) => *slot = Err(why),
                    (Err(_), Ok(_)) => {}
                }
            }
        }
        self.report.push(Row::new(
            format!("command round trip ({})", n_runs(runs)),
            Unit::Ms,
            "`bramble get pods` (process start, MQTT, signed request)",
            measured(&bramble),
            "`docker service ls`",
            peer_outcome(&swarm),
        ));
        Ok(())
    }
}

fn machine() -> (String, String) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into());
    let cgroups = if Path::new("/sys/fs/cgroup/unified").exists() {
        "cgroup v1 hybrid"
    } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else {
        "cgroup v1"
    };
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        format!(
            "{} {model}, {cores} cores, {:.0} GiB, {os}, {cgroups}",
            std::env::consts::ARCH,
            total_kib as f64 / 1024.0 / 1024.0
        ),
        kernel,
    )
}

/// A `dockerd` already running (not one of ours: we have not started any).
fn other_dockerd() -> Option<u32> {
    procfs::all_pids().into_iter().find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "dockerd")
    })
}

/// The whole bench: setup, every figure, teardown.
pub fn run_all(args: &Args, handle: Handle) -> Result<Report, BenchError> {
    let s = if args.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let scratch = args.work_dir.join(format!("bramble-bench-{tag}"));
    std::fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
    let _scratch_guard = Scratch(scratch.clone());
    let (machine, kernel) = machine();
    let mut report = Report {
        header: Header {
            date: jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            mode: if args.quick {
                "quick: small counts, checks it runs, not a measurement".into()
            } else {
                "full".into()
            },
            machine,
            kernel,
            bramble_version: format!(
                "{} ({} build)",
                env!("CARGO_PKG_VERSION"),
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
            ),
            load_at_start: procfs::load_average(),
            ..Header::default()
        },
        ..Report::default()
    };
    let tools = if args.no_peers {
        let why = Some("--no-peers".to_string());
        Tools {
            docker_missing: why.clone(),
            crun_missing: why,
            wrk: super::tools::which("wrk"),
            wrk_missing: Some("wrk not found".into()),
            ..Tools::default()
        }
    } else {
        Tools::find(!args.no_install)
    };
    report.header.peers = tools.versions();
    for (peer, why) in [
        ("Docker and Swarm", &tools.docker_missing),
        ("crun", &tools.crun_missing),
    ] {
        if let Some(why) = why {
            eprintln!("bench: peer skipped: {peer}, {why}");
            report.note(format!("peer skipped: {peer}, {why}"));
        }
    }

    let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    eprintln!("bench: starting a Bramble cluster");
    let mut cluster = LocalCluster::start(&exe, &scratch.join("cluster"), &tag)?;
    let store = ImageStore::open(&cluster.layout()?.images())?;
    build_demo_image(&store, &args.busybox)?;
    let demo_rootfs = store
        .resolve(DEMO_IMAGE)?
        .layer_dirs
        .last()
        .cloned()
        .ok_or_else(|| BenchError::Cluster("the demo image has no layer".into()))?;
    let demo_tar = scratch.join("demo-rootfs.tar");
    rootfs_tar(&demo_rootfs, &[], &demo_tar)?;
    let serve_bin = stripped_self(&scratch)?;
    let mut extra = vec![(serve_bin.clone(), SERVE_BINARY.to_string())];
    extra.extend(libraries(&serve_bin)?);
    let serve_tar = scratch.join("serve-rootfs.tar");
    rootfs_tar(&demo_rootfs, &extra, &serve_tar)?;
    let _ = std::fs::remove_file(&serve_bin);
    import_into_bramble(
        &store,
        &serve_tar,
        SERVE_IMAGE,
        &[SERVE_BINARY, SERVE_SUBCOMMAND, "8080"],
        &scratch,
    )?;

    let mut docker_why = tools.docker_missing.clone().unwrap_or_default();
    let docker = match (&tools.dockerd, &tools.docker, &tools.docker_missing) {
        (Some(_), Some(_), None) if other_dockerd().is_some() => {
            let pid = other_dockerd().unwrap_or_default();
            docker_why = format!(
                "another dockerd (pid {pid}) runs on this machine; two engines would share docker0, port 2377 and the DOCKER iptables chains"
            );
            eprintln!("bench: peer skipped: Docker and Swarm, {docker_why}");
            report.note(format!("peer skipped: Docker and Swarm, {docker_why}"));
            None
        }
        (Some(dockerd), Some(cli), None) => {
            eprintln!("bench: starting dockerd");
            let started = DockerEngine::start(dockerd, cli, &tag, &scratch.join("dockerd.log"))
                .and_then(|d| {
                    d.import(&demo_tar, DEMO_IMAGE)?;
                    d.import(&serve_tar, SERVE_IMAGE)?;
                    Ok(d)
                });
            match started {
                Ok(d) => Some(d),
                Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
                Err(e) => {
                    docker_why = format!("dockerd did not start: {e}");
                    eprintln!("bench: peer skipped: Docker and Swarm, {docker_why}");
                    report.note(format!("peer skipped: Docker and Swarm, {docker_why}"));
                    None
                }
            }
        }
        _ => None,
    };
    let api = Api::new(handle.clone(), &cluster)?;
    let mut bench = Bench {
        s,
        tag,
        scratch: scratch.clone(),
        tools: &tools,
        cluster: &cluster,
        api,
        handle,
        busybox: args.busybox.clone(),
        keep_dir: args.work_dir.clone(),
        docker,
        docker_why,
        swarm_why: None,
        demo_rootfs,
        report,
    };
    let result = (|| -> Result<(), BenchError> {
        bench.start()?;
        bench.idle()?;
        let swarm = bench.on_docker(false, |d| d.swarm_init())?;
        if let Err(why) = swarm {
            bench.swarm_why = Some(format!("docker swarm init: {why}"));
        }
        bench.kill_to_serving()?;
        bench.scale()?;
        bench.throughput()?;
        bench.commands()?;
        Ok(())
    })();
    bench.api.disconnect();
    if result.is_err() {
        // The scratch directory goes; the logs that explain the failure stay.
        keep_logs(&cluster, &args.work_dir, &bench.tag);
        if let Some(d) = &bench.docker {
            let to = args
                .work_dir
                .join(format!("bramble-bench-{}-dockerd.log", bench.tag));
            if std::fs::copy(&d.log, &to).is_ok() {
                eprintln!("bench: kept {}", to.display());
            }
        }
    }
    let mut report = std::mem::take(&mut bench.report);
    if let Some(mut d) = bench.docker.take() {
        eprintln!("bench: stopping dockerd");
        report.left_behind.extend(d.shutdown());
    }
    drop(bench);
    report.left_behind.extend(cluster.shutdown());
    result?;
    report.header.load_at_end = procfs::load_average();
    notes(&mut report);
    Ok(report)
}

fn notes(report: &mut Report) {
    for n in [
        "Ratio: Bramble's median ÷ the peer's (below 1 is Bramble faster or smaller, except throughput, where above 1 is Bramble faster).",
        "Start: Bramble's clock runs from spawning `bramble apply` (a new CLI process, its MQTT connection, the signed round trip) until a `get` shows the pod Running and Ready, so it includes scheduling, the pod's network (veth, IP) and the runtime; `crun run -d` is create + start with no network; `docker run -d` returns once the container started on the default bridge.",
        "Idle: the same idle window for every side; container processes themselves are not counted on any side. Three Bramble setups in that one window, each node with its own idle pods: `bramble up` (one process holding the MQTT broker, the master and the worker), and a split cluster on the same host, a `bramble worker` (what every Pi but the master runs) joined to a `bramble master` (broker and master, no worker of its own), each process counted alone. Each row's ratio is against the same Docker figure. Docker runs without Swarm for this figure. PSS splits the pages of the `bramble` binary among every process mapping it (here the bench itself, `up`, the master and the worker), so a lone worker on a Pi has a larger PSS than its row shows; its RSS and the anonymous part of its PSS do not depend on that.",
        "Killed → serving: SIGKILL to the container's init, then plain HTTP GETs until one is answered. Bramble restarts the container in place (a pod's first restart is immediate; later ones back off 10 s, 20 s, … like the kubelet, so each run uses a fresh pod); Swarm replaces the task with a new container after its restart delay.",
        "Swarm publishes ports in host mode: its ingress routing mesh needs IPVS, which this kernel lacks.",
        "Throughput: the same keep-alive server (`bramble __bench-serve`, this binary in the demo rootfs) on both sides, one replica; the Bramble pod requests one CPU (cpu.shares 1024, like a Docker container), wrk runs on the host, targets interleaved.",
    ] {
        report.note(n);
    }
}
