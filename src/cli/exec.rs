//! `bramble exec POD [-c C] [-i] [-t] -- CMD ARGS…` (also `deploy/NAME`): a
//! command in a running container, its output here, our stdin there with
//! `-i`, on a terminal with `-t` (this terminal in raw mode, its size sent at
//! the start and on every SIGWINCH). The command's exit code is ours, with
//! kubectl's `command terminated with exit code N`.
//!
//! Must not touch: anything but this process's terminal, which it always
//! gives back as it found it (every return, ^C, panics).

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::transport::messages::{Channel, ExecRequest, FrameBody, Request, TermSize};
use crate::transport::stream::{CHUNK, Ends};

use super::CliError;
use super::client::Client;
use super::stream::{Mux, outcome_error, resolve_pod};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `POD`, `pod/POD`, `deploy/NAME` or `rs/NAME`.
    pub pod: String,
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass stdin to the container.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Stdin is a TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// The terminal settings to restore, for the panic hook.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

fn restore_terminal() {
    if let Some(saved) = SAVED.lock().ok().and_then(|mut s| s.take()) {
        let _ = tcsetattr(stdin_fd(), SetArg::TCSANOW, &saved);
    }
}

/// This terminal in raw mode for as long as it lives: keys go to the
/// container as typed (^C included).
struct RawMode;

impl RawMode {
    fn enter() -> Result<RawMode, nix::Error> {
        let saved = tcgetattr(stdin_fd())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        *SAVED.lock().expect("terminal lock") = Some(saved);
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            hook(info);
        }));
        if let Err(e) = tcsetattr(stdin_fd(), SetArg::TCSANOW, &raw) {
            restore_terminal();
            return Err(e);
        }
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The size of the terminal on `fd`.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<TermSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
    // points to a live local for the duration of the call.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::TIOCGWINSZ,
            &mut ws,
        )
    };
    (r == 0 && ws.ws_col > 0).then_some(TermSize {
        cols: ws.ws_col,
        rows: ws.ws_row,
    })
}

/// Reads stdin on a thread of its own (a blocked read must not hold up the
/// process's exit, as one in tokio's blocking pool would) and feeds it to
/// the stream; end-of-file becomes `Eof`.
fn read_stdin(out: mpsc::Sender<FrameBody>) {
    let spawned = std::thread::Builder::new()
        .name("bramble-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let body = match stdin.read(&mut buf) {
                    Ok(0) => FrameBody::Eof {
                        channel: Channel::Stdin,
                    },
                    Ok(n) => FrameBody::Data {
                        channel: Channel::Stdin,
                        bytes: buf[..n].to_vec(),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => FrameBody::Eof {
                        channel: Channel::Stdin,
                    },
                };
                let last = matches!(body, FrameBody::Eof { .. });
                if out.blocking_send(body).is_err() || last {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot read stdin");
    }
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
    let stdin_tty = nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false);
    let tty = args.tty && stdin_tty;
    if args.tty && !stdin_tty {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
    }
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let pod = match resolve_pod(&mut client, &args.pod, &ns).await {
        Ok(p) => p,
        Err(e) => {
            client.close().await;
            return Err(e);
        }
    };
    let mux = Mux::new(client);
    let result = exec(&mux, &args, &ns, pod, tty).await;
    mux.close().await;
    result
}

async fn exec(
    mux: &Mux,
    args: &Args,
    ns: &str,
    pod: String,
    tty: bool,
) -> Result<ExitCode, CliError> {
    let size = if tty { window_size(stdin_fd()) } else { None };
    let mut conn = mux
        .open(|stream_id| {
            Request::Exec(ExecRequest {
                namespace: ns.to_string(),
                pod,
                container: args.container.clone(),
                command: args.command.clone(),
                stdin: args.stdin,
                tty,
                size,
                stream_id,
            })
        })
        .await?;
    let engine = conn.engine.take().expect("a fresh stream has its engine");
    let (source_tx, source) = mpsc::channel(1);
    if args.stdin {
        read_stdin(source_tx.clone());
    }
    let (sink, mut inbox) = mpsc::unbounded_channel();
    let (consumed, consumed_rx) = mpsc::unbounded_channel();
    // From here until it drops, this terminal is raw.
    let raw = if tty {
        match RawMode::enter() {
            Ok(r) => Some(r),
            Err(e) => {
                conn.close().await;
                conn.finish().await;
                return Err(CliError::Stream(format!(
                    "cannot set the terminal raw: {e}"
                )));
            }
        }
    } else {
        None
    };
    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        let mut end = None;
        while let Some((seq, body)) = inbox.recv().await {
            match body {
                FrameBody::Data {
                    channel: Channel::Stderr,
                    bytes,
                } => {
                    let _ = stderr.write_all(&bytes).await;
                    let _ = stderr.flush().await;
                }
                FrameBody::Data { bytes, .. } => {
                    let _ = stdout.write_all(&bytes).await;
                    let _ = stdout.flush().await;
                }
                FrameBody::End { exit_code, error } => end = Some((exit_code, error)),
                _ => {}
            }
            let _ = consumed.send(seq);
        }
        end
    });
    let mut winch = signal(SignalKind::window_change()).ok();
    // The source channel may be full of keystrokes when the size changes; a
    // resize must wait its turn rather than be lost, and only the latest
    // size matters.
    let (resize_tx, mut resize_rx) = tokio::sync::watch::channel(size);
    let resize_source = source_tx.clone();
    tokio::spawn(async move {
        while resize_rx.changed().await.is_ok() {
            let latest = *resize_rx.borrow_and_update();
            if let Some(size) = latest
                && resize_source.send(FrameBody::Resize(size)).await.is_err()
            {
                break;
            }
        }
    });
    let mut term = signal(SignalKind::terminate()).ok();
    let run = engine.run(Ends {
        source,
        sink,
        consumed: consumed_rx,
    });
    tokio::pin!(run);
    let outcome = loop {
        tokio::select! {
            o = &mut run => break Some(o),
            // The terminal changed size: so does the container's.
            Some(()) = recv_opt(&mut winch), if tty => {
                if let Some(size) = window_size(stdin_fd()) {
                    let _ = resize_tx.send(Some(size));
                }
            }
            // ^C without a terminal (with one, ^C is a key for the container),
            // or SIGTERM: the node hangs up the process.
            _ = tokio::signal::ctrl_c() => break None,
            Some(()) = recv_opt(&mut term) => break None,
        }
    };
    drop(raw);
    let node = conn.node.clone();
    let Some(outcome) = outcome else {
        conn.close().await;
        conn.finish().await;
        return Ok(ExitCode::from(130));
    };
    conn.finish().await;
    let end = printer.await.ok().flatten();
    match end {
        Some((_, Some(error))) => Err(CliError::Stream(error)),
        Some((Some(0), None)) => Ok(ExitCode::SUCCESS),
        Some((Some(code), None)) => {
            eprintln!("command terminated with exit code {code}");
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Some((None, None)) => Err(CliError::Stream(
            "the command's exit status was lost".into(),
        )),
        None => Err(CliError::Stream(
            outcome_error(&node, &outcome).unwrap_or_else(|| "the stream ended".into()),
        )),
    }
}

async fn recv_opt(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
