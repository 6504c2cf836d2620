//! The kubectl-like client, and the entry point of every role.
//!
//! Owns: argument parsing, one file per verb (each with a `run` taking its
//! parsed arguments), reading manifests from files, and printing. Talks to the
//! cluster only through [`client::Client`], an MQTT client like any other.
//!
//! Must not touch: the store, containers or the network directly; the
//! exceptions are `up`/`down` (which start or clean up the local node) and
//! `image` (which works on the local node's image store).

pub mod apply;
pub mod client;
pub mod cluster_info;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod dry_run;
pub mod exec;
pub mod get;
pub mod image;
pub mod install;
pub mod label;
pub mod logs;
pub mod node;
pub mod port_forward;
pub mod prepare_sd;
pub mod printers;
pub mod rollout;
pub mod scale;
pub mod set;
pub mod stream;
pub mod targets;
pub mod token;
pub mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ClientConfig, ConfigError, client_config_path};
use crate::transport::messages::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] crate::transport::KeyError),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("Error from server ({code:?}): {message}", code = .0.code, message = .0.message)]
    Api(ApiError),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Manifest(#[from] crate::api::manifest::ManifestError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("unexpected answer from the master: {0:?}")]
    Unexpected(Box<crate::transport::messages::Response>),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Up(Box<crate::up::UpError>),
    #[error(transparent)]
    Install(#[from] crate::install::InstallError),
    /// A stream (logs, exec, port-forward) ended badly.
    #[error("{0}")]
    Stream(String),
    #[error(transparent)]
    Bench(#[from] crate::bench::BenchError),
}

impl From<crate::up::UpError> for CliError {
    fn from(e: crate::up::UpError) -> CliError {
        CliError::Up(Box::new(e))
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "bramble",
    version,
    about = "A small Kubernetes for Raspberry Pi clusters"
)]
pub struct Cli {
    /// Client config file (default: $BRAMBLE_CONFIG or ~/.config/bramble/config.toml).
    #[arg(long, global = true, env = "BRAMBLE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a one-machine cluster: broker, master and worker in one process.
    Up(crate::up::UpArgs),
    /// Run the master (with its embedded broker unless --broker names one),
    /// optionally with a worker for this machine.
    Master(crate::up::MasterRoleArgs),
    /// Run a worker that joins a cluster through its broker.
    Worker(crate::up::WorkerRoleArgs),
    /// Stop a local cluster's agent and remove its pods, network and mounts.
    Down(crate::up::DownArgs),
    /// Create or update objects from manifests.
    Apply(apply::Args),
    /// List objects.
    Get(get::Args),
    /// Show one object in detail.
    Describe(describe::Args),
    /// Delete objects.
    Delete(delete::Args),
    /// Print a container's log.
    Logs(logs::Args),
    /// Run a command in a container.
    Exec(exec::Args),
    /// Forward local ports to a pod.
    PortForward(port_forward::Args),
    /// Set the number of replicas of a Deployment, ReplicaSet or StatefulSet.
    Scale(scale::Args),
    /// Manage rollouts: status, history, undo, pause, resume, restart.
    #[command(subcommand)]
    Rollout(rollout::Cmd),
    /// Change fields of objects (`set image`).
    #[command(subcommand)]
    Set(set::Cmd),
    /// Add, change or remove labels.
    Label(label::Args),
    /// Add, change or remove annotations.
    Annotate(label::Args),
    /// Show what `apply -f` would change.
    Diff(diff::Args),
    /// Mark nodes unschedulable.
    Cordon(node::CordonArgs),
    /// Mark nodes schedulable again.
    Uncordon(node::CordonArgs),
    /// Cordon a node and evict its pods (their controllers replace them elsewhere).
    Drain(node::DrainArgs),
    /// Show CPU and memory use of nodes or pods.
    Top(top::Args),
    /// Show where the cluster is.
    ClusterInfo(cluster_info::Args),
    /// Manage join tokens and API tokens: create, list, revoke.
    #[command(subcommand)]
    Token(token::Cmd),
    /// Manage the local node's images: pull, import, ls, rm.
    #[command(subcommand)]
    Image(image::Cmd),
    /// Install the master or a worker as a systemd service.
    #[command(subcommand)]
    Install(install::Cmd),
    /// Measure Bramble against Docker, Swarm and crun on this machine.
    Bench(crate::bench::Args),
    /// Print the version.
    Version,
}

/// The hidden entry point the runtime uses to create containers from a
/// single-threaded process.
pub const CONTAINER_HELPER: &str = "__container-create";

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CONTAINER_HELPER) {
        return crate::runtime::helper_main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some(crate::runtime::EXEC_HELPER_SUBCOMMAND) {
        return crate::runtime::exec_helper_main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some(crate::bench::serve::SERVE_SUBCOMMAND) {
        return crate::bench::serve::serve_main(&args[2..]);
    }
    let cli = Cli::parse();
    // The broker logs every connection and libcgroups every controller it
    // skips: useful when debugging them, noise otherwise.
    let verbose_default = if matches!(
        cli.command,
        Cmd::Up(_) | Cmd::Master(_) | Cmd::Worker(_) | Cmd::Down(_)
    ) {
        "info,rumqttd=warn,libcgroups=error,libcontainer=warn"
    } else {
        "warn,libcgroups=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(verbose_default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", render_error(&e));
            match e {
                CliError::Usage(_)
                | CliError::Install(crate::install::InstallError::Invalid { .. }) => {
                    ExitCode::from(64)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn render_error(e: &CliError) -> String {
    match e {
        CliError::Api(_) | CliError::Manifest(_) => e.to_string(),
        _ => format!("error: {e}"),
    }
}

pub fn load_config(cli_config: Option<&std::path::Path>) -> Result<ClientConfig, CliError> {
    let path = client_config_path(cli_config)?;
    Ok(ClientConfig::load(&path)?)
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let config = cli.config.as_deref();
    match cli.command {
        Cmd::Up(a) => crate::up::up(a, config).await.map_err(CliError::from),
        Cmd::Master(a) => crate::up::master(a, config).await.map_err(CliError::from),
        Cmd::Worker(a) => crate::up::worker(a).await.map_err(CliError::from),
        Cmd::Down(a) => crate::up::down(a).await.map_err(CliError::from),
        Cmd::Apply(a) => apply::run(a, config).await,
        Cmd::Get(a) => get::run(a, config).await,
        Cmd::Describe(a) => describe::run(a, config).await,
        Cmd::Delete(a) => delete::run(a, config).await,
        Cmd::Logs(a) => logs::run(a, config).await,
        Cmd::Exec(a) => exec::run(a, config).await,
        Cmd::PortForward(a) => port_forward::run(a, config).await,
        Cmd::Scale(a) => scale::run(a, config).await,
        Cmd::Rollout(c) => rollout::run(c, config).await,
        Cmd::Set(c) => set::run(c, config).await,
        Cmd::Label(a) => label::run(a, false, config).await,
        Cmd::Annotate(a) => label::run(a, true, config).await,
        Cmd::Diff(a) => diff::run(a, config).await,
        Cmd::Cordon(a) => node::run_cordon(a, true, config).await,
        Cmd::Uncordon(a) => node::run_cordon(a, false, config).await,
        Cmd::Drain(a) => node::run_drain(a, config).await,
        Cmd::Top(a) => top::run(a, config).await,
        Cmd::ClusterInfo(a) => cluster_info::run(a, config).await,
        Cmd::Image(c) => image::run(c, config).await,
        Cmd::Token(c) => token::run(c, config).await,
        Cmd::Install(c) => install::run(c).await,
        Cmd::Bench(a) => Ok(crate::bench::run(a).await?),
        Cmd::Version => {
            println!("bramble {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}
