//! `kubectl exec` for libcontainer: a process joining a running container's
//! namespaces and cgroup, through libcontainer's tenant builder.
//!
//! The tenant builder forks with the same raw `clone3` as create, so it runs
//! in `bramble __container-exec`, a short-lived single-threaded helper like
//! `__container-create` (see [`super::helper`]). The process's stdio:
//!
//! - without a terminal, three pipes made by the agent, whose child ends the
//!   helper receives as fds 3, 4, 5 and hands to libcontainer;
//! - with a terminal, libcontainer's console socket: the agent listens on a
//!   Unix socket, the process opens a pty in the container's own devpts, makes
//!   its slave side its controlling terminal (so ^C and SIGWINCH reach it)
//!   and sends the master side to that socket. A custom executor sets the
//!   first window size on the terminal just before the command runs.
//!
//! The process is the helper's child (libcontainer clones it with
//! `CLONE_PARENT` from its intermediate process); when the helper exits it is
//! reparented to the agent, a child subreaper. [`TenantProcess`] watches it
//! with a pidfd and reaps exactly that pid. It is a session leader (the init
//! code calls `setsid`), so signals go to its whole process group.

use std::fs;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::libcontainer::container::Container;
use ::libcontainer::container::builder::ContainerBuilder;
use ::libcontainer::syscall::syscall::SyscallType;
use ::libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use super::helper::{CreateReply, HELPER_TIMEOUT, read_with_deadline, stderr_tail};
use super::watcher::pidfd_open;
use crate::runtime::{ExecHandle, ExecProcess, ExecSpec, RuntimeError};

/// The subcommand word `main` dispatches to [`exec_helper_main`].
pub const EXEC_HELPER_SUBCOMMAND: &str = "__container-exec";

/// Where the helper finds the process's stdin, stdout and stderr without a
/// terminal.
const STDIO_FDS: [RawFd; 3] = [3, 4, 5];

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExecRequest {
    pub id: String,
    pub state_dir: PathBuf,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// With a terminal: the agent's console socket. Without: stdio on fds 3–5.
    pub console_socket: Option<PathBuf>,
    pub size: Option<(u16, u16)>,
}

/// Sets a terminal's window size (`TIOCSWINSZ`); the kernel sends SIGWINCH
/// to its foreground process group.
pub(crate) fn set_window_size(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which
    // points to a live local for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// libcontainer's default executor, after setting the terminal's first size
/// (stdin is the terminal by then).
#[derive(Clone)]
struct SizedTerminal {
    size: Option<(u16, u16)>,
}

impl Executor for SizedTerminal {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some((cols, rows)) = self.size {
            // SAFETY: fd 0 is open for the life of this process (it is the
            // terminal libcontainer just connected); borrowed for one call.
            let stdin = unsafe { BorrowedFd::borrow_raw(0) };
            if let Err(e) = set_window_size(stdin, cols, rows) {
                tracing::warn!(error = %e, "setting the terminal size");
            }
        }
        ::libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        ::libcontainer::workload::default::get_executor().validate(spec)
    }

    fn setup_envs(
        &self,
        envs: std::collections::HashMap<String, String>,
    ) -> Result<(), ExecutorSetEnvsError> {
        ::libcontainer::workload::default::get_executor().setup_envs(envs)
    }
}

/// Entry point of `bramble __container-exec <request JSON>`. Prints one
/// reply line.
pub fn exec_helper_main(args: &[String]) -> ExitCode {
    // Only errors: the agent shows its log's tail when the helper fails.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
        .try_init();
    let reply = match args {
        [json] => match serde_json::from_str::<ExecRequest>(json) {
            Ok(request) => match exec_in(&request) {
                Ok(pid) => CreateReply::Started { pid },
                Err(error) => {
                    reap_children(Duration::from_secs(2));
                    CreateReply::Failed { error }
                }
            },
            Err(e) => CreateReply::Failed {
                error: format!("bad request: {e}"),
            },
        },
        _ => CreateReply::Failed {
            error: format!("usage: {EXEC_HELPER_SUBCOMMAND} <request JSON>"),
        },
    };
    super::helper::print_reply(&reply)
}

/// After a failed exec, libcontainer's intermediate and init processes may be
/// left unreaped; once this helper exits they would be reparented to the
/// agent (a subreaper) as zombies nobody waits for. No tenant process exists
/// on this path, so every child is ours to reap.
fn reap_children(limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(
            Pid::from_raw(-1),
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Runs in the helper: the container's own process settings (user, cwd,
/// capabilities, environment) with the command replaced.
fn exec_in(request: &ExecRequest) -> Result<i32, String> {
    let container = Container::load(request.state_dir.join(&request.id))
        .map_err(|e| format!("loading container {}: {e}", request.id))?;
    let bundle = container.bundle().clone();
    let spec = Spec::load(bundle.join("config.json"))
        .map_err(|e| format!("reading {}: {e}", bundle.join("config.json").display()))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| "the container's spec has no process".to_string())?;
    process.set_args(Some(request.command.clone()));
    process.set_terminal(Some(request.console_socket.is_some()));
    let mut env = process.env().clone().unwrap_or_default();
    for (k, v) in &request.env {
        env.retain(|e| e.split('=').next() != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    process.set_env(Some(env));
    let process_file = bundle.join(format!("exec-{}.json", std::process::id()));
    fs::write(
        &process_file,
        serde_json::to_vec(&process).map_err(|e| format!("encoding the process: {e}"))?,
    )
    .map_err(|e| format!("writing {}: {e}", process_file.display()))?;
    // libcontainer leaves a notify socket (and a console link) per exec in
    // the container's state directory; the agent runs one exec helper at a
    // time, so whatever is new afterwards is ours to remove.
    let state = request.state_dir.join(&request.id);
    let before = tenant_entries(&state);
    let result = build(request, &process_file);
    for name in tenant_entries(&state).difference(&before) {
        let _ = fs::remove_file(state.join(name));
    }
    let _ = fs::remove_file(&process_file);
    result
}

fn tenant_entries(dir: &Path) -> std::collections::BTreeSet<std::ffi::OsString> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("tenant-"))
        .collect()
}

fn build(request: &ExecRequest, process_file: &Path) -> Result<i32, String> {
    let mut builder = ContainerBuilder::new(request.id.clone(), SyscallType::default())
        .with_root_path(&request.state_dir)
        .map_err(|e| format!("state directory {}: {e}", request.state_dir.display()))?
        .with_executor(SizedTerminal { size: request.size });
    match &request.console_socket {
        Some(socket) => builder = builder.with_console_socket(Some(socket)),
        None => {
            for fd in STDIO_FDS {
                // SAFETY: F_GETFD only reads the fd's flags; an fd that is not
                // open fails with EBADF, which is what this checks.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(format!(
                        "stdio fd {fd} from the agent: {}",
                        io::Error::last_os_error()
                    ));
                }
            }
            // SAFETY: the agent put the process's stdio on fds 3, 4 and 5
            // (checked open above) and nothing else in this process owns them.
            let [i, o, e] = STDIO_FDS.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            builder = builder.with_stdin(i).with_stdout(o).with_stderr(e);
        }
    }
    let pid = builder
        .validate_id()
        .map_err(|e| format!("container id: {e}"))?
        .as_tenant()
        .with_process(Some(process_file))
        .with_detach(true)
        .build()
        .map_err(|e| format!("libcontainer exec: {e}"))?;
    Ok(pid.as_raw())
}

/// The agent's side: starts the helper, returns the process and its stdio.
/// Callers hold the runtime's exec lock: one exec helper at a time.
pub(crate) fn exec(
    helper_exe: &Path,
    state_dir: &Path,
    scratch: &Path,
    id: &str,
    spec: &ExecSpec,
) -> Result<ExecHandle, RuntimeError> {
    let fail = |reason: String| RuntimeError::Operation {
        op: "exec in",
        id: id.to_string(),
        reason,
    };
    if spec.command.is_empty() {
        return Err(fail("no command given".into()));
    }
    fs::create_dir_all(scratch)
        .map_err(|e| fail(format!("creating {}: {e}", scratch.display())))?;
    let tag = format!("{:016x}", rand::random::<u64>());
    let stderr_log = scratch.join(format!("{tag}.log"));
    let mut request = ExecRequest {
        id: id.to_string(),
        state_dir: state_dir.to_path_buf(),
        command: spec.command.clone(),
        env: spec.env.clone(),
        console_socket: None,
        size: spec.size,
    };
    let result = if spec.tty {
        let socket = scratch.join(format!("{tag}.sock"));
        request.console_socket = Some(socket.clone());
        let r = exec_with_terminal(helper_exe, &request, &socket, &stderr_log);
        let _ = fs::remove_file(&socket);
        r
    } else {
        exec_with_pipes(helper_exe, &request, spec.stdin, &stderr_log)
    };
    let _ = fs::remove_file(&stderr_log);
    result.map_err(fail)
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))
}

fn exec_with_pipes(
    helper_exe: &Path,
    request: &ExecRequest,
    with_stdin: bool,
    stderr_log: &Path,
) -> Result<ExecHandle, String> {
    let (stdin_child, stdin) = if with_stdin {
        let (r, w) = cloexec_pipe()?;
        (r, Some(w))
    } else {
        let null = fs::File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
        (OwnedFd::from(null), None)
    };
    let (stdout, stdout_child) = cloexec_pipe()?;
    let (stderr, stderr_child) = cloexec_pipe()?;
    let pid = run_helper(
        helper_exe,
        request,
        Some([stdin_child, stdout_child, stderr_child]),
        stderr_log,
    )?;
    Ok(ExecHandle {
        stdin,
        stdout,
        stderr: Some(stderr),
        terminal: None,
        process: Box::new(TenantProcess::new(pid)?),
    })
}

fn exec_with_terminal(
    helper_exe: &Path,
    request: &ExecRequest,
    socket: &Path,
    stderr_log: &Path,
) -> Result<ExecHandle, String> {
    let _ = fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|e| format!("console socket {}: {e}", socket.display()))?;
    let pid = run_helper(helper_exe, request, None, stderr_log)?;
    // From here the process runs: whatever fails must not leave it behind.
    let process = TenantProcess::new(pid)?;
    let master = receive_terminal(&listener)?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| format!("duplicating the terminal: {e}"))
    };
    Ok(ExecHandle {
        stdin: Some(dup(&master)?),
        stdout: dup(&master)?,
        stderr: None,
        terminal: Some(master),
        process: Box::new(process),
    })
}

/// The pty master the process sent to the console socket.
fn receive_terminal(listener: &UnixListener) -> Result<OwnedFd, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    // The process connected (from the helper) and sent the master before
    // the helper reported success, so this is quick; the limit is for a
    // process that died half-way.
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(5000u16)) {
        Ok(n) if n > 0 => {}
        Ok(_) => return Err("the process sent no terminal".into()),
        Err(e) => return Err(format!("waiting for the terminal: {e}")),
    }
    let (conn, _) = listener
        .accept()
        .map_err(|e| format!("accepting the console connection: {e}"))?;
    conn.set_nonblocking(false)
        .map_err(|e| format!("console connection: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("console connection: {e}"))?;
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving the terminal: {e}"))?;
    let mut received = Vec::new();
    for cmsg in msg
        .cmsgs()
        .map_err(|e| format!("receiving the terminal: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            received.extend(fds);
        }
    }
    // SAFETY: SCM_RIGHTS just installed these fds in this process; nothing
    // else refers to them.
    let mut owned: Vec<OwnedFd> = received
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.len() != 1 {
        return Err(format!("expected one terminal fd, got {}", owned.len()));
    }
    Ok(owned.remove(0))
}

/// Runs the helper with `stdio` on its fds 3, 4, 5; returns the process's pid.
fn run_helper(
    helper_exe: &Path,
    request: &ExecRequest,
    stdio: Option<[OwnedFd; 3]>,
    stderr_log: &Path,
) -> Result<i32, String> {
    let json = serde_json::to_string(request).expect("request serializes");
    let stderr = fs::File::create(stderr_log)
        .map_err(|e| format!("creating {}: {e}", stderr_log.display()))?;
    let mut command = Command::new(helper_exe);
    command
        .arg(EXEC_HELPER_SUBCOMMAND)
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    if let Some(fds) = &stdio {
        let raw = fds.each_ref().map(|f| f.as_raw_fd());
        // SAFETY: the closure runs in the forked child before exec and calls
        // only fcntl and dup2, which are async-signal-safe; it allocates
        // nothing. Sources are first moved above fd 10 so that placing one on
        // 3–5 cannot overwrite another not yet placed.
        unsafe {
            command.pre_exec(move || {
                let mut high = [0; 3];
                for (h, fd) in high.iter_mut().zip(raw) {
                    *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                    if *h < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (h, target) in high.into_iter().zip(STDIO_FDS) {
                    if libc::dup2(h, target) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting helper {}: {e}", helper_exe.display()))?;
    // The helper has its copies; ours must go, or the process's stdout never
    // reaches end-of-file.
    drop(stdio);
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
    match output
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<CreateReply>(l).ok())
    {
        Some(CreateReply::Started { pid }) => Ok(pid),
        // libcontainer's error says it all (its log repeats it).
        Some(CreateReply::Failed { error }) => Err(error),
        None => Err(format!(
            "helper exited ({status}) without a reply{}",
            tail()
        )),
    }
}

/// An exec'd process, our child once the helper has exited.
pub(crate) struct TenantProcess {
    pid: i32,
    pidfd: OwnedFd,
    /// Its exit code once reaped; held while signalling, so a reaped (and
    /// possibly reused) pid is never signalled.
    reaped: Mutex<Option<i32>>,
}

impl TenantProcess {
    fn new(pid: i32) -> Result<TenantProcess, String> {
        // It cannot have been reaped yet (only we reap it), so the pid is
        // still this process, alive or a zombie.
        let pidfd = pidfd_open(pid).map_err(|e| format!("pidfd for exec'd pid {pid}: {e}"))?;
        Ok(TenantProcess {
            pid,
            pidfd,
            reaped: Mutex::new(None),
        })
    }

    fn reap(
        &self,
        slot: &mut Option<i32>,
        flags: WaitPidFlag,
    ) -> Result<Option<i32>, RuntimeError> {
        if let Some(code) = *slot {
            return Ok(Some(code));
        }
        let code = match waitpid(Pid::from_raw(self.pid), Some(flags | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => code,
            Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
            Ok(_) => return Ok(None),
            Err(e) => {
                return Err(RuntimeError::Operation {
                    op: "wait for",
                    id: format!("exec'd pid {}", self.pid),
                    reason: e.to_string(),
                });
            }
        };
        *slot = Some(code);
        Ok(Some(code))
    }
}

impl ExecProcess for TenantProcess {
    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    fn try_wait(&self) -> Result<Option<i32>, RuntimeError> {
        let mut slot = self.reaped.lock().expect("exec reap lock");
        self.reap(&mut slot, WaitPidFlag::WNOHANG)
    }

    fn signal(&self, signal: i32) -> Result<(), RuntimeError> {
        let slot = self.reaped.lock().expect("exec reap lock");
        if slot.is_some() {
            return Ok(());
        }
        let op = |reason: String| RuntimeError::Operation {
            op: "signal",
            id: format!("exec'd pid {}", self.pid),
            reason,
        };
        let sig = Signal::try_from(signal).map_err(|e| op(e.to_string()))?;
        // The whole group (its pid: it is a session leader); the process
        // alone if it left its group.
        match killpg(Pid::from_raw(self.pid), sig) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => match kill(Pid::from_raw(self.pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                Err(e) => Err(op(e.to_string())),
            },
            Err(e) => Err(op(e.to_string())),
        }
    }
}

impl Drop for TenantProcess {
    /// A process nobody waited for is killed and reaped, not left a zombie.
    fn drop(&mut self) {
        let slot = self.reaped.get_mut().expect("exec reap lock");
        if slot.is_some() {
            return;
        }
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(2000u16));
        let mut slot = None;
        if let Err(e) = self.reap(&mut slot, WaitPidFlag::WNOHANG) {
            tracing::debug!(pid = self.pid, error = %e, "reaping an abandoned exec");
        }
    }
}
