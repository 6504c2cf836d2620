//! Container exit detection: one thread polls a pidfd per running container.
//!
//! A pidfd becomes readable when its process exits (zombie or reaped), and
//! cannot be confused with a later process reusing the pid. The thread only
//! reports which container exited; reaping (`waitpid` on that one pid, never
//! `waitpid(-1)`, which would steal statuses from `tokio::process` children)
//! and recording happen in the callback. A plain thread rather than tokio's
//! `AsyncFd` so that the runtime works with or without a tokio runtime.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Opens a pidfd for `pid` (Linux ≥ 5.3), close-on-exec.
pub(crate) fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall just returned this fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

struct Shared {
    pending: Mutex<Vec<(String, OwnedFd)>>,
    stop: AtomicBool,
    wake_write: OwnedFd,
}

pub(crate) struct ExitWatcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ExitWatcher {
    /// Starts the thread; `on_exit(id)` runs on it for each exited container.
    pub(crate) fn start(on_exit: impl Fn(&str) + Send + 'static) -> std::io::Result<ExitWatcher> {
        let (wake_read, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            wake_write,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("bramble-exits".into())
            .spawn(move || run(thread_shared, wake_read, on_exit))?;
        Ok(ExitWatcher {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches `pidfd`, reporting `id` when it becomes readable.
    pub(crate) fn watch(&self, id: &str, pidfd: OwnedFd) {
        self.shared
            .pending
            .lock()
            .expect("watcher lock")
            .push((id.to_string(), pidfd));
        self.wake();
    }

    fn wake(&self) {
        // A full pipe already means "wake up"; nothing else can fail here.
        let _ = nix::unistd::write(&self.shared.wake_write, &[1]);
    }
}

impl Drop for ExitWatcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: Arc<Shared>, wake_read: OwnedFd, on_exit: impl Fn(&str)) {
    let mut watched: HashMap<String, OwnedFd> = HashMap::new();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        for (id, fd) in shared.pending.lock().expect("watcher lock").drain(..) {
            watched.insert(id, fd);
        }
        let ids: Vec<String> = watched.keys().cloned().collect();
        let mut fds = vec![PollFd::new(wake_read.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            ids.iter()
                .map(|id| PollFd::new(watched[id].as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "exit watcher: poll failed; exits will be noticed on the next listing");
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
        }
        let ready: Vec<usize> = fds
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| i - 1)
            .collect();
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            let mut buf = [0u8; 64];
            while matches!(nix::unistd::read(&wake_read, &mut buf), Ok(n) if n > 0) {}
        }
        drop(fds);
        for i in ready {
            let id = &ids[i];
            watched.remove(id);
            on_exit(id);
        }
    }
}
