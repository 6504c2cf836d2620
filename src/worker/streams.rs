//! The streams a node serves (`logs`, `exec`, `port-forward`): what is at the
//! node's end of a `node/<n>/stream/<id>` stream. The flow control is
//! [`crate::transport::stream`]; this module feeds its engine and drains it.
//!
//! - Logs: the container's log file (`--previous`: the attempt before),
//!   cut by `--since` and `--tail`, stamped with `--timestamps`, then
//!   followed with `-f` until the pod's logs go (the pod was deleted) or the
//!   container starts again.
//! - Exec: a process started through [`Runtime::exec`]; its stdout and
//!   stderr go out, the client's stdin, end-of-file and terminal size come
//!   in; its exit code is the last word. It is hung up on (SIGHUP, then
//!   SIGKILL) when the stream ends any other way.
//! - Port-forward: a TCP connection to the port on the pod's loopback, made
//!   inside the pod's network namespace (as kubelet does), with half-close.
//!
//! Must not touch: pod records (read only, in [`target`]) or the runtime's
//! containers; the agent resolves a stream to a [`Target`] and hands it here.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::podsync::{CState, PodRecord};
use crate::runtime::log_times::{StampedLog, format_stamp};
use crate::runtime::logs::{FOLLOW_INTERVAL, LogFollower};
use crate::runtime::{ExecHandle, ExecSpec, Runtime, RuntimeError};
use crate::transport::messages::{Channel, FrameBody, Since, StreamKind, StreamMsg};
use crate::transport::stream::{CHUNK, Ends, Engine, LEASE, MqttLink, Outcome, Role};

/// What an opened stream serves, as the agent resolved it.
pub enum Target {
    Logs(LogTarget),
    Exec {
        runtime: Arc<dyn Runtime>,
        container_id: String,
        spec: ExecSpec,
    },
    PortForward {
        /// The pod's network namespace; `None`: the host's (no pod network).
        netns: Option<PathBuf>,
        port: u16,
    },
    /// Cannot be served: the client gets this as the stream's error.
    Refused(String),
}

pub struct LogTarget {
    pub path: PathBuf,
    pub follow: bool,
    pub tail: Option<u64>,
    /// Unix ms: only lines written at or after.
    pub since_ms: Option<i64>,
    pub timestamps: bool,
    /// The next attempt's log: once it exists, this attempt is over.
    pub next_attempt: Option<PathBuf>,
}

/// What a stream of `kind` for the pod `rec` (if the node has it) serves.
/// `log_dir` is the pod's log directory, `netns` its network namespace.
pub fn target(
    kind: &StreamKind,
    pod: &str,
    rec: Option<&PodRecord>,
    log_dir: Option<&Path>,
    netns: Option<PathBuf>,
    runtime: &Arc<dyn Runtime>,
    now_ms: i64,
) -> Target {
    let Some(rec) = rec else {
        return Target::Refused(format!("pod \"{pod}\" is not on this node"));
    };
    let container_of = |name: &str| {
        rec.containers.get(name).ok_or_else(|| {
            Target::Refused(format!("container \"{name}\" not found in pod \"{pod}\""))
        })
    };
    match kind {
        StreamKind::Logs {
            container,
            follow,
            tail,
            previous,
            since,
            timestamps,
        } => {
            let c = match container_of(container) {
                Ok(c) => c,
                Err(t) => return t,
            };
            let Some(log_dir) = log_dir else {
                return Target::Refused("this node keeps no logs".into());
            };
            let file = |attempt: u32| log_dir.join(container).join(format!("{attempt}.log"));
            let current = c.attempt.checked_sub(1);
            let path = if *previous {
                match current.and_then(|cur| (0..cur).rev().map(file).find(|p| p.exists())) {
                    Some(p) => p,
                    None => {
                        return Target::Refused(format!(
                            "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                        ));
                    }
                }
            } else {
                match (current, &c.state) {
                    (Some(cur), _) => file(cur),
                    (None, CState::Waiting { reason, .. }) => {
                        return Target::Refused(format!(
                            "container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}"
                        ));
                    }
                    (None, _) => file(0),
                }
            };
            Target::Logs(LogTarget {
                path,
                follow: *follow && !*previous,
                tail: *tail,
                since_ms: since.map(|s| match s {
                    Since::Seconds(secs) => {
                        now_ms.saturating_sub(i64::try_from(secs).unwrap_or(i64::MAX / 2) * 1000)
                    }
                    Since::UnixMs(ms) => ms,
                }),
                timestamps: *timestamps,
                next_attempt: (!*previous).then(|| file(c.attempt)),
            })
        }
        StreamKind::Exec {
            container,
            command,
            stdin,
            tty,
            size,
        } => {
            let c = match container_of(container) {
                Ok(c) => c,
                Err(t) => return t,
            };
            match (&c.state, &c.runtime_id) {
                (CState::Running { .. }, Some(id)) => Target::Exec {
                    runtime: runtime.clone(),
                    container_id: id.clone(),
                    spec: ExecSpec {
                        command: command.clone(),
                        env: Vec::new(),
                        tty: *tty,
                        stdin: *stdin,
                        size: size.map(|s| (s.cols, s.rows)),
                    },
                },
                _ => Target::Refused(format!(
                    "container \"{container}\" in pod \"{pod}\" is not running"
                )),
            }
        }
        StreamKind::PortForward { port } => {
            if !rec.network_ready {
                return Target::Refused(format!("pod \"{pod}\" has no network yet"));
            }
            Target::PortForward { netns, port: *port }
        }
    }
}

/// How long an exec'd process has to go after SIGHUP before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// After a process exits, its output is read until this long passes without
/// any (a background child may hold the pipe open forever).
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// Serves one stream: waits for the client's first message, then runs the
/// target and the engine until either ends. `control` carries the client's
/// verified messages; when the agent drops its sender the stream ends.
pub async fn serve(mut control: mpsc::Receiver<StreamMsg>, link: MqttLink, target: Target) {
    let topic = link.topic.clone();
    // Nothing starts (no process, no connection) until the client is there.
    let first = match tokio::time::timeout(LEASE, control.recv()).await {
        Ok(Some(StreamMsg::Close)) | Ok(None) | Err(_) => {
            tracing::debug!(%topic, "stream not taken up by its client");
            return;
        }
        Ok(Some(m)) => m,
    };
    let engine = Engine::new(link, Role::Node, control).with_first(first);
    let (out, source) = mpsc::channel(1);
    let (sink, inbox) = mpsc::unbounded_channel();
    let (consumed_tx, consumed) = mpsc::unbounded_channel();
    let (cancel_tx, cancel) = watch::channel(false);
    let io = Io {
        out,
        inbox,
        consumed: consumed_tx,
        cancel,
    };
    let mut work = tokio::spawn(async move {
        match target {
            Target::Logs(t) => serve_logs(t, io).await,
            Target::Exec {
                runtime,
                container_id,
                spec,
            } => serve_exec(runtime, container_id, spec, io).await,
            Target::PortForward { netns, port } => serve_port(netns, port, io).await,
            Target::Refused(why) => io.end(None, Some(why)).await,
        }
    });
    let outcome = engine
        .run(Ends {
            source,
            sink,
            consumed,
        })
        .await;
    match &outcome {
        Outcome::Ended => tracing::debug!(%topic, "stream ended"),
        other => tracing::info!(%topic, outcome = ?other, "stream stopped"),
    }
    // Whatever the target still does is of no use now: let it clean up
    // (hang up the process, close the connection), within reason.
    let _ = cancel_tx.send(true);
    if tokio::time::timeout(HANGUP_GRACE * 3, &mut work)
        .await
        .is_err()
    {
        work.abort();
    }
}

/// A target's side of the engine.
struct Io {
    /// Bodies to send (bounded: the window's backpressure).
    out: mpsc::Sender<FrameBody>,
    /// Bodies from the client, each to be acknowledged on `consumed`.
    inbox: mpsc::UnboundedReceiver<(u64, FrameBody)>,
    consumed: mpsc::UnboundedSender<u64>,
    /// Flips when the stream is over.
    cancel: watch::Receiver<bool>,
}

impl Io {
    async fn end(&self, exit_code: Option<i32>, error: Option<String>) {
        let _ = self.out.send(FrameBody::End { exit_code, error }).await;
    }
}

/// Sends `bytes` as data frames; false once the stream is gone.
async fn send_data(out: &mpsc::Sender<FrameBody>, channel: Channel, bytes: &[u8]) -> bool {
    for chunk in bytes.chunks(CHUNK) {
        let body = FrameBody::Data {
            channel,
            bytes: chunk.to_vec(),
        };
        if out.send(body).await.is_err() {
            return false;
        }
    }
    true
}

fn now_ms() -> i64 {
    crate::transport::envelope::now_ms()
}

/// Where the last `n` lines of `bytes` start (an unterminated last line
/// counts as a line).
pub fn tail_start(bytes: &[u8], n: u64) -> usize {
    if n == 0 {
        return bytes.len();
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// Prefixes the start of every line in `bytes` with `stamp`; `at_line_start`
/// carries whether the previous chunk ended a line.
fn stamp_lines(bytes: &[u8], stamp: &str, at_line_start: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + stamp.len() + 1);
    for &b in bytes {
        if *at_line_start {
            out.extend_from_slice(stamp.as_bytes());
            out.push(b' ');
        }
        out.push(b);
        *at_line_start = b == b'\n';
    }
    out
}

async fn serve_logs(t: LogTarget, mut io: Io) {
    // The client sends nothing but acks; anything else is consumed unread.
    let consumed = io.consumed.clone();
    let mut inbox = std::mem::replace(&mut io.inbox, mpsc::unbounded_channel().1);
    tokio::spawn(async move {
        while let Some((seq, _)) = inbox.recv().await {
            let _ = consumed.send(seq);
        }
    });
    let path = t.path.clone();
    let (tail, since, timestamps) = (t.tail, t.since_ms, t.timestamps);
    let read = tokio::task::spawn_blocking(move || {
        let log = StampedLog::read(&path, now_ms())?;
        let current_len = std::fs::metadata(&path).map_or(0, |m| m.len());
        let mut from = since.map_or(0, |s| log.start_since(s));
        if let Some(n) = tail {
            from = from.max(tail_start(&log.bytes, n));
        }
        let initial = if timestamps {
            log.with_timestamps(from)
        } else {
            log.bytes[from..].to_vec()
        };
        // Following goes on from exactly what was read.
        let follower = LogFollower::new(&path, current_len.min(log.bytes.len() as u64));
        Ok::<_, io::Error>((initial, follower))
    })
    .await;
    let (initial, mut follower) = match read {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return io.end(None, Some(format!("reading the log: {e}"))).await,
        Err(e) => return io.end(None, Some(format!("reading the log: {e}"))).await,
    };
    let mut at_line_start = initial.is_empty() || initial.ends_with(b"\n");
    if !send_data(&io.out, Channel::Stdout, &initial).await {
        return;
    }
    if t.follow {
        let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = io.cancel.changed() => return,
            }
            let bytes = match follower.poll_once() {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(error = %e, "log follow read failed");
                    Vec::new()
                }
            };
            if !bytes.is_empty() {
                let bytes = if timestamps {
                    stamp_lines(&bytes, &format_stamp(now_ms()), &mut at_line_start)
                } else {
                    bytes
                };
                if !send_data(&io.out, Channel::Stdout, &bytes).await {
                    return;
                }
                continue;
            }
            // Over once the pod's logs are gone (it was deleted) or the
            // container started again (kubectl's follow ends with the
            // container it followed).
            let gone = !t.path.exists() || t.next_attempt.as_deref().is_some_and(Path::exists);
            if gone {
                break;
            }
        }
    }
    io.end(None, None).await;
}

/// Registers an owned fd with tokio's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and owns the fd for
    // its whole life: it stays open, refers to the same file and reports the
    // same number until the `AsyncFd` is dropped.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

/// A non-blocking fd (pipe or terminal) driven by tokio's reactor.
struct AsyncPipe(AsyncFd<OwnedFd>);

impl AsyncPipe {
    fn new(fd: OwnedFd) -> io::Result<AsyncPipe> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(AsyncPipe(register(fd)?))
    }

    /// Reads some bytes; 0 at end-of-file (a terminal whose other side is
    /// all closed reads as end-of-file too).
    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Copies one output of the process to the stream until end-of-file, or,
/// once the process has exited, until it has been quiet for [`DRAIN_IDLE`].
async fn pump(
    fd: OwnedFd,
    channel: Channel,
    out: mpsc::Sender<FrameBody>,
    mut exited: watch::Receiver<bool>,
) {
    let pipe = match AsyncPipe::new(fd) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "exec output");
            return;
        }
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let idle = async {
            let _ = exited.wait_for(|e| *e).await;
            tokio::time::sleep(DRAIN_IDLE).await;
        };
        let n = tokio::select! {
            r = pipe.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = idle => return,
        };
        if !send_data(&out, channel, &buf[..n]).await {
            return;
        }
    }
}

/// Exec-level failures as the client reads them.
fn exec_error(e: &RuntimeError) -> String {
    match e {
        RuntimeError::Operation { reason, .. } => format!("cannot exec in the container: {reason}"),
        other => format!("cannot exec in the container: {other}"),
    }
}

async fn serve_exec(runtime: Arc<dyn Runtime>, container_id: String, spec: ExecSpec, io: Io) {
    let Io {
        out,
        mut inbox,
        consumed,
        mut cancel,
    } = io;
    let tty = spec.tty;
    let started = tokio::task::spawn_blocking(move || runtime.exec(&container_id, &spec)).await;
    let mut handle: ExecHandle = match started {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let _ = out
                .send(FrameBody::End {
                    exit_code: None,
                    error: Some(exec_error(&e)),
                })
                .await;
            return;
        }
        Err(e) => {
            let _ = out
                .send(FrameBody::End {
                    exit_code: None,
                    error: Some(format!("cannot exec in the container: {e}")),
                })
                .await;
            return;
        }
    };
    let exit_fd = match handle
        .process
        .exit_fd()
        .try_clone_to_owned()
        .and_then(register)
    {
        Ok(fd) => fd,
        Err(e) => {
            let _ = handle.process.signal(libc::SIGKILL);
            let _ = out
                .send(FrameBody::End {
                    exit_code: None,
                    error: Some(format!("watching the exec'd process: {e}")),
                })
                .await;
            return;
        }
    };
    let (exited_tx, exited) = watch::channel(false);
    let mut pumps = Vec::new();
    match handle.stdout.try_clone() {
        Ok(fd) => pumps.push(tokio::spawn(pump(
            fd,
            Channel::Stdout,
            out.clone(),
            exited.clone(),
        ))),
        Err(e) => tracing::warn!(error = %e, "exec stdout"),
    }
    if let Some(fd) = handle.stderr.take() {
        pumps.push(tokio::spawn(pump(
            fd,
            Channel::Stderr,
            out.clone(),
            exited.clone(),
        )));
    }
    // The client's input: stdin, its end, terminal sizes.
    let stdin = handle.stdin.take().and_then(|fd| AsyncPipe::new(fd).ok());
    let terminal = handle.terminal.take();
    let feeder = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some((seq, body)) = inbox.recv().await {
            match body {
                FrameBody::Data {
                    channel: Channel::Stdin,
                    bytes,
                } => {
                    if let Some(w) = &stdin
                        && w.write_all(&bytes).await.is_err()
                    {
                        // It closed its stdin: the rest is dropped.
                        stdin = None;
                    }
                }
                FrameBody::Eof {
                    channel: Channel::Stdin,
                } => {
                    if tty {
                        // A terminal has no end-of-file but ^D.
                        if let Some(w) = &stdin {
                            let _ = w.write_all(&[4]).await;
                        }
                    } else {
                        stdin = None;
                    }
                }
                FrameBody::Resize(size) => {
                    if let Some(t) = &terminal
                        && let Err(e) =
                            crate::runtime::set_terminal_size(t.as_fd(), size.cols, size.rows)
                    {
                        tracing::debug!(error = %e, "resizing an exec terminal");
                    }
                }
                _ => {}
            }
            let _ = consumed.send(seq);
        }
    });
    let done = tokio::select! {
        r = exit_fd.readable() => r.is_ok(),
        _ = cancel.changed() => false,
    };
    if !done {
        hang_up(&handle, &exit_fd).await;
        feeder.abort();
        for p in pumps {
            p.abort();
        }
        return;
    }
    let code = match handle.process.try_wait() {
        Ok(Some(code)) => Some(code),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "reaping an exec'd process");
            None
        }
    };
    let _ = exited_tx.send(true);
    for p in pumps {
        let _ = p.await;
    }
    feeder.abort();
    let _ = out
        .send(FrameBody::End {
            exit_code: code,
            error: code
                .is_none()
                .then(|| "lost the exec'd process's exit status".to_string()),
        })
        .await;
}

/// Ends an exec'd process the client left: SIGHUP (what a closed terminal
/// sends), then SIGKILL; reaps it.
async fn hang_up(handle: &ExecHandle, exit_fd: &AsyncFd<OwnedFd>) {
    let _ = handle.process.signal(libc::SIGHUP);
    if tokio::time::timeout(HANGUP_GRACE, exit_fd.readable())
        .await
        .is_err()
    {
        let _ = handle.process.signal(libc::SIGKILL);
        let _ = tokio::time::timeout(HANGUP_GRACE, exit_fd.readable()).await;
    }
    if let Err(e) = handle.process.try_wait() {
        tracing::debug!(error = %e, "reaping a hung-up exec");
    }
}

/// A TCP connection to `127.0.0.1:port` inside `netns`: the socket is made
/// on a thread of its own that enters the namespace (a socket stays in the
/// namespace it was made in); tokio's threads never leave the host's.
async fn connect_in(netns: Option<PathBuf>, port: u16) -> io::Result<tokio::net::TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Some(netns) = netns else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bramble-portfwd".into())
        .spawn(move || {
            let r = (|| {
                let file = std::fs::File::open(&netns)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
                s.set_nonblocking(true)?;
                Ok::<_, io::Error>(s)
            })();
            let _ = tx.send(r);
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the connecting thread died"))??;
    tokio::net::TcpStream::from_std(stream)
}

async fn serve_port(netns: Option<PathBuf>, port: u16, io: Io) {
    let Io {
        out,
        mut inbox,
        consumed,
        mut cancel,
    } = io;
    let conn = match connect_in(netns, port).await {
        Ok(c) => c,
        Err(e) => {
            let _ = out
                .send(FrameBody::End {
                    exit_code: None,
                    error: Some(format!("error forwarding port {port} to pod: {e}")),
                })
                .await;
            return;
        }
    };
    let (mut rd, mut wr) = conn.into_split();
    let reader_out = out.clone();
    let mut reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                let _ = reader_out
                    .send(FrameBody::Eof {
                        channel: Channel::Stdout,
                    })
                    .await;
                return Ok::<_, io::Error>(());
            }
            if !send_data(&reader_out, Channel::Stdout, &buf[..n]).await {
                return Ok(());
            }
        }
    });
    let (mut read_done, mut write_done) = (false, false);
    let error = loop {
        if read_done && write_done {
            break None;
        }
        tokio::select! {
            // The pod's side: bytes back to the client, then its end.
            r = &mut reader, if !read_done => {
                read_done = true;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Some(format!("reading from port {port}: {e}")),
                    Err(e) => break Some(format!("reading from port {port}: {e}")),
                }
            }
            // The client's side: bytes to the pod, then its end.
            item = inbox.recv(), if !write_done => {
                let Some((seq, body)) = item else { break None };
                match body {
                    FrameBody::Data { channel: Channel::Stdin, bytes } => {
                        if let Err(e) = wr.write_all(&bytes).await {
                            break Some(format!("writing to port {port}: {e}"));
                        }
                    }
                    FrameBody::Eof { channel: Channel::Stdin } => {
                        let _ = wr.shutdown().await;
                        write_done = true;
                    }
                    _ => {}
                }
                let _ = consumed.send(seq);
            }
            _ = cancel.changed() => {
                reader.abort();
                return;
            }
        }
    };
    reader.abort();
    let _ = out
        .send(FrameBody::End {
            exit_code: None,
            error,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail_start(b"a\nb\nc\n", 2), 2);
        assert_eq!(tail_start(b"a\nb\nc", 1), 4);
        assert_eq!(tail_start(b"a\nb\n", 5), 0);
        assert_eq!(tail_start(b"a\n", 0), 2);
    }

    #[test]
    fn stamps_each_line_start_across_chunks() {
        let mut start = true;
        assert_eq!(stamp_lines(b"a\nb", "T", &mut start), b"T a\nT b");
        assert!(!start);
        assert_eq!(stamp_lines(b"c\n", "U", &mut start), b"c\n");
        assert!(start);
    }
}
