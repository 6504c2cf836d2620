//! `bramble bench`: Bramble measured against its peers on this machine, in
//! one run — Docker (dockerd + containerd + runc), Docker Swarm on loopback
//! and crun — with a table of medians (min–max) and the ratio, as markdown
//! or JSON. `--quick` runs every figure once with small counts, so CI can
//! check the whole thing runs to the end; it measures nothing worth quoting.
//!
//! Layout: [`tools`] finds (and with apt installs) the peers; [`cluster`]
//! runs Bramble's side, [`docker`] the Docker engine and Swarm, [`crun`] the
//! bare runtime; [`figures`] takes the measurements; [`report`] holds and
//! renders them; [`procfs`], [`wrk`], [`serve`] and [`image`] are the shared
//! measuring pieces (the `cargo bench` targets in `benches/` use them too);
//! [`hoststate`] undoes what Docker leaves on the host.
//!
//! Must not touch: other clusters, other engines, links or firewall rules that
//! were there before it started. Everything it starts it stops, on error and
//! on Ctrl-C too (guards with `Drop`, and a flag the waits check).

pub mod cluster;
pub mod crun;
pub mod docker;
pub mod figures;
pub mod hoststate;
pub mod image;
pub mod procfs;
pub mod report;
pub mod serve;
pub mod tools;
pub mod wrk;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::ConfigError;
use crate::runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
    #[error("interrupted")]
    Interrupted,
    #[error("docker peer: {0}")]
    Docker(String),
    #[error("bench cluster: {0}")]
    Cluster(String),
    #[error("talking to the bench cluster: {0}")]
    Client(String),
    #[error("unexpected output from {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("--format {0:?}: expected md or json")]
    Format(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl BenchError {
    pub fn command(command: &str, out: &Output) -> BenchError {
        BenchError::Command {
            command: command.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        context: path.display().to_string(),
        source,
    }
}

/// Set by SIGINT/SIGTERM: every wait gives up, and the guards clean up.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Calls `check` every `step` until it yields a value, fails, `limit`
/// passes, or the bench is interrupted.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    step: Duration,
    mut check: impl FnMut() -> Result<Option<T>, BenchError>,
) -> Result<T, BenchError> {
    let deadline = Instant::now() + limit;
    loop {
        if interrupted() {
            return Err(BenchError::Interrupted);
        }
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Timeout {
                what: what.to_string(),
                seconds: limit.as_secs(),
            });
        }
        std::thread::sleep(step);
    }
}

/// Sleeps, waking early (with an error) when interrupted.
pub fn pause(d: Duration) -> Result<(), BenchError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if interrupted() {
            return Err(BenchError::Interrupted);
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Every figure once, with small counts and short windows: checks the
    /// bench runs to the end (CI), measures nothing worth quoting.
    #[arg(long)]
    pub quick: bool,
    /// Write the report to this file too (stdout always gets the table).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// `md` (a markdown table) or `json`.
    #[arg(long, default_value = "md")]
    pub format: String,
    /// Do not install missing peers with apt-get; skip them instead.
    #[arg(long)]
    pub no_install: bool,
    /// Bramble's side only.
    #[arg(long)]
    pub no_peers: bool,
    /// The static busybox the demo image is made of (Debian's busybox-static).
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// Where scratch files, logs and the cluster's data go (a fresh
    /// directory under it, removed at the end).
    #[arg(long, default_value = "/tmp")]
    pub work_dir: PathBuf,
}

/// How much of each figure to take.
#[derive(Clone, Debug)]
pub struct Settings {
    pub start_runs: usize,
    pub idle_pods: usize,
    pub idle_window: Duration,
    pub settle: Duration,
    pub kill_runs: usize,
    pub scale_runs: usize,
    pub scale_to: usize,
    pub wrk_runs: usize,
    pub wrk_seconds: u64,
    pub wrk_threads: u32,
    pub wrk_connections: u32,
    pub command_runs: usize,
}

impl Settings {
    pub fn full() -> Settings {
        Settings {
            start_runs: 20,
            idle_pods: 10,
            idle_window: Duration::from_secs(60),
            settle: Duration::from_secs(10),
            kill_runs: 10,
            scale_runs: 5,
            scale_to: 10,
            wrk_runs: 3,
            wrk_seconds: 5,
            wrk_threads: 2,
            wrk_connections: 32,
            command_runs: 20,
        }
    }

    pub fn quick() -> Settings {
        Settings {
            start_runs: 2,
            idle_pods: 10,
            idle_window: Duration::from_secs(3),
            settle: Duration::from_secs(1),
            kill_runs: 1,
            scale_runs: 1,
            scale_to: 10,
            wrk_runs: 1,
            wrk_seconds: 1,
            wrk_threads: 1,
            wrk_connections: 4,
            command_runs: 3,
        }
    }
}

/// `bramble bench`.
pub async fn run(args: Args) -> Result<ExitCode, BenchError> {
    if !matches!(args.format.as_str(), "md" | "json") {
        return Err(BenchError::Format(args.format));
    }
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("bench: interrupted, cleaning up");
        STOP.store(true, Ordering::Relaxed);
    });
    let handle = tokio::runtime::Handle::current();
    let report =
        tokio::task::spawn_blocking(move || figures::run_all(&args, handle).map(|r| (r, args)))
            .await
            .map_err(|e| BenchError::Cluster(format!("the bench thread failed: {e}")))?;
    let (report, args) = report?;
    let text = match args.format.as_str() {
        "json" => report.to_json(),
        _ => report.to_markdown(),
    };
    println!("{text}");
    if let Some(path) = &args.output {
        std::fs::write(path, &text).map_err(io_err(path))?;
    }
    Ok(ExitCode::SUCCESS)
}
