//! Real containers through libcontainer: the demo image (built from the
//! host's static busybox), overlayfs, cgroups, network namespaces.
//!
//! # The create helper in tests
//!
//! The runtime forks containers from a helper process (`bramble
//! __container-create <request>`). Tests have no bramble binary, so they
//! re-run this test binary: `helper_script()` writes a tiny shell script that
//! puts the request into `BRAMBLE_TEST_HELPER_REQUEST` and execs this binary
//! filtered to the hidden test `container_create_helper_entry`, which calls
//! `helper_main` and exits at once (before libtest prints its summary). The
//! script path is the runtime's `helper_exe`.
//!
//! Every test uses its own directories, cgroup prefix and network namespace,
//! and a guard removes them even when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bramble::runtime::demo::{DEMO_IMAGE, build_demo_image};
use bramble::runtime::{
    ContainerConfig, ContainerState, ImageStore, LibcontainerRuntime, Resources, Runtime,
    RuntimeConfig, RuntimeError,
};

const HELPER_ENV: &str = "BRAMBLE_TEST_HELPER_REQUEST";

/// Not a test: the helper's entry point when this binary is re-run by
/// `helper_script()`. Does nothing in a normal run.
#[test]
fn container_create_helper_entry() {
    if let Ok(request) = std::env::var(HELPER_ENV) {
        let code = bramble::runtime::helper_main(&[request]);
        std::process::exit(if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        });
    }
}

/// Writes the helper wrapper script into `dir`.
fn helper_script(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().unwrap();
    let path = dir.join("helper.sh");
    let script = format!(
        "#!/bin/sh\n# $1 is the subcommand word, $2 the request.\nexport {HELPER_ENV}=\"$2\"\nexec '{}' --exact container_create_helper_entry --nocapture --test-threads=1 --quiet\n",
        exe.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// One test's runtime, its directories and cgroups; torn down on drop.
struct Fixture {
    runtime: Option<LibcontainerRuntime>,
    dir: tempfile::TempDir,
    store: ImageStore,
    prefix: String,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bramble-rt-{name}-"))
            .tempdir_in("/tmp")
            .unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        build_demo_image(&store, Path::new("/bin/busybox")).unwrap();
        let prefix = format!("bramble-test/{name}-{}", std::process::id());
        let mut f = Fixture {
            runtime: None,
            dir,
            store,
            prefix,
        };
        f.start_runtime();
        f
    }

    fn start_runtime(&mut self) {
        self.runtime = Some(
            LibcontainerRuntime::new(RuntimeConfig {
                state_dir: self.dir.path().join("state"),
                containers_dir: self.dir.path().join("containers"),
                images: self.store.clone(),
                cgroup_prefix: self.prefix.clone(),
                helper_exe: helper_script(self.dir.path()),
            })
            .unwrap(),
        );
    }

    fn rt(&self) -> &LibcontainerRuntime {
        self.runtime.as_ref().unwrap()
    }

    fn config(&self, id: &str) -> ContainerConfig {
        ContainerConfig {
            id: id.to_string(),
            pod_uid: format!("uid-{id}"),
            pod_namespace: "default".into(),
            pod_name: "demo-pod".into(),
            container_name: format!("c-{id}"),
            image: DEMO_IMAGE.into(),
            command: vec![],
            args: vec![],
            env: vec![],
            working_dir: None,
            hostname: "demo-pod".into(),
            resolv_conf: None,
            netns: None,
            log_path: self.dir.path().join("logs").join(format!("{id}.log")),
            resources: Resources::default(),
            ..Default::default()
        }
    }

    fn state(&self, id: &str) -> ContainerState {
        self.rt()
            .list_containers()
            .unwrap()
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.state)
            .unwrap_or_else(|| panic!("container {id} not listed"))
    }

    fn wait_exited(&self, id: &str) -> ContainerState {
        wait_for(Duration::from_secs(20), || {
            let s = self.state(id);
            matches!(s, ContainerState::Exited { .. }).then_some(s)
        })
        .unwrap_or_else(|| panic!("{id} did not exit: {:?}", self.state(id)))
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.config(id).log_path).unwrap_or_default()
    }

    /// Cgroup directories of `id` that still exist, on any hierarchy.
    fn cgroup_leftovers(&self, id: &str) -> Vec<PathBuf> {
        let rel = self.rt().cgroup_path(id);
        cgroup_mounts()
            .into_iter()
            .map(|m| m.join(rel.strip_prefix("/").unwrap()))
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take()
            && let Err(e) = rt.cleanup_all()
        {
            eprintln!("cleanup_all: {e}");
        }
        // Anything still mounted below our directory (a failed test's rootfs).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mp in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
            if mp.starts_with(self.dir.path().to_str().unwrap()) {
                let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A network namespace with only `lo` up, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("bt-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        let ns = Netns(name);
        assert!(
            Command::new("ip")
                .args(["-n", &ns.0, "link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn exit_code_and_logs() {
    let f = Fixture::new("exit");
    let mut events = f.rt().events();
    let mut c = f.config("exit3");
    c.command = s(&["/bin/sh", "-c", "echo out-line; echo err-line >&2; exit 3"]);
    let info = f.rt().run_container(&c).unwrap();
    assert!(
        matches!(info.state, ContainerState::Running { .. }),
        "{info:?}"
    );
    assert_eq!(info.pod_uid, "uid-exit3");
    match f.wait_exited("exit3") {
        ContainerState::Exited {
            exit_code,
            signal,
            started_at,
            finished_at,
            ..
        } => {
            assert_eq!((exit_code, signal), (3, None));
            assert!(finished_at >= started_at);
        }
        other => panic!("{other:?}"),
    }
    assert!(events.has_changed().unwrap(), "an exit ticks events()");
    events.mark_unchanged();
    let log = f.log("exit3");
    assert!(
        log.contains("out-line") && log.contains("err-line"),
        "log: {log:?}"
    );
    // Killing an exited container is not an error; removing it is idempotent.
    f.rt().kill_container("exit3", libc::SIGTERM).unwrap();
    f.rt().remove_container("exit3").unwrap();
    f.rt().remove_container("exit3").unwrap();
    assert!(matches!(
        f.rt().kill_container("exit3", 9),
        Err(RuntimeError::NotFound(_))
    ));
}

#[test]
fn demo_httpd_in_netns_then_sigkill_and_remove() {
    let f = Fixture::new("httpd");
    let ns = Netns::new("httpd");
    let mut c = f.config("web");
    c.netns = Some(ns.path());
    f.rt().run_container(&c).unwrap();
    let page = wait_for(Duration::from_secs(20), || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "busybox",
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/",
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .unwrap_or_else(|| panic!("demo page never served; log: {}", f.log("web")));
    assert!(page.contains("Hello from demo-pod"), "page: {page}");

    let mut events = f.rt().events();
    events.mark_unchanged();
    f.rt().kill_container("web", libc::SIGKILL).unwrap();
    match f.wait_exited("web") {
        ContainerState::Exited {
            exit_code, signal, ..
        } => {
            assert_eq!((exit_code, signal), (137, Some(9)));
        }
        other => panic!("{other:?}"),
    }
    assert!(events.has_changed().unwrap());

    let dir = f.dir.path().join("containers/web");
    let state = f.dir.path().join("state/web");
    assert!(dir.join("rootfs/bin/busybox").exists());
    f.rt().remove_container("web").unwrap();
    assert!(!dir.exists(), "container dir left");
    assert!(!state.exists(), "libcontainer state left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "rootfs still mounted"
    );
    assert_eq!(f.cgroup_leftovers("web"), Vec::<PathBuf>::new());
    assert!(f.rt().list_containers().unwrap().is_empty());
    // The last container gone, the prefix's empty cgroups go too.
    for m in cgroup_mounts() {
        assert!(
            !m.join(&f.prefix).exists(),
            "{} left",
            m.join(&f.prefix).display()
        );
    }
}

#[test]
fn resources_land_in_the_cgroup_and_are_removed() {
    let f = Fixture::new("cg");
    let mut c = f.config("limited");
    c.command = s(&["/bin/sleep", "60"]);
    c.resources = Resources {
        memory_limit_bytes: Some(64 << 20),
        cpu_limit_millis: Some(500),
        cpu_request_millis: Some(250),
        ..Default::default()
    };
    f.rt().run_container(&c).unwrap();
    let rel = f.rt().cgroup_path("limited");
    let rel = rel.strip_prefix("/").unwrap();
    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(ctrl).join(rel).join(file))
            .map(|s| s.trim().to_string())
    };
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        assert_eq!(
            read("memory", "memory.limit_in_bytes").unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("cpu", "cpu.cfs_quota_us").unwrap(), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us").unwrap(), "100000");
        assert_eq!(read("cpu", "cpu.shares").unwrap(), "256");
    } else {
        assert_eq!(read("", "memory.max").unwrap(), (64u64 << 20).to_string());
        assert_eq!(read("", "cpu.max").unwrap(), "50000 100000");
    }
    assert!(!f.cgroup_leftovers("limited").is_empty());

    let err = f.rt().remove_container("limited").unwrap_err();
    assert!(
        matches!(err, RuntimeError::Operation { op: "remove", .. }),
        "{err}"
    );
    f.rt().kill_container("limited", libc::SIGKILL).unwrap();
    f.wait_exited("limited");
    f.rt().remove_container("limited").unwrap();
    assert_eq!(f.cgroup_leftovers("limited"), Vec::<PathBuf>::new());
}

#[test]
fn command_args_env_and_workdir() {
    let f = Fixture::new("args");
    // command alone: replaces the image's CMD entirely.
    let mut c = f.config("cmdonly");
    c.command = s(&["/bin/echo", "command-only"]);
    f.rt().run_container(&c).unwrap();
    f.wait_exited("cmdonly");
    assert_eq!(f.log("cmdonly"), "command-only\n");

    // args alone: replaces CMD (the demo has no ENTRYPOINT); env, cwd, hostname.
    let mut c = f.config("argsenv");
    c.args = s(&[
        "/bin/sh",
        "-c",
        "echo \"A=$A PWD=$(pwd) HOST=$(hostname) PATH=$PATH\"; cat /etc/hosts",
    ]);
    c.env = vec![("A".into(), "x y".into())];
    c.working_dir = Some("/tmp".into());
    c.hostname = "custom-host".into();
    f.rt().run_container(&c).unwrap();
    match f.wait_exited("argsenv") {
        ContainerState::Exited { exit_code: 0, .. } => {}
        other => panic!("{other:?}: {}", f.log("argsenv")),
    }
    let log = f.log("argsenv");
    assert!(
        log.starts_with("A=x y PWD=/tmp HOST=custom-host PATH=/usr/local/sbin:"),
        "log: {log}"
    );
    assert!(log.contains("127.0.1.1\tcustom-host"), "log: {log}");

    // A missing binary fails at create or exits non-zero, never hangs.
    let mut c = f.config("missing");
    c.command = s(&["/no/such/binary"]);
    match f.rt().run_container(&c) {
        Err(RuntimeError::Create { .. }) => {
            assert!(!f.dir.path().join("containers/missing").exists());
        }
        Ok(_) => assert!(
            matches!(f.wait_exited("missing"), ContainerState::Exited { exit_code, .. } if exit_code != 0)
        ),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn state_survives_a_new_runtime_instance() {
    let mut f = Fixture::new("restart");
    let mut c = f.config("survivor");
    c.command = s(&["/bin/sleep", "60"]);
    f.rt().run_container(&c).unwrap();
    assert!(matches!(
        f.rt().run_container(&c),
        Err(RuntimeError::AlreadyExists(_))
    ));
    assert!(matches!(
        f.rt().run_container(&ContainerConfig {
            id: "other".into(),
            image: "nope:1".into(),
            ..c.clone()
        }),
        Err(RuntimeError::ImageNotPresent(_))
    ));
    drop(f.runtime.take());
    f.start_runtime();
    let listed = f.rt().list_containers().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].pod_uid, "uid-survivor");
    assert_eq!(listed[0].container_name, "c-survivor");
    assert!(matches!(listed[0].state, ContainerState::Running { .. }));
    // Same process, so the init is still our child: the exit code is known.
    // (SIGKILL: as pid 1 of its namespace, sleep ignores SIGTERM.)
    f.rt().kill_container("survivor", libc::SIGKILL).unwrap();
    match f.wait_exited("survivor") {
        ContainerState::Exited { exit_code, .. } => assert_eq!(exit_code, 137),
        other => panic!("{other:?}"),
    }
}

#[test]
fn host_network_when_no_netns() {
    let f = Fixture::new("hostnet");
    let mut c = f.config("hostnet");
    c.command = s(&["/bin/sh", "-c", "ip -o link | wc -l"]);
    f.rt().run_container(&c).unwrap();
    f.wait_exited("hostnet");
    let host_links = String::from_utf8(
        Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .lines()
    .count();
    assert_eq!(f.log("hostnet").trim(), host_links.to_string());
}
