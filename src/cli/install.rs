//! `bramble install master|worker`: puts the binary, the settings file and
//! the systemd unit in place (under `--root`, `/` by default), then enables
//! and starts the unit when systemd runs this machine. `bramble install
//! first-boot` is the step a prepared Pi's first boot runs
//! (`bramble image prepare-sd`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::MasterFile;
use crate::install::{self, InstallError, InstallPlan, Role, WorkerSettings, name};

use super::CliError;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Install the master: /usr/local/bin/bramble, /etc/bramble/master.toml,
    /// bramble-master.service.
    Master(MasterArgs),
    /// Install a worker: /usr/local/bin/bramble, /etc/bramble/worker.toml,
    /// bramble-worker.service.
    Worker(WorkerArgs),
    /// A prepared Pi's first boot (run by its user-data or firstrun.sh):
    /// names the node by the rule unless worker.toml names it, and makes the
    /// name the hostname. Does nothing after the first time.
    FirstBoot(FirstBootArgs),
}

/// Where and how to install.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// Install under this directory instead of `/` (an image's root, a test's
    /// directory); systemd is not asked to do anything then.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The program to install (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Enable the unit but do not start it now.
    #[arg(long)]
    pub no_start: bool,
}

/// A worker's settings, shared with `image prepare-sd`.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerFlags {
    /// `mqtt://[user:pass@]host[:port]` of the cluster's broker.
    #[arg(long)]
    pub broker: Option<String>,
    /// The join token (the master's `/var/lib/bramble/join-token`, or
    /// `bramble token create`).
    #[arg(long)]
    pub token: Option<String>,
    /// A label the node registers with (`KEY=VALUE`); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Where the worker keeps its state (default /var/lib/bramble).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The address the node reports (default: the default route's).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// A registry (`HOST[:PORT]`) to pull from over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Topic prefix on the broker (default bramble/v1).
    #[arg(long)]
    pub topic_prefix: Option<String>,
}

impl WorkerFlags {
    /// Whether any setting was given (otherwise an existing file is kept).
    fn any(&self) -> bool {
        self.broker.is_some()
            || self.token.is_some()
            || !self.labels.is_empty()
            || self.data_dir.is_some()
            || self.node_ip.is_some()
            || !self.insecure_registries.is_empty()
            || self.topic_prefix.is_some()
    }

    pub fn settings(&self, node_name: Option<String>) -> Result<WorkerSettings, InstallError> {
        let broker = self.broker.clone().ok_or(InstallError::Invalid {
            field: "broker",
            reason: "required: the broker the worker joins through".into(),
        })?;
        Ok(WorkerSettings {
            broker,
            token: self.token.clone(),
            node_name,
            labels: self.labels.clone(),
            data_dir: self.data_dir.clone(),
            node_ip: self.node_ip,
            insecure_registries: self.insecure_registries.clone(),
            topic_prefix: self.topic_prefix.clone(),
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub settings: WorkerFlags,
    /// The node's name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct MasterArgs {
    /// Where the embedded broker listens (default 0.0.0.0:1883).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// An external broker (`mqtt://…`) instead of the embedded one.
    #[arg(long)]
    pub broker: Option<String>,
    /// Where the master keeps its state (default /var/lib/bramble).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    #[arg(long)]
    pub service_cidr: Option<ipnet::Ipv4Net>,
    /// Also run a worker on this machine.
    #[arg(long)]
    pub with_worker: bool,
    #[arg(long)]
    pub topic_prefix: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct FirstBootArgs {
    /// How to name the node when worker.toml does not: `{serial}` (last 8
    /// hex digits of the board serial), `{mac}` (last 6 of the MAC address),
    /// `{hostname}`, and literal text, e.g. `pi-{serial}`.
    #[arg(long)]
    pub node_name_rule: Option<String>,
    /// The machine's root (tests).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

pub async fn run(cmd: Cmd) -> Result<ExitCode, CliError> {
    match cmd {
        Cmd::Worker(a) => {
            let config = if a.settings.any() || a.node_name.is_some() {
                let file = a.settings.settings(a.node_name.clone())?.to_file()?;
                if file.join_token.is_none() {
                    eprintln!(
                        "warning: no --token: the worker cannot join a cluster it is not registered with yet"
                    );
                }
                Some(install::to_toml(&file, &Role::Worker.config_path())?)
            } else {
                None
            };
            install_role(Role::Worker, config.as_deref(), &a.target)
        }
        Cmd::Master(a) => {
            if let Some(b) = &a.broker {
                crate::transport::client::parse_url(b).map_err(|e| InstallError::Invalid {
                    field: "broker",
                    reason: e.to_string(),
                })?;
            }
            let file = MasterFile {
                listen: a.listen,
                broker: a.broker.clone(),
                broker_ca: None,
                mqtt_version: None,
                data_dir: Some(
                    a.data_dir
                        .clone()
                        .unwrap_or_else(|| install::DATA_DIR.into()),
                ),
                cluster_cidr: a.cluster_cidr.map(|c| c.to_string()),
                service_cidr: a.service_cidr.map(|c| c.to_string()),
                with_worker: a.with_worker,
                topic_prefix: a.topic_prefix.clone(),
                ..MasterFile::default()
            };
            let given = file
                != MasterFile {
                    data_dir: Some(install::DATA_DIR.into()),
                    ..MasterFile::default()
                };
            let exists = install::under(&a.target.root, &Role::Master.config_path()).exists();
            let config = if given || !exists {
                Some(install::to_toml(&file, &Role::Master.config_path())?)
            } else {
                None
            };
            install_role(Role::Master, config.as_deref(), &a.target)
        }
        Cmd::FirstBoot(a) => {
            if let Some(rule) = &a.node_name_rule {
                name::check_rule(rule)?;
            }
            match name::first_boot(&a.root, a.node_name_rule.as_deref())? {
                name::FirstBoot::AlreadyDone => println!("first boot already done"),
                name::FirstBoot::Named(Some(n)) => println!("node name and hostname: {n}"),
                name::FirstBoot::Named(None) => {
                    println!("no node name set: the worker uses the hostname")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn install_role(role: Role, config: Option<&str>, target: &Target) -> Result<ExitCode, CliError> {
    let exe;
    let binary: &Path = match &target.binary {
        Some(b) => b,
        None => {
            exe = std::env::current_exe().map_err(|source| CliError::Io {
                path: PathBuf::from("/proc/self/exe"),
                source,
            })?;
            &exe
        }
    };
    let live = target.root == Path::new("/") && install::systemd_running();
    let written = install::install_files(
        &target.root,
        &InstallPlan {
            role,
            binary,
            config,
            enable_link: !live,
        },
    )?;
    let shown = |p: &str| install::under(&target.root, p).display().to_string();
    for p in &written.changed {
        println!("wrote {}", shown(p));
    }
    for p in &written.unchanged {
        println!("unchanged {}", shown(p));
    }
    let unit = role.unit_name();
    if live {
        install::systemctl(&["daemon-reload"])?;
        if target.no_start {
            install::systemctl(&["enable", &unit])?;
            println!("enabled {unit}; start it with `systemctl start {unit}`");
        } else {
            install::systemctl(&["enable", &unit])?;
            // A changed binary, settings file or unit takes a restart
            // (which starts a stopped unit too); pods keep running through it.
            let verb = if written.changed.is_empty() {
                "start"
            } else {
                "restart"
            };
            install::systemctl(&[verb, &unit])?;
            println!("enabled and started {unit}");
        }
    } else if target.root == Path::new("/") {
        println!(
            "systemd is not running on this machine (PID 1 is {}): enabled {unit} for the next \
             boot under systemd, and did not start it; run `bramble {} --config-file {}` meanwhile",
            pid1_name(),
            role.name(),
            role.config_path()
        );
    } else {
        println!(
            "installed under {} and enabled {unit}; systemd was not asked to do anything",
            target.root.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn pid1_name() -> String {
    std::fs::read_to_string("/proc/1/comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
