//! Network namespace files and netlink connections opened inside them.
//!
//! A pod's namespace lives as long as its bind mount at `netns_dir/<pod uid>`
//! (what `ip netns add` does under `/run/netns`). Entering or creating a namespace
//! changes the calling *thread*, so every such step runs on a short-lived OS thread
//! of its own: tokio's worker threads never leave the host namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::statfs::{NSFS_MAGIC, statfs};
use tokio::task::JoinHandle;

use super::NetError;

type Connection = rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>;

fn netns_err(op: &'static str, path: &Path, source: impl Into<io::Error>) -> NetError {
    NetError::Netns {
        op,
        path: path.to_owned(),
        source: source.into(),
    }
}

/// Whether `path` is a mounted network namespace (and not, say, the empty file
/// left behind by a crash between creating and mounting it).
pub(crate) fn is_netns(path: &Path) -> Result<bool, NetError> {
    match statfs(path) {
        Ok(stat) => Ok(stat.filesystem_type() == NSFS_MAGIC),
        Err(Errno::ENOENT) => Ok(false),
        Err(errno) => Err(netns_err("statfs", path, errno)),
    }
}

/// Runs `f` on a fresh OS thread and waits for it without blocking the runtime.
async fn on_own_thread<T, F>(f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bramble-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(NetError::Thread)?;
    rx.await.map_err(|_| {
        NetError::Thread(io::Error::other(
            "network namespace thread panicked before reporting",
        ))
    })
}

/// Makes `path` a mounted network namespace unless it already is one.
pub(crate) async fn ensure(path: &Path) -> Result<(), NetError> {
    if is_netns(path)? {
        return Ok(());
    }
    let path = path.to_owned();
    on_own_thread(move || create(&path)).await?
}

/// Runs on its own thread: `unshare` moves only this thread into the new
/// namespace, and the thread ends right after, so nothing else runs in it.
fn create(path: &Path) -> Result<(), NetError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| netns_err("create directory", dir, e))?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| netns_err("create mount point", path, e))?;
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| netns_err("unshare netns for", path, e))?;
    mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| netns_err("bind-mount netns onto", path, e))
}

/// Unmounts and unlinks a namespace file; absent or unmounted is fine.
pub(crate) fn remove(path: &Path) -> Result<(), NetError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: exists but is not a mount point (a half-made file).
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(errno) => return Err(netns_err("unmount", path, errno)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(netns_err("remove", path, e)),
    }
}

/// A netlink connection whose socket lives in some network namespace. Dropping it
/// stops the connection task.
pub(crate) struct NsConn {
    pub handle: rtnetlink::Handle,
    task: JoinHandle<()>,
}

impl NsConn {
    /// A connection in the caller's namespace (the host's, from tokio's threads).
    pub fn here() -> Result<NsConn, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::NetlinkSocket)?;
        Ok(NsConn::spawn(conn, handle))
    }

    /// A connection in the namespace mounted at `path`. A netlink socket stays
    /// in the namespace it was created in, so only its creation needs the thread.
    pub async fn open(path: &Path) -> Result<NsConn, NetError> {
        if !is_netns(path)? {
            return Err(NetError::NotANetns {
                path: path.to_owned(),
            });
        }
        let file = File::open(path).map_err(|e| netns_err("open", path, e))?;
        let runtime = tokio::runtime::Handle::current();
        let owned: PathBuf = path.to_owned();
        let (conn, handle) = on_own_thread(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| netns_err("enter", &owned, e))?;
            // The socket registers with the runtime's reactor, so it needs the
            // runtime's context even though this thread is not one of its workers.
            let _context = runtime.enter();
            let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::NetlinkSocket)?;
            Ok::<_, NetError>((conn, handle))
        })
        .await??;
        Ok(NsConn::spawn(conn, handle))
    }

    fn spawn(conn: Connection, handle: rtnetlink::Handle) -> NsConn {
        NsConn {
            handle,
            task: tokio::spawn(conn),
        }
    }
}

impl Drop for NsConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}
