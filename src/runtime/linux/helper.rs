//! `bramble __container-create`: the short-lived, single-threaded process
//! that forks the container.
//!
//! libcontainer clones with a raw `clone3`, which skips glibc's fork
//! handlers; done inside the multi-threaded agent, a child could inherit a
//! lock (malloc's, the tracing writer's) held by another thread at that
//! instant and deadlock. So the agent spawns this helper (an ordinary
//! fork+exec), which builds and starts the container, prints one JSON line
//! and exits. The container's init is the helper's child; when the helper
//! exits it is reparented to the agent, a child subreaper.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ::libcontainer::container::builder::ContainerBuilder;
use ::libcontainer::syscall::syscall::SyscallType;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::{Deserialize, Serialize};

/// The subcommand word `main` dispatches to [`helper_main`].
pub const HELPER_SUBCOMMAND: &str = "__container-create";

/// How long the helper may take before the agent gives up on it.
pub(super) const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CreateRequest {
    pub id: String,
    /// libcontainer's root (state) directory.
    pub state_dir: PathBuf,
    /// OCI bundle: `config.json` and the mounted rootfs.
    pub bundle: PathBuf,
    /// Container stdout and stderr, opened `O_APPEND`.
    pub log_path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CreateReply {
    Started { pid: i32 },
    Failed { error: String },
}

/// Entry point of `bramble __container-create <request JSON>`: `args` are
/// the arguments after the subcommand word. Prints one [`CreateReply`] line.
pub fn helper_main(args: &[String]) -> ExitCode {
    // Errors libcontainer logs go to stderr, which the agent keeps in the
    // container directory; a subscriber installed by `main` takes precedence.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let reply = match args {
        [json] => match serde_json::from_str::<CreateRequest>(json) {
            Ok(request) => match create(&request) {
                Ok(pid) => CreateReply::Started { pid },
                Err(error) => CreateReply::Failed { error },
            },
            Err(e) => CreateReply::Failed {
                error: format!("bad request: {e}"),
            },
        },
        _ => CreateReply::Failed {
            error: format!("usage: {HELPER_SUBCOMMAND} <request JSON>"),
        },
    };
    print_reply(&reply)
}

/// Prints the one reply line; the exit code says whether it was a success.
pub(super) fn print_reply(reply: &CreateReply) -> ExitCode {
    let ok = matches!(reply, CreateReply::Started { .. });
    let line = serde_json::to_string(reply).expect("reply serializes");
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{line}").and_then(|_| stdout.flush());
    if ok && written.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn create(request: &CreateRequest) -> Result<i32, String> {
    let open_log = || {
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&request.log_path)
            .map_err(|e| format!("opening log {}: {e}", request.log_path.display()))
    };
    let stdin = fs::File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
    let mut container = ContainerBuilder::new(request.id.clone(), SyscallType::default())
        .with_root_path(&request.state_dir)
        .map_err(|e| format!("state directory {}: {e}", request.state_dir.display()))?
        .with_stdin(stdin)
        .with_stdout(open_log()?)
        .with_stderr(open_log()?)
        .validate_id()
        .map_err(|e| format!("container id: {e}"))?
        .as_init(&request.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("libcontainer create: {e}"))?;
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return Err(format!("libcontainer start: {e}"));
    }
    container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| "libcontainer started the container but recorded no pid".to_string())
}

/// Runs the helper for `request`; its stderr goes to `stderr_log`. Returns
/// the container's init pid, or the helper's error with its stderr tail.
pub(crate) fn run_helper(
    helper_exe: &Path,
    request: &CreateRequest,
    stderr_log: &Path,
) -> Result<i32, String> {
    let json = serde_json::to_string(request).expect("request serializes");
    let stderr = fs::File::create(stderr_log)
        .map_err(|e| format!("creating {}: {e}", stderr_log.display()))?;
    let mut child = Command::new(helper_exe)
        .arg(HELPER_SUBCOMMAND)
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting helper {}: {e}", helper_exe.display()))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let output = read_with_deadline(&mut stdout, Instant::now() + HELPER_TIMEOUT);
    drop(stdout);
    if output.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for helper: {e}"))?;
    let tail = || stderr_tail(stderr_log);
    let output = output.map_err(|e| format!("{e}{}", tail()))?;
    let reply = output
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<CreateReply>(l).ok());
    match reply {
        Some(CreateReply::Started { pid }) => Ok(pid),
        Some(CreateReply::Failed { error }) => Err(format!("{error}{}", tail())),
        None => Err(format!(
            "helper exited ({status}) without a reply{}",
            tail()
        )),
    }
}

/// Reads `r` to EOF, giving up at `deadline`.
pub(super) fn read_with_deadline(
    r: &mut std::process::ChildStdout,
    deadline: Instant,
) -> Result<String, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("helper gave no answer within {HELPER_TIMEOUT:?}"));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("polling helper output: {e}")),
        }
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading helper output: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The last lines the helper wrote to stderr, for error messages.
pub(super) fn stderr_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(5);
    format!(" (helper stderr: {})", lines[start..].join(" | "))
}
